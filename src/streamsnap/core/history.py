"""The recent past of a stream: its last keyframe groups, kept compressed, to show the frame of
an instant that has passed (``?at=``; ``[streams] history_s``).

A doorbell or alarm webhook arrives a second or two after the moment it is about; a snapshot
taken then shows the wrong moment. With a history the frame store keeps the packets of the
last ``history_s`` seconds (bounded by ``history_bytes`` as well: a stream at 20 Mbit/s must
not hold 30 s of it unasked), and the picture of an instant is decoded from the keyframe before
it, by a decoder of its own: the live decoder keeps its place.

The instant is the server's clock: a frame "shown" at T is the newest frame (in display order)
of those received by T, which is what a live snapshot asked for at T would have shown.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol, TypeVar


class Timed(Protocol):
    @property
    def arrival(self) -> int: ...  # Unix ms


P = TypeVar("P", bound=Timed)


class History:
    """Keyframe groups that are over: ``(gop id, packets, bytes)``, oldest first.

    Written on the event loop (:meth:`keep`, :meth:`clear`, under the frame store's state
    lock); a worker thread reads a copy taken under the same lock. Packet lists are never
    changed once kept.
    """

    def __init__(self, seconds: float, max_bytes: int) -> None:
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.gops: deque[tuple[int, list, int]] = deque()
        self.bytes = 0

    def keep(self, gop_id: int, packets: list, size: int, now_ms: int) -> None:
        """Keep the group that just ended (a keyframe arrived at ``now_ms``), then forget what
        is older than ``seconds`` or beyond ``max_bytes``."""
        self.gops.append((gop_id, packets, size))
        self.bytes += size
        cutoff = now_ms - int(self.seconds * 1000)
        while self.gops:
            # the oldest group is needed while the instant ``cutoff`` may still fall in it,
            # that is until the group after it started before the cutoff
            next_start = self.gops[1][1][0].arrival if len(self.gops) > 1 else now_ms
            if self.bytes <= self.max_bytes and next_start > cutoff:
                break
            self.bytes -= self.gops.popleft()[2]

    def clear(self) -> None:
        self.gops.clear()
        self.bytes = 0


def find(groups: list[tuple[int, list[P]]], at_ms: int) -> tuple[int, list[P]] | None:
    """The group holding the instant ``at_ms`` and its packets received by then (at least the
    keyframe), from ``groups`` (oldest first); None when ``at_ms`` is before all of them."""
    for gop_id, packets in reversed(groups):
        if packets and packets[0].arrival <= at_ms:
            last = len(packets)
            while packets[last - 1].arrival > at_ms:
                last -= 1
            return gop_id, packets[:last]
    return None
