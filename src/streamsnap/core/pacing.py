"""Paced reads: a source nobody looks at is read a few times a second, not at every packet.

Each read of a socket or a pipe costs the event loop a wake-up, and on a busy machine a wake-up
costs far more than the Python that handles the packet (cold caches after other processes ran:
about 50 us against 12 us for cutting and storing a 720p frame; BENCHMARKS.md). An RTMP
encoder's data comes in 120-130 reads a second (video chunks and audio), a camera's FLV pipe in
30. Reading every ``interval`` instead (``[streams] read_interval_ms``) lets the kernel queue
what arrives meanwhile and the next read takes all of it.

Nothing waits for it that a user can see:

- a request naming the stream (snapshot, image GET, find with a name) reads what is queued
  at once, synchronously, before it looks at the frames (:meth:`ReadPacer.flush`);
- a stream that is decoded continuously (watched live, MJPEG, asked for often), or that a
  snapshot is waiting on, is read at every packet;
- the frames of a paced read are stamped with their estimated arrival, not the read's time
  (:meth:`FrameStore.push_packet <streamsnap.core.frames.FrameStore.push_packet>`), so
  ``X-Frame-Timestamp`` and ``?at=`` keep telling the truth.

Only plain transports are read on demand (a TLS socket's bytes are not the stream's); those
are simply resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .frames import FrameStore

READ_BYTES = 1 << 16
FULL_READ = 1 << 16  # a read this large may have left more queued (a pipe holds 64 KiB)
PIPE_BYTES = 1 << 20  # a paced pipe holds a turn of a high-bitrate camera, keyframe included


class ReadPacer:
    """Paces the reads of one transport feeding ``frames``; ``deliver(data)`` is what the
    transport's protocol does with a read (used for the reads made by :meth:`flush`), and
    ``on_error(exc)`` ends the connection on a read error found there (default: abort)."""

    def __init__(
        self,
        transport: asyncio.ReadTransport,
        frames: FrameStore,
        deliver: Callable[[bytes], None],
        interval_s: float,
        on_error: Callable[[OSError], None] | None = None,
    ) -> None:
        self.transport = transport
        self.frames = frames
        self.deliver = deliver
        self.interval_s = interval_s
        # a read error found by :meth:`flush` (a reset): the connection ends with it
        self.on_error = on_error or (lambda exc: transport.abort())
        self.reads = 0  # reads the protocol handled
        self.flushes = 0  # requests that found the source paused and read it at once
        self._fd = _plain_fd(transport)
        if self._fd is not None and transport.get_extra_info("pipe") is not None:
            with contextlib.suppress(OSError, AttributeError):  # Linux; capped by pipe-max-size
                fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self._timer: asyncio.TimerHandle | None = None
        self._paused_at = 0.0
        self._flushing = False
        self._closed = False
        frames.pacer = self

    @property
    def paused(self) -> bool:
        return self._timer is not None

    def after_read(self, size: int) -> None:
        """A read of ``size`` bytes was handled: pause until the next turn, unless someone
        wants every packet or the read was a full one (more is queued: a turn takes it all,
        so pacing never caps a source's rate)."""
        self.frames.read_late_ms = 0
        self.reads += 1
        if (
            self.interval_s <= 0
            or size >= FULL_READ
            or self._timer is not None
            or self._flushing
            or self._closed
            or not self.frames.pace_ok()
        ):
            return
        self.transport.pause_reading()
        loop = asyncio.get_running_loop()
        self._paused_at = loop.time()
        self._timer = loop.call_later(self.interval_s, self._resume)

    def late_ms(self) -> int:
        """How late, at most, what a read delivers now may be: the pause before it."""
        if not self._paused_at:
            return 0
        return int((asyncio.get_running_loop().time() - self._paused_at) * 1000)

    def _resume(self) -> None:
        self._timer = None
        if not self._closed:
            self.frames.read_late_ms = self.late_ms()
            self._paused_at = 0.0
            self.transport.resume_reading()

    def flush(self) -> None:
        """Take what is queued now (a request is about to look at the frames), then read at
        every packet until the next read pauses again."""
        if self._timer is None or self._closed:
            return
        self._timer.cancel()
        self._timer = None
        self.flushes += 1
        self._flushing = True
        self.frames.read_late_ms = self.late_ms()
        try:
            while self._fd is not None and _only_data(self._fd):
                try:
                    data = os.read(self._fd, READ_BYTES)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # came between the poll and the read: it ends here
                    self.on_error(exc)
                    return
                if not data:
                    break  # the end: left to the transport, which reports it as usual
                self.deliver(data)
                if len(data) < READ_BYTES:
                    break
        finally:
            self._flushing = False
            self.frames.read_late_ms = 0
            self._paused_at = 0.0
        if not self._closed and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.frames.pacer is self:
            self.frames.pacer = None


def _only_data(fd: int) -> bool:
    """Whether ``fd`` has data to read and no error or hang-up: those are the transport's to
    read (reading an error clears it, and the transport would then see a plain end)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    events = poller.poll(0)
    if not events:
        return False
    mask = events[0][1]
    return bool(mask & select.POLLIN) and not mask & (select.POLLERR | select.POLLHUP)


def _plain_fd(transport: asyncio.BaseTransport) -> int | None:
    """The descriptor behind a plain (not TLS) socket or pipe transport, or None."""
    if transport.get_extra_info("sslcontext") is not None:
        return None
    pipe = transport.get_extra_info("pipe")
    if pipe is not None:
        return int(pipe.fileno())
    sock = transport.get_extra_info("socket")
    if sock is not None:
        return int(sock.fileno())
    return None
