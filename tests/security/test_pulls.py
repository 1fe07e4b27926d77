"""Issue "Safe by default", points 1-4 and 6: a stream name is never a way into the network.

Each test stands where an attacker stands: a client of the REST, image or WebSocket API, or a
source that answers with a redirect. A listener counts the connections the server makes, so a
refusal is seen on the wire, not only in the answer.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator

import pytest

from streamsnap.core import hosts
from streamsnap.core.errors import NotAllowed
from streamsnap.plugins.pull.settings import PullSettings
from streamsnap.plugins.pull.urls import CredentialRule, check_query, parse_source_url
from tests.helpers.media import ffmpeg_testsrc

FAILED_TO_CONNECT = "Failed to connect to rtsp stream"


class Listener:
    """A TCP port on ``host`` that counts the connections made to it (and answers nothing)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    item = Listener()
    yield item
    item.close()


def ws_snapshot(server, name: str) -> dict:
    """The WebSDK's snapshot over the WebSocket API; the FAILED status or snapshot event."""
    import asyncio

    import aiohttp

    async def run() -> dict:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"ws://127.0.0.1:{server.ports['ws']}/") as ws,
        ):
            await ws.send_json({"message": "connection", "data": [{"appKey": "defaultApp"}]})
            await ws.receive_json(timeout=5)
            await ws.send_json(
                {"message": "snapshot", "data": [{"mediaSessionId": "m1", "name": name}]}
            )
            while True:
                msg = await ws.receive_json(timeout=10)
                if msg["message"] == "notifyStreamEvent":
                    return msg["data"][0]

    return asyncio.run(run())


# ------------------------------------------------------------------------ 1. SSRF by default
def test_default_config_refuses_every_on_demand_pull(make_server, listener):
    srv = make_server()
    url = f"rtsp://127.0.0.1:{listener.port}/x"
    quoted = urllib.parse.quote(url, safe="")
    status, raw, _ = srv.request("GET", f"/streams/{quoted}/snapshot.png")
    assert status == 404, raw  # image GETs serve live streams only, never start a pull
    status, body = srv.snapshot(url)
    assert status == 403 and "[pull] allowed_hosts" in body["message"], body
    status, raw, _ = srv.request("POST", "/rest-api/stream/find", {"name": url})
    assert status == 403 and "[pull] allowed_hosts" in json.loads(raw)["message"]
    status, raw, _ = srv.request(
        "POST", "/rest-api/pull/startup", {"uri": url, "localStreamName": "x"}
    )
    assert status == 403 and "[pull] allowed_hosts" in json.loads(raw)["message"]
    event = ws_snapshot(srv, url)
    assert event["type"] == "snapshotFailed" and "[pull] allowed_hosts" in event["payload"]["info"]
    time.sleep(0.5)
    assert listener.connections == 0
    assert "started pid" not in srv.log


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "169.254.169.254", "0.0.0.0", "224.0.0.1", "[::1]"]
)
def test_any_host_still_refuses_this_machine_and_its_link(make_server, listener, host):
    srv = make_server(pull={"allowed_hosts": ["*"]})
    port = listener.port if host in ("127.0.0.1", "localhost") else 554
    status, body = srv.snapshot(f"rtsp://{host}:{port}/x")
    assert status == 403, body
    assert "[pull] allowed_hosts" in body["message"] and "by address or network" in body["message"]
    assert listener.connections == 0
    assert "started pid" not in srv.log


