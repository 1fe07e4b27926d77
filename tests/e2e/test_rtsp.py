"""RTSP cameras (a real GStreamer RTSP server) pulled through supervised FFmpeg children."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
from PIL import Image

from tests.helpers.server import find, wait_for

pytestmark = pytest.mark.e2e

FAILED_TO_CONNECT = "Failed to connect to rtsp stream"


def png(body: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(body["data"])))


def rtsp_server(make_server, allowed_hosts=("127.0.0.1",), **rtsp):
    rtsp.setdefault("stall_timeout_s", 2.0)
    rtsp.setdefault("connect_timeout_s", 3.0)
    rtsp.setdefault("backoff_max_s", 1.0)
    return make_server(
        snapshot={"snapshot_taking_interval_ms": 6000},
        rtsp=rtsp,
        pull={"allowed_hosts": list(allowed_hosts)},
    )


def test_snapshot_by_url_cold_then_warm(make_server, make_camera):
    cam = make_camera(size="1280x720")
    srv = rtsp_server(make_server)
    t0 = time.monotonic()
    status, body = srv.snapshot(cam.url())
    cold = time.monotonic() - t0
    assert status == 200, body
    assert png(body).size == (1280, 720)
    t0 = time.monotonic()
    status, body = srv.snapshot(cam.url())
    warm = time.monotonic() - t0
    assert status == 200 and warm < cold
    info = wait_for(lambda: (i := find(srv, cam.url())) and i["fps"] > 0 and i, 5, "fps")
    assert info["name"] == cam.url() and info["mediaProvider"] == "RTSP"
    assert (info["width"], info["height"], info["videoCodec"]) == (1280, 720, "h264")
    assert 20 < info["fps"] < 40
    print(f"RTSP cold {cold * 1000:.0f} ms, warm {warm * 1000:.0f} ms")


def test_configured_camera_by_friendly_name_pulled_from_startup(make_server, make_camera):
    cam = make_camera()
    srv = rtsp_server(make_server, cameras=[{"name": "gate", "url": cam.url()}])
    info = wait_for(lambda: (i := find(srv, "gate")) and i["framesIn"] > 5 and i, 10, "pull")
    assert info["status"] == "PUBLISHING"
    status, body = srv.snapshot("gate")
    assert status == 200 and png(body).size == (640, 360)
    # the camera's URL finds the same stream instead of pulling it twice
    assert find(srv, cam.url())["mediaSessionId"] == info["mediaSessionId"]
    assert srv.log.count("started pid") == 1


def test_auth_from_url_and_from_config_and_failures(make_server, make_camera):
    cam = make_camera(user="admin", password="s3cret!")
    srv = rtsp_server(
        make_server, credentials=[{"host": "127.0.0.2", "username": "admin", "password": "s3cret!"}]
    )
    status, body = srv.snapshot(cam.url(user="admin", password="s3cret%21"))
    assert status == 200, body
    # cold pulls (other paths: the running pull's name differs) and the running pull itself
    cold = (cam.url(path="/cam/x"), cam.url(user="admin", password="wrong", path="/cam/y"))
    warm = (cam.url(), cam.url(user="admin", password="wrong"))
    for bad in (*cold, *warm):
        t0 = time.monotonic()
        status, body = srv.snapshot(bad)
        assert status == 500 and body["message"] == FAILED_TO_CONNECT, body
        assert time.monotonic() - t0 < 5  # the 401 ends the wait, no timeout
    # credentials never show: not in names, find results or logs
    status, raw, _ = srv.request("POST", "/rest-api/stream/find_all")
    assert "s3cret" not in raw.decode() and "wrong" not in raw.decode()
    assert "s3cret" not in srv.log and ":wrong@" not in srv.log
    names = {s["name"] for s in json.loads(raw)}
    assert cam.url() in names


def test_digest_auth(make_server, make_camera):
    cam = make_camera(user="admin", password="d1gest", digest=True)
    srv = rtsp_server(make_server)
    status, body = srv.snapshot(cam.url(user="admin", password="d1gest"))
    assert status == 200, body
    status, body = srv.snapshot(cam.url(user="admin", password="nope", path="/cam/2"))
    assert status == 500 and body["message"] == FAILED_TO_CONNECT
    assert "nope" not in srv.log and "d1gest" not in srv.log


def test_credentials_from_config_by_host(make_server, make_camera):
    cam = make_camera(user="viewer", password="pw")
    srv = rtsp_server(
        make_server,
        credentials=[
            {"host": "127.0.0.*", "port": cam.port, "username": "viewer", "password": "pw"}
        ],
    )
    status, body = srv.snapshot(cam.url())
    assert status == 200, body
    assert "pw@" not in srv.log


def test_udp_transport(make_server, make_camera):
    """A configured camera over UDP; one asked for by URL stays on TCP, through the relay
    (over UDP the camera would choose where FFmpeg sends its RTP and RTCP packets)."""
    cam = make_camera()
    srv = rtsp_server(make_server, transport="udp", cameras=[{"name": "u", "url": cam.url()}])
    status, body = srv.snapshot("u")
    assert status == 200, body
    srv.wait_log(r"-rtsp_transport udp")
    status, body = srv.snapshot(cam.url(query="?channel=2"))
    assert status == 200, body
    line = srv.wait_log(r"pull rtsp://.*channel=2: started pid")
    assert "-rtsp_transport tcp" in line


def test_camera_not_reachable(make_server, make_camera):
    cam = make_camera()
    port = cam.port
    cam.stop()
    srv = rtsp_server(make_server)
    status, body = srv.snapshot(f"rtsp://127.0.0.1:{port}/cam")
    assert status == 500 and body["message"] == FAILED_TO_CONNECT
    assert set(body) == {"exception", "reason", "path", "error", "message", "timestamp", "status"}


def test_camera_killed_and_restarted_recovers(make_server, make_camera):
    cam = make_camera()
    srv = rtsp_server(make_server, cameras=[{"name": "door", "url": cam.url()}])
    wait_for(lambda: srv.snapshot("door")[0] == 200, 10, "first picture")
    cam.kill()
    wait_for(
        lambda: (i := find(srv, "door")) and i["status"] != "PUBLISHING",
        10,
        "the failure to be noticed",
    )
    status, _body = srv.snapshot("door")
    assert status == 500  # no stale picture while the camera is gone
    cam.start()  # same port
    wait_for(lambda: srv.snapshot("door")[0] == 200, 20, "recovery")
    assert srv.log.count("started pid") >= 2


def test_frozen_camera_is_detected_and_restarted(make_server, make_camera):
    cam = make_camera()
    srv = rtsp_server(make_server, cameras=[{"name": "frozen", "url": cam.url()}])
    wait_for(lambda: srv.snapshot("frozen")[0] == 200, 10, "first picture")
    cam.freeze()  # SIGSTOP: TCP stays open, nothing is sent
    t0 = time.monotonic()
    srv.wait_log(r"made no progress for", timeout=10)
    detected = time.monotonic() - t0
    assert detected < 5, detected
    cam.thaw()
    wait_for(lambda: srv.snapshot("frozen")[0] == 200, 20, "recovery after thaw")


def test_metrics_show_what_the_ffmpeg_children_cost(make_server, make_camera):
    cam = make_camera(size="320x240")
    srv = rtsp_server(make_server, cameras=[{"name": "costly", "url": cam.url()}])
    wait_for(lambda: srv.snapshot("costly")[0] == 200, 10, "first picture")

    def samples():
        _status, raw, _ = srv.request("GET", "/metrics")
        lines = raw.decode().splitlines()
        return dict(line.split(" ", 1) for line in lines if line and not line.startswith("#"))

    first = samples()
    assert first["streamsnap_children"] == "1"
    assert float(first["streamsnap_children_resident_memory_bytes"]) > 5e6
    later = wait_for(
        lambda: (
            (m := samples())
            and float(m["streamsnap_children_cpu_seconds"])
            > float(first["streamsnap_children_cpu_seconds"])
            and m
        ),
        10,
        "the child's CPU time to grow",
    )
    assert float(later["process_cpu_seconds_total"]) >= float(first["process_cpu_seconds_total"])


def test_ten_cameras_at_once(make_server, make_camera):
    cams = [make_camera(size="320x240"), make_camera(size="320x240")]
    srv = rtsp_server(make_server)
    urls = [c.url(query=f"?channel={i}") for c in cams for i in range(5)]
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(srv.snapshot, urls))
    assert [r[0] for r in results] == [200] * 10, results
    assert all(png(r[1]).size == (320, 240) for r in results)
    _status, raw, _ = srv.request("POST", "/rest-api/stream/find_all")
    assert len([s for s in json.loads(raw) if s["protocol"] == "rtsp"]) == 10


@pytest.mark.parametrize(
    "name",
    [
        "file:/etc/passwd",
        "file:///etc/passwd",
        "concat:/etc/passwd|/etc/hosts",
        "http://127.0.0.1:1/x.m3u8",
        "subfile,,start,0,end,0,,:/etc/passwd",
        "data:text/plain;base64,AAAA",
        "rtsp://127.0.0.1:1/cam|file:/etc/passwd",
        "rtsp://127.0.0.1:1/cam with space",
        "rtsp:///nohost",
        "gopher://127.0.0.1/x",
        "udp://127.0.0.1:1",
    ],
)
def test_disallowed_names_never_reach_ffmpeg(server, name):
    status, body = server.snapshot(name)
    assert status in (400, 404), body
    if status == 400:
        assert body["status"] == 400 and body["message"]
    assert "started pid" not in server.log


def test_host_allow_list(make_server, make_camera):
    cam = make_camera()
    srv = rtsp_server(make_server, allowed_hosts=["127.0.0.1/32"])
    assert srv.snapshot(cam.url())[0] == 200
    status, body = srv.snapshot(f"rtsp://127.0.0.2:{cam.port}/cam")
    assert status == 403 and "[pull] allowed_hosts" in body["message"]


def test_idle_pull_is_dropped(make_server, make_camera):
    cam = make_camera()
    srv = rtsp_server(make_server, idle_timeout_s=2)
    assert srv.snapshot(cam.url())[0] == 200
    srv.wait_log(r"dropping the pull", timeout=15)
    srv.wait_log(r"unpublished \(idle timeout", timeout=10)
    srv.wait_log(r"exited with", timeout=5)
    status, _, _ = srv.request("POST", "/rest-api/stream/find_all")
    assert status == 404
