"""The frame store: keeps packets, decodes only when asked, gives the newest picture."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import av
import pytest
from PIL import Image

from streamsnap.core import h264
from streamsnap.core.flv import CODED_FRAMES, SEQUENCE_START, parse_video
from streamsnap.core.frames import FrameStore
from tests.helpers.media import FFMPEG, read_counter
from tests.helpers.rtmp_client import read_flv


def counter_flv(path: Path, frames: int, gop: int, extra: tuple[str, ...]) -> list:
    """An FLV of counter pictures made by FFmpeg (the real encoder), as RTMP video tags."""
    import subprocess

    from tests.helpers.media import counter_frame

    raw = b"".join(counter_frame(n, 640, 360) for n in range(frames))
    subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
            "-s",
            "640x360",
            "-framerate",
            "30",
            "-i",
            "-",
            "-c:v",
            "libx264",
            *extra,
            "-g",
            str(gop),
            "-pix_fmt",
            "yuv420p",
            "-f",
            "flv",
            str(path),
        ],
        input=raw,
        check=True,
    )
    return [t for t in read_flv(path) if t.type_id == 9]


def load(store: FrameStore, tags: list) -> list:
    handles = []
    for tag in tags:
        v = parse_video(tag.data)
        if v.kind == SEQUENCE_START:
            store.set_codec(v.codec, v.data)
        elif v.kind == CODED_FRAMES:
            handles.append(
                store.push_packet(v.data, tag.timestamp + v.cts, v.keyframe, tag.timestamp)
            )
    return handles


def shown(store: FrameStore) -> int:
    pic = store.decode_latest()
    assert pic is not None
    buf = io.BytesIO()
    pic.frame.to_image().save(buf, "PNG")
    return read_counter(buf.getvalue())


@pytest.fixture(scope="module")
def ip_tags(tmp_path_factory) -> list:
    path = tmp_path_factory.mktemp("flv") / "ip.flv"
    return counter_flv(path, 95, 30, ("-preset", "ultrafast", "-tune", "zerolatency"))


@pytest.fixture(scope="module")
def bframe_tags(tmp_path_factory) -> list:
    path = tmp_path_factory.mktemp("flv") / "b.flv"
    return counter_flv(path, 95, 30, ("-preset", "fast", "-bf", "3"))


def test_nothing_is_decoded_until_asked(ip_tags):
    store = FrameStore("lazy")
    handles = load(store, ip_tags)
    assert store._decoder is None  # packets only
    assert [h.index for h in handles] == list(range(95))
    assert [h.keyframe for h in handles].count(True) == 4
    assert store.gop_packets == 95 - 90  # since the last keyframe (frame 90)
    assert shown(store) == 94
    assert (store.width, store.height) == (640, 360)


def test_decoder_catches_up_on_new_packets_only(ip_tags):
    store = FrameStore("incremental")
    load(store, ip_tags[:51])  # the sequence header, then frames 0..49
    assert shown(store) == 49
    pic_before = store.decode_latest()
    assert pic_before is not None and pic_before.index == 49  # cached: no new packets
    load(store, ip_tags[51:61])
    assert shown(store) == 59
    assert store._dec_pos == 30  # 30..59 fed once, in two steps


def test_stream_with_bframes_gives_newest_picture(bframe_tags):
    store = FrameStore("bframes")
    load(store, bframe_tags[:72])
    assert shown(store) == newest_sent(bframe_tags[:72])
    load(store, bframe_tags[72:])
    assert shown(store) == newest_sent(bframe_tags)


def newest_sent(tags: list) -> int:
    """The highest frame number (display order) among the coded frames in ``tags``."""
    pts = [t.timestamp + v.cts for t in tags if (v := parse_video(t.data)).kind == CODED_FRAMES]
    return round((max(pts) - pts[0]) * 30 / 1000)  # frame 0 is the first keyframe


def test_fresh_request_drains_when_the_sps_cannot_be_rewritten(bframe_tags, monkeypatch):
    # an encoder without the VUI bitstream restriction: the decoder holds pictures back
    monkeypatch.setattr(h264, "no_reorder_avcc", lambda extradata: extradata)
    store = FrameStore("fresh")
    load(store, bframe_tags[:72])
    held = store.decode_latest()  # what the decoder released: older than the newest frame
    assert held is not None and store.frames_behind(held) >= 1
    fresh = store.decode_latest(fresh=True)
    assert fresh is not None and store.frames_behind(fresh) == 0
    assert shown(store) == newest_sent(bframe_tags[:72])
    load(store, bframe_tags[72:80])  # the decoder restarts from the keyframe after a drain
    fresh = store.decode_latest(fresh=True)
    assert fresh is not None and store.frames_behind(fresh) == 0
    assert shown(store) == newest_sent(bframe_tags[:80])


@pytest.fixture(scope="module")
def moving_tags(tmp_path_factory) -> tuple[Path, list]:
    """Moving pictures (x264 uses real B-frames on them, unlike on the static counter)."""
    import subprocess

    path = tmp_path_factory.mktemp("flv") / "moving.flv"
    subprocess.run(
        [
            *(FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"),
            *("-frames:v", "60", "-c:v", "libx264", "-preset", "veryfast", "-g", "60"),
            *("-pix_fmt", "yuv420p", "-f", "flv", str(path)),
        ],
        check=True,
    )
    return path, [t for t in read_flv(path) if t.type_id == 9]


def test_lazy_catch_up_skips_frames_nothing_refers_to(moving_tags):
    path, tags = moving_tags
    lazy, warm = FrameStore("lazy"), FrameStore("warm")
    warm.continuous = True
    for store in (lazy, warm):
        load(store, tags[:45])
        store.decode_latest(fresh=True)
    decoded = (lazy.frames_decoded, warm.frames_decoded)
    assert decoded[0] < 0.8 * decoded[1], decoded
    pic = lazy.decode_latest()
    assert pic is not None and lazy.frames_behind(pic) == 0
    with av.open(str(path)) as container:  # the same frame, every frame decoded
        reference = next(f for f in container.decode(video=0) if round(f.time * 1000) == pic.pts)
    assert (pic.frame.to_ndarray() == reference.to_ndarray()).all()


def test_bframe_stream_newest_at_once_lazy_or_continuous(moving_tags):
    # the rewritten SPS: the decoder returns each I/P picture as soon as it is decoded
    _, tags = moving_tags
    for continuous in (False, True):
        store = FrameStore("newest")
        store.continuous = continuous
        for end in (20, 33, 45, 61):
            load(store, tags[store.frames_in + 1 if store.frames_in else 0 : end])
            pic = store.decode_latest()
            assert pic is not None and store.frames_behind(pic) == 0, (continuous, end)
        assert store._dec_gop == store._gop_id  # never drained: the decoder kept its place


def test_first_picture_right_after_a_keyframe(bframe_tags):
    store = FrameStore("first")
    load(store, bframe_tags[:2])  # sequence header + the keyframe only
    assert shown(store) == 0


def test_frames_before_the_first_keyframe_are_dropped(ip_tags):
    store = FrameStore("late-join")
    seq, frames = ip_tags[0], ip_tags[1:]
    load(store, [seq, *frames[5:30]])  # joined mid-GOP: nothing decodable yet
    assert not store.decodable and store.dropped == 25
    assert store.decode_latest() is None
    load(store, frames[30:40])
    assert store.decodable and shown(store) == 39


def test_gop_without_keyframe_is_capped(ip_tags):
    store = FrameStore("capped", max_packets=10)
    handles = load(store, ip_tags[:30])
    assert sum(h is not None for h in handles) == 10
    assert not store.decodable  # dropped, waiting for the next keyframe
    load(store, ip_tags[31:33])
    assert store.decodable and shown(store) == 31


def test_corrupt_packets_are_counted_not_fatal(ip_tags):
    store = FrameStore("corrupt")
    load(store, ip_tags[:5])
    store.push_packet(b"\x00\x00\x00\x05garbage", 200, False)
    load(store, ip_tags[5:10])
    assert shown(store) >= 8


async def test_wait_decodable_wakes_on_keyframe(ip_tags):
    store = FrameStore("wait")
    load(store, ip_tags[:1])
    waiter = asyncio.ensure_future(store.wait_decodable(5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    load(store, ip_tags[1:2])
    assert await asyncio.wait_for(waiter, 1) is True
    assert await FrameStore("never").wait_decodable(0.05) is False


def test_picture_sources_keep_only_the_newest(ip_tags):
    store = FrameStore("decoded")
    img = Image.new("RGB", (320, 240), (200, 10, 10))
    import av

    for i in range(3):
        store.push_picture(av.VideoFrame.from_image(img), i * 33)
    pic = store.decode_latest()
    assert pic is not None and pic.index == 2 and (store.width, store.height) == (320, 240)


def test_reset_during_a_decode_leaves_no_stale_picture(ip_tags):
    """The source goes away (reset on the event loop) while a worker is decoding: reset does
    not wait for the decode, and the decode's picture is dropped, not published."""
    import threading

    store = FrameStore("reset-race")
    load(store, ip_tags)
    entered, release = threading.Event(), threading.Event()
    decode = store._decode

    def slow_decode(decoder, pkt):
        entered.set()
        release.wait(10)
        return decode(decoder, pkt)

    store._decode = slow_decode
    result: list = []
    worker = threading.Thread(target=lambda: result.append(store.decode_latest()))
    worker.start()
    assert entered.wait(10)
    resetter = threading.Thread(target=store.reset)  # a thread: a blocking reset fails, not hangs
    resetter.start()
    resetter.join(5)
    reset_waited = resetter.is_alive()
    release.set()
    worker.join(10)
    resetter.join(10)
    assert not reset_waited, "reset() waited for the decode"
    assert result == [None]
    assert not store.decodable and store.decode_latest() is None
    store._decode = decode
    load(store, ip_tags[:41])  # the publisher comes back: frames 0..39 again
    assert shown(store) == 39


