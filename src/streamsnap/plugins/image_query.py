"""The query parameters of every image answer (``width``, ``height``, ``quality``, ``fit``,
``crop``, ``stale``; ``at`` for still images), read in one place for the image GET and the
MJPEG stream.

A bad value is a :class:`BadRequest` (400) naming the parameter and what it must be.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from ..core import framing
from ..core.http import BadRequest
from ..core.imaging import Format
from ..core.snapshot import SnapshotRequest


def int_param(request: web.Request, key: str, low: int, high: int) -> int | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {key}={raw!r} must be an integer") from None
    if not low <= value <= high:
        raise BadRequest(f"query parameter {key}={value} must be between {low} and {high}")
    return value


def image_request(
    request: web.Request, fmt: Format, *, source: str = "rest", client: str = ""
) -> SnapshotRequest:
    """The picture ``request`` asks for, in ``fmt``."""
    query = request.query
    fit = query.get("fit") or "fill"
    try:
        fit = framing.parse_fit(fit)
    except ValueError as exc:
        raise BadRequest(f"query parameter fit={fit!r} {exc}") from None
    crop = None
    if query.get("crop"):
        try:
            crop = framing.parse_crop(query["crop"])
        except ValueError as exc:
            raise BadRequest(f"query parameter crop={query['crop']!r} {exc}") from None
    return SnapshotRequest(
        format=fmt,
        width=int_param(request, "width", framing.MIN_SIDE, framing.MAX_SIDE),
        height=int_param(request, "height", framing.MIN_SIDE, framing.MAX_SIDE),
        quality=int_param(request, "quality", 1, 100) or 85,
        fit=fit,
        crop=crop,
        source=source,
        client=client,
        stale_ok=stale_ok(request),
    )


AT_FUTURE_MS = 1000  # clocks of the caller and the server may differ by this much
STALE_RETRY_S = "2"  # Retry-After of a stale stream's image answer


def stale_ok(request: web.Request) -> bool:
    """``?stale=ok``: the last picture of a stale stream is wanted anyway."""
    raw = request.query.get("stale")
    if raw is None:
        return False
    if raw != "ok":
        raise BadRequest(f"query parameter stale={raw!r}: the only value is 'ok'")
    return True


def instant(raw: Any, what: str) -> int | None:
    """An ``at`` instant (Unix ms) as given, checked: an integer not in the future."""
    if raw is None or raw == "":
        return None
    try:
        if not isinstance(raw, int | str) or isinstance(raw, bool):
            raise ValueError  # 1.5, true, [], {}: not an instant
        at = int(raw)
    except ValueError:
        raise BadRequest(f"{what} = {raw!r} must be an integer (Unix time in ms)") from None
    now = int(time.time() * 1000)
    if at > now + AT_FUTURE_MS:
        raise BadRequest(f"{what} = {at} is {at - now} ms in the future")
    return at
