"""Paced reads on a real pipe: read in turns while nobody looks, at once when asked, at every
packet while someone waits; frames of a paced read are stamped with their estimated arrival."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from streamsnap.core.frames import FrameStore
from streamsnap.core.pacing import ReadPacer


async def until(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met")
        await asyncio.sleep(0.005)


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


def test_frames_of_a_paced_read_are_stamped_with_their_arrival():
    """A source sends a frame every 40 ms; the reads come in 200 ms turns. Each frame's
    stamp follows the source's clock from the frames read at once, not the read's time."""
    store = FrameStore("stamps")
    store.set_codec("h264")
    now = [1_000_000.0]
    real_time = time.time
    try:
        time.time = lambda: now[0] / 1000  # type: ignore[assignment]
        store.push_packet(b"\x00\x00\x00\x01\x65", 0, True, 0)  # read at once: 5 ms on the way
        now[0] += 200 + 5  # four more frames sent at 40-160 ms, read together at 205 ms
        store.read_late_ms = 200
        for dts in (40, 80, 120, 160):
            store.push_packet(b"\x00\x00\x00\x01\x41", dts, False, dts)
        store.read_late_ms = 0
    finally:
        time.time = real_time  # type: ignore[assignment]
    arrivals = [p.arrival - 1_000_000 for p in store._gop]
    # the first read fixes our clock against the source's at 0; each frame then is stamped
    # when the source's clock says it came (plus one ms a frame of drift allowance)
    assert arrivals[0] == 0
    assert all(abs(a - dts) <= 5 for a, dts in zip(arrivals[1:], (40, 80, 120, 160), strict=True))


def test_a_paced_stamp_is_never_later_than_the_read_nor_earlier_than_the_pause():
    store = FrameStore("bounds")
    store.set_codec("h264")
    now = [1_000_000.0]
    real_time = time.time
    try:
        time.time = lambda: now[0] / 1000  # type: ignore[assignment]
        store.push_packet(b"\x00\x00\x00\x01\x65", 0, True, 0)
        now[0] += 100
        store.read_late_ms = 100
        store.push_packet(b"\x00\x00\x00\x01\x41", 5000, False, 5000)  # the source jumped ahead
        store.push_packet(b"\x00\x00\x00\x01\x41", -9000, False, -9000)  # and back
    finally:
        time.time = real_time  # type: ignore[assignment]
    arrivals = [p.arrival - 1_000_000 for p in store._gop]
    assert all(0 - 20 <= a <= 100 for a in arrivals[1:])


async def test_a_full_read_does_not_pause_so_pacing_never_caps_the_rate(paced):
    write_end, reads, pacer = paced
    os.write(write_end, b"one")
    await until(lambda: pacer.paused)
    pacer.flush()
    big = bytes(200_000)  # more than a pipe of 64 KiB holds: written while reads go on
    writer = asyncio.get_running_loop().run_in_executor(None, os.write, write_end, big)
    await until(lambda: sum(map(len, reads)) >= 3 + len(big), timeout=0.25)  # not 4 turns
    await writer
