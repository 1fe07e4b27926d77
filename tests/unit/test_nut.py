"""NUT on a pipe, read by PyAV's demuxer on a thread: packets reach the event loop in order,
and none after the reader is gone."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from streamsnap.core import nut
from tests.helpers.media import FFMPEG


@pytest.fixture(scope="module")
def mjpeg_nut() -> bytes:
    source = ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-t", "4"]
    return subprocess.run(
        [FFMPEG, "-v", "error", *source, "-c:v", "mjpeg", "-f", "nut", "pipe:1"],
        capture_output=True,
        check=True,
    ).stdout


async def test_packets_come_in_order_with_the_codec_first(mjpeg_nut):
    reader = asyncio.StreamReader()
    reader.feed_data(mjpeg_nut)
    reader.feed_eof()
    seen: list = []
    await nut.read_packets(reader, lambda *c: seen.append(c), seen.append, "test")
    assert seen[0] == ("mjpeg", None)
    packets = seen[1:]
    assert len(packets) == 120 and all(p.keyframe for p in packets)
    assert [p.pts for p in packets] == sorted(p.pts for p in packets)
    assert packets[1].pts - packets[0].pts in (33, 34)


async def test_nothing_is_delivered_once_the_reader_is_cancelled(mjpeg_nut, monkeypatch):
    # a demuxer that takes 10 ms a packet, as one paced by a live pipe: it still holds most of
    # the clip when the cancellation is seen (unpaced, it could post all 120 packets before the
    # loop ran the first, and those come before the cancellation)
    demux = nut._demux

    def paced(feed, post, on_codec, on_packet):
        def slow_post(*args):
            time.sleep(0.01)
            post(*args)

        demux(feed, slow_post, on_codec, on_packet)

    monkeypatch.setattr(nut, "_demux", paced)
    reader = asyncio.StreamReader()
    reader.feed_data(mjpeg_nut)  # all of it queued: the demuxer could go on for a while
    delivered: list = []
    task: asyncio.Task | None = None

    def on_packet(packet: nut.Packet) -> None:
        delivered.append(packet)
        if len(delivered) == 1 and task is not None:
            task.cancel()  # the child exited: the supervisor cancels its consumer

    task = asyncio.ensure_future(nut.read_packets(reader, lambda *c: None, on_packet, "test"))
    with pytest.raises(asyncio.CancelledError):
        await task
    count = len(delivered)
    await asyncio.sleep(0.5)  # the thread had packets left: none of them may arrive now
    assert len(delivered) == count < 120


async def test_a_stream_that_is_not_nut_is_an_error():
    reader = asyncio.StreamReader()
    reader.feed_data(b"FLV\x01\x01" + bytes(2000))
    reader.feed_eof()
    with pytest.raises(ValueError, match="not a NUT stream"):
        await nut.read_packets(reader, lambda *c: None, lambda p: None, "test")
