"""The snapshot service: waits, coalesces, caches, and never encodes on the event loop."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from streamsnap.core.config import SnapshotConfig
from streamsnap.core.errors import SnapshotError
from streamsnap.core.frames import FrameStore
from streamsnap.core.snapshot import SHARED, SnapshotRequest, SnapshotService, SnapshotTimeout
from streamsnap.core.streams import Stream
from tests.unit.test_frames import load


@pytest.fixture(scope="module")
def tags(tmp_path_factory):
    from tests.unit.test_frames import counter_flv

    return counter_flv(
        tmp_path_factory.mktemp("s") / "c.flv",
        40,
        30,
        ("-preset", "ultrafast", "-tune", "zerolatency"),
    )


@pytest.fixture
def service():
    pool = ThreadPoolExecutor(2)
    yield SnapshotService(
        SnapshotConfig(snapshot_taking_interval_ms=500, snapshot_taking_attempts=5), pool
    )
    pool.shutdown()


async def test_two_hundred_concurrent_requests_one_decode_one_encode(service, tags):
    stream = Stream("many", "rtmp", FrameStore("many"))
    load(stream.frames, tags)
    loop_thread = threading.get_ident()
    decode_threads = set()
    original = stream.frames.decode_latest

    def spy(**kwargs):
        decode_threads.add(threading.get_ident())
        return original(**kwargs)

    stream.frames.decode_latest = spy
    snaps = await asyncio.gather(*(service.take(stream) for _ in range(200)))
    assert service.encodes == 1 and stream.frames.decode_passes == 1
    assert service.encode_seconds.count == 1
    assert len({id(s) for s in snaps}) == 1 and snaps[0].frame_index == 39
    assert loop_thread not in decode_threads  # decode and encode ran in the pool


async def test_cached_until_a_newer_frame(service, tags):
    stream = Stream("cache", "rtmp", FrameStore("cache"))
    load(stream.frames, tags[:20])
    a = await service.take(stream)
    b = await service.take(stream)
    # the same picture, its encoded bytes shared, and the answer says so (Server-Timing)
    assert a.data is b.data and service.encodes == 1
    assert [step for step, _ in a.timing] == ["decode", "convert", "encode"]
    assert b.timing == SHARED
    load(stream.frames, tags[20:25])
    c = await service.take(stream)
    assert c.frame_index == 23 and service.encodes == 2
    small = await service.take(stream, SnapshotRequest(format="jpeg", width=320))
    assert (small.width, small.height, small.format) == (320, 180, "jpeg")


async def test_waits_for_the_first_keyframe(service, tags):
    stream = Stream("late", "rtmp", FrameStore("late"))
    load(stream.frames, tags[:1])  # sequence header only
    task = asyncio.ensure_future(service.take(stream))
    await asyncio.sleep(0.2)
    assert not task.done()
    load(stream.frames, tags[1:3])
    snap = await asyncio.wait_for(task, 2)
    assert snap.frame_index >= 0


async def test_times_out_with_the_wcs_message(service):
    stream = Stream("empty", "rtmp", FrameStore("empty"))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(SnapshotTimeout, match="Snapshot response timeout"):
        await service.take(stream)
    assert 0.45 <= loop.time() - t0 < 1.5
    assert service.outcomes == {"timeout": 1}


async def test_outcomes_are_counted(service, tags):
    stream = Stream("counted", "rtmp", FrameStore("counted"))
    load(stream.frames, tags[:10])
    await service.take(stream)
    stream.failure = "Failed to connect to rtsp stream"
    stream.frames.reset()
    with pytest.raises(SnapshotError):
        await service.take(stream)
    assert service.outcomes == {"ok": 1, "failed": 1}


async def test_a_burst_spanning_a_new_frame_shares_one_picture(service, tags):
    """Requests read just after a snapshot, when one newer frame has arrived, share it (at most
    one frame behind, and said so); two newer frames, or the window over, make a new one."""
    stream = Stream("burst", "rtmp", FrameStore("burst"))
    load(stream.frames, tags[:21])  # frames 0..19
    first = await asyncio.gather(*(service.take(stream) for _ in range(100)))
    load(stream.frames, tags[21:22])  # frame 20 arrives while the burst is being read
    later = await asyncio.gather(*(service.take(stream) for _ in range(100)))
    assert service.encodes == 1 and stream.frames.decode_passes == 1
    assert {s.frame_index for s in first + later} == {19}
    assert first[0].frames_behind == 0 and {s.frames_behind for s in later} == {1}
    assert service.shared >= 100  # the later ones at least (the first may have joined it too)
    assert later[0].rest_json is first[0].rest_json  # the answer's text is made once too
    load(stream.frames, tags[22:23])  # a second newer frame: too old to share
    assert (await service.take(stream)).frame_index == 21 and service.encodes == 2


async def test_sharing_ends_with_the_window(tags):
    pool = ThreadPoolExecutor(1)
    try:
        for window_ms, encodes in ((0, 2), (50, 2), (10_000, 1)):
            service = SnapshotService(SnapshotConfig(coalesce_ms=window_ms), pool)
            stream = Stream("window", "rtmp", FrameStore("window"))
            load(stream.frames, tags[:21])
            await service.take(stream)
            await asyncio.sleep(0.1)
            load(stream.frames, tags[21:22])
            snap = await service.take(stream)
            assert service.encodes == encodes, window_ms
            assert snap.frame_index == (20 if encodes == 2 else 19)
    finally:
        pool.shutdown()


async def test_nothing_is_shared_across_a_source_restart(service, tags):
    stream = Stream("restart", "rtmp", FrameStore("restart"))
    load(stream.frames, tags[:21])
    old = await service.take(stream)
    stream.frames.reset()  # the camera went away and came back: its first keyframe only
    load(stream.frames, tags[:2])
    new = await service.take(stream)
    assert new.frame_index == old.frame_index + 1 and service.encodes == 2


async def test_asking_for_the_newest_frame_never_shares(service, tags):
    stream = Stream("auto", "rtmp", FrameStore("auto"))
    load(stream.frames, tags[:21])
    await service.take(stream, SnapshotRequest(newest=True))
    load(stream.frames, tags[21:22])
    snap = await service.take(stream, SnapshotRequest(newest=True))
    assert snap.frame_index == 20 and service.encodes == 2 and service.shared == 0


@pytest.fixture
def patient():
    """Sharing decided by frames alone: a slow test machine never closes the window."""
    pool = ThreadPoolExecutor(2)
    yield SnapshotService(SnapshotConfig(coalesce_ms=60_000), pool)
    pool.shutdown()


async def test_a_burst_read_over_several_frames_shares_one_picture(patient, tags):
    """Many clients asking at once are read over several frame intervals on a busy machine:
    while the burst is still arriving (each request at most one frame after the one before),
    every new client shares its picture, said to be as many frames behind as it is."""
    stream = Stream("long", "rtmp", FrameStore("long"))
    load(stream.frames, tags[:21])  # frames 0..19
    snaps = []
    for part in range(4):  # a frame arrives after each quarter of the burst is read
        snaps += await asyncio.gather(
            *(patient.take(stream, SnapshotRequest(client=f"{part}:{k}")) for k in range(50))
        )
        load(stream.frames, tags[21 + part : 22 + part])
    assert patient.encodes == 1 and stream.frames.decode_passes == 1
    assert {s.frame_index for s in snaps} == {19}
    assert [s.frames_behind for s in snaps[::50]] == [0, 1, 2, 3]
    # a client of the burst asks again: its own second request is not part of a burst
    again = await patient.take(stream, SnapshotRequest(client="0:0"))
    assert again.frame_index == 23 and again.frames_behind == 0 and patient.encodes == 2


async def test_a_client_polling_alone_gets_at_most_one_frame_old_pictures(patient, tags):
    stream = Stream("poll", "rtmp", FrameStore("poll"))
    load(stream.frames, tags[:21])  # frames 0..19
    for client in ("10.0.0.9:5000", ""):  # a kept-alive connection; a caller that says nothing
        shown = []
        for _ in range(6):
            snap = await patient.take(stream, SnapshotRequest(client=client))
            shown.append((snap.frame_index, snap.frames_behind))
            load(stream.frames, tags[stream.frames.frames_in + 1 :][:1])  # one frame per poll
        newest = shown[0][0]
        pairs = [(newest + 2 * k, behind) for k in range(3) for behind in (0, 1)]
        assert shown == pairs, client


async def test_a_burst_that_has_ended_shares_no_further(patient, tags):
    stream = Stream("ended", "rtmp", FrameStore("ended"))
    load(stream.frames, tags[:21])  # frames 0..19
    await asyncio.gather(*(patient.take(stream, SnapshotRequest(client=str(k))) for k in range(9)))
    load(stream.frames, tags[21:23])  # two frames, and no request in between
    late = await patient.take(stream, SnapshotRequest(client="new"))
    assert late.frame_index == 21 and late.frames_behind == 0 and patient.encodes == 2


async def test_the_cache_keeps_a_bounded_number_of_variants(service, tags):
    """?width= takes thousands of values: a client cycling through them must not make the
    cache of a stream grow with them; the variant asked for last is still cached."""
    from streamsnap.core.snapshot import MAX_VARIANTS

    stream = Stream("sizes", "rtmp", FrameStore("sizes"))
    load(stream.frames, tags[:21])
    widths = range(64, 64 + 3 * MAX_VARIANTS)
    for width in widths:
        await service.take(stream, SnapshotRequest(format="jpeg", width=width))
    assert len(service._cache[stream.media_session_id]) == MAX_VARIANTS
    assert len(service._seen[stream.media_session_id]) == MAX_VARIANTS
    encodes = service.encodes
    again = await service.take(stream, SnapshotRequest(format="jpeg", width=widths[-1]))
    assert again.width == widths[-1] and service.encodes == encodes


async def test_a_picture_made_after_its_stream_ended_is_not_kept(service, tags):
    stream = Stream("gone", "rtmp", FrameStore("gone"))
    load(stream.frames, tags[:21])
    gate = threading.Event()
    decode = stream.frames.decode_latest

    def held(**kwargs):
        gate.wait(5)
        return decode(**kwargs)

    stream.frames.decode_latest = held
    live = True
    task = asyncio.ensure_future(service.take(stream, is_live=lambda _s: live))
    await asyncio.sleep(0.05)
    assert not task.done()  # the render is under way in the pool
    live = False
    service.forget(stream)  # the stream ends
    gate.set()
    assert (await task).frame_index == 19
    assert stream.media_session_id not in service._cache
