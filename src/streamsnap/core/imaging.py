"""Picture encoders: PNG (fpng, Pillow as the fallback), JPEG and WebP, with optional scaling.

All functions here are CPU-bound and blocking: they run in the snapshot worker pool.
"""

from __future__ import annotations

import functools
import io
import logging
import os
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Literal

import av
import numpy as np
from PIL import Image

from . import jpeg
from .errors import NotAllowed
from .framing import Crop, Fit

log = logging.getLogger(__name__)

Format = Literal["png", "jpeg", "webp"]
FORMATS: dict[str, Format] = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

# Pillow loads its format plugins on the first save (~30 ms for JPEG, more for WebP): load them
# now, at start-up, not on the first snapshot request.
Image.init()

try:  # fpng: an SSE-accelerated PNG writer, 20-30x faster than Pillow on camera pictures
    import fpng as _fpng
except ImportError:  # pragma: no cover - fpng is a dependency, but keep a working fallback
    _fpng = None


try:  # libjpeg-turbo fed with YUV planes: a JPEG without converting the frame to RGB first
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - a dependency; without it JPEGs take the RGB route
    _simplejpeg = None


def png_encoders() -> list[str]:
    return (["fpng"] if _fpng is not None else []) + ["pillow"]


# Scaling up is cheap to ask for and costly to serve: outputs are clamped (issue "Safe by
# default"), to the largest size within these that keeps the asked-for aspect ratio.
MAX_UPSCALE = 2  # per side, relative to the source
MAX_OUTPUT_SIDE = 8192
MAX_OUTPUT_PIXELS = 7680 * 4320  # 33 Mpx


def target_size(src_w: int, src_h: int, width: int | None, height: int | None) -> tuple[int, int]:
    """The output size for ``?width=&height=``: one given keeps the aspect ratio; the result
    is silently clamped to ``MAX_UPSCALE`` times the source per side, ``MAX_OUTPUT_SIDE`` and
    ``MAX_OUTPUT_PIXELS`` (the picture shows its real size)."""
    if not width and not height:
        return src_w, src_h
    if width and not height:
        height = round(src_h * width / src_w)
    elif height and not width:
        width = round(src_w * height / src_h)
    assert width is not None and height is not None
    width, height = max(2, width), max(2, height)
    scale = min(
        1.0,
        MAX_UPSCALE * src_w / width,
        MAX_UPSCALE * src_h / height,
        MAX_OUTPUT_SIDE / max(width, height),
        (MAX_OUTPUT_PIXELS / (width * height)) ** 0.5,
    )
    if scale < 1.0:  # rounded down, so that no limit is passed by a rounding
        width, height = max(2, int(width * scale)), max(2, int(height * scale))
    return width, height


@dataclass(frozen=True)
class Layout:
    """How a picture is made from a frame: the part of the source shown, the size it is
    scaled to, and where that lies on the output (black around it: ``fit=contain``)."""

    region: Crop  # x, y, width, height in source pixels
    scaled: tuple[int, int]
    canvas: tuple[int, int]
    offset: tuple[int, int] = (0, 0)


def crop_region(src_w: int, src_h: int, crop: Crop | None) -> Crop:
    """``crop`` cut to the picture: a rectangle reaching past an edge shows what lies inside
    (a camera that changed resolution keeps working); one wholly outside is refused (400)."""
    if crop is None:
        return 0, 0, src_w, src_h
    x, y, w, h = crop
    if x >= src_w or y >= src_h:
        raise NotAllowed(
            f"crop={x},{y},{w},{h} lies outside the {src_w}x{src_h} picture",
            status=400,
        )
    return x, y, min(w, src_w - x), min(h, src_h - y)


