"""The doors a browser page, a slow client or a guesser could use (issue "Safe by default",
points 7, 9, 10 and ``[server] plaintext``): Origin, Host, REST methods and content types,
header and handshake deadlines, connections per address, mediaSessionIds, failed logins."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import select
import socket
import time

import aiohttp
import pytest

from streamsnap.core import auth, listeners
from streamsnap.core.app import App
from streamsnap.core.auth import Authenticator, LoginThrottled, hash_password
from streamsnap.core.config import Config
from streamsnap.plugins.webrtc import wcs_websocket
from tests.helpers.media import ffmpeg_testsrc
from tests.helpers.tls import self_signed

pytestmark = pytest.mark.e2e

WS_UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    "Sec-WebSocket-Version": "13",
}


def http_get(port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    """GET with exactly these headers (Host included) on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def metrics(srv) -> str:
    return srv.request("GET", "/metrics")[1].decode()


async def ws_connection(url: str, **kwargs) -> str:
    async with aiohttp.ClientSession() as session, session.ws_connect(url, **kwargs) as ws:
        await ws.send_json({"message": "connection", "data": [{}]})
        return (await ws.receive_json(timeout=10))["message"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def local_app(tmp_path):
    """A server in this process (its timeouts can be shortened with monkeypatch)."""
    apps: list[App] = []

    async def start() -> App:
        cfg = Config()
        cfg.server.host = "127.0.0.1"
        cfg.server.http_port = cfg.server.ws_port = cfg.server.rtmp_port = 0
        cfg.snapshot.snapshot_auto_dir = str(tmp_path / "snaps")
        app = App(cfg)
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.stop()


# ---------------------------------------------------------------- 7. the browser as a weapon
def test_websocket_refuses_a_foreign_origin(make_server):
    srv = make_server()
    port = srv.ports["ws"]
    url = f"ws://127.0.0.1:{port}/"
    status, body = http_get(
        port, "/", {"Host": f"127.0.0.1:{port}", "Origin": "https://evil.example", **WS_UPGRADE}
    )
    assert status == 403 and "[server] allowed_origins" in body, body
    srv.wait_log(
        r"websocket 127\.0\.0\.1: refused: Origin https://evil\.example is not in "
        r"\[server\] allowed_origins"
    )
    # the server's own pages (same host, any port) and clients that are no browser page
    assert asyncio.run(ws_connection(url, origin=f"http://127.0.0.1:{srv.ports['http']}")) == (
        "getUserData"
    )
    assert asyncio.run(ws_connection(url)) == "getUserData"
    assert 'streamsnap_refused_total{reason="origin"} 1' in metrics(srv)

    listed = make_server(server={"allowed_origins": ["https://app.example.com"]})
    url = f"ws://127.0.0.1:{listed.ports['ws']}/"
    assert asyncio.run(ws_connection(url, origin="https://app.example.com")) == "getUserData"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        asyncio.run(ws_connection(url, origin="https://app.example.com.evil.example"))
    assert refused.value.status == 403


def test_rest_methods_are_post_with_json_only(make_server):
    srv = make_server()
    pub = ffmpeg_testsrc(srv.rtmp_url("victim"), size="320x240", audio=False)
    try:
        srv.wait_stream("victim")
        for content_type, body in (("text/plain", b"{}"), ("", None), ("", b"{}")):
            status, raw, _ = srv.request(
                "POST", "/rest-api/stream/terminate", body, content_type=content_type
            )
            payload = json.loads(raw)
            assert status == 415 and payload["status"] == 415, (content_type, raw)
            assert "Content-Type: application/json" in payload["message"]
        for path in ("/rest-api/stream/terminate", "/rest-api/stream/find_all"):
            status, raw, headers = srv.request("GET", path)
            assert status == 405 and json.loads(raw)["status"] == 405, path
            assert headers["Allow"] == "POST"
        status, _, _ = srv.request("GET", "/rest-api/pull/find_all")
        assert status == 405
        assert srv.request("POST", "/rest-api/pull/find_all", content_type="text/plain")[0] == 415
        assert srv.wait_stream("victim")["name"] == "victim"  # nothing above ended it
        status, raw, _ = srv.request("POST", "/rest-api/stream/find_all")  # JSON, no body
        assert status == 200 and json.loads(raw)[0]["name"] == "victim"
    finally:
        pub.stop()


def test_host_header_must_name_this_server(make_server):
    srv = make_server()
    for port, extra in ((srv.ports["http"], {}), (srv.ports["ws"], WS_UPGRADE)):
        status, body = http_get(port, "/healthz", {"Host": f"evil.example:{port}", **extra})
        assert status == 421 and "[server] server_names" in json.loads(body)["message"], body
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", socket.gethostname(), "[::1]"):
            status, _ = http_get(port, "/healthz", {"Host": host, **extra})
            assert status in (200, 101), host
    srv.wait_log(r"Host 'evil\.example:\d+' is not a name of this server")
    assert 'streamsnap_refused_total{reason="host"} 2' in metrics(srv)
    # HTTP/1.0 without a Host header
    with socket.create_connection(("127.0.0.1", srv.ports["http"]), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert s.makefile("rb").readline().split()[1] == b"200"

    named = make_server(server={"server_names": ["snap.example.com"]})
    assert http_get(named.ports["http"], "/healthz", {"Host": "snap.example.com"})[0] == 200
    assert http_get(named.ports["http"], "/healthz", {"Host": "example.com"})[0] == 421


# ---------------------------------------------------------------- 9. slow clients
async def test_half_sent_headers_are_dropped(local_app, monkeypatch):
    assert listeners.HEADER_TIMEOUT_S == 15.0
    monkeypatch.setattr(listeners, "HEADER_TIMEOUT_S", 1.0)
    app = await local_app()
    for port in (app.ports["http"], app.ports["ws"]):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert time.monotonic() - started < 3
        writer.close()


def test_rtmp_handshake_deadline_counts_from_the_start(make_server):
    srv = make_server(rtmp={"handshake_timeout_s": 1.5})
    with socket.create_connection(("127.0.0.1", srv.ports["rtmp"]), timeout=10) as s:
        started = time.monotonic()
        s.sendall(b"\x03")
        closed = False
        while not closed and time.monotonic() - started < 8:
            time.sleep(0.3)  # a byte every 0.3 s: never idle for handshake_timeout_s
            try:
                s.sendall(b"\x00")
                closed = bool(select.select([s], [], [], 0)[0]) and s.recv(4096) == b""
            except OSError:
                closed = True
        assert closed and time.monotonic() - started < 4
    srv.wait_log(r"handshake not completed within 1\.5 s")


async def test_websocket_without_connection_is_closed(local_app, monkeypatch):
    assert wcs_websocket.CONNECTION_TIMEOUT_S == 15.0
    monkeypatch.setattr(wcs_websocket, "CONNECTION_TIMEOUT_S", 0.5)
    app = await local_app()
    url = f"ws://127.0.0.1:{app.ports['ws']}/"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as silent:
            msg = await silent.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.CLOSE and silent.close_code == 1008
        async with session.ws_connect(url) as ws:  # a session that said hello stays
            await ws.send_json({"message": "connection", "data": [{}]})
            assert (await ws.receive_json(timeout=5))["message"] == "getUserData"
            await asyncio.sleep(1)
            await ws.send_json({"message": "ping", "data": []})
            assert (await ws.receive_json(timeout=5))["message"] == "pong"


def test_connections_per_address_on_every_port(make_server):
    srv = make_server(limits={"max_connections_per_ip": 3})
    held = [socket.create_connection(("127.0.0.1", srv.ports["http"])) for _ in range(3)]
    try:
        time.sleep(0.3)  # accepted by the server, not only by the kernel
        for name in ("http", "ws", "rtmp"):
            with socket.create_connection(("127.0.0.1", srv.ports[name]), timeout=5) as s:
                answer = s.makefile("rb").read()
            if name == "rtmp":
                assert answer == b"", answer
            else:
                assert answer.startswith(b"HTTP/1.1 503"), answer
                assert b"[limits] max_connections_per_ip" in answer
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    assert 'streamsnap_refused_total{reason="max_connections_per_ip"} 3' in metrics(srv)
    lines = [line for line in srv.lines if "connections from 127.0.0.1 refused" in line]
    assert len(lines) == 1 and "[limits] max_connections_per_ip" in lines[0], lines


# ---------------------------------------------------------------- 10. identities
def test_media_session_id_of_a_live_stream_cannot_be_reused(make_server):
    srv = make_server()
    pub = ffmpeg_testsrc(srv.rtmp_url("victim"), size="320x240", audio=False)
    try:
        victim = srv.wait_stream("victim")["mediaSessionId"]

        async def attack() -> list[dict]:
            url = f"ws://127.0.0.1:{srv.ports['ws']}/"
            async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
                await ws.send_json({"message": "connection", "data": [{}]})
                await ws.receive_json(timeout=10)
                out = []
                for message, name in (("publishStream", "evil"), ("playStream", "victim")):
                    data = {"mediaSessionId": victim, "name": name, "sdp": "v=0\r\n"}
                    await ws.send_json({"message": message, "data": [data]})
                    out.append((await ws.receive_json(timeout=10))["data"][0])
                return out

        for event in asyncio.run(attack()):
            assert event["status"] == "FAILED", event
            assert event["info"] == f"mediaSessionId {victim} is already in use", event
        assert srv.request("POST", "/rest-api/stream/find", {"name": "evil"})[0] == 404
        assert srv.wait_stream("victim")["mediaSessionId"] == victim
    finally:
        pub.stop()


async def test_failed_logins_throttle_without_hashing(monkeypatch):
    a = Authenticator("tok", [{"name": "ops", "password": hash_password("pw", n=1 << 14)}], [])
    calls = []
    real = auth.verify_password
    monkeypatch.setattr(auth, "verify_password", lambda pw, enc: calls.append(pw) or real(pw, enc))
    wrong = "Basic " + base64.b64encode(b"ops:wrong").decode()
    results = await asyncio.gather(
        *(a.check_header(wrong, "10.0.0.1") for _ in range(20)), return_exceptions=True
    )
    assert results.count(None) == auth.MAX_FAILED_LOGINS == 10
    throttled = [r for r in results if isinstance(r, LoginThrottled)]
    assert len(throttled) == 10 and 0 < throttled[0].retry_after <= 60
    assert len(calls) == 10  # the refused ones were never hashed
    for check in (a.check_header("Bearer tok", "10.0.0.1"), a.check_ws_token("ops:pw", "10.0.0.1")):
        with pytest.raises(LoginThrottled, match=r"too many failed logins from 10\.0\.0\.1"):
            await check
    assert await a.check_header("Bearer tok", "10.0.0.2") == "token"  # others are not
    assert await a.check_ws_token("ops:pw", "10.0.0.2") == "ops"
    assert len(calls) == 11
    a.close()


def test_failed_logins_are_limited_per_address_and_do_not_stall_others(make_server):
    # N=2^14 (the weakest hash allowed) keeps the timing below about the throttle, not scrypt
    password = hash_password("right", n=1 << 14)
    srv = make_server(auth={"users": [{"name": "ops", "password": password}]})
    url = srv.http + "/rest-api/stream/find_all"
    headers = {"Content-Type": "application/json"}

    def basic(password: str) -> dict[str, str]:
        token = base64.b64encode(f"ops:{password}".encode()).decode()
        return {**headers, "Authorization": f"Basic {token}"}

    async def run() -> tuple[list[tuple[int, str, str]], float, int]:
        timeout = aiohttp.ClientTimeout(total=30)
        other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with (
            aiohttp.ClientSession(timeout=timeout) as guesser,
            aiohttp.ClientSession(timeout=timeout, connector=other) as user,
        ):

            async def guess() -> tuple[int, str, str]:
                async with guesser.post(url, headers=basic("wrong")) as resp:
                    return resp.status, await resp.text(), resp.headers.get("Retry-After", "")

            guesses = [asyncio.ensure_future(guess()) for _ in range(20)]
            await asyncio.sleep(0.05)
            started = time.monotonic()
            async with user.post(url, headers=basic("right")) as resp:
                assert resp.status == 404  # logged in: no streams
            took = time.monotonic() - started
            answers = await asyncio.gather(*guesses)
            async with guesser.post(url, headers=basic("right")) as resp:
                blocked = resp.status
        return answers, took, blocked

    answers, took, blocked = asyncio.run(run())
    assert took < 1.5, f"a correct login from another address took {took:.1f} s"
    assert sorted(status for status, _, _ in answers) == [401] * 10 + [429] * 10
    _, text, retry_after = next(a for a in answers if a[0] == 429)
    assert "too many failed logins from 127.0.0.1" in json.loads(text)["message"]
    assert 0 < int(retry_after) <= 60
    assert blocked == 429  # the right password too, until the window has passed

    async def from_other(path: str) -> str:
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(srv.http + path, headers=basic("right")) as resp,
        ):
            return await resp.text()

    async def ws(local: str) -> tuple[str, str, int | None]:
        url = f"ws://127.0.0.1:{srv.ports['ws']}/"
        connector = aiohttp.TCPConnector(local_addr=(local, 0))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.ws_connect(url) as sock,
        ):
            await sock.send_json({"message": "connection", "data": [{"authToken": "ops:right"}]})
            reply = await sock.receive_json(timeout=10)
            info = reply["data"][0].get("info", "") if reply["message"] == "fail" else ""
            if info:
                await sock.receive(timeout=10)
            return reply["message"], info, sock.close_code

    message, info, code = asyncio.run(ws("127.0.0.1"))
    assert message == "fail" and "too many failed logins" in info and code == 4029
    assert asyncio.run(ws("127.0.0.2"))[0] == "getUserData"
    # 10 guesses, the right password and the WebSocket from 127.0.0.1 while it was throttled
    text = asyncio.run(from_other("/metrics"))
    assert 'streamsnap_refused_total{reason="failed_logins"} 12' in text


