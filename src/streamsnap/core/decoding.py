"""The decode policy: which streams are decoded continuously, which only when asked.

Lazy (the default for a stream nobody looks at) keeps packets and decodes on demand: the cost
of a stream is its packets, a snapshot after a quiet spell decodes up to one GOP. Continuous
decodes every frame as it arrives (in the worker pool, one decode in flight per stream), so a
snapshot only encodes. A stream is decoded continuously while

- snapshots of it come at least ``decode_demand_per_s`` a second (continuous decode is then
  cheaper than decoding a GOP per request: DESIGN.md's 0.09 CPU-s per lazy snapshot against
  0.08 CPU-s per second of continuous decode at 720p), or
- it was asked for in the last ``decode_warm_s`` seconds and the machine's CPU use (all cores,
  every process: FFmpeg children and neighbours count) is below ``decode_cpu_budget``: spare
  CPU keeps recently watched streams warm. Warm streams are admitted one a tick, most recently
  asked for first, while CPU stays below the budget by a margin, and let go one a tick, least
  recently asked for first, while it is above: no stampede, no oscillation.

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
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import App
    from .streams import Stream

log = logging.getLogger(__name__)

DEMAND_WINDOW_S = 10.0
# codecs whose every frame is a picture of its own: a lazy decode is one frame, never a GOP,
# so continuous decoding would only decode the frames nobody asks for
INTRA_ONLY = frozenset({"mjpeg"})
ADMIT_MARGIN = 0.1  # a warm stream is admitted only while CPU is this far below the budget


def _read_proc_stat() -> tuple[float, float] | None:
    """(busy, total) jiffies of all cores since boot, or None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


class DecodePolicy:
    def __init__(self, app: App) -> None:
        self.app = app
        self.config = app.config.streams
        self.cpu = 0.0  # the machine's CPU use over the last tick, share of all cores
        self._proc_mark = _read_proc_stat()
        self._cpu_mark = (time.process_time(), time.monotonic())
        self._inflight: set[str] = set()  # media session ids with a decode running
        self.decodes = 0
        self.watched: Counter[str] = Counter()  # live viewers (MJPEG) by media session id

    # ---------------------------------------------------------------- inputs
    @staticmethod
    def note_request(stream: Stream) -> None:
        stream.requests.append(time.monotonic())

    def watch(self, stream: Stream, watching: bool) -> None:
        """A live viewer (MJPEG) of ``stream`` comes (``watching``) or goes: a watched stream
        is decoded continuously from now on, not from the next tick, so its first parts do
        not each decode a GOP."""
        key = stream.media_session_id
        self.watched[key] += 1 if watching else -1
        if self.watched[key] <= 0:
            del self.watched[key]
        elif not stream.frames.continuous and self.reason(stream, time.monotonic()) == "demand":
            stream.frames.continuous = True
            log.info("stream %s: continuous decoding (watched live)", stream.name)

    def measure_cpu(self) -> float:
        """CPU use since the last call, share of all cores: the whole machine where /proc/stat
        tells it, this process otherwise."""
        mark = _read_proc_stat()
        if mark is not None and self._proc_mark is not None:
            busy, total = mark[0] - self._proc_mark[0], mark[1] - self._proc_mark[1]
            self._proc_mark = mark
            if total > 0:
                self.cpu = busy / total
            return self.cpu
        cpu, wall = time.process_time(), time.monotonic()
        last_cpu, last_wall = self._cpu_mark
        self._cpu_mark = (cpu, wall)
        if wall > last_wall:
            self.cpu = (cpu - last_cpu) / (wall - last_wall) / (os.cpu_count() or 1)
        return self.cpu

    # ---------------------------------------------------------------- decision
    def reason(self, stream: Stream, now: float) -> str | None:
        """Why ``stream`` may be decoded continuously: "fixed" (``decode = "continuous"``),
        "demand", "warm" (CPU allowing), or None (lazy)."""
        if stream.frames.decodes_itself:
            return None  # pictures arrive decoded (WebRTC): nothing to decide
        mode = self.config.decode
        if mode != "adaptive":
            return "fixed" if mode == "continuous" else None
        if stream.frames.codec_name in INTRA_ONLY:
            return None
        if self.watched.get(stream.media_session_id):
            return "demand"
        recent = sum(1 for t in stream.requests if now - t <= DEMAND_WINDOW_S)
        if recent / DEMAND_WINDOW_S >= self.config.decode_demand_per_s:
            return "demand"
        if stream.requests and now - stream.requests[-1] <= self.config.decode_warm_s:
            return "warm"
        return None

    def decide(self, streams: list[Stream], now: float, cpu: float) -> dict[str, bool]:
        """Continuous or not for each stream (by mediaSessionId), from the current modes."""
        out: dict[str, bool] = {}
        warm: list[Stream] = []
        for stream in streams:
            why = self.reason(stream, now)
            out[stream.media_session_id] = why in ("fixed", "demand")
            if why == "warm":
                warm.append(stream)
        warm.sort(key=lambda s: s.requests[-1], reverse=True)  # most recently asked first
        kept = [s for s in warm if s.frames.continuous]
        waiting = [s for s in warm if not s.frames.continuous]
        budget = self.config.decode_cpu_budget
        if cpu > budget and kept:
            kept.pop()  # let the least recently asked go; the next tick sees the effect
        elif cpu < budget - ADMIT_MARGIN and waiting:
            kept.append(waiting[0])
        for stream in kept:
            out[stream.media_session_id] = True
        return out

    def tick(self) -> None:
        cpu = self.measure_cpu()
        streams = list(self.app.streams)
        decision = self.decide(streams, time.monotonic(), cpu)
        for stream in streams:
            want = decision[stream.media_session_id]
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