def layout(
    src_w: int,
    src_h: int,
    width: int | None = None,
    height: int | None = None,
    fit: Fit = "fill",
    crop: Crop | None = None,
) -> Layout:
    """Crop first, then size the result as :func:`target_size` does (clamps included). With
    both ``width`` and ``height``, ``fit`` says how the crop's shape meets theirs: ``fill``
    stretches, ``contain`` scales it whole inside and centres it, ``cover`` fills the size
    and cuts what overflows, equally on both sides. With one side or none, the aspect ratio
    is kept and ``fit`` changes nothing."""
    x, y, w, h = crop_region(src_w, src_h, crop)
    out_w, out_h = target_size(w, h, width, height)
    if not (width and height) or fit == "fill":
        return Layout((x, y, w, h), (out_w, out_h), (out_w, out_h))
    if fit == "contain":
        scale = min(out_w / w, out_h / h)
        in_w, in_h = min(out_w, max(1, round(w * scale))), min(out_h, max(1, round(h * scale)))
        offset = ((out_w - in_w) // 2, (out_h - in_h) // 2)
        return Layout((x, y, w, h), (in_w, in_h), (out_w, out_h), offset)
    if w * out_h > h * out_w:  # cover, the crop is wider than the output: cut left and right
        keep = max(1, round(h * out_w / out_h))
        x, w = x + (w - keep) // 2, keep
    else:
        keep = max(1, round(w * out_h / out_w))
        y, h = y + (h - keep) // 2, keep
    return Layout((x, y, w, h), (out_w, out_h), (out_w, out_h))


def to_rgb(
    frame: av.VideoFrame,
    width: int | None = None,
    height: int | None = None,
    fit: Fit = "fill",
    crop: Crop | None = None,
) -> np.ndarray:
    # threads=1: swscale's default starts a pool of one thread per core for every frame it
    # converts, kept until that frame is freed; the snapshot pool already spreads the work
    plan = layout(frame.width, frame.height, width, height, fit, crop)
    x, y, w, h = plan.region
    (scaled_w, scaled_h), (out_w, out_h) = plan.scaled, plan.canvas
    if (w, h) == (frame.width, frame.height):  # the whole frame: swscale scales and converts
        if (scaled_w, scaled_h) != (w, h):
            frame = frame.reformat(
                width=scaled_w, height=scaled_h, format="rgb24", interpolation="AREA", threads=1
            )
            rgb = frame.to_ndarray()
        else:
            rgb = frame.to_ndarray(format="rgb24", threads=1)
    else:  # a part: converted whole (chroma planes hold no odd offsets), cut, then scaled
        rgb = frame.to_ndarray(format="rgb24", threads=1)[y : y + h, x : x + w]
        if (scaled_w, scaled_h) != (w, h):
            part = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            part = part.reformat(width=scaled_w, height=scaled_h, interpolation="AREA", threads=1)
            rgb = part.to_ndarray()
    if (scaled_w, scaled_h) == (out_w, out_h):
        return rgb
    canvas = np.zeros((out_h, out_w, 3), np.uint8)  # contain: black bars
    ox, oy = plan.offset
    canvas[oy : oy + scaled_h, ox : ox + scaled_w] = rgb
    return canvas


def encode(
    rgb: np.ndarray, fmt: Format = "png", quality: int = 85, png_encoder: str = "auto"
) -> bytes:
    """Encode an RGB24 array (height x width x 3) into ``fmt``."""
    if fmt == "png":
        if png_encoder in ("auto", "fpng") and _fpng is not None:
            return _fpng.from_ndarray(np.ascontiguousarray(rgb))
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "PNG", compress_level=1)
        return buf.getvalue()
    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    elif fmt == "webp":
        Image.fromarray(rgb).save(buf, "WEBP", quality=quality, method=0)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()


# The YUV route to a JPEG. A JPEG holds YCbCr, full range, BT.601 matrix (JFIF): a decoded
# 4:2:0 frame is most of the way there. Its planes go to libjpeg-turbo as they are, after the
# range expansion video needs (16-235 to 0-255), with no RGB pass, and in horizontal strips
# encoded at once on the snapshot pool's idle threads, joined with restart markers
# (jpeg.join_strips). Frames of another colour matrix (BT.709 signalled, BT.2020) take the RGB
# route, where swscale applies their own matrix: its YUV-to-YUV conversion to BT.601 costs more
# than the RGB route (720p: 4.0-4.7 ms against 3.6 ms, measured on the camera-like frames).
_JFIF_MATRICES = frozenset({2, 5, 6})  # AVColorSpace: unspecified (BT.601 in swscale), 470BG, 170M
_FULL_RANGE_FORMATS = frozenset({"yuvj420p"})
STRIPS = max(1, min(4, os.cpu_count() or 1))
STRIP_MIN_ROWS = 128  # a strip smaller than this costs more to hand out than to encode
_MCU_ROWS = 16  # 4:2:0: an MCU is 16x16 pixels


def _full_range(plane: np.ndarray, high: int, gain: int, offset: int) -> np.ndarray:
    """``plane`` from video range (16-``high``) to 0-255: ``((x - 16) * gain + offset) >> 8``,
    within one level of the exact mapping and four times faster than a lookup table."""
    wide = np.clip(plane, 16, high).astype(np.uint16)
    wide -= 16
    wide *= gain
    wide += offset
    wide >>= 8
    return wide.astype(np.uint8)