def test_a_whip_publish_key_is_no_failed_login(make_server):
    """WHIP clients send their stream's publish key as the bearer token (OBS reconnecting):
    that is not a wrong API token, and never throttles the publisher."""
    srv = make_server(auth={"token": "api-token", "publish_keys": [{"stream": "cam", "key": "k"}]})
    for _ in range(auth.MAX_FAILED_LOGINS + 2):
        status, raw, _ = srv.request(
            "POST",
            "/whip/cam",
            b"v=0 not an offer",
            content_type="application/sdp",
            headers={"Authorization": "Bearer k"},
        )
        assert status == 400, raw  # past auth: the offer itself is refused
    assert (
        'reason="failed_logins"} 0'
        in srv.request("GET", "/metrics", headers={"Authorization": "Bearer api-token"})[1].decode()
    )


# ---------------------------------------------------------------- 11. plaintext
def test_plaintext_false_opens_only_the_tls_ports(make_server, tmp_path):
    import ssl

    cert, key = self_signed(tmp_path)
    http_port, ws_port = free_port(), free_port()
    srv = make_server(
        server={
            "http_port": http_port,
            "ws_port": ws_port,
            "https_port": 0,
            "wss_port": 0,
            "tls_cert": str(cert),
            "tls_key": str(key),
            "plaintext": False,
        }
    )
    assert "http" not in srv.ports and "ws" not in srv.ports
    for port in (http_port, ws_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False

    async def check() -> tuple[int, str]:
        url = f"https://127.0.0.1:{srv.ports['https']}/healthz"
        async with aiohttp.ClientSession() as session, session.get(url, ssl=ctx) as resp:
            status = resp.status
        return status, await ws_connection(f"wss://127.0.0.1:{srv.ports['wss']}/", ssl=ctx)

    assert asyncio.run(check()) == (200, "getUserData")


def test_a_forwarded_request_is_refused_by_a_server_not_in_a_cluster(make_server):
    """The headers nodes sign their forwards with are no way in on a server without
    [cluster]: 403 naming the section, whatever else the request carries."""
    from streamsnap.plugins.cluster.signing import sign

    srv = make_server()
    target = "/rest-api/stream/find_all"
    headers = {
        **sign(b"any-secret-at-all-16", "node1", "node0", "POST", target, b"{}"),
        "Content-Type": "application/json",
    }
    status, raw, _ = srv.request("POST", target, b"{}", headers=headers)
    assert status == 403 and "[cluster]" in json.loads(raw)["message"], raw
    assert srv.request("POST", target, {})[0] == 404  # the same request unsigned: answered