def test_reset_frees_the_decoder_and_its_pictures(ip_tags):
    store = FrameStore("freed")
    load(store, ip_tags)
    assert store.decode_latest() is not None and store._decoder is not None
    store.reset()
    assert store._decoder is None and store._dec_best is None and not store.decodable


def test_a_new_codec_frees_the_old_decoder(ip_tags, bframe_tags):
    store = FrameStore("recodec")
    load(store, ip_tags)
    assert store.decode_latest() is not None and store._decoder is not None
    load(store, bframe_tags[:1])  # another encoder's sequence header
    assert store._decoder is None
    load(store, bframe_tags[1:41])  # its frames 0..39: decoded by a new decoder
    assert shown(store) == 39


def test_av1_is_decoded_in_software_and_an_unknown_codec_is_named():
    from streamsnap.core.frames import decoder_name

    assert decoder_name("av1") == "libdav1d"  # FFmpeg's own "av1" decoder needs hardware
    assert decoder_name("h264") == "h264"
    store = FrameStore("odd")
    store.set_codec("no-such-codec")
    assert store.codec_error == "no decoder for video codec 'no-such-codec'"
    store.set_codec("h264")
    assert store.codec_error == ""


def test_unsupported_flv_codecs_are_described_by_name():
    from streamsnap.core.flv import describe_unsupported

    assert describe_unsupported(b"\x91vvc1....") == (
        "unsupported video codec 'vvc1' (Enhanced RTMP FourCC)"
    )
    assert describe_unsupported(b"\x14...") == "unsupported video codec VP6 (FLV codec id 4)"
    assert describe_unsupported(b"\x1f...") == "unsupported video codec unknown (FLV codec id 15)"


def test_jpeg_size_from_the_frame_header():
    from streamsnap.core import jpeg

    for kwargs in ({}, {"progressive": True}, {"subsampling": 0}):
        buf = io.BytesIO()
        Image.new("RGB", (333, 77)).save(buf, "JPEG", **kwargs)
        assert jpeg.size(buf.getvalue()) == (333, 77)
    assert jpeg.size(b"") is None
    assert jpeg.size(b"\xff\xd8\xff\xda\x00\x02") is None  # scan before any frame header
    assert jpeg.size(b"\xff\xd8\xff\xc0\x00") is None  # cut short
    assert jpeg.size(b"\x89PNG\r\n") is None


def test_a_jpeg_without_huffman_tables_is_not_served_as_it_is():
    from streamsnap.core import jpeg

    buf = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buf, "JPEG")
    data = buf.getvalue()
    pos = data.index(b"\xff\xc4")  # drop every DHT segment, as AVI1 MJPEG does
    while data[pos : pos + 2] == b"\xff\xc4":
        data = data[:pos] + data[pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big") :]
    assert b"\xff\xc4" not in data[: data.index(b"\xff\xda")]
    assert jpeg.size(data) is None
