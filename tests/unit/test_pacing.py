"""Paced reads on a real pipe: read in turns while nobody looks, at once when asked, at every
packet while someone waits; frames of a paced read are stamped with their estimated arrival."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from streamsnap.core.frames import FrameStore
from streamsnap.core.pacing import ReadPacer
from tests.helpers.waits import until


@pytest.fixture
async def paced():
    """A pipe read by a protocol with a pacer of 0.3 s; yields (write end, reads, pacer)."""
    loop = asyncio.get_running_loop()
    read_end, write_end = os.pipe()
    frames = FrameStore("paced")
    reads: list[bytes] = []
    holder: list[ReadPacer] = []

    class Reader(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            reads.append(data)
            holder[0].after_read(len(data))

    pipe = open(read_end, "rb", buffering=0)  # noqa: SIM115 - the transport closes it
    transport, _ = await loop.connect_read_pipe(Reader, pipe)
    holder.append(ReadPacer(transport, frames, reads.append, 0.3))
    try:
        yield write_end, reads, holder[0]
    finally:
        holder[0].close()
        transport.close()
        os.close(write_end)


async def test_a_source_nobody_looks_at_is_read_in_turns(paced):
    write_end, reads, pacer = paced
    os.write(write_end, b"one")
    await until(lambda: reads == [b"one"])  # the first read comes at once, then a pause
    assert pacer.paused
    os.write(write_end, b"two")
    os.write(write_end, b"three")
    await asyncio.sleep(0.1)
    assert reads == [b"one"]  # queued in the pipe, not read yet
    await until(lambda: len(reads) == 2, timeout=1.0)
    assert reads[1] == b"twothree"  # the next turn takes all that came meanwhile


async def test_a_request_reads_what_is_queued_at_once(paced):
    write_end, reads, pacer = paced
    os.write(write_end, b"one")
    await until(lambda: pacer.paused)
    os.write(write_end, b"newest")
    pacer.frames.flush_source()  # what a request naming the stream does, synchronously
    assert reads == [b"one", b"newest"]
    assert not pacer.paused  # reading at every packet until the next read pauses again


async def test_a_stream_someone_waits_on_is_read_at_every_packet(paced):
    write_end, reads, pacer = paced
    os.write(write_end, b"one")
    await until(lambda: pacer.paused)
    waiting = asyncio.ensure_future(pacer.frames.wait_newer(0, timeout=2.0))
    await asyncio.sleep(0.01)
    assert not pacer.paused  # the waiter took what was queued and turned pacing off
    for n in range(3):
        os.write(write_end, b"x%d" % n)
        await until(lambda n=n: len(reads) == 2 + n, timeout=0.2)
    waiting.cancel()


async def test_a_continuously_decoded_stream_is_never_paced(paced):
    write_end, reads, pacer = paced
    pacer.frames.continuous = True
    for n in range(3):
        os.write(write_end, b"x%d" % n)
        await until(lambda n=n: len(reads) == 1 + n, timeout=0.2)
    assert not pacer.paused


KEY, DELTA = b"\x00\x00\x00\x01\x65", b"\x00\x00\x00\x01\x41"


def stamps(monkeypatch, reads: list[tuple[float, int, list[int]]]) -> list[int]:
    """Arrival stamps (ms from the start) of frames pushed in ``reads``: (ms since the last
    read, how late the read may be, the frames' DTS); the first frame is a keyframe."""
    now = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0] / 1000)
    store = FrameStore("stamps")
    store.set_codec("h264")
    for after_ms, late_ms, dts_list in reads:
        now[0] += after_ms
        store.read_late_ms = late_ms
        for dts in dts_list:
            store.push_packet(DELTA if store._gop else KEY, dts, not store._gop, dts)
    store.read_late_ms = 0
    return [p.arrival - 1_000_000 for p in store._gop]


def test_frames_of_a_paced_read_are_stamped_with_their_arrival(monkeypatch):
    """A source sends a frame every 40 ms; the reads come in 200 ms turns. Each frame's
    stamp follows the source's clock from the frames read at once, not the read's time."""
    # read at once, then four frames sent at 40-160 ms and read together at 205 ms
    arrivals = stamps(monkeypatch, [(0, 0, [0]), (205, 200, [40, 80, 120, 160])])
    # the first read fixes our clock against the source's at 0; each frame then is stamped
    # when the source's clock says it came (plus one ms a frame of drift allowance)
    assert arrivals[0] == 0
    assert all(abs(a - dts) <= 5 for a, dts in zip(arrivals[1:], (40, 80, 120, 160), strict=True))


def test_a_paced_stamp_is_never_later_than_the_read_nor_earlier_than_the_pause(monkeypatch):
    # the source's clock jumps ahead, then back, in a read 100 ms late at most
    arrivals = stamps(monkeypatch, [(0, 0, [0]), (100, 100, [5000, -9000])])
    assert all(0 - 20 <= a <= 100 for a in arrivals[1:])
