"""JPEGs made from a frame's YUV planes: encoded in strips joined with restart markers, the
same picture as one encoded whole; video range stretched to a JPEG's full range; frames of
another colour matrix, crops and bars left to the RGB route."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import pytest
from PIL import Image

from streamsnap.core import imaging, jpeg


def camera_like(width: int, height: int, seed: int = 1) -> av.VideoFrame:
    """A 4:2:0 video-range frame of gradients, edges and noise (every MCU differs)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    rgb = np.concatenate(
        [
            np.broadcast_to(x, (height, width, 1)),
            np.broadcast_to(y, (height, width, 1)),
            np.full((height, width, 1), 90.0),
        ],
        axis=2,
    )
    rgb[height // 3 : height // 2, width // 4 : width // 2] = (250, 20, 20)
    rgb += rng.normal(0, 12, rgb.shape)
    frame = av.VideoFrame.from_ndarray(np.clip(rgb, 0, 255).astype(np.uint8), format="rgb24")
    return frame.reformat(format="yuv420p")


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(4) as executor:
        yield executor


@pytest.mark.parametrize("size", [(1280, 720), (998, 602), (640, 256), (320, 1080)])
def test_strips_decode_to_the_picture_encoded_whole(size, pool, monkeypatch):
    frame = camera_like(*size)
    plan = imaging.layout(frame.width, frame.height)
    assert imaging.yuv_jpeg_route(frame, plan)
    planes, full = imaging.yuv420(frame, plan)
    whole = imaging.yuv_jpeg(planes, full, 85, None)
    for strips in (2, 3, 4):
        monkeypatch.setattr(imaging, "STRIPS", strips)
        joined = imaging.yuv_jpeg(planes, full, 85, pool)
        assert joined.count(b"\xff\xdd") == 1  # one DRI: it really was joined from strips
        assert Image.open(io.BytesIO(joined)).size == size
        assert np.array_equal(pixels(joined), pixels(whole))


def test_the_yuv_route_shows_what_the_rgb_route_shows():
    frame = camera_like(1280, 720)
    plan = imaging.layout(frame.width, frame.height)
    yuv = pixels(imaging.yuv_jpeg(*imaging.yuv420(frame, plan), 85, None))
    rgb = pixels(imaging.encode(imaging.to_rgb(frame), "jpeg", 85))
    source = imaging.to_rgb(frame).astype(int)
    # the same colours (a washed-out picture, range not stretched, would be ~20 levels off)
    assert np.abs(yuv - rgb).mean() < 2.5
    assert np.abs(yuv - source).mean() <= np.abs(rgb - source).mean() + 0.5


def test_video_range_is_stretched_to_full_range():
    x = np.arange(256, dtype=np.uint8)
    luma = imaging._full_range(x, 235, 298, 128).astype(int)
    chroma = imaging._full_range(x, 240, 291, 256).astype(int)
    exact_luma = np.clip(np.round((x - 16.0) * 255 / 219), 0, 255)
    exact_chroma = np.clip(np.round((x - 128.0) * 255 / 224 + 128), 0, 255)
    assert np.abs(luma - exact_luma).max() <= 1 and np.abs(chroma - exact_chroma).max() <= 1
    assert (luma[16], luma[235], chroma[128]) == (0, 255, 128)
    assert luma[:16].max() == 0 and luma[235:].min() == 255  # out-of-range codes clamp


def test_a_full_range_frame_is_not_stretched_again():
    frame = camera_like(640, 360)
    plan = imaging.layout(frame.width, frame.height)
    limited = pixels(imaging.yuv_jpeg(*imaging.yuv420(frame, plan), 85, None))
    frame.color_range = 2  # the same codes, tagged full range: shown as they are
    planes, full = imaging.yuv420(frame, plan)
    assert full
    tagged = pixels(imaging.yuv_jpeg(planes, full, 85, None))
    assert np.abs(tagged - pixels(imaging.encode(imaging.to_rgb(frame), "jpeg", 85))).mean() < 2.5
    assert np.abs(tagged - limited).mean() > 5


@pytest.mark.parametrize("size", [(998, 602), (1280, 720)])
def test_full_range_frames_are_encoded_in_strips_too(size, pool):
    """yuvj420p planes (an MJPEG camera's, padded rows) go to the strips as they are."""
    frame = camera_like(*size).reformat(format="yuvj420p")
    plan = imaging.layout(frame.width, frame.height)
    planes, full = imaging.yuv420(frame, plan)
    assert full and planes is frame
    joined = imaging.yuv_jpeg(planes, full, 85, pool)
    assert joined.count(b"\xff\xdd") == 1
    assert np.array_equal(pixels(joined), pixels(imaging.yuv_jpeg(planes, full, 85, None)))


def test_a_picture_too_wide_for_a_restart_interval_is_encoded_whole(pool, monkeypatch):
    frame = camera_like(1280, 720)
    plan = imaging.layout(frame.width, frame.height)
    monkeypatch.setattr(jpeg, "MAX_RESTART_INTERVAL", 80 * 22)  # below 720p's 80 x 23 MCUs
    data = imaging.yuv_jpeg(*imaging.yuv420(frame, plan), 85, pool)
    assert b"\xff\xdd" not in data and Image.open(io.BytesIO(data)).size == (1280, 720)


def test_scaled_pictures_take_the_yuv_route_at_their_size():
    frame = camera_like(1280, 720)
    plan = imaging.layout(frame.width, frame.height, 640, None)
    assert imaging.yuv_jpeg_route(frame, plan)
    planes, full = imaging.yuv420(frame, plan)
    data = imaging.yuv_jpeg(planes, full, 85, None)
    assert Image.open(io.BytesIO(data)).size == (640, 360)
    rgb = pixels(imaging.encode(imaging.to_rgb(frame, 640), "jpeg", 85))
    assert np.abs(pixels(data) - rgb).mean() < 3


@pytest.mark.parametrize(
    "why, change, ask",
    [
        ("BT.709 signalled", {"colorspace": 1}, {}),
        ("BT.2020 signalled", {"colorspace": 9}, {}),
        ("a crop", {}, {"crop": (10, 10, 200, 100)}),
        ("contain bars", {}, {"width": 400, "height": 400, "fit": "contain"}),
        ("an odd side", {}, {"width": 333, "height": 200}),
    ],
)
def test_the_rgb_route_is_kept_for(why, change, ask):
    frame = camera_like(640, 360)
    for attr, value in change.items():
        setattr(frame, attr, value)
    plan = imaging.layout(frame.width, frame.height, **ask)
    assert not imaging.yuv_jpeg_route(frame, plan), why


def test_a_busy_pool_never_delays_the_encode():
    """Strips no thread has taken are taken back: with every pool thread held elsewhere, the
    JPEG is made in the caller's thread."""
    release = threading.Event()
    frame = camera_like(1280, 720)
    plan = imaging.layout(frame.width, frame.height)
    made: list[bytes] = []
    with ThreadPoolExecutor(1) as busy:
        busy.submit(release.wait, 30)  # the pool's only thread is taken
        caller = threading.Thread(
            target=lambda: made.append(imaging.yuv_jpeg(*imaging.yuv420(frame, plan), 85, busy))
        )
        caller.start()
        caller.join(10)
        done = not caller.is_alive()
        release.set()
        caller.join()
    assert done, "the encode waited for the busy pool"
    data = made[0]
    whole = imaging.yuv_jpeg(*imaging.yuv420(frame, plan), 85, None)
    assert np.array_equal(pixels(data), pixels(whole))


def test_strips_of_different_tables_or_with_restarts_are_refused():
    frame = camera_like(640, 256)
    y, u, v = imaging._planes(frame)
    import simplejpeg

    top = simplejpeg.encode_jpeg_yuv_planes(*(np.ascontiguousarray(p[:64]) for p in (y, u, v)), 85)
    other = simplejpeg.encode_jpeg_yuv_planes(
        *(np.ascontiguousarray(p[64:128]) for p in (y, u, v)), 60
    )
    with pytest.raises(ValueError, match="same tables"):
        jpeg.join_strips([top, other], 256, 40 * 8)
    restarts = top.replace(b"\xff\xda", b"\xff\xdd\x00\x04\x00\x08\xff\xda", 1)
    with pytest.raises(ValueError, match="restart markers"):
        jpeg.join_strips([restarts, top], 256, 40 * 8)
    with pytest.raises(ValueError, match="whole JPEG"):
        jpeg.join_strips([top[:-2], top], 256, 40 * 8)
