"""The snapshot service: the current picture of a stream, decoded and encoded off the event loop.

Waits up to ``snapshot_taking_interval_ms`` for a first picture (checking
``snapshot_taking_attempts`` times, and at once when a keyframe arrives), decodes the newest
frame, encodes it in a bounded thread pool, coalesces concurrent requests for the same frame
and format into one encode, and keeps the result until a newer frame is asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections import Counter
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pybase64

from . import imaging, jpeg
from .errors import NotInHistory, SnapshotError, StreamNotFound, StreamStale
from .frames import OutOfHistory, Picture
from .framing import Crop, Fit
from .stats import Histogram

FRESHNESS_BUCKETS = (0, 1, 2, 4, 8, 16, 32)  # frames
# pictures kept per stream, one per variant asked for (format, size, quality), least recently
# made first out: ?width= takes thousands of values, the cache must not grow with them
MAX_VARIANTS = 16
PAST_AT_ONCE = 1  # pictures of past instants (?at=) decoded at once, per server
DEFAULT_QUALITY = 85  # JPEG and WebP

if TYPE_CHECKING:
    from collections.abc import Callable

    from .config import SnapshotConfig
    from .streams import Stream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotRequest:
    """What a caller asks for. ``width``/``height`` scale (one alone keeps the aspect ratio)."""

    format: imaging.Format = "png"
    width: int | None = None
    height: int | None = None
    quality: int = 85  # DEFAULT_QUALITY
    # with both width and height: how the picture meets that shape (see imaging.layout)
    fit: Fit = "fill"
    crop: Crop | None = None  # x, y, w, h in source pixels, cut before scaling
    source: str = "api"  # who asks: "rest", "websocket", "cli", "auto", ...
    # True: the picture of the newest frame, never one shared from just before (coalesce_ms);
    # auto-snapshots ask so, each file showing its own frame
    newest: bool = False
    # who asks (a connection's address, a WebSocket session): a burst from many clients shares
    # one picture while it is being read; "" for unknown
    client: str = ""
    # the client address a pull may be started for (REST POST, WebSocket); None: only live
    # streams are served (image GETs: any web page can make a browser send one)
    pull_for: str | None = None
    # Unix ms: the picture shown at that instant, from the stream's history (None: the newest)
    at: int | None = None
    stale_ok: bool = False  # a stale stream's last picture is wanted anyway (?stale=ok)

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.format, self.width, self.height, self.quality, self.fit, self.crop)


@dataclass
class Snapshot:
    """An encoded picture of a stream."""

    data: bytes
    format: str
    width: int
    height: int
    stream_name: str
    media_session_id: str = ""
    frame_index: int = -1  # which received video frame it shows
    pts: int = -1
    frames_behind: int = 0  # frames newer than the one shown that had arrived when asked
    taken_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    # Unix ms of the frame shown: when the server received it (no source gives a wall-clock
    # capture time this far: docs/images.md); -1: unknown
    frame_ms: int = -1
    gop: int = -1  # the frame store's keyframe group of the picture
    epoch: int = -1  # the frame store's source generation (see FrameStore.reset)
    # when it was asked for (monotonic), and how many frames the stream had received then
    asked: float = field(default_factory=time.monotonic, repr=False, compare=False)
    received: int = field(default=-1, repr=False, compare=False)
    # text forms of ``data`` (base64, the REST answer), made once and shared by every copy
    derived: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)
    # the clients answered with it since it was asked for, shared by every copy
    clients: set[str] = field(default_factory=set, repr=False, compare=False)
    # where this answer's time went, in ms: ("decode", 4.1), ("convert", 2.0), ("encode", 6.3);
    # a step with no time is how the picture came ("shared", "cached", "camera")
    timing: tuple[tuple[str, float], ...] = field(default=(), repr=False, compare=False)

    @property
    def content_type(self) -> str:
        return imaging.CONTENT_TYPES.get(self.format, "application/octet-stream")

    def base64(self) -> str:
        return self.base64_bytes.decode("ascii")

    @property
    def base64_bytes(self) -> bytes:
        """Made once per picture: every caller that shares the snapshot reuses it."""
        if "base64" not in self.derived:
            # SIMD base64: 0.03 ms for a 720p PNG, where the standard library takes 0.7-1.1
            self.derived["base64"] = pybase64.b64encode(self.data)
        return self.derived["base64"]

    @property
    def rest_json(self) -> bytes:
        """The WCS REST answer ``{"data": "<base64>"}``, made once per picture (base64 needs
        no JSON escaping, so it is not run through a JSON encoder)."""
        if "rest" not in self.derived:
            self.derived["rest"] = b'{"data":"' + self.base64_bytes + b'"}'
        return self.derived["rest"]


class SnapshotTimeout(SnapshotError):
    """No picture within ``snapshot_taking_interval_ms``."""


class SnapshotService:
    def __init__(self, config: SnapshotConfig, executor: Executor) -> None:
        self.config = config
        self.executor = executor
        # (media_session_id, request key) -> in-flight encode, shared by concurrent callers
        self._inflight: dict[tuple[str, tuple], asyncio.Future[Snapshot]] = {}
        # media_session_id -> {request key: last snapshot}; dropped with the stream, at most
        # MAX_VARIANTS keys each; written on the event loop only
        self._cache: dict[str, dict[tuple, Snapshot]] = {}
        # media_session_id -> {request key: frames the stream had received at the last request}
        self._seen: dict[str, dict[tuple, int]] = {}
        self._past_slots = asyncio.Semaphore(PAST_AT_ONCE)
        self.requests = 0
        self.shared = 0  # requests answered by a snapshot asked for just before (coalesce_ms)
        self.outcomes: Counter[str] = Counter()  # ok, timeout, ended, failed, cancelled
        self.encodes = 0
        self.decode_seconds = Histogram()  # bringing the stream's picture up to date
        self.encode_seconds = Histogram()  # scaling, colour conversion and image encoding
        self.frames_behind = Histogram(FRESHNESS_BUCKETS)

    def forget(self, stream: Stream) -> None:
        self._cache.pop(stream.media_session_id, None)
        self._seen.pop(stream.media_session_id, None)

    async def take(
        self,
        stream: Stream,
        request: SnapshotRequest | None = None,
        is_live: Callable[[Stream], bool] | None = None,
    ) -> Snapshot:
        """The current picture of ``stream``; raises :class:`SnapshotTimeout` without one."""
        self.requests += 1
        outcome = "cancelled"
        try:
            snap = await self._take(stream, request or SnapshotRequest(), is_live)
            outcome = "ok"
            return snap
        except SnapshotTimeout:
            outcome = "timeout"
            raise
        except StreamNotFound:
            outcome = "ended"
            raise
        except Exception:
            outcome = "failed"
            raise
        finally:
            self.outcomes[outcome] += 1

    async def _take(
        self,
        stream: Stream,
        request: SnapshotRequest,
        is_live: Callable[[Stream], bool] | None,
    ) -> Snapshot:
        if not request.stale_ok and request.at is None:  # the past of a stale stream is fine
            quiet = stream.stale_for()
            if quiet:
                raise StreamStale(
                    f"stream {stream.name!r} is stale: no video for {quiet:.1f} s while its "
                    f"source stays connected ([streams] stale_after_s = {stream.stale_after_s:g})",
                    quiet,
                )
        await self._wait_for_picture(stream, is_live)
        if request.at is not None:
            past = self._instant(stream, request.at)
            if past is not None:
                return await self._past_once(stream, request, past, is_live)
            request = dataclasses.replace(request, at=None)  # the newest frame: a live picture
        seen = self._seen.setdefault(stream.media_session_id, {})
        previous = seen.get(request.key)
        _keep(seen, request.key, stream.frames.frames_in)
        snap = self._recent(stream, request, previous)
        if snap is None:
            snap = await self._render_once(stream, request, is_live)
        if request.client:
            snap.clients.add(request.client)
        return snap

    @staticmethod
    def _instant(stream: Stream, at: int) -> tuple[int, int] | None:
        """``(GOP id, frame index)`` of the frame shown at ``at``; None when that is the newest
        frame received (a live picture serves it). Raises NotInHistory."""
        try:
            found = stream.frames.instant_of(at)
        except OutOfHistory as exc:
            raise _not_in_history(stream, at, exc) from None
        return None if found[1] >= stream.frames.newest_index else found

    async def _past_once(
        self,
        stream: Stream,
        request: SnapshotRequest,
        past: tuple[int, int],
        is_live: Callable[[Stream], bool] | None,
    ) -> Snapshot:
        """The picture of a past instant, rendered once for every request for the same frame
        and variant, kept among the stream's variants, and at most ``PAST_AT_ONCE`` at a time
        (each may decode a whole GOP: live pictures must not wait behind them)."""
        variant = (request.key, past)
        cached = self._cache.get(stream.media_session_id, {}).get(variant)
        if cached is not None and cached.epoch == stream.frames.epoch:
            return cached
        render = functools.partial(self._render_at, stream, request, time.monotonic())
        return await self._once(stream, variant, render, is_live, self._past_slots)

    async def _render_once(
        self,
        stream: Stream,
        request: SnapshotRequest,
        is_live: Callable[[Stream], bool] | None,
    ) -> Snapshot:
        """The picture for ``request``, rendered once for every request that comes meanwhile."""
        render = functools.partial(
            self._render, stream, request, stream.frames.frames_in, time.monotonic()
        )
        return await self._once(stream, request.key, render, is_live)

    async def _once(
        self,
        stream: Stream,
        variant: tuple,
        render: Callable[[], Snapshot],
        is_live: Callable[[Stream], bool] | None,
        slots: asyncio.Semaphore | None = None,
    ) -> Snapshot:
        """``render()`` in the worker pool, once for every caller asking for the same
        ``variant`` of ``stream`` meanwhile (within ``slots`` if given); the picture is then
        kept among the stream's variants."""
        key = (stream.media_session_id, variant)
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            async with slots or contextlib.nullcontext():
                snap = await asyncio.get_running_loop().run_in_executor(self.executor, render)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        else:
            if is_live is None or is_live(stream):  # an ended stream's cache is gone for good
                _keep(self._cache.setdefault(stream.media_session_id, {}), variant, snap)
            fut.set_result(snap)
            return snap
        finally:
            del self._inflight[key]

    async def _wait_for_picture(
        self, stream: Stream, is_live: Callable[[Stream], bool] | None
    ) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.snapshot_taking_interval_ms / 1000
        step = cfg.snapshot_taking_interval_ms / 1000 / cfg.snapshot_taking_attempts
        for _ in range(cfg.snapshot_taking_attempts):
            remaining = deadline - loop.time()
            if stream.frames.decodable or remaining <= 0:
                break
            if stream.failure:
                raise SnapshotError(stream.failure)
            if stream.frames.codec_error:
                raise SnapshotError(f"stream {stream.name!r}: {stream.frames.codec_error}")
            await stream.frames.wait_decodable(min(step, remaining))
            if stream.failure and not stream.frames.decodable:
                raise SnapshotError(stream.failure)
            if is_live is not None and not is_live(stream):
                raise StreamNotFound(f"stream {stream.name!r} ended")
        if stream.frames.codec_error:
            raise SnapshotError(f"stream {stream.name!r}: {stream.frames.codec_error}")
        if not stream.frames.decodable:
            raise SnapshotTimeout("Snapshot response timeout")

    def _recent(
        self, stream: Stream, request: SnapshotRequest, previous: int | None
    ) -> Snapshot | None:
        """Coalescing over time: requests that arrive together share one picture, as the
        requests that come while it is being made do. A wall of dashboards refreshing at once
        is read one request after another, over more than a frame interval on a busy machine;
        without this, those read after a frame arrived would decode and encode again for a
        picture 33 ms newer. A request shares the cached picture when it comes within
        ``coalesce_ms`` of the request it was made for and either at most one frame arrived
        since, or the burst it belongs to is still arriving: at most one frame since the
        previous request (``previous``: the frames received then), and the picture was not
        yet given to this client. A client polling on its own thus never gets a picture of
        more than one frame before its request. How fresh a shared picture is gets reported
        as it is (``frames_behind``)."""
        window = self.config.coalesce_ms / 1000
        if window <= 0 or request.newest:
            return None
        snap = self._cache.get(stream.media_session_id, {}).get(request.key)
        if snap is None or time.monotonic() - snap.asked > window:
            return None
        frames = stream.frames
        if snap.epoch != frames.epoch:
            return None  # the source went away and came back since
        if frames.frames_in - snap.received > 1:
            # the stream moved on: only a burst that is still arriving shares it further
            if previous is None or frames.frames_in - previous > 1:
                return None
            if not request.client or request.client in snap.clients:
                return None
        behind = frames.frames_behind_of(snap.gop, snap.pts)
        self.shared += 1
        self.frames_behind.observe(behind)
        return dataclasses.replace(snap, frames_behind=behind, timing=SHARED)

    def _render(
        self, stream: Stream, request: SnapshotRequest, received: int, asked: float
    ) -> Snapshot:
        """Worker thread: decode to the newest picture, encode it unless already cached.
        ``received``: frames the stream had received when asked (for the freshness figure),
        at ``asked`` (monotonic)."""
        t0 = time.perf_counter()
        # read before decoding: a picture is never labelled with a later source than its own
        epoch = stream.frames.epoch
        own = self._camera_jpeg(stream, request, epoch, asked, received)
        if own is not None:
            return own
        picture = stream.frames.decode_latest(fresh=True)
        t1 = time.perf_counter()
        self.decode_seconds.observe(t1 - t0)
        if picture is None:
            raise SnapshotError(_no_picture(stream))
        behind = stream.frames.frames_behind(picture, received)
        self.frames_behind.observe(behind)
        cached = self._cache.get(stream.media_session_id, {}).get(request.key)
        if cached is not None and cached.frame_index == picture.index:
            # still the newest picture: shared again, from this request on
            return dataclasses.replace(
                cached,
                frames_behind=behind,
                asked=asked,
                received=received,
                clients=set(),
                timing=(("decode", (t1 - t0) * 1000), ("cached", 0.0)),
            )
        return self._encode(stream, request, picture, epoch, behind, asked, received, t0, t1)

    def _camera_jpeg(
        self, stream: Stream, request: SnapshotRequest, epoch: int, asked: float, received: int
    ) -> Snapshot | None:
        """An MJPEG camera's own JPEG of the newest frame, untouched, when a JPEG of it is
        asked for as it is (no size, no crop, the default quality): no decode, no encode."""
        frames = stream.frames
        if (
            request.format != "jpeg"
            or frames.codec_name != "mjpeg"
            or request.width
            or request.height
            or request.crop
            or request.quality != DEFAULT_QUALITY
        ):
            return None
        newest = frames.newest_packet()
        size = jpeg.size(newest[1].data) if newest is not None else None
        if newest is None or size is None:
            return None  # not a plain JPEG (or nothing yet): decoded and encoded as usual
        gop, packet = newest
        self.frames_behind.observe(0)
        return Snapshot(
            data=packet.data,
            format="jpeg",
            width=size[0],
            height=size[1],
            stream_name=stream.name,
            media_session_id=stream.media_session_id,
            frame_index=packet.index,
            pts=packet.pts,
            frame_ms=packet.arrival,
            gop=gop,
            epoch=epoch,
            asked=asked,
            received=received,
            timing=(("camera", 0.0),),
        )

    def _render_at(self, stream: Stream, request: SnapshotRequest, asked: float) -> Snapshot:
        """Worker thread: the picture shown at ``request.at``, from the stream's history."""
        assert request.at is not None
        t0 = time.perf_counter()
        epoch = stream.frames.epoch
        try:
            picture = stream.frames.picture_at(request.at)
        except OutOfHistory as exc:
            raise _not_in_history(stream, request.at, exc) from None
        t1 = time.perf_counter()
        self.decode_seconds.observe(t1 - t0)
        return self._encode(stream, request, picture, epoch, 0, asked, -1, t0, t1)

    def _encode(
        self,
        stream: Stream,
        request: SnapshotRequest,
        picture: Picture,
        epoch: int,
        behind: int,
        asked: float,
        received: int,
        t0: float,
        t1: float,
    ) -> Snapshot:
        """Worker thread: scale, frame and encode ``picture`` (decoding began at ``t0`` and
        ended at ``t1``)."""
        frame = picture.frame
        plan = imaging.layout(
            frame.width, frame.height, request.width, request.height, request.fit, request.crop
        )
        if request.format == "jpeg" and imaging.yuv_jpeg_route(frame, plan):
            frame, full_range = imaging.yuv420(frame, plan)  # scaled or converted if need be
            t2 = time.perf_counter()
            data = imaging.yuv_jpeg(frame, full_range, request.quality, self.executor)
            size = plan.canvas
        else:
            rgb = imaging.to_rgb(frame, request.width, request.height, request.fit, request.crop)
            t2 = time.perf_counter()
            data = imaging.encode(rgb, request.format, request.quality, self.config.png_encoder)
            size = rgb.shape[1], rgb.shape[0]
        t3 = time.perf_counter()
        self.encode_seconds.observe(t3 - t1)
        self.encodes += 1
        return Snapshot(
            data=data,
            format=request.format,
            width=size[0],
            height=size[1],
            stream_name=stream.name,
            media_session_id=stream.media_session_id,
            frame_index=picture.index,
            pts=picture.pts,
            frames_behind=behind,
            frame_ms=picture.arrival,
            gop=picture.gop,
            epoch=epoch,
            asked=asked,
            received=received,
            timing=(
                ("decode", (t1 - t0) * 1000),
                ("convert", (t2 - t1) * 1000),
                ("encode", (t3 - t2) * 1000),
            ),
        )


