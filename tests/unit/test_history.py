"""The stream's recent past: past keyframe groups kept within seconds and bytes, and the
picture of an instant decoded from them."""

from __future__ import annotations

import io
import types
from typing import NamedTuple

import pytest

from streamsnap.core import frames as frames_module
from streamsnap.core import history
from streamsnap.core.flv import CODED_FRAMES, SEQUENCE_START, parse_video
from streamsnap.core.frames import FrameStore, OutOfHistory
from tests.helpers.media import read_counter
from tests.unit.test_frames import counter_flv


class Pkt(NamedTuple):
    arrival: int
    size: int = 100


def gop(start: int, n: int = 3, step: int = 10) -> list[Pkt]:
    return [Pkt(start + i * step) for i in range(n)]


def test_groups_older_than_the_seconds_go_once_the_next_one_covers_the_cutoff():
    past = history.History(seconds=1.0, max_bytes=1 << 20)
    for i, start in enumerate((0, 400, 800, 1200, 1600)):
        past.keep(i, gop(start), 300, start + 400)
    # the newest keyframe came at 2000: 1000..2000 must be covered, the group from 800 does
    assert [g[0] for g in past.gops] == [2, 3, 4]
    assert past.bytes == 900


def test_groups_beyond_the_bytes_go_first_whatever_their_age():
    past = history.History(seconds=3600, max_bytes=1000)
    for i in range(5):
        past.keep(i, gop(i * 100), 400, i * 100 + 100)
    assert [g[0] for g in past.gops] == [3, 4] and past.bytes == 800


def test_find_gives_the_group_of_the_instant_and_what_had_arrived_by_then():
    groups = [(1, gop(0)), (2, gop(100)), (3, gop(200))]
    assert history.find(groups, -1) is None
    assert history.find(groups, 0) == (1, gop(0)[:1])
    assert history.find(groups, 115) == (2, gop(100)[:2])
    assert history.find(groups, 99) == (1, gop(0))
    assert history.find(groups, 10_000) == (3, gop(200))


@pytest.fixture(scope="module")
def bframe_tags(tmp_path_factory) -> list:
    path = tmp_path_factory.mktemp("flv") / "b.flv"
    return counter_flv(path, 95, 30, ("-preset", "fast", "-bf", "3"))


def test_the_picture_of_an_instant_is_the_newest_frame_received_by_then(bframe_tags, monkeypatch):
    clock = {"ms": 0}
    fake = types.SimpleNamespace(
        time=lambda: clock["ms"] / 1000, monotonic=frames_module.time.monotonic
    )
    monkeypatch.setattr(frames_module, "time", fake)
    store = FrameStore("past", history_s=60)
    arrivals, pts_received, first_pts = [], [], None
    for n, tag in enumerate(bframe_tags):
        v = parse_video(tag.data)
        if v.kind == SEQUENCE_START:
            store.set_codec(v.codec, v.data)
        elif v.kind == CODED_FRAMES:
            clock["ms"] = 10_000 + 40 * n
            if v.keyframe:
                pts_received = []
            store.push_packet(v.data, tag.timestamp + v.cts, v.keyframe, tag.timestamp)
            pts_received.append(tag.timestamp + v.cts)
            first_pts = tag.timestamp + v.cts if first_pts is None else first_pts
            arrivals.append((clock["ms"], max(pts_received)))
    assert len(store.history.gops) == 3  # frames 0-89 in the past, 90-94 current
    for at, newest_pts in arrivals[::7]:
        picture = store.picture_at(at + 5)
        buf = io.BytesIO()
        picture.frame.to_image().save(buf, "PNG")
        # the counter drawn on a frame is its number in display order, 0 at the first pts
        assert read_counter(buf.getvalue()) == round((newest_pts - first_pts) * 30 / 1000)
        assert picture.arrival <= at
    with pytest.raises(OutOfHistory) as exc:
        store.picture_at(arrivals[0][0] - 1)
    assert exc.value.oldest_ms == arrivals[0][0]
    # the live decoder keeps its place: a decode of the past opens one of its own
    live = store.decode_latest()
    assert live is not None
    place = (store._dec_gop, store._dec_pos, store.decode_passes)
    store.picture_at(arrivals[10][0])
    assert (store._dec_gop, store._dec_pos, store.decode_passes) == place
    assert store.decode_latest() is live  # nothing to catch up on: the same picture
    # the instant's frame, without decoding, for sharing one picture between requests
    at, _ = arrivals[40]
    gop_id, index = store.instant_of(at)
    assert store.picture_at(at).gop == gop_id and index == 40


def test_a_store_without_history_holds_its_current_group_only(bframe_tags):
    store = FrameStore("now")
    for tag in bframe_tags:
        v = parse_video(tag.data)
        if v.kind == SEQUENCE_START:
            store.set_codec(v.codec, v.data)
        elif v.kind == CODED_FRAMES:
            store.push_packet(v.data, tag.timestamp + v.cts, v.keyframe, tag.timestamp)
    assert not store.history.gops
    with pytest.raises(OutOfHistory) as exc:
        store.picture_at(0)
    oldest = exc.value.oldest_ms  # the current keyframe group's first frame arrived then
    assert store.instant_of(oldest)[1] >= 90 and store.picture_at(oldest).index >= 90