def test_image_get_serves_a_running_pull_but_starts_none(make_server, make_camera):
    cam = make_camera()
    srv = make_server(pull={"allowed_hosts": ["127.0.0.1"]})
    quoted = urllib.parse.quote(cam.url(), safe="")
    status, _, _ = srv.request("GET", f"/streams/{quoted}/snapshot.jpg")
    assert status == 404
    assert "started pid" not in srv.log
    assert srv.snapshot(cam.url())[0] == 200  # a POST may start it, within the allow-list
    status, _raw, headers = srv.request("GET", f"/streams/{quoted}/snapshot.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"


def test_ffmpeg_connects_to_the_checked_address_not_the_name(make_server):
    """The name is resolved once and checked; FFmpeg gets the address (no DNS rebinding)."""
    srv = make_server(pull={"allowed_hosts": ["localhost", "127.0.0.1"]})
    port = Listener().port  # anything: only what FFmpeg is told to open matters here
    srv.snapshot(f"rtmp://localhost:{port}/live/x")
    line = srv.wait_log(r"started pid \d+: ")
    assert line.split(" -i ", 1)[1].split()[0] == f"rtmp://127.0.0.1:{port}/live/x", line


def test_failures_do_not_tell_a_closed_port_from_an_open_one(make_server, listener):
    srv = make_server(
        pull={"allowed_hosts": ["127.0.0.1"]},
        rtsp={"connect_timeout_s": 1.0},
        snapshot={"snapshot_taking_interval_ms": 8000},
    )
    closed = Listener()
    closed.close()  # a port nothing listens on
    answers = []
    for port in (closed.port, listener.port):
        url = f"rtsp://127.0.0.1:{port}/x"
        status, body = srv.snapshot(url)
        answers.append((status, body["message"]))
        status, raw, _ = srv.request("POST", "/rest-api/stream/find", {"name": url})
        found = json.loads(raw)
        answers.append((status, found[0]["info"] if status == 200 else found["message"]))
    assert answers[0] == answers[2] == (500, FAILED_TO_CONNECT), answers
    assert {a[1] for a in answers[1::2]} <= {FAILED_TO_CONNECT, "Stream not found", ""}, answers


# ------------------------------------------------------------------------ redirects
class _Redirector(http.server.BaseHTTPRequestHandler):
    location = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def rtsp_redirector(location: str) -> tuple[socket.socket, threading.Thread]:
    """A source that answers every RTSP request with ``302 Location: location``."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                cseq = next(
                    (ln.split(b":", 1)[1].strip() for ln in data.split(b"\r\n") if
                     ln.lower().startswith(b"cseq:")),
                    b"1",
                )  # fmt: skip
                conn.sendall(
                    b"RTSP/1.0 302 Moved Temporarily\r\nCSeq: " + cseq + b"\r\nLocation: "
                    + location.encode() + b"\r\nContent-Length: 0\r\n\r\n"
                )  # fmt: skip
                time.sleep(0.2)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return sock, thread


def test_rtsp_redirect_to_a_host_not_allowed_gets_no_connection(make_server):
    elsewhere = Listener("127.0.0.2")
    sock, _ = rtsp_redirector(f"rtsp://127.0.0.2:{elsewhere.port}/cam")
    try:
        srv = make_server(pull={"allowed_hosts": ["127.0.0.1"]}, rtsp={"connect_timeout_s": 2.0})
        status, body = srv.snapshot(f"rtsp://127.0.0.1:{sock.getsockname()[1]}/x")
        assert status == 500 and body["message"] == FAILED_TO_CONNECT, body
        srv.wait_log(r"redirect refused: .*127\.0\.0\.2.*\[pull\] allowed_hosts")
        time.sleep(1)
        assert elsewhere.connections == 0
    finally:
        sock.close()
        elsewhere.close()


def test_rtsp_redirect_to_an_allowed_camera_is_followed(make_server, make_camera):
    cam = make_camera()
    sock, _ = rtsp_redirector(cam.url())
    try:
        srv = make_server(
            pull={"allowed_hosts": ["127.0.0.1"]}, snapshot={"snapshot_taking_interval_ms": 8000}
        )
        status, body = srv.snapshot(f"rtsp://127.0.0.1:{sock.getsockname()[1]}/x")
        assert status == 200, body
        srv.wait_log(rf"camera redirected to 127\.0\.0\.1:{cam.port}")
    finally:
        sock.close()


def test_hls_redirect_is_not_followed(make_server):
    elsewhere = Listener("127.0.0.2")
    handler = type("H", (_Redirector,), {"location": f"http://127.0.0.2:{elsewhere.port}/x.m3u8"})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        srv = make_server(
            pull={"allowed_hosts": ["127.0.0.1"], "allowed_schemes": ["http"]},
            rtsp={"connect_timeout_s": 2.0},
        )
        status, _ = srv.snapshot(f"http://127.0.0.1:{httpd.server_address[1]}/live.m3u8")
        assert status == 500
        assert "-max_redirects 0" in srv.wait_log(r"started pid")
        time.sleep(1)
        assert elsewhere.connections == 0
    finally:
        httpd.shutdown()
        httpd.server_close()
        elsewhere.close()


# ------------------------------------------------------------------------ 2. credentials
def rule(**entry) -> CredentialRule:
    return CredentialRule.parse(0, {"username": "u", "password": "p", **entry})


def url(text: str):
    return parse_source_url(text, PullSettings(), trusted=True)


def test_credentials_go_only_to_their_scheme_host_and_port():
    local = rule(host="127.0.0.1")
    assert local.matches(url("rtsp://127.0.0.1/x"), None)
    assert local.matches(url("rtsp://127.0.0.1:554/x"), None)
    assert not local.matches(url("rtsp://127.0.0.1:8554/x"), None)  # another port
    assert not local.matches(url("srt://127.0.0.1:554"), None)  # another scheme
    assert not local.matches(url("rtsps://127.0.0.1/x"), None)
    assert rule(host="127.0.0.1", port=8554).matches(url("rtsp://127.0.0.1:8554/x"), None)
    pattern = rule(host="10.0.0.*")
    assert pattern.matches(url("rtsp://10.0.0.7/x"), None)
    assert not pattern.matches(url("rtsp://10.0.0.evil.example/x"), None)
    network = rule(host="10.0.0.0/24")
    assert network.matches(url("rtsp://cam.lan/x"), hosts.address_of("10.0.0.9"))
    assert not network.matches(url("rtsp://cam.lan/x"), hosts.address_of("10.0.1.9"))


def test_credentials_by_host_and_port_on_the_wire(make_server, make_camera):
    cam = make_camera(user="viewer", password="pw")
    creds = {"host": "127.0.0.1", "username": "viewer", "password": "pw"}
    srv = make_server(
        pull={"allowed_hosts": ["127.0.0.1"]}, rtsp={"credentials": [{**creds, "port": 1}]}
    )
    assert srv.snapshot(cam.url())[1]["message"] == FAILED_TO_CONNECT  # not for this port
    srv = make_server(
        pull={"allowed_hosts": ["127.0.0.1"]}, rtsp={"credentials": [{**creds, "port": cam.port}]}
    )
    assert srv.snapshot(cam.url())[0] == 200


# ------------------------------------------------------------------------ 3. wrong password
def test_a_wrong_password_never_gets_the_running_pulls_picture(make_server, make_camera):
    cam = make_camera(user="admin", password="secret")
    srv = make_server(pull={"allowed_hosts": ["127.0.0.1"]})
    assert srv.snapshot(cam.url(user="admin", password="secret"))[0] == 200
    for other in (cam.url(user="admin", password="wrong"), cam.url(), cam.url(user="x")):
        status, body = srv.snapshot(other)
        assert status == 500 and body["message"] == FAILED_TO_CONNECT, (other, body)
        quoted = urllib.parse.quote(other, safe="")
        assert srv.request("GET", f"/streams/{quoted}/snapshot.png")[0] == 500
    assert srv.snapshot(cam.url(user="admin", password="secret"))[0] == 200


# ------------------------------------------------------------------------ 4. query smuggling
def test_query_keys_come_from_a_per_scheme_allow_list():
    check_query("srt", "streamid=a&passphrase=0123456789&latency=120&pbkeylen=16", [])
    check_query("rtsp", "channel=1&subtype=0", [])
    with pytest.raises(NotAllowed, match=r"'mode'.*\[pull\] allowed_query_keys"):
        check_query("srt", "mode=listener", [])
    with pytest.raises(NotAllowed, match="'mode'"):
        check_query("srt", "streamid=a&mode=listener", ["rtsp:mode"])  # another scheme's key
    check_query("srt", "mode=caller", ["srt:mode"])
    check_query("rtmp", "token=1&extra=2", ["extra"])


def test_srt_listener_mode_is_refused_and_opens_no_port(make_server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = make_server(pull={"allowed_hosts": ["127.0.0.1"]})
    status, body = srv.snapshot(f"srt://127.0.0.1:{port}?mode=listener")
    assert status == 400 and "'mode'" in body["message"], body
    assert "[pull] allowed_query_keys" in body["message"]
    assert "started pid" not in srv.log
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))  # still free: nothing listens there


# ------------------------------------------------------------------------ 6. limits
def test_pulls_are_admitted_like_publishers(make_server, make_camera):
    cam = make_camera()
    srv = make_server(pull={"allowed_hosts": ["127.0.0.1"]}, limits={"max_streams": 1})
    pub = ffmpeg_testsrc(srv.rtmp_url("live1"), size="320x240")
    try:
        srv.wait_stream("live1")
        status, body = srv.snapshot(cam.url())
        assert status == 503 and "[limits] max_streams" in body["message"], body
        status, _raw, _ = srv.request("POST", "/rest-api/stream/find", {"name": cam.url()})
        assert status == 503
    finally:
        pub.stop()
    assert "started pid" not in srv.log


def test_max_pulls_per_ip(make_server, make_camera):
    cam = make_camera(one_encoder=True)
    srv = make_server(
        pull={"allowed_hosts": ["127.0.0.1"]},
        limits={"max_pulls_per_ip": 2},
        snapshot={"snapshot_taking_interval_ms": 8000},
    )
    for channel in (1, 2):
        status, body = srv.snapshot(cam.url(query=f"?channel={channel}"))
        assert status == 200, body
    status, body = srv.snapshot(cam.url(query="?channel=3"))
    assert status == 429 and "[limits] max_pulls_per_ip" in body["message"], body
    status, _raw, _ = srv.request(
        "POST",
        "/rest-api/pull/startup",
        {"uri": cam.url(query="?channel=4"), "localStreamName": "c4"},
    )
    assert status == 429


# ------------------------------------------------------------------------ found in review
def test_rtsps_cannot_be_pulled_by_url(make_server, listener):
    srv = make_server(pull={"allowed_hosts": ["127.0.0.1"]})
    status, body = srv.snapshot(f"rtsps://127.0.0.1:{listener.port}/x")
    assert status == 403 and "[[pull.cameras]]" in body["message"], body
    assert listener.connections == 0


def test_pull_startup_names_follow_the_publish_name_rule(make_server, listener):
    srv = make_server(pull={"allowed_hosts": ["127.0.0.1"]})
    for name in ("rtsp://cam.lan/x", "a\nb", "x" * 300):
        status, raw, _ = srv.request(
            "POST",
            "/rest-api/pull/startup",
            {"uri": f"rtsp://127.0.0.1:{listener.port}/x", "localStreamName": name},
        )
        assert status == 400 and "localStreamName" in json.loads(raw)["message"], raw
    assert "started pid" not in srv.log


def test_concurrent_requests_cannot_pass_max_pulls_per_ip(make_server, listener):
    import concurrent.futures

    srv = make_server(
        pull={"allowed_hosts": ["127.0.0.1"]},
        limits={"max_pulls_per_ip": 2},
        rtsp={"connect_timeout_s": 5.0},
        snapshot={"snapshot_taking_interval_ms": 300},
    )
    urls = [f"rtsp://127.0.0.1:{listener.port}/x?channel={i}" for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda u: srv.request("POST", "/rest-api/stream/find", {"name": u}), urls)
        )
    assert sum(a[0] == 429 for a in answers) >= 6, [a[0] for a in answers]


def test_requests_at_once_up_to_max_pulls_per_ip_all_pass(make_server, make_camera):
    """A pull that started while others were still being admitted is counted once: CI saw
    the tenth of ten pulls at once refused by a limit of 16."""
    import concurrent.futures

    cam = make_camera(size="320x240")  # an encoder per channel: shared media is slow to join
    srv = make_server(
        pull={"allowed_hosts": ["127.0.0.1"]},
        limits={"max_pulls_per_ip": 6},
        snapshot={"snapshot_taking_interval_ms": 8000},
    )
    urls = [cam.url(query=f"?channel={i}") for i in range(6)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(srv.snapshot, urls))
    assert [a[0] for a in answers] == [200] * 6, [a[1]["message"] for a in answers if a[0] != 200]
    status, body = srv.snapshot(cam.url(query="?channel=6"))
    assert status == 429 and "[limits] max_pulls_per_ip" in body["message"], body


def test_same_url_asked_twice_at_once_is_one_pull(make_server, make_camera):
    import concurrent.futures

    cam = make_camera()
    srv = make_server(pull={"allowed_hosts": ["127.0.0.1"]})
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: srv.snapshot(cam.url())[0], range(4)))
    assert answers == [200] * 4
    assert srv.log.count("pulling on demand") == 1 and srv.log.count("started pid") == 1


def test_credentials_without_password_are_not_the_word_none():
    from streamsnap.plugins.pull.urls import same_credentials

    assert not same_credentials(("admin", None), ("admin", "None"))
    assert same_credentials(("admin", None), ("admin", None))
    assert not same_credentials((None, None), ("", None))


def test_a_credential_rule_for_srt_needs_a_port():
    from streamsnap.core.errors import ConfigError

    with pytest.raises(ConfigError, match="srt:// has no default port"):
        CredentialRule.parse(0, {"scheme": "srt", "host": "10.0.0.1", "username": "u"})


def test_an_address_pattern_in_allowed_hosts_allows_literal_addresses():
    allow = hosts.HostAllowList(["10.0.0.*"], "[pull] allowed_hosts")
    assert allow.host_may_be_tried("10.0.0.7")
    assert allow.allows("10.0.0.7", hosts.address_of("10.0.0.7"))
    assert not allow.host_may_be_tried("10.0.1.7")