def yuv_jpeg_route(frame: av.VideoFrame, plan: Layout) -> bool:
    """Whether ``frame`` shown as ``plan`` can be encoded from its YUV planes: libjpeg-turbo is
    here, the whole frame is shown (scaled or not) with no bars, the output's sides are even
    (4:2:0 chroma) and the frame's colour matrix is the one a JPEG decoder assumes."""
    return (
        _simplejpeg is not None
        and plan.region == (0, 0, frame.width, frame.height)
        and plan.scaled == plan.canvas
        and plan.canvas[0] % 2 == 0
        and plan.canvas[1] % 2 == 0
        and frame.colorspace in _JFIF_MATRICES
    )


def _planes(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Y, U and V planes of a 4:2:0 frame as arrays (views of its buffers)."""
    out = []
    for plane in frame.planes[:3]:
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        out.append(rows[:, : plane.width])
    return out[0], out[1], out[2]


def yuv420(frame: av.VideoFrame, plan: Layout) -> tuple[av.VideoFrame, bool]:
    """``frame`` at ``plan``'s output size in 4:2:0 (swscale scales or converts it only when it
    must, and then stretches the range too), and whether it is full range already."""
    if frame.format.name in ("yuv420p", "yuvj420p") and plan.canvas == (frame.width, frame.height):
        return frame, frame.format.name in _FULL_RANGE_FORMATS or frame.color_range == 2
    scaled = frame.reformat(
        width=plan.canvas[0],
        height=plan.canvas[1],
        format="yuvj420p",
        interpolation="AREA",
        threads=1,
    )
    return scaled, True


def yuv_jpeg(
    frame: av.VideoFrame, full_range: bool, quality: int, spread: Executor | None = None
) -> bytes:
    """A JPEG of the 4:2:0 ``frame`` (from :func:`yuv420`) made from its planes, in strips
    spread over ``spread``'s idle threads."""
    assert _simplejpeg is not None and frame.format.name in ("yuv420p", "yuvj420p")
    y, u, v = _planes(frame)
    encode = _simplejpeg.encode_jpeg_yuv_planes  # runs without the GIL

    def strip(top: int, bottom: int) -> bytes:
        sy, su, sv = y[top:bottom], u[top // 2 : bottom // 2], v[top // 2 : bottom // 2]
        if not full_range:  # luma 16-235 and chroma 16-240 stretched to 0-255, per strip:
            # numpy holds the GIL for most of it, but one strip's stretch overlaps the other's
            # encode (0.2 ms of 1.5 at 720p, BENCHMARKS.md)
            sy = _full_range(sy, 235, 298, 128)  # x 255/219, rounded
            # chroma x 255/224 around 128: (c - 16) * 255/224 + 0.5, rounded
            su, sv = _full_range(su, 240, 291, 256), _full_range(sv, 240, 291, 256)
        return encode(sy, su, sv, quality)

    rows = y.shape[0]
    parts = min(STRIPS if spread is not None else 1, rows // STRIP_MIN_ROWS) or 1
    if parts == 1:
        return strip(0, rows)
    step = _ceil_div(_ceil_div(rows, parts), _MCU_ROWS) * _MCU_ROWS  # whole MCU rows
    interval = _ceil_div(y.shape[1], _MCU_ROWS) * step // _MCU_ROWS  # MCUs per strip
    if interval > jpeg.MAX_RESTART_INTERVAL:  # a huge picture: DRI holds 16 bits
        return strip(0, rows)
    bounds = [(top, min(rows, top + step)) for top in range(0, rows, step)]
    strips = _spread([functools.partial(strip, *b) for b in bounds], spread)
    return jpeg.join_strips(strips, rows, interval)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _spread(jobs: list[Callable[[], bytes]], pool: Executor | None) -> list[bytes]:
    """Run ``jobs``, the first in this thread and the others on ``pool``'s threads; a job no
    thread has taken when this one is done with its own is taken back and run here. So it
    never waits on a queue: with the pool busy, it is the serial encode."""
    futures = []
    if pool is not None:
        try:
            futures = [pool.submit(job) for job in jobs[1:]]
        except RuntimeError:  # the pool is shutting down
            futures = []
    try:
        results = [jobs[0]()]
        for n, job in enumerate(jobs[1:]):
            fut = futures[n] if n < len(futures) else None
            results.append(job() if fut is None or fut.cancel() else fut.result())
    finally:  # on a failure, strips not yet started are not encoded for nothing
        for fut in futures:
            fut.cancel()
    return results
