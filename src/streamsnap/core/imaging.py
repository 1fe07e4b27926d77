"""Picture encoders: PNG (fpng, Pillow as the fallback), JPEG and WebP, with optional scaling.

All functions here are CPU-bound and blocking: they run in the snapshot worker pool.
"""

from __future__ import annotations

import io
import logging
from typing import Literal

import av
import numpy as np
from PIL import Image

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


def to_rgb(frame: av.VideoFrame, width: int | None = None, height: int | None = None) -> np.ndarray:
    # threads=1: swscale's default starts a pool of one thread per core for every frame it
    # converts, kept until that frame is freed; the snapshot pool already spreads the work
    w, h = target_size(frame.width, frame.height, width, height)
    if (w, h) != (frame.width, frame.height):
        frame = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA", threads=1)
        return frame.to_ndarray()
    return frame.to_ndarray(format="rgb24", threads=1)


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
