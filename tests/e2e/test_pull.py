"""Pulling streams that live on other servers through supervised FFmpeg: RTMP from nginx-rtmp,
HLS from a local HTTP server, SRT from an FFmpeg listener."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import socket
import threading
import time

import pytest
from PIL import Image

from tests.helpers.media import FFMPEG, Publisher, ffmpeg_testsrc
from tests.helpers.nginx import NginxRtmp, nginx_available

pytestmark = pytest.mark.e2e


def png_size(body: dict) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(body["data"]))).size


def pull_server(make_server, schemes: list[str] | None = None, **pull):
    if schemes is not None:
        pull["allowed_schemes"] = schemes
    pull.setdefault("allowed_hosts", ["127.0.0.1"])
    return make_server(
        snapshot={"snapshot_taking_interval_ms": 8000},
        rtsp={"stall_timeout_s": 3.0, "connect_timeout_s": 3.0, "backoff_max_s": 1.0},
        pull=pull,
    )


def wait_snapshot(srv, name: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, body = srv.snapshot(name)
        if status == 200 or time.monotonic() > deadline:
            assert status == 200, body
            return body
        time.sleep(0.5)


@pytest.fixture
def nginx():
    if not nginx_available():
        pytest.skip("nginx with the RTMP module (libnginx-mod-rtmp) not installed")
    origin = NginxRtmp()
    yield origin
    origin.cleanup()


def test_pull_rtmp_from_nginx_by_url_and_by_rest(make_server, nginx):
    pub = ffmpeg_testsrc(nginx.url("studio"), size="640x360", gop=30)
    try:
        srv = pull_server(make_server)
        body = wait_snapshot(srv, nginx.url("studio"))
        assert png_size(body) == (640, 360)
        # WCS-style REST: start a named pull, list it, terminate it
        status, raw, _ = srv.request(
            "POST",
            "/rest-api/pull/startup",
            {"uri": nginx.url("studio"), "localStreamName": "studio"},
        )
        assert status == 200, raw
        assert json.loads(raw)["localStreamName"] == "studio"
        assert png_size(wait_snapshot(srv, "studio")) == (640, 360)
        status, raw, _ = srv.request(
            "POST",
            "/rest-api/pull/startup",
            {"uri": nginx.url("studio"), "localStreamName": "studio"},
        )
        assert status == 409
        status, raw, _ = srv.request("POST", "/rest-api/pull/find_all")
        pulls = {p["localStreamName"]: p for p in json.loads(raw)}
        assert pulls["studio"]["uri"] == nginx.url("studio") and not pulls["studio"]["onDemand"]
        assert pulls[nginx.url("studio")]["onDemand"]
        info = srv.wait_stream("studio")
        assert info["protocol"] == "rtmp" and info["status"] == "PUBLISHING"
        status, _, _ = srv.request(
            "POST", "/rest-api/pull/terminate", {"localStreamName": "studio"}
        )
        assert status == 200
        srv.wait_gone("studio")
        status, _, _ = srv.request(
            "POST", "/rest-api/pull/terminate", {"localStreamName": "studio"}
        )
        assert status == 404
    finally:
        pub.stop()


def test_configured_source_recovers_when_the_origin_restarts(make_server, nginx):
    pub = ffmpeg_testsrc(nginx.url("origin"), size="320x240", gop=30)
    srv = pull_server(make_server, sources=[{"name": "remote", "url": nginx.url("origin")}])
    try:
        assert png_size(wait_snapshot(srv, "remote")) == (320, 240)
        pub.stop()
        nginx.kill()  # the origin goes away
        srv.wait_log(r"pull remote: .*(exited|no progress)", timeout=15)
        nginx.start()
        pub = ffmpeg_testsrc(nginx.url("origin"), size="320x240", gop=30)
        assert png_size(wait_snapshot(srv, "remote", timeout=40)) == (320, 240)
        assert srv.log.count("pull remote: started pid") >= 2
    finally:
        pub.stop()


@pytest.fixture
def hls_origin(tmp_path):
    """FFmpeg's HLS muxer writing a live playlist, served by a local HTTP server."""
    folder = tmp_path / "hls"
    folder.mkdir()
    pub = Publisher(
        [
            FFMPEG,
            "-hide_banner",
            "-loglevel",
            "warning",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=480x270:rate=30",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_list_size",
            "4",
            "-hls_flags",
            "delete_segments",
            str(folder / "live.m3u8"),
        ]
    )
    handler = functools.partial(_QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    deadline = time.monotonic() + 15
    while not (folder / "live.m3u8").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    yield f"http://127.0.0.1:{httpd.server_address[1]}/live.m3u8"
    httpd.shutdown()
    httpd.server_close()
    pub.stop()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_pull_hls_only_when_http_is_allowed(make_server, hls_origin):
    refused = pull_server(make_server)
    status, body = refused.snapshot(hls_origin)
    assert status == 400 and "allowed_schemes" in body["message"]
    assert "started pid" not in refused.log
    srv = pull_server(make_server, schemes=["http"])
    assert png_size(wait_snapshot(srv, hls_origin)) == (480, 270)
    assert srv.wait_stream(hls_origin)["protocol"] == "http"


def test_pull_srt_from_an_ffmpeg_listener(make_server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    listener = Publisher(
        [
            FFMPEG,
            "-hide_banner",
            "-loglevel",
            "warning",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=30",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            "30",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "mpegts",
            f"srt://127.0.0.1:{port}?mode=listener",
        ]
    )
    try:
        time.sleep(1)
        srv = pull_server(make_server)
        assert png_size(wait_snapshot(srv, f"srt://127.0.0.1:{port}")) == (320, 240)
    finally:
        listener.stop()


@pytest.mark.parametrize(
    "name",
    [
        "file:///etc/passwd",
        "concat:/etc/passwd|/etc/hosts",
        "subfile,,start,0,end,0,,:/etc/passwd",
        "data:,x",
        "http://127.0.0.1:1/x.m3u8",
        "tcp://127.0.0.1:1",
    ],
)
def test_disallowed_schemes_never_reach_ffmpeg(server, name):
    status, body = server.snapshot(name)
    assert status == 400 and body["message"], body
    status, _raw, _ = server.request(
        "POST", "/rest-api/pull/startup", {"uri": name, "localStreamName": "x"}
    )
    assert status == 400
    assert "started pid" not in server.log
