"""FFmpeg's NUT output, read by PyAV's demuxer: the pipe format for codecs FLV cannot carry.

A pull copies the camera's video into FLV on a pipe (:mod:`.flv`, parsed on the event loop),
which covers H.264, H.265, VP9 and AV1. FLV refuses the rest (MJPEG from cheap IP and USB
cameras, MPEG-4 Part 2 from old ones); for those the pull asks FFmpeg for NUT, which carries any
codec FFmpeg demuxes, with its parameters and timestamps. NUT is read by libavformat itself
through PyAV rather than by hand: its framing (variable-length codes, checksums, frame-code
tables) is not worth rewriting.

PyAV pulls bytes from a blocking ``read()``, so the demuxer runs on a thread of its own (one
per such pull, blocked in ``read`` most of the time; never a worker of the snapshot pool) and
the event loop feeds it the child's stdout through a bounded queue. Packets go back to the event
loop with ``call_soon_threadsafe``, one callback per video frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import NamedTuple

import av

log = logging.getLogger(__name__)

CHUNK = 1 << 16
MAX_CHUNKS = 64  # 4 MiB in flight at most between the pipe and the demuxer


class Packet(NamedTuple):
    data: bytes
    pts: int  # milliseconds
    dts: int
    keyframe: bool


class _Feed:
    """A blocking file for the demuxer thread, filled from the event loop."""

    def __init__(self) -> None:
        self._chunks: queue.Queue[bytes | None] = queue.Queue(MAX_CHUNKS)
        self._buffer = b""
        self._ended = False

    def read(self, size: int) -> bytes:
        while not self._buffer:
            if self._ended:
                return b""
            chunk = self._chunks.get()
            if chunk is None:
                self._ended = True
                return b""
            self._buffer = chunk
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    async def put(self, chunk: bytes, reader_alive: Callable[[], bool]) -> None:
        while True:
            try:
                self._chunks.put_nowait(chunk)
                return
            except queue.Full:
                if not reader_alive():
                    return  # the demuxer gave up: nothing reads this any more
                await asyncio.sleep(0.005)

    def close(self, drop: bool) -> None:
        """End of input: the demuxer reads what is queued, then b"" (``drop``: what is queued
        is not wanted any more, the next read ends). Never blocks the caller."""
        while True:
            if drop:
                with contextlib.suppress(queue.Empty):
                    while True:
                        self._chunks.get_nowait()
            try:
                self._chunks.put_nowait(None)
                return
            except queue.Full:
                drop = True  # the demuxer is gone or behind: what is left will not be read


def _ms(value: int | None, time_base: object) -> int | None:
    return None if value is None else int(value * time_base * 1000)  # type: ignore[operator]


async def read_packets(
    reader: asyncio.StreamReader,
    on_codec: Callable[[str, bytes | None], None],
    on_packet: Callable[[Packet], None],
    name: str,
) -> None:
    """Demux the NUT byte stream on ``reader`` until it ends: ``on_codec(codec name,
    extradata)`` once (the name "" when nothing here decodes it), then ``on_packet`` for every
    video packet, both called on the event loop and never after this returns (or is
    cancelled). Raises ``ValueError`` when the stream is not NUT or holds no video."""
    loop = asyncio.get_running_loop()
    feed = _Feed()
    done: asyncio.Future[None] = loop.create_future()
    stopped = threading.Event()  # set when this returns: nothing more is delivered

    def deliver(callback: Callable[..., None], *args: object) -> None:  # on the event loop
        if not stopped.is_set():
            callback(*args)

    def finish(exc: BaseException | None) -> None:
        if not done.done():
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

    def post(callback: Callable[..., None], *args: object) -> None:  # on the demuxer thread
        if stopped.is_set():
            raise _Stopped
        loop.call_soon_threadsafe(deliver, callback, *args)

    def demux() -> None:
        error: BaseException | None = None
        try:
            _demux(feed, post, on_codec, on_packet)
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the event loop, which decides what it means
            error = exc
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(finish, error)

    thread = threading.Thread(target=demux, name=f"nut:{name}", daemon=True)
    thread.start()
    try:
        while not done.done():
            chunk = await reader.read(CHUNK)
            if not chunk:
                break
            await feed.put(chunk, thread.is_alive)
    except BaseException:
        stopped.set()  # cancelled (the child is gone): no packet of it may come after
        feed.close(drop=True)
        raise
    feed.close(drop=False)
    try:
        await done  # the end of input reaches the demuxer: it delivers what it still holds
    except av.FFmpegError as exc:
        raise ValueError(f"not a NUT stream FFmpeg could read: {exc}") from None
    finally:
        stopped.set()


class _Stopped(Exception):
    """The reader is gone: the demuxer thread stops."""


def _demux(
    feed: _Feed,
    post: Callable[..., None],
    on_codec: Callable[[str, bytes | None], None],
    on_packet: Callable[[Packet], None],
) -> None:
    # the NUT header declares every stream: no probing of packets is needed to start
    with av.open(feed, format="nut", options={"probesize": "32", "analyzeduration": "0"}) as box:
        if not box.streams.video:
            raise ValueError("no video stream in the source")
        stream = box.streams.video[0]
        ctx = stream.codec_context
        if ctx is None:  # PyAV's FFmpeg has no decoder for it: named by the caller
            post(on_codec, "", None)
        else:  # the codec's name ("av1"), not its decoder's ("libdav1d")
            post(on_codec, ctx.codec.canonical_name, bytes(ctx.extradata or b"") or None)
        time_base = stream.time_base
        for packet in box.demux(stream):
            if not packet.size:
                continue  # the demuxer's end-of-stream marker
            pts = _ms(packet.pts, time_base)
            dts = _ms(packet.dts, time_base)
            if pts is None and dts is None:
                continue
            pts = dts if pts is None else pts
            dts = pts if dts is None else dts
            post(on_packet, Packet(bytes(packet), pts, dts, bool(packet.is_keyframe)))
