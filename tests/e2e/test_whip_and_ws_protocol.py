"""WHIP ingest (FFmpeg 9 and a browser), and the WebSocket API's answers to bad input."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import aiohttp
import pytest
from PIL import Image

from tests.helpers.browser import browser_available, chromium, make_y4m
from tests.helpers.media import ffmpeg_whip
from tests.helpers.tls import self_signed

pytestmark = pytest.mark.e2e


@pytest.fixture
def webrtc_server(make_server):
    return make_server(webrtc={"ice_addresses": ["127.0.0.1"]})


def test_ffmpeg_whip_publish_then_rest_snapshot(webrtc_server):
    srv = webrtc_server
    pub = ffmpeg_whip(srv.http + "/whip/whipcam")
    try:
        info = srv.wait_stream("whipcam", frames=10, timeout=20)
        assert info["protocol"] == "whip" and info["videoCodec"] == "h264"
        status, body = srv.snapshot("whipcam")
        assert status == 200
        assert Image.open(io.BytesIO(base64.b64decode(body["data"]))).size == (640, 360)
    finally:
        pub.stop()
    srv.wait_gone("whipcam", timeout=20)


def whip_post(srv, name: str, offer: str, headers: dict | None = None):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        srv.http + f"/whip/{name}",
        data=offer.encode(),
        method="POST",
        headers={"Content-Type": "application/sdp", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def test_whip_errors(webrtc_server):
    srv = webrtc_server
    status, body, _ = whip_post(srv, "x", "not sdp")
    assert status == 400 and "SDP" in body
    status, body, _ = whip_post(srv, "x", "v=0\r\n")  # an offer without media
    assert status == 400 and "no video" in body
    srv.wait_gone("x")
    status, _, _ = srv.request("POST", "/whip/x", b"v=0")  # no application/sdp
    assert status == 415
    status, _, headers = srv.request("PATCH", "/whip/x/123", b"a=candidate")
    assert status == 405
    status, _, _ = srv.request("DELETE", "/whip/x/no-such-session")
    assert status == 404
    status, _, headers = srv.request("OPTIONS", "/whip/x")
    assert status == 204 and "Location" in headers["Access-Control-Expose-Headers"]


@pytest.mark.skipif(not browser_available(), reason="chromium or playwright not installed")
def test_browser_whip_client_publish_delete_and_conflict(webrtc_server, tmp_path):
    srv = webrtc_server
    with chromium(tmp_path, make_y4m(tmp_path / "cam.y4m")) as browser:
        page = browser.new_page()
        page.goto(srv.http + "/")
        # a plain WHIP client: offer with every candidate, POST, apply the answer
        result = page.evaluate(
            """async (endpoint) => {
                const media = {video: true, audio: true};
                const stream = await navigator.mediaDevices.getUserMedia(media);
                const pc = new RTCPeerConnection({iceServers: []});
                stream.getTracks().forEach((t) => pc.addTransceiver(t, {direction: 'sendonly'}));
                await pc.setLocalDescription(await pc.createOffer());
                await new Promise((ok) => {
                    if (pc.iceGatheringState === 'complete') return ok();
                    pc.onicegatheringstatechange = () =>
                        pc.iceGatheringState === 'complete' && ok();
                });
                const resp = await fetch(endpoint, {method: 'POST', body: pc.localDescription.sdp,
                                                    headers: {'Content-Type': 'application/sdp'}});
                const answer = await resp.text();
                await pc.setRemoteDescription({type: 'answer', sdp: answer});
                window.whipPc = pc;
                return {status: resp.status, location: resp.headers.get('Location'), answer};
            }""",
            srv.http + "/whip/browserwhip",
        )
        assert result["status"] == 201 and result["location"].startswith("/whip/browserwhip/")
        # the audio offered is declined: nothing is sent that nothing would use
        audio = "m=audio" + result["answer"].split("m=audio", 1)[1].split("\r\nm=", 1)[0]
        assert "a=inactive" in audio, result["answer"]
        info = srv.wait_stream("browserwhip", frames=10, timeout=20)
        assert info["hasAudio"] is True  # it was offered
        status, body = srv.snapshot("browserwhip")
        assert status == 200
        rgb = Image.open(io.BytesIO(base64.b64decode(body["data"]))).convert("RGB")
        w, h = rgb.size
        assert rgb.getpixel((w // 4, h // 2))[0] > 180  # red left half
        assert rgb.getpixel((3 * w // 4, h // 2))[2] > 180  # blue right half
        # a second publisher of the same name is refused
        status, _, _ = whip_post(srv, "browserwhip", "v=0\r\n")
        assert status == 409
        status, _, _ = srv.request("DELETE", result["location"])
        assert status == 200
        srv.wait_gone("browserwhip")


def test_whip_bearer_token(make_server):
    srv = make_server(webrtc={"ice_addresses": ["127.0.0.1"]}, auth={"token": "t0ken"})
    status, _, headers = whip_post(srv, "guarded", "v=0\r\n")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    status, _, _ = srv.request("POST", "/rest-api/stream/find_all")
    assert status == 401
    assert srv.request("GET", "/healthz")[0] == 200  # health stays open
    pub = ffmpeg_whip(srv.http + "/whip/guarded", token="t0ken")
    try:
        srv_find = _authorized(srv, "t0ken")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and srv_find("guarded") != 200:
            time.sleep(0.2)
        assert srv_find("guarded") == 200
    finally:
        pub.stop()


def _authorized(srv, token):
    import urllib.error
    import urllib.request

    def find(name: str) -> int:
        req = urllib.request.Request(
            srv.http + "/rest-api/stream/find",
            method="POST",
            data=json.dumps({"name": name}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    return find


async def _ws_exchange(url: str, messages: list, expect: int, timeout: float = 5.0) -> list:
    got = []
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        try:
            for m in messages:
                if isinstance(m, bytes):
                    await ws.send_bytes(m)
                elif isinstance(m, str):
                    await ws.send_str(m)
                else:
                    await ws.send_str(json.dumps(m))
        except (ConnectionError, aiohttp.ClientError):
            return [{"closed": "RESET", "code": ws.close_code}]
        try:
            while len(got) < expect:
                msg = await asyncio.wait_for(ws.receive(), timeout)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    got.append({"closed": msg.type.name, "code": ws.close_code})
                    break
                got.append(json.loads(msg.data))
        except TimeoutError:
            pass
    return got


def test_websocket_bad_input_is_ignored_and_the_socket_stays(webrtc_server):
    srv = webrtc_server
    url = f"ws://127.0.0.1:{srv.ports['ws']}/any/path"
    connect = {"message": "connection", "data": [{"appKey": "defaultApp"}]}
    got = asyncio.run(
        _ws_exchange(
            url,
            [
                "{not json",
                b"\x00binary",
                '"a string"',
                {"message": 5},
                {"message": "snapshot", "data": "not a list"},
                {"message": "publishStream", "data": [{"name": "x"}]},  # before connection
                connect,
                {"message": "noSuchMessage", "data": [{}]},
                {"message": "unPublishStream", "data": [{"mediaSessionId": "unknown"}]},
                {"message": "stopStream", "data": [{"mediaSessionId": "unknown"}]},
                {"message": "snapshot", "data": [{"name": "nothing", "mediaSessionId": "m1"}]},
                {
                    "message": "availableStream",
                    "data": [{"name": "nothing", "mediaSessionId": "m2"}],
                },
                {
                    "message": "playStream",
                    "data": [{"name": "nothing", "mediaSessionId": "m3", "sdp": "v=0"}],
                },
            ],
            expect=6,
        )
    )
    kinds = [(m["message"], m["data"][0].get("status") or m["data"][0].get("type")) for m in got]
    assert kinds[:5] == [
        ("getUserData", None),
        ("notifyStreamEvent", "snapshotFailed"),
        ("notifyStreamStatusEvent", "FAILED"),
        ("availableStream", "false"),
        ("notifyStreamStatusEvent", "FAILED"),
    ], kinds
    assert got[1]["data"][0]["payload"]["info"] == "Stream not found"
    assert got[4]["data"][0]["info"] == "Stream not found"
    assert srv.request("GET", "/healthz")[0] == 200


def test_websocket_ten_megabyte_frame_closes_only_that_socket(webrtc_server):
    srv = webrtc_server
    url = f"ws://127.0.0.1:{srv.ports['ws']}/"
    got = asyncio.run(_ws_exchange(url, ["x" * (10 << 20)], expect=1))
    assert got and got[0].get("closed") in ("CLOSE", "CLOSED", "CLOSING", "RESET")
    srv.wait_log(r"websocket .*: Message size 10485760 exceeds limit")
    again = asyncio.run(_ws_exchange(url, [{"message": "connection", "data": [{}]}], expect=1))
    assert again[0]["message"] == "getUserData"


def test_tls_https_and_wss(make_server, tmp_path):
    import ssl

    cert, key = self_signed(tmp_path)
    srv = make_server(
        server={"https_port": 0, "wss_port": 0, "tls_cert": str(cert), "tls_key": str(key)}
    )
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False

    async def check() -> tuple[int, str]:
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"https://127.0.0.1:{srv.ports['https']}/healthz", ssl=ctx
            ) as resp:
                status = resp.status
            async with session.ws_connect(f"wss://127.0.0.1:{srv.ports['wss']}/x", ssl=ctx) as ws:
                await ws.send_str(json.dumps({"message": "connection", "data": [{}]}))
                reply = json.loads((await ws.receive()).data)
        return status, reply["message"]

    assert asyncio.run(check()) == (200, "getUserData")
