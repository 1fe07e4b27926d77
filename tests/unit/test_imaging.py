"""Framing (fit, crop) on synthetic frames: where each source pixel lands in the picture."""

from __future__ import annotations

import av
import numpy as np
import pytest

from streamsnap.core import framing, imaging
from streamsnap.core.config import SnapshotConfig
from streamsnap.core.errors import ConfigError, NotAllowed
from streamsnap.core.snapshot import SnapshotRequest

RED, GREEN, BLUE, WHITE = (220, 30, 30), (30, 200, 30), (30, 30, 220), (235, 235, 235)


def frame_of(rgb: np.ndarray) -> av.VideoFrame:
    """A decoded-looking frame (yuv420p, as a decoder gives it) of an RGB picture."""
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")


def stripes(colours: list[tuple[int, int, int]], width: int, height: int) -> np.ndarray:
    """Vertical stripes of equal width, left to right."""
    rgb = np.zeros((height, width, 3), np.uint8)
    step = width // len(colours)
    for i, colour in enumerate(colours):
        rgb[:, i * step : (i + 1) * step] = colour
    return rgb


def quadrants(width: int, height: int) -> np.ndarray:
    """Top left red, top right green, bottom left blue, bottom right white."""
    rgb = np.zeros((height, width, 3), np.uint8)
    hw, hh = width // 2, height // 2
    rgb[:hh, :hw], rgb[:hh, hw:], rgb[hh:, :hw], rgb[hh:, hw:] = RED, GREEN, BLUE, WHITE
    return rgb


def close_to(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 12) -> bool:
    return bool(np.abs(pixels.reshape(-1, 3).astype(int) - colour).max() <= tolerance)


# ---------------------------------------------------------------- layout (geometry only)
def test_fill_is_todays_stretch():
    plan = imaging.layout(1280, 720, 400, 400)
    assert plan == imaging.Layout((0, 0, 1280, 720), (400, 400), (400, 400))
    assert imaging.layout(1280, 720, 400, 400, "fill") == plan


def test_contain_letterboxes_centred():
    plan = imaging.layout(1280, 720, 400, 400, "contain")
    assert plan.region == (0, 0, 1280, 720)
    assert plan.canvas == (400, 400) and plan.scaled == (400, 225)
    assert plan.offset == (0, 87)  # (400 - 225) // 2 above, the rest below
    tall = imaging.layout(720, 1280, 400, 400, "contain")  # pillarbox: bars left and right
    assert tall.scaled == (225, 400) and tall.offset == (87, 0)


def test_cover_cuts_the_overflow_equally_on_both_sides():
    plan = imaging.layout(1280, 720, 400, 400, "cover")
    assert plan.region == (280, 0, 720, 720)  # the centred square of the source
    assert plan.scaled == plan.canvas == (400, 400)
    tall = imaging.layout(720, 1280, 400, 200, "cover")
    assert tall.region == (0, 460, 720, 360)


def test_fit_changes_nothing_without_both_sides():
    for fit in framing.FITS:
        assert imaging.layout(1280, 720, 640, None, fit).canvas == (640, 360)
        assert imaging.layout(1280, 720, None, None, fit).canvas == (1280, 720)


def test_crop_comes_first_then_the_size_and_fit():
    plan = imaging.layout(1280, 720, 200, None, crop=(100, 50, 400, 200))
    assert plan.region == (100, 50, 400, 200) and plan.canvas == (200, 100)
    plan = imaging.layout(1280, 720, 100, 100, "cover", crop=(100, 50, 400, 200))
    assert plan.region == (200, 50, 200, 200)  # the centre of the crop, not of the frame


def test_crop_is_cut_to_the_picture_and_refused_wholly_outside():
    assert imaging.layout(1280, 720, crop=(1200, 700, 500, 500)).region == (1200, 700, 80, 20)
    with pytest.raises(NotAllowed) as err:
        imaging.layout(1280, 720, crop=(1280, 0, 10, 10))
    assert err.value.status == 400
    assert "crop=1280,0,10,10" in str(err.value) and "1280x720" in str(err.value)


def test_the_clamps_apply_to_the_result():
    # MAX_UPSCALE is relative to what is shown: a 100x50 crop is at most 200x100
    plan = imaging.layout(1280, 720, 1000, 500, "contain", crop=(0, 0, 100, 50))
    assert plan.canvas == (200, 100)
    plan = imaging.layout(1280, 720, 8192, 8192, "cover")
    assert max(plan.canvas) <= 2 * 720 and plan.canvas[0] == plan.canvas[1]
    side = imaging.MAX_OUTPUT_SIDE
    assert max(imaging.layout(8192, 8192, side, side, "contain").canvas) <= side


