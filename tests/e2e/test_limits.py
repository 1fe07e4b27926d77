"""[limits]: each refuses with a precise error per protocol, a log line and a /metrics counter,
while the streams already live keep working."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import aiohttp
import pytest

from tests.helpers.media import ffmpeg_testsrc
from tests.helpers.rtmp_client import RtmpClient, make_flv

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tags(tmp_path_factory):
    return make_flv(tmp_path_factory.mktemp("flv") / "l.flv", size="320x240", seconds=2, gop=15)


def _whip(srv, name: str) -> tuple[int, str, dict[str, str]]:
    status, raw, headers = srv.request(
        "POST", f"/whip/{name}", b"v=0\r\n", content_type="application/sdp"
    )
    return status, raw.decode(), headers


async def _ws(srv, *messages: dict, replies: int = 1) -> list[dict]:
    url = f"ws://127.0.0.1:{srv.ports['ws']}/"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_json({"message": "connection", "data": [{}]})
        assert (await ws.receive_json(timeout=10))["message"] == "getUserData"
        for m in messages:
            await ws.send_json(m)
        return [await ws.receive_json(timeout=20) for _ in range(replies)]


def _ws_publish(srv, name: str) -> dict:
    msg = {"message": "publishStream", "data": [{"mediaSessionId": "m1", "name": name, "sdp": ""}]}
    return asyncio.run(_ws(srv, msg))[0]["data"][0]


def _metrics(srv) -> str:
    return srv.request("GET", "/metrics")[1].decode()


def test_max_streams(make_server, tags):
    srv = make_server(limits={"max_streams": 1})
    pub = ffmpeg_testsrc(srv.rtmp_url("first"), size="320x240", audio=False)
    try:
        srv.wait_stream("first", frames=3)
        c = RtmpClient("127.0.0.1", srv.ports["rtmp"])
        try:
            reply = repr(c.publish("second"))
        finally:
            c.close()
        assert "NetStream.Publish.Rejected" in reply and "limit of 1 streams" in reply
        status, body, headers = _whip(srv, "second")
        assert status == 503 and "limit of 1 streams" in body and headers["Retry-After"]
        event = _ws_publish(srv, "second")
        assert event["status"] == "FAILED" and "limit of 1 streams" in event["info"]
        srv.wait_log(
            r"stream second: publish over rtmp from 127\.0\.0\.1:\d+ refused \(max_streams"
        )
        srv.wait_log(r"stream second: publish over whip from 127\.0\.0\.1 refused \(max_streams")
        assert srv.snapshot("first")[0] == 200  # the live stream is not disturbed
        assert 'streamsnap_refused_total{reason="max_streams"} 3' in _metrics(srv)
    finally:
        pub.stop()
    srv.wait_gone("first")
    c = RtmpClient("127.0.0.1", srv.ports["rtmp"])  # room again
    try:
        assert "NetStream.Publish.Start" in repr(c.publish("second"))
    finally:
        c.close()


def test_max_publishers_per_ip(make_server, tags):
    srv = make_server(limits={"max_publishers_per_ip": 2})
    a, b, c = (RtmpClient("127.0.0.1", srv.ports["rtmp"]) for _ in range(3))
    try:
        for client, name in ((a, "one"), (b, "two")):
            assert "NetStream.Publish.Start" in repr(client.publish(name))
        reply = repr(c.publish("three"))
        assert "NetStream.Publish.Rejected" in reply
        assert "127.0.0.1 already publishes 2 streams" in reply
        status, body, headers = _whip(srv, "three")
        assert status == 429 and "already publishes 2" in body and headers["Retry-After"]
        assert "already publishes 2" in _ws_publish(srv, "three")["info"]
        for tag in tags[:20]:
            a.send_tag(tag)
        srv.wait_stream("one", frames=2)
        assert srv.request("GET", "/streams/one/snapshot.png")[0] == 200
        text = _metrics(srv)
        assert 'streamsnap_refused_total{reason="max_publishers_per_ip"} 3' in text
        assert 'streamsnap_refused_total{reason="max_streams"} 0' in text
    finally:
        for client in (a, b, c):
            client.close()


def test_max_concurrent_snapshots(make_server, tags):
    srv = make_server(
        limits={"max_concurrent_snapshots": 1}, snapshot={"snapshot_taking_interval_ms": 20000}
    )
    c = RtmpClient("127.0.0.1", srv.ports["rtmp"])
    try:
        c.publish("slow")
        video = [t for t in tags if t.type_id == 9]
        c.send_tag(video[0])  # only the sequence header: a snapshot waits for a picture
        first: dict = {}
        asker = threading.Thread(target=lambda: first.update(r=srv.snapshot("slow", timeout=30)))
        asker.start()
        deadline = time.monotonic() + 15
        while "streamsnap_snapshots_in_progress 1" not in _metrics(srv):
            assert time.monotonic() < deadline, "the first snapshot never started"
            time.sleep(0.05)
        status, raw, headers = srv.request(
            "POST", "/rest-api/stream/snapshot", {"streamName": "slow"}
        )
        body = json.loads(raw)
        assert status == 503 and headers["Retry-After"] == "1"
        assert body["status"] == 503 and body["error"] == "Service Unavailable"
        assert "too many snapshot requests in progress (limit 1)" in body["message"]
        assert srv.request("GET", "/streams/slow/snapshot.jpg")[0] == 503
        snap = {"message": "snapshot", "data": [{"name": "slow", "mediaSessionId": "s1"}]}
        event = asyncio.run(_ws(srv, snap))[0]["data"][0]
        assert event["type"] == "snapshotFailed" and "too many" in event["payload"]["info"]
        srv.wait_log(r"stream slow: snapshot for 127\.0\.0\.1 refused: 1 snapshot requests")
        for tag in video[1:20]:  # the picture arrives: the waiting snapshot is answered
            c.send_tag(tag)
        asker.join(30)
        assert first["r"][0] == 200
        assert srv.snapshot("slow")[0] == 200  # the slot is free again
        text = _metrics(srv)
        assert 'streamsnap_refused_total{reason="max_concurrent_snapshots"} 3' in text
        assert "streamsnap_snapshots_in_progress 0" in text
    finally:
        c.close()
