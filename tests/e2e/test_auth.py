"""Auth end to end: every HTTP route, the WebSocket API, RTMP publish keys and WHIP, with real
clients (aiohttp, FFmpeg, the project's RTMP client) against a real server."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import urllib.error
import urllib.request

import aiohttp
import pytest

from streamsnap.core.app import App
from streamsnap.core.auth import hash_password
from streamsnap.core.config import Config
from tests.helpers.media import ffmpeg_testsrc
from tests.helpers.rtmp_client import RtmpClient, make_flv

pytestmark = pytest.mark.e2e

# Routes that stay open with auth on: the pages and what they load, health, the API description.
# A route a plugin declares open must be listed here deliberately; every other route is
# protected.
OPEN = {"/", "/config.js", "/healthz", "/openapi.yaml", "/pages", "/sdk"}
TOKEN = "t0ken"
USER, PASSWORD = "ops", "s3cret pass"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _sample(path: str) -> str:
    """A concrete URL path for a route pattern (``{name}`` → ``x``, ``{ext:...}`` → ``png``)."""
    return re.sub(
        r"\{(\w+)(?::[^}]*)?\}", lambda m: "png" if m.group(1) == "ext" else "x", path
    ).replace("//", "/")


def _routes(app: App) -> list[tuple[str, str, bool]]:
    """``(method, sample path, declared open)`` of every route the server has."""
    assert app.web is not None
    out = set()
    for route in app.web.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        is_open = app.access.of_route(route) == "open"
        if "prefix" in info:  # static folders
            out.add(("GET", info["prefix"].rstrip("/") + "/x.png", is_open))
        elif route.method not in ("HEAD", "OPTIONS"):
            path = _sample(info.get("path") or info.get("formatter", ""))
            out.add((route.method, path, is_open))
    return sorted(out)


@pytest.fixture
async def guarded_app(tmp_path):
    cfg = Config()
    cfg.server.host = "127.0.0.1"
    cfg.server.http_port = cfg.server.ws_port = cfg.server.rtmp_port = 0
    cfg.snapshot.snapshot_auto_dir = str(tmp_path / "snaps")
    cfg.snapshot.snapshot_taking_interval_ms = 200
    cfg.auth.token = TOKEN
    cfg.auth.users = [{"name": USER, "password": hash_password(PASSWORD, n=1 << 14)}]
    app = App(cfg)
    app.auth.logins.limit = 1000  # the tests fail dozens of logins from 127.0.0.1 on purpose
    await app.start()
    yield app
    await app.stop()


async def test_every_protected_route_refuses_without_credentials(guarded_app):
    app = guarded_app
    base = f"http://127.0.0.1:{app.ports['http']}"
    routes = _routes(app)
    protected = [(m, p) for m, p, is_open in routes if not is_open]
    escaped = [(m, p) for m, p, is_open in routes if is_open and p.split("/x")[0] not in OPEN]
    assert not escaped, f"routes neither protected nor deliberately open: {escaped}"
    assert len(protected) >= 15 and ("POST", "/whip/x") in protected

    async def status(session, method, path, headers=None) -> tuple[int, list[str]]:
        timeout = aiohttp.ClientTimeout(total=10)
        async with session.request(
            method, base + path, headers=headers or {}, data=b"{}", timeout=timeout
        ) as resp:
            return resp.status, resp.headers.getall("WWW-Authenticate", [])

    async with aiohttp.ClientSession() as session:
        for method, path in protected:
            code, challenges = await status(session, method, path)
            assert code == 401, (method, path)
            assert challenges == [
                'Bearer realm="streamsnap"',
                'Basic realm="streamsnap", charset="UTF-8"',
            ]
            # a page's script (the console) gets no Basic challenge: no browser login box
            scripted = {"X-Requested-With": "XMLHttpRequest"}
            code, challenges = await status(session, method, path, scripted)
            assert code == 401 and challenges == ['Bearer realm="streamsnap"'], (method, path)
            for headers in (
                {"Authorization": "Bearer wrong"},
                {"Authorization": _basic(USER, "wrong")},
                {"Authorization": _basic("nobody", PASSWORD)},
            ):
                assert (await status(session, method, path, headers))[0] == 401, (path, headers)
            for headers in (
                {"Authorization": f"Bearer {TOKEN}"},
                {"Authorization": _basic(USER, PASSWORD)},
            ):
                assert (await status(session, method, path, headers))[0] != 401, (path, headers)
            sep = "&" if "?" in path else "?"
            assert (await status(session, method, f"{path}{sep}access_token={TOKEN}"))[0] != 401
        for method, path, _ in routes:
            if (method, path) not in protected:
                assert (await status(session, method, path))[0] != 401, path
    assert app.refused["unauthorized"] == 5 * len(protected)


async def test_websocket_needs_the_token_or_a_user(guarded_app):
    url = f"ws://127.0.0.1:{guarded_app.ports['ws']}/"

    async def connect(auth_token: str | None) -> tuple[str, int | None]:
        payload = {"appKey": "defaultApp"}
        if auth_token is not None:
            payload["authToken"] = auth_token
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.send_json({"message": "connection", "data": [payload]})
            reply = await ws.receive_json(timeout=10)
            if reply["message"] == "fail":
                closing = await ws.receive(timeout=10)
                assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                return reply["data"][0]["info"], ws.close_code
            # established: a request that needs the session works
            await ws.send_json(
                {"message": "availableStream", "data": [{"name": "x", "mediaSessionId": "m"}]}
            )
            assert (await ws.receive_json(timeout=10))["message"] == "availableStream"
            return reply["message"], None

    assert await connect(None) == ("Authentication failed", 4001)
    assert await connect("wrong") == ("Authentication failed", 4001)
    assert await connect(f"{USER}:wrong") == ("Authentication failed", 4001)
    assert await connect(TOKEN) == ("getUserData", None)
    assert await connect(f"{USER}:{PASSWORD}") == ("getUserData", None)


@pytest.fixture(scope="module")
def tags(tmp_path_factory):
    return make_flv(tmp_path_factory.mktemp("flv") / "k.flv", size="320x240", seconds=2, gop=15)


def test_rtmp_publish_keys(make_server, tags):
    srv = make_server(
        auth={"publish_keys": [{"stream": "cam1", "key": "k1"}, {"stream": "*", "key": "kall"}]}
    )
    good = ffmpeg_testsrc(srv.rtmp_url("cam1?key=k1"), size="320x240", audio=False)
    missing = ffmpeg_testsrc(srv.rtmp_url("cam1"), size="320x240", audio=False)
    wrong = ffmpeg_testsrc(srv.rtmp_url("cam1?key=kall"), size="320x240", audio=False)
    try:
        info = srv.wait_stream("cam1", frames=5)
        assert info["name"] == "cam1"
        assert missing.proc.wait(15) != 0 and wrong.proc.wait(15) != 0
        assert "publish key required" in missing.stderr
        assert "wrong publish key" in wrong.stderr
        srv.wait_log(
            r"stream cam1: publish over rtmp from 127\.0\.0\.1:\d+ refused \(publish_key\)"
        )
        assert srv.snapshot("cam1")[0] == 200  # the keyed publisher was not disturbed
        # the key in the connect URL (tcUrl / app query), as some encoders send it
        c = RtmpClient("127.0.0.1", srv.ports["rtmp"])
        try:
            reply = repr(c.publish("other", app="live?key=kall"))
            assert "NetStream.Publish.Start" in reply
            for tag in tags[:20]:
                c.send_tag(tag)
            assert srv.wait_stream("other", frames=2)["appKey"] == "live"
        finally:
            c.close()
        c = RtmpClient("127.0.0.1", srv.ports["rtmp"])
        try:
            reply = repr(c.publish("third"))
            assert "NetStream.Publish.Unauthorized" in reply and "publish key required" in reply
        finally:
            c.close()
    finally:
        for pub in (good, missing, wrong):
            pub.stop()
    assert "k1" not in srv.log.replace("cam1", "") and "kall" not in srv.log
    _, raw, _ = srv.request("GET", "/metrics")
    assert 'streamsnap_refused_total{reason="publish_key"} 3' in raw.decode()


def _whip(srv, name: str, headers: dict[str, str]) -> tuple[int, str, dict[str, str]]:
    req = urllib.request.Request(
        srv.http + f"/whip/{name}",
        data=b"v=0\r\n",
        method="POST",
        headers={"Content-Type": "application/sdp", **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def test_whip_publish_key_is_the_bearer_token(make_server):
    """The offer here has no video, so a publish that gets through is answered 400 (no video)
    instead of 401: that is what tells an admitted publisher from a refused one."""
    srv = make_server(
        auth={"token": TOKEN, "publish_keys": [{"stream": "cam1", "key": "k1"}]},
        webrtc={"ice_addresses": ["127.0.0.1"]},
    )
    status, body, headers = _whip(srv, "cam1", {})
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = _whip(srv, "cam1", {"Authorization": "Bearer wrong"})
    assert status == 401
    status, body, _ = _whip(srv, "cam1", {"Authorization": "Bearer k1"})
    assert status == 400 and "no video" in body  # admitted by its key
    assert _whip(srv, "cam1?key=k1", {})[0] == 400
    status, body, _ = _whip(srv, "cam2", {"Authorization": "Bearer k1"})
    assert status == 401  # cam1's key is not an API credential
    status, body, _ = _whip(srv, "cam1", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 400  # API credentials may publish any stream
    code, raw, _ = srv.request("POST", "/rest-api/stream/find_all")
    assert code == 401 and json.loads(raw)["status"] == 401


def test_whip_publish_key_without_api_auth(make_server):
    srv = make_server(
        auth={"publish_keys": [{"stream": "*", "key": "kall"}]},
        webrtc={"ice_addresses": ["127.0.0.1"]},
    )
    status, body, headers = _whip(srv, "cam", {})
    assert status == 401 and "publish key required" in body
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert _whip(srv, "cam", {"Authorization": "Bearer nope"})[0] == 401
    assert _whip(srv, "cam?key=kall", {})[0] == 400
    assert _whip(srv, "cam", {"Authorization": "Bearer kall"})[0] == 400
    assert srv.request("POST", "/rest-api/stream/find_all")[0] == 404  # the API stays open


def test_websocket_publish_key_in_custom(make_server):
    srv = make_server(auth={"publish_keys": [{"stream": "*", "key": "kall"}]})
    url = f"ws://127.0.0.1:{srv.ports['ws']}/"

    async def publish(custom: dict | None) -> dict:
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.send_json({"message": "connection", "data": [{}]})
            assert (await ws.receive_json(timeout=10))["message"] == "getUserData"
            p = {"mediaSessionId": "m1", "name": "browsercam", "sdp": "v=0\r\n"}
            if custom is not None:
                p["custom"] = custom
            await ws.send_json({"message": "publishStream", "data": [p]})
            return (await ws.receive_json(timeout=10))["data"][0]

    refused = asyncio.run(publish(None))
    assert refused["status"] == "FAILED" and refused["info"] == "publish key required"
    assert asyncio.run(publish({"key": "no"}))["info"] == "wrong publish key"
    admitted = asyncio.run(publish({"key": "kall"}))  # admitted: then fails on the empty SDP
    assert admitted["status"] == "FAILED" and admitted["info"] == "Failed by SDP error"
