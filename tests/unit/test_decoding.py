"""The decode policy: continuous while demand, auto snapshots or spare CPU justify it."""

from __future__ import annotations

import time
from types import SimpleNamespace

from streamsnap.core.config import Config
from streamsnap.core.decoding import DecodePolicy
from streamsnap.core.frames import FrameStore
from streamsnap.core.streams import Stream


def policy(**streams) -> DecodePolicy:
    cfg = Config()
    for key, value in streams.items():
        setattr(cfg.streams, key, value)
    return DecodePolicy(SimpleNamespace(config=cfg, streams=[]))


def stream(name: str = "s", gop: int = 60) -> Stream:
    s = Stream(name, "rtmp", FrameStore(name))
    s.frames.gop_length = gop
    return s


def continuous(p: DecodePolicy, streams: list[Stream], now: float, cpu: float) -> set[str]:
    """Apply one decision (as a tick does) and return the names decoded continuously."""
    decision = p.decide(streams, now, cpu)
    for s in streams:
        s.frames.continuous = decision[s.media_session_id]
    return {s.name for s in streams if s.frames.continuous}


def test_lazy_by_default():
    assert continuous(policy(), [stream()], time.monotonic(), cpu=0.0) == set()


def test_frequent_snapshots_make_it_continuous():
    p, s, now = policy(), stream(), time.monotonic()
    for i in range(12):  # 12 requests in the last 10 s: above 1/s
        s.requests.append(now - i * 0.8)
    assert p.reason(s, now) == "demand"
    assert continuous(p, [s], now, cpu=0.95) == {"s"}  # demand wins even when CPU is short


def test_auto_snapshots_alone_keep_it_lazy():
    # the persistent decoder catches up in batches: cheaper than frame-by-frame decoding
    p, s = policy(), stream(gop=60)
    assert p.reason(s, time.monotonic()) is None


def test_warm_streams_are_admitted_and_let_go_one_a_tick():
    p, now = policy(decode_warm_s=30.0, decode_cpu_budget=0.6), time.monotonic()
    streams = [stream(f"s{i}") for i in range(3)]
    for i, s in enumerate(streams):
        s.requests.append(now - 20 + i)  # s2 asked for most recently
    assert continuous(p, streams, now, cpu=0.2) == {"s2"}
    assert continuous(p, streams, now, cpu=0.2) == {"s2", "s1"}
    assert continuous(p, streams, now, cpu=0.55) == {"s2", "s1"}  # within the margin: hold
    assert continuous(p, streams, now, cpu=0.8) == {"s2"}  # CPU short: the oldest goes first
    assert continuous(p, streams, now, cpu=0.8) == set()
    assert continuous(p, streams, now + 20, cpu=0.0) == set()  # not asked for in 30 s


def test_machine_cpu_is_measured_between_ticks():
    p = policy()
    end = time.process_time() + 0.3
    while time.process_time() < end:  # keep one core busy
        pass
    cpu = p.measure_cpu()
    assert 0.0 < cpu <= 1.0


def test_fixed_modes_and_decoded_sources():
    s, now = stream(), time.monotonic()
    assert continuous(policy(decode="continuous"), [s], now, cpu=1.0) == {"s"}
    assert continuous(policy(decode="lazy"), [s], now, cpu=0.0) == set()
    s.frames.decodes_itself = True
    assert continuous(policy(decode="continuous"), [s], now, cpu=0.0) == set()
