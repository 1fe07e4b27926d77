"""What a picture request may ask of the frame besides its format: its size, how it fits
``width`` x ``height`` (``fit``) and which part of the source it shows (``crop``).

Checks of values only, no imaging: the image query parser and the config checks share them.
Each raises ValueError with a message that the caller prefixes with the key it read.
"""

from __future__ import annotations

from typing import Any, Literal

Fit = Literal["contain", "cover", "fill"]
FITS: tuple[Fit, ...] = ("contain", "cover", "fill")
Crop = tuple[int, int, int, int]  # x, y, width, height in source pixels

MIN_SIDE = 2
MAX_SIDE = 8192  # the largest width or height a request may name (outputs are clamped too)


def parse_side(value: Any) -> int:
    """A ``width`` or ``height``: a whole number from MIN_SIDE to MAX_SIDE."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    if not MIN_SIDE <= value <= MAX_SIDE:
        raise ValueError(f"must be between {MIN_SIDE} and {MAX_SIDE}")
    return value


def parse_fit(value: Any) -> Fit:
    for fit in FITS:
        if value == fit:
            return fit
    raise ValueError("must be one of " + ", ".join(FITS))


def parse_crop(value: Any) -> Crop:
    """``"x,y,w,h"`` (a query) or ``[x, y, w, h]`` (a config): four whole numbers, ``x`` and
    ``y`` at least 0, ``w`` and ``h`` at least 1. Whether it lies inside the picture is known
    only when the picture is made."""
    parts = value.split(",") if isinstance(value, str) else value
    message = "must be x,y,w,h: four whole numbers, x and y at least 0, w and h at least 1"
    if not isinstance(parts, (list, tuple)) or len(parts) != 4:
        raise ValueError(message)
    numbers = []
    for part in parts:
        if isinstance(part, str) and part.isascii() and part.isdigit():
            part = int(part)
        if isinstance(part, bool) or not isinstance(part, int):
            raise ValueError(message)
        numbers.append(part)
    x, y, w, h = numbers
    if x < 0 or y < 0 or w < 1 or h < 1:
        raise ValueError(message)
    return x, y, w, h