def _not_in_history(stream: Stream, at: int, exc: OutOfHistory) -> NotInHistory:
    return NotInHistory(
        f"stream {stream.name!r}: no picture of the instant {at} is held: {exc} "
        f"([streams] history_s = {stream.frames.history.seconds:g})",
        exc.oldest_ms,
    )


def _no_picture(stream: Stream) -> str:
    """Why a stream with packets gave no picture: its decoder's words when it failed."""
    frames = stream.frames
    if frames.decode_errors and frames.last_decode_error:
        return (
            f"stream {stream.name!r}: video codec {frames.codec_name!r} could not be decoded "
            f"({frames.decoder}): {frames.last_decode_error}"
        )
    return f"stream {stream.name!r}: no decodable picture yet"


# a picture made for another request and given to this one too (coalescing)
SHARED: tuple[tuple[str, float], ...] = (("shared", 0.0),)
_TIMING_TEXT = {
    "decode": "bringing the picture up to date",
    "convert": "scaling and colour conversion",
    "encode": "image encoding",
    "shared": "the picture of a request just before",
    "cached": "the picture already encoded",
    "camera": "the camera's own JPEG",
    "forward": "the answer of the node that holds the stream",
    "total": "from the request to the picture",
}


def picture_headers(
    snap: Snapshot, started: float | None = None, now_ms: int | None = None
) -> dict[str, str]:
    """The headers of every image answer: ``X-Frame-Timestamp`` (Unix ms of the frame shown),
    ``X-Frame-Age-Ms`` (how old it was when answered) and ``Server-Timing`` (where the time
    went; ``started``: when the request came, ``time.perf_counter()``)."""
    frame_ms = snap.frame_ms if snap.frame_ms >= 0 else snap.taken_ms
    now = int(time.time() * 1000) if now_ms is None else now_ms
    headers = {"X-Frame-Timestamp": str(frame_ms), "X-Frame-Age-Ms": str(max(0, now - frame_ms))}
    steps = list(snap.timing)
    if started is not None:
        steps.append(("total", (time.perf_counter() - started) * 1000))
    if steps:
        headers["Server-Timing"] = ", ".join(
            f'{name};dur={ms:.2f};desc="{_TIMING_TEXT[name]}"'
            if ms
            else f'{name};desc="{_TIMING_TEXT[name]}"'
            for name, ms in steps
        )
    return headers


def _keep(mapping: dict[tuple, Any], key: tuple, value: Any) -> None:
    """Store ``value`` as the newest entry, dropping the oldest beyond MAX_VARIANTS."""
    mapping.pop(key, None)
    mapping[key] = value
    while len(mapping) > MAX_VARIANTS:
        del mapping[next(iter(mapping))]
