"""The decode policy: which streams are decoded continuously, which only when asked.

Lazy (the default for a stream nobody looks at) keeps packets and decodes on demand: the cost
of a stream is its packets, a snapshot after a quiet spell decodes up to one GOP. Continuous
decodes every frame as it arrives (in the worker pool, one decode in flight per stream), so a
snapshot only encodes. A stream is decoded continuously while

- snapshots of it come at least ``decode_demand_per_s`` a second (continuous decode is then
  cheaper than decoding a GOP per request: DESIGN.md's 0.09 CPU-s per lazy snapshot against
  0.08 CPU-s per second of continuous decode at 720p), or
- it was asked for in the last ``decode_warm_s`` seconds and the server's CPU use is below
  ``decode_cpu_budget``: spare CPU keeps recently watched streams warm.

It falls back to lazy when the demand stops, or when CPU is short (warm streams go first).

Auto snapshots do not make a stream continuous, whatever their rate: the decoder is persistent
and catches up on the frames it has not seen, so lazy decoding at every Nth frame decodes
exactly the frames continuous decoding would, in batches, with less overhead per frame
(measured: 6.5 % against 9 % of a core per 720p30 stream at rate 30; BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import App
    from .streams import Stream

log = logging.getLogger(__name__)

DEMAND_WINDOW_S = 10.0


class DecodePolicy:
    def __init__(self, app: App) -> None:
        self.app = app
        self.config = app.config.streams
        self.cpu = 0.0  # the server's CPU use over the last tick, share of all cores
        self._cpu_mark = (time.process_time(), time.monotonic())
        self._inflight: set[str] = set()  # media session ids with a decode running
        self.decodes = 0

    # ---------------------------------------------------------------- inputs
    @staticmethod
    def note_request(stream: Stream) -> None:
        stream.requests.append(time.monotonic())

    def measure_cpu(self) -> float:
        cpu, wall = time.process_time(), time.monotonic()
        last_cpu, last_wall = self._cpu_mark
        self._cpu_mark = (cpu, wall)
        if wall > last_wall:
            self.cpu = (cpu - last_cpu) / (wall - last_wall) / (os.cpu_count() or 1)
        return self.cpu

    # ---------------------------------------------------------------- decision
    def wants_continuous(self, stream: Stream, now: float, cpu: float) -> bool:
        frames = stream.frames
        if frames.decodes_itself:
            return False  # pictures arrive decoded (WebRTC): nothing to decide
        mode = self.config.decode
        if mode != "adaptive":
            return mode == "continuous"
        recent = [t for t in stream.requests if now - t <= DEMAND_WINDOW_S]
        if len(recent) / DEMAND_WINDOW_S >= self.config.decode_demand_per_s:
            return True
        last = stream.requests[-1] if stream.requests else None
        return (
            last is not None
            and now - last <= self.config.decode_warm_s
            and cpu < self.config.decode_cpu_budget
        )

    def tick(self) -> None:
        now = time.monotonic()
        cpu = self.measure_cpu()
        for stream in self.app.streams:
            want = self.wants_continuous(stream, now, cpu)
            if want != stream.frames.continuous:
                stream.frames.continuous = want
                log.info(
                    "stream %s: %s decoding (CPU %.0f %%)",
                    stream.name,
                    "continuous" if want else "lazy",
                    cpu * 100,
                )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.tick()

    # ---------------------------------------------------------------- continuous decoding
    def kick(self, stream: Stream) -> None:
        """A frame arrived on a continuously decoded stream: decode it (one at a time)."""
        key = stream.media_session_id
        if key in self._inflight:
            return  # the decode in flight will catch up on this frame too
        self._inflight.add(key)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.app.executor, stream.frames.decode_latest)
        future.add_done_callback(lambda f, k=key: self._done(k, f))

    def _done(self, key: str, future: asyncio.Future[object]) -> None:
        self._inflight.discard(key)
        self.decodes += 1
        if not future.cancelled() and future.exception() is not None:
            log.warning("continuous decode failed: %s", future.exception())