# ---------------------------------------------------------------- pixels
def test_contain_bars_are_black_and_the_picture_sits_between_them():
    rgb = imaging.to_rgb(frame_of(stripes([RED], 200, 100)), 100, 100, "contain")
    assert rgb.shape == (100, 100, 3)
    assert not rgb[:24].any() and not rgb[76:].any()  # bars: exactly black
    assert close_to(rgb[28:72], RED)


def test_cover_shows_the_centre():
    # four stripes: the centred square of a 2:1 picture is the two middle ones
    rgb = imaging.to_rgb(frame_of(stripes([RED, GREEN, BLUE, WHITE], 400, 200)), 100, 100, "cover")
    assert rgb.shape == (100, 100, 3)
    assert close_to(rgb[:, 5:45], GREEN) and close_to(rgb[:, 55:95], BLUE)


def test_fill_stretches_the_whole_frame():
    rgb = imaging.to_rgb(frame_of(stripes([RED, GREEN, BLUE, WHITE], 400, 200)), 100, 100)
    assert rgb.shape == (100, 100, 3)
    assert close_to(rgb[:, 5:20], RED) and close_to(rgb[:, 80:95], WHITE)


def test_crop_picks_the_region_in_source_pixels():
    frame = frame_of(quadrants(320, 240))
    top_right = imaging.to_rgb(frame, crop=(160, 0, 160, 120))
    assert top_right.shape == (120, 160, 3) and close_to(top_right[4:-4, 4:-4], GREEN)
    bottom_left = imaging.to_rgb(frame, 40, None, crop=(0, 120, 160, 120))
    assert bottom_left.shape == (30, 40, 3) and close_to(bottom_left[2:-2, 2:-2], BLUE)
    # an odd offset (the chroma planes are half size): still the exact pixels
    corner = imaging.to_rgb(frame, crop=(161, 121, 50, 50))
    assert corner.shape == (50, 50, 3) and close_to(corner[4:-4, 4:-4], WHITE)


def test_crop_then_contain():
    rgb = imaging.to_rgb(frame_of(quadrants(320, 240)), 100, 50, "contain", (0, 0, 160, 120))
    assert rgb.shape == (50, 100, 3)
    assert not rgb[:, :14].any() and not rgb[:, 86:].any()  # 4:3 inside 2:1: bars at the sides
    assert close_to(rgb[4:-4, 20:80], RED)


def test_whole_frame_unchanged_without_framing():
    frame = frame_of(quadrants(64, 48))
    assert imaging.to_rgb(frame).shape == (48, 64, 3)


# ---------------------------------------------------------------- requests and settings
def test_cached_variants_differ_by_fit_and_crop():
    keys = {
        SnapshotRequest(width=100, height=100).key,
        SnapshotRequest(width=100, height=100, fit="cover").key,
        SnapshotRequest(width=100, height=100, crop=(0, 0, 10, 10)).key,
    }
    assert len(keys) == 3


@pytest.mark.parametrize("value", ["1,2,3", "a,b,c,d", "0,0,0,5", "-1,0,5,5", "1,2,3,4,5", ""])
def test_bad_crops_are_refused(value):
    with pytest.raises(ValueError, match="x,y,w,h"):
        framing.parse_crop(value)


def test_crops_from_a_query_or_a_config():
    assert framing.parse_crop("10,20,30,40") == (10, 20, 30, 40)
    assert framing.parse_crop([10, 20, 30, 40]) == (10, 20, 30, 40)
    with pytest.raises(ValueError, match="contain, cover, fill"):
        framing.parse_fit("stretch")


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ({"fit": "foo"}, "fit = 'foo'"),
        ({"crop": [1, 2, 3]}, "crop = [1, 2, 3]"),
        ({"width": 1}, "width = 1"),
        ({"height": "360"}, "height = '360'"),
    ],
)
def test_auto_snapshot_framing_is_checked_naming_stream_and_key(entry, named):
    cfg = SnapshotConfig(snapshot_auto_streams=[{"name": "gate", **entry}])
    with pytest.raises(ConfigError, match="snapshot_auto_streams") as err:
        cfg.check()
    assert "'gate'" in str(err.value) and named in str(err.value)
    SnapshotConfig(
        snapshot_auto_streams=[{"name": "gate", "fit": "cover", "crop": "0,0,9,9"}]
    ).check()
