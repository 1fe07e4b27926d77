"""How publish sessions end: not before their publisher ends them, and without leaving
anything behind.

An FFmpeg WHIP publish is not cut by ICE consent checks, which FFmpeg's muxer stops answering
once media flows (aioice closed such sessions after about 33 s).

An ended publish session keeps nothing of its publisher.

The auto-snapshot plugin remembers which stream each session folder belongs to (the folder
watcher's ``on_snapshot_saved`` says which stream wrote a file, also after it ended), so
ended streams stay referenced. Before, each one held its publisher through the stream's
terminator: a WHIP session's whole peer connection (receivers, jitter buffers, decoder
queue, about 0.5-1 MiB for a minute of 426x240) or an RTMP session with its buffers, which
`make bench-endurance` saw as RSS growing with every WHIP session. Real publishers (FFmpeg
over WHIP and RTMP) against a server in this process, so the garbage collector can be asked.
"""

from __future__ import annotations

import asyncio
import gc
import weakref

import aioice.ice
import pytest
from aiortc import RTCPeerConnection

from streamsnap.core.app import App
from streamsnap.core.config import from_mapping
from streamsnap.core.plugins import make_plugin_manager
from streamsnap.plugins.auto_snapshot import AUTO_SNAPSHOT
from streamsnap.plugins.rtmp.session import RtmpSession
from tests.helpers.media import FFMPEG, ffmpeg_whip
from tests.helpers.rtmp_client import make_flv
from tests.helpers.waits import until


def live(kind: type) -> list:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, kind)]


@pytest.fixture
async def app(tmp_path):
    cfg = from_mapping(
        {
            "server": {"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
            "snapshot": {
                "snapshot_auto_enabled": True,
                "snapshot_auto_rate": 10,
                "snapshot_auto_dir": str(tmp_path / "snapshots"),
            },
            "webrtc": {"ice_addresses": ["127.0.0.1"]},
        }
    )
    server = App(cfg, make_plugin_manager(cfg.plugins, load_entry_points=False))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_an_ffmpeg_whip_publish_outlives_unanswered_consent_checks(app, monkeypatch):
    """Consent checks every 1 s instead of 5 s: unanswered, aioice closes after about 8 s;
    FFmpeg publishes for 14 s and the session lasts until FFmpeg ends it."""
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 1)
    url = f"http://127.0.0.1:{app.ports['http']}/whip/long"
    pub = ffmpeg_whip(url, size="320x240", seconds=14)
    try:
        await until(lambda: app.streams.lookup("long") is not None)
        stream = app.streams.get("long")
        started = asyncio.get_running_loop().time()
        await asyncio.to_thread(pub.proc.wait, 40)
        lasted = asyncio.get_running_loop().time() - started
        await until(lambda: app.streams.lookup("long") is None)
    finally:
        pub.stop()
    assert lasted > 12, f"the publish ended after {lasted:.1f} s"
    assert stream.frames.frames_in > 12 * 25
    assert app.ended["whip", "WHIP DELETE"] == 1, app.ended  # FFmpeg ended it, not ICE


async def test_an_ended_whip_session_leaves_no_peer_connection(app):
    before = {id(pc) for pc in live(RTCPeerConnection)}
    url = f"http://127.0.0.1:{app.ports['http']}/whip/gone"
    pub = ffmpeg_whip(url, size="320x240", seconds=3)
    try:
        await until(lambda: app.streams.lookup("gone") is not None)
        stream = app.streams.get("gone")
        await until(lambda: stream.frames.frames_in >= 30)
        pc = weakref.ref(next(pc for pc in live(RTCPeerConnection) if id(pc) not in before))
        await asyncio.to_thread(pub.proc.wait, 30)
        await until(lambda: app.streams.lookup("gone") is None)
    finally:
        pub.stop()
    assert any(s is stream for s in app.state[AUTO_SNAPSHOT].folders.values())  # remembered
    await until(lambda: not live(RTCPeerConnection) and pc() is None, timeout=10)
    assert stream.terminator is None and stream.frames.frames_in >= 30


async def test_an_ended_rtmp_session_leaves_no_rtmp_session(app, tmp_path):
    flv = tmp_path / "clip.flv"
    make_flv(flv, size="320x240", seconds=2, gop=15)
    url = f"rtmp://127.0.0.1:{app.ports['rtmp']}/live/left"
    proc = await asyncio.create_subprocess_exec(
        FFMPEG, "-v", "error", "-re", "-i", str(flv), "-c", "copy", "-f", "flv", url
    )
    await until(lambda: app.streams.lookup("left") is not None)
    stream = app.streams.get("left")
    session = weakref.ref(next(iter(live(RtmpSession))))
    await proc.wait()
    await until(lambda: app.streams.lookup("left") is None)
    assert any(s is stream for s in app.state[AUTO_SNAPSHOT].folders.values())  # remembered
    await until(lambda: not live(RtmpSession) and session() is None, timeout=10)
    assert stream.terminator is None
