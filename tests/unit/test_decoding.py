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


def stream(gop: int = 60) -> Stream:
    s = Stream("s", "rtmp", FrameStore("s"))
    s.frames.gop_length = gop
    return s


def test_lazy_by_default():
    assert not policy().wants_continuous(stream(), time.monotonic(), cpu=0.0)


def test_frequent_snapshots_make_it_continuous():
    p, s, now = policy(), stream(), time.monotonic()
    for i in range(12):  # 12 requests in the last 10 s: above 1/s
        s.requests.append(now - i * 0.8)
    assert p.wants_continuous(s, now, cpu=0.95)  # demand wins even when CPU is short


def test_auto_snapshots_alone_keep_it_lazy():
    # the persistent decoder catches up in batches: cheaper than frame-by-frame decoding
    p, s = policy(), stream(gop=60)
    assert not p.wants_continuous(s, time.monotonic(), cpu=0.0)


def test_recently_watched_streams_stay_warm_only_with_spare_cpu():
    p, s, now = policy(decode_warm_s=30.0, decode_cpu_budget=0.6), stream(), time.monotonic()
    s.requests.append(now - 20)
    assert p.wants_continuous(s, now, cpu=0.2)
    assert not p.wants_continuous(s, now, cpu=0.8)  # CPU short: back to lazy
    assert not p.wants_continuous(s, now + 20, cpu=0.2)  # not asked for in 30 s


def test_fixed_modes_and_decoded_sources():
    s = stream()
    assert policy(decode="continuous").wants_continuous(s, time.monotonic(), cpu=1.0)
    assert not policy(decode="lazy").wants_continuous(s, time.monotonic(), cpu=0.0)
    s.frames.decodes_itself = True
    assert not policy(decode="continuous").wants_continuous(s, time.monotonic(), cpu=0.0)
