"""Paced reads with a real FFmpeg RTMP publisher: an unwatched stream is read a few times a
second instead of at every chunk, and a snapshot request still gets the newest frame, read
from the socket at once, with its true age."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from streamsnap.core.app import App
from streamsnap.core.config import from_mapping
from streamsnap.core.plugins import make_plugin_manager
from streamsnap.plugins.rtmp.session import RtmpSession
from tests.helpers.media import FFMPEG
from tests.helpers.rtmp_client import RtmpClient, make_flv
from tests.helpers.waits import until


async def start_app(interval_ms: int) -> App:
    cfg = from_mapping(
        {
            "server": {"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
            # lazy: requests do not make the stream warm (decoded, so read at every packet)
            "streams": {"read_interval_ms": interval_ms, "decode": "lazy"},
        }
    )
    app = App(cfg, make_plugin_manager(cfg.plugins, load_entry_points=False))
    await app.start()
    return app


async def publish(app: App, tmp_path, name: str) -> asyncio.subprocess.Process:
    flv = tmp_path / "clip.flv"
    if not flv.exists():
        make_flv(flv, size="320x240", seconds=20, gop=30)
    url = f"rtmp://127.0.0.1:{app.ports['rtmp']}/live/{name}"
    return await asyncio.create_subprocess_exec(
        FFMPEG, "-v", "error", "-re", "-i", str(flv), "-c", "copy", "-f", "flv", url
    )


def session_of(app: App, name: str) -> RtmpSession:
    import gc

    return next(
        o
        for o in gc.get_objects()
        if isinstance(o, RtmpSession) and o.stream is not None and o.stream.name == name
    )


@pytest.mark.parametrize("interval_ms", [0, 250])
async def test_an_unwatched_rtmp_stream_is_read_in_turns(tmp_path, interval_ms):
    app = await start_app(interval_ms)
    proc = await publish(app, tmp_path, "turns")
    try:
        await until(lambda: app.streams.lookup("turns") is not None)
        stream = app.streams.get("turns")
        await until(lambda: stream.frames.frames_in >= 30)
        session = session_of(app, "turns")
        if interval_ms == 0:
            assert session.pacer is None  # the setting turns pacing off
            return
        reads0, frames0 = session.pacer.reads, stream.frames.frames_in
        await asyncio.sleep(3)
        reads = session.pacer.reads - reads0
        frames = stream.frames.frames_in - frames0
        assert frames >= 60  # 30 fps arrive all the same
        assert reads <= 3 / 0.25 + 3  # about one read a turn, not one per chunk
    finally:
        proc.kill()
        await proc.wait()
        await app.stop()


async def test_a_snapshot_reads_the_queued_frames_first_and_tells_their_age(tmp_path):
    app = await start_app(500)  # long turns: a frame waits up to half a second unread
    proc = await publish(app, tmp_path, "asked")
    try:
        await until(lambda: app.streams.lookup("asked") is not None)
        stream = app.streams.get("asked")
        await until(lambda: stream.frames.decodable and stream.frames.frames_in >= 45)
        session = session_of(app, "asked")
        base = f"http://127.0.0.1:{app.ports['http']}"
        async with aiohttp.ClientSession() as client:
            for _ in range(5):
                reads = session.pacer.reads
                # a new turn that paused (a full read, a keyframe's 64 KiB, reads on at once)
                await until(
                    lambda r=reads: session.pacer.reads > r and session.pacer.paused, timeout=2
                )
                await asyncio.sleep(0.3)  # about nine frames queued in the socket
                flushes = session.pacer.flushes
                async with client.get(f"{base}/streams/asked/snapshot.jpg") as response:
                    assert response.status == 200
                    age = int(response.headers["X-Frame-Age-Ms"])
                    stamp = int(response.headers["X-Frame-Timestamp"])
                assert session.pacer.flushes == flushes + 1  # read at once for the request
                # the newest frame: no older than a frame or two and the way here
                assert age < 200, age
                assert stamp <= time.time() * 1000
                await asyncio.sleep(0.7)  # no request: the next one finds it paced again
    finally:
        proc.kill()
        await proc.wait()
        await app.stop()


async def test_a_publisher_that_reconnects_at_once_gets_its_name_back(tmp_path):
    """The old connection ended while its session waited for its next turn: the new publish
    reads that end at once instead of being refused the name for up to a turn."""
    app = await start_app(1000)
    tags = make_flv(tmp_path / "again.flv", size="320x240", seconds=2, gop=15)
    port = app.ports["rtmp"]
    clients: list[RtmpClient] = []

    def publish_with_client(send: int) -> str:
        client = RtmpClient("127.0.0.1", port)
        clients.append(client)
        answer = repr(client.publish("again"))
        for tag in tags[:send]:
            client.send_tag(tag)
        return answer

    try:
        assert "Publish.Start" in await asyncio.to_thread(publish_with_client, 80)
        await until(lambda: app.streams.lookup("again") is not None)
        stream = app.streams.get("again")
        await until(lambda: stream.frames.frames_in >= 10)
        session = session_of(app, "again")
        await until(lambda: not session.pacer.paused, timeout=3)  # all read, waiting for more
        reads = session.pacer.reads
        await asyncio.to_thread(clients[0].send_tag, tags[80])
        await until(lambda: session.pacer.reads > reads)  # read at once, then a turn's pause
        assert session.pacer.paused
        await asyncio.to_thread(clients[0].close)  # gone, and not read for up to a second
        answer = await asyncio.to_thread(publish_with_client, 0)
        assert "Publish.Start" in answer, answer
        assert app.streams.get("again") is not stream
    finally:
        for client in clients:
            client.close()
        await app.stop()
