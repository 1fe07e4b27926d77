"""A small cumulative histogram for ``/metrics`` (Prometheus buckets, thread-safe enough: the
GIL makes each ``+=`` on a list slot atomic for our purposes, and a scrape tolerates a sample
being counted in one bucket before the next)."""

from __future__ import annotations

import bisect

# seconds: from a cached encode (~1 ms) to a full GOP decode at 1080p (~0.3 s) and beyond
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last slot is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs, ending with "+Inf"."""
        out, running = [], 0
        for le, n in zip((*map(repr, self.buckets), "+Inf"), self.counts, strict=True):
            running += n
            out.append((le, running))
        return out
