"""``GET /streams/NAME/stream.mjpeg``: a live stream as ``multipart/x-mixed-replace`` JPEG
parts, what Home Assistant's MJPEG camera, NVRs and a plain ``<img src>`` show.

Every viewer of one variant (stream, size, quality, fit, crop, fps) shares one producer that
encodes each new frame once, at most ``fps`` times a second, into a "latest" slot; a viewer
writes the latest part whenever its connection takes one, so a slow viewer skips frames
instead of queueing them. The producer stops with its last viewer; a viewer's answer ends
with the stream. ``[mjpeg]`` bounds the fps and the viewers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..core.app import APP_KEY, App
from ..core.config import setting
from ..core.errors import (
    ConfigError,
    NotAllowed,
    Refused,
    SnapshotError,
    StreamNameInUse,
    StreamNotFound,
    StreamStale,
)
from ..core.http import FAILURES, BadRequest, client_address, error_response, failure_response
from ..core.snapshot import Snapshot, SnapshotRequest, picture_headers
from ..core.state import StateKey
from ..core.streams import Stream
from ..core.supervisor import mask_credentials
from ..hooks import hookimpl
from .image_query import STALE_RETRY_S, image_request

log = logging.getLogger(__name__)

MIN_FPS = 0.1
# how often a waiting producer or viewer looks whether its viewers or its client are gone
IDLE_CHECK_S = 1.0
# how often a viewer whose connection is still full looks whether it can take the newest part
BACKLOG_POLL_S = 0.05

try:  # Linux: the bytes a socket's kernel send queue holds (SIOCOUTQ)
    from fcntl import ioctl
    from termios import TIOCOUTQ
except ImportError:  # pragma: no cover - elsewhere only this process's buffer is seen
    ioctl = TIOCOUTQ = None  # type: ignore[assignment]


@dataclass
class MjpegSettings:
    default_fps: float = setting(10.0, minimum=MIN_FPS)
    max_fps: float = setting(30.0, minimum=MIN_FPS, maximum=120)
    # viewers at once, on the whole server and from one address (0: no limit)
    max_viewers: int = setting(64, minimum=0)
    max_viewers_per_ip: int = setting(8, minimum=0)
    # a viewer that takes no part for this long while parts wait is let go, its slot freed
    stalled_viewer_s: float = setting(15.0, minimum=1.0, maximum=3600.0)

    def check(self) -> None:
        if self.default_fps > self.max_fps:
            raise ConfigError(
                f"[mjpeg] default_fps = {self.default_fps} is above max_fps = {self.max_fps}"
            )


class Variant:
    """One picture shape of one stream, made once per frame for all its viewers."""

    def __init__(self, key: tuple, stream: Stream, request: SnapshotRequest, fps: float):
        self.key = key
        self.stream = stream
        self.request = request
        self.interval = 1 / fps
        self.latest: Snapshot | None = None
        self.seq = 0  # parts published; a viewer remembers the last it wrote
        self.viewers = 0
        self.ended = False
        self.error: Exception | None = None  # why it ended before its first part
        self.taking = False
        self.task: asyncio.Task[None] | None = None
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def publish(self, snap: Snapshot) -> None:
        self.latest = snap
        self.seq += 1
        self._wake()

    def end(self, error: Exception | None = None) -> None:
        if not self.ended:
            self.ended, self.error = True, error
            self._wake()

    async def changed(self, seen: int, timeout: float) -> None:
        """Wait for a part newer than ``seen``, the end, or ``timeout`` seconds."""
        if self.seq == seen and not self.ended:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._changed), timeout)

    def _wake(self) -> None:
        self._changed.set_result(None)
        self._changed = asyncio.get_running_loop().create_future()


class MjpegHub:
    """The producers and viewers of this server's MJPEG streams."""

    def __init__(self, app: App, settings: MjpegSettings) -> None:
        self.app = app
        self.settings = settings
        self.variants: dict[tuple, Variant] = {}
        self.per_ip: Counter[str] = Counter()
        self.transports: set[asyncio.BaseTransport] = set()
        self.encodes = 0  # pictures made for viewers: one per frame shown per variant
        self.parts_sent = 0
        self.parts_skipped = 0  # newer parts came while a viewer was still taking one
        self.stalled = 0  # viewers let go: they took nothing for [mjpeg] stalled_viewer_s

    @property
    def viewers(self) -> int:
        return sum(self.per_ip.values())

    def admit(self, name: str, ip: str) -> None:
        """``[mjpeg] max_viewers`` and ``max_viewers_per_ip``; raises :class:`Refused`."""
        cfg = self.settings
        if cfg.max_viewers and self.viewers >= cfg.max_viewers:
            kind = "mjpeg_max_viewers"
            message = (
                f"server at its limit of {cfg.max_viewers} MJPEG viewers ([mjpeg] max_viewers)"
            )
        elif cfg.max_viewers_per_ip and self.per_ip[ip] >= cfg.max_viewers_per_ip:
            kind = "mjpeg_max_viewers_per_ip"
            message = (
                f"{ip} already watches {cfg.max_viewers_per_ip} MJPEG streams "
                "([mjpeg] max_viewers_per_ip)"
            )
        else:
            return
        self.app.refused[kind] += 1
        log.warning("stream %s: MJPEG viewer %s refused: %s", mask_credentials(name), ip, message)
        raise Refused(kind, message)

    def join(self, stream: Stream, request: SnapshotRequest, fps: float, ip: str) -> Variant:
        key = (stream.media_session_id, request.key, fps)
        variant = self.variants.get(key)
        if variant is None or variant.ended:
            variant = self.variants[key] = Variant(key, stream, request, fps)
            variant.task = self.app.spawn(self._produce(variant), name=f"mjpeg:{stream.name}")
        variant.viewers += 1
        self.per_ip[ip] += 1
        self.app.decoding.watch(stream, True)
        return variant

    def release(self, ip: str) -> None:
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]

    def leave(self, variant: Variant, ip: str) -> None:
        variant.viewers -= 1
        self.release(ip)
        self.app.decoding.watch(variant.stream, False)
        if variant.viewers == 0:
            self._drop(variant)
            # not while it takes a picture: an image GET may share that encode and would see
            # the cancellation; the producer sees it has no viewers once the picture is made
            if variant.task is not None and not variant.taking:
                variant.task.cancel()

    def stream_ended(self, stream: Stream) -> None:
        for variant in list(self.variants.values()):
            if variant.stream is stream:
                variant.end()
                self._drop(variant)

    def close(self) -> None:
        for variant in list(self.variants.values()):
            variant.end()
            if variant.task is not None:
                variant.task.cancel()
        self.variants.clear()

    def _drop(self, variant: Variant) -> None:
        if self.variants.get(variant.key) is variant:
            del self.variants[variant.key]

    async def _produce(self, variant: Variant) -> None:
        """Encode each new frame of the stream once, at most ``fps`` times a second."""
        app, stream = self.app, variant.stream
        loop = asyncio.get_running_loop()
        seen = -1  # the newest frame received when the last picture was asked for
        due = loop.time()
        try:
            while variant.viewers and app.is_live(stream):
                # the first picture is asked for at once: take() waits for the stream's
                # first frame, and answers a timeout in time for the viewer's request
                if variant.latest is not None:
                    if not await stream.frames.wait_newer(seen, IDLE_CHECK_S):
                        continue
                    delay = due - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                        if not variant.viewers:
                            break
                started = loop.time()
                seen = stream.frames.newest_index
                stream.touch()  # a pulled camera stays pulled while it is watched
                app.decoding.note_request(stream)
                variant.taking = True
                try:
                    snap = await app.snapshots.take(stream, variant.request, is_live=app.is_live)
                except StreamNotFound:
                    break
                except (SnapshotError, NotAllowed) as exc:
                    if variant.latest is None:
                        variant.end(exc)
                        return
                    log.debug("stream %s: MJPEG frame skipped: %s", stream.name, exc)
                    continue
                finally:
                    variant.taking = False
                last = variant.latest
                if last is None or (snap.frame_index, snap.epoch) != (last.frame_index, last.epoch):
                    self.encodes += 1
                    variant.publish(snap)
                    # the rate counts parts: a frame that gave no new picture (the decoder
                    # still holds it back for reordering) is tried again at the next one
                    due = started + variant.interval
        finally:
            variant.end()
            self._drop(variant)

    def buffered_bytes(self) -> int:
        return sum(_queued(t) for t in self.transports)


MJPEG: StateKey[MjpegHub] = StateKey("mjpeg", MjpegHub)


def _fps(request: web.Request, settings: MjpegSettings) -> float:
    raw = request.query.get("fps")
    if not raw:
        return settings.default_fps
    try:
        fps = float(raw)
    except ValueError:
        raise BadRequest(f"query parameter fps={raw!r} must be a number") from None
    if not MIN_FPS <= fps <= settings.max_fps:  # NaN too
        raise BadRequest(
            f"query parameter fps={raw} must be between {MIN_FPS} and {settings.max_fps:g} "
            "([mjpeg] max_fps)"
        )
    return fps


async def _live_stream(app: App, name: str) -> Stream:
    """The stream held here (a stream another node holds was passed on to it before); like an
    image GET, an MJPEG stream never starts a pull."""
    try:
        stream = await app.resolve(name, None)
    except StreamNameInUse:  # a source another server pulls
        raise StreamNotFound(f"stream {name!r} not found") from None
    if not app.is_live(stream):
        raise StreamNotFound(f"stream {name!r} ended")
    return stream


def _part_head(boundary: bytes, snap: Snapshot, first: bool) -> bytes:
    headers = {
        "Content-Type": "image/jpeg",
        "Content-Length": str(len(snap.data)),
        "X-Frame-Index": str(snap.frame_index),
        **picture_headers(snap),
    }
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    # the CRLF before a boundary belongs to the boundary: the JPEG bytes are written as they are
    return (b"" if first else b"\r\n") + b"--" + boundary + b"\r\n" + lines.encode() + b"\r\n"


def _queued(transport: Any) -> int:
    """What a viewer's connection holds that its viewer has not taken: in this process, and
    in the kernel's send queue, which Linux lets grow to megabytes (hundreds of small parts,
    seconds old when a paused viewer reads them)."""
    held = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if ioctl is not None and sock is not None:
        with contextlib.suppress(OSError, ValueError):
            held += struct.unpack("i", ioctl(sock.fileno(), TIOCOUTQ, b"\0\0\0\0"))[0]
    return held


async def stream_mjpeg(request: web.Request) -> web.StreamResponse:
    """``GET /streams/NAME/stream.mjpeg[?fps=&width=&height=&quality=&fit=&crop=]``."""
    app = request.app[APP_KEY]
    hub = app.state[MJPEG]
    name = request.match_info["name"]
    ip = client_address(request)  # a viewer another node passed on: the viewer's own address
    try:
        fps = _fps(request, hub.settings)
        picture = image_request(request, "jpeg", source="mjpeg")
        # each part shows its own frame, never one shared from just before (coalesce_ms)
        picture = dataclasses.replace(picture, newest=True)
        if app.streams.lookup(name) is None:  # perhaps held by another node: its answer
            hub.admit(name, ip)  # a viewer here, whoever holds the stream
            hub.per_ip[ip] += 1
            try:
                answer = await app.pm.afirstresult(
                    "forward_request", app=app, request=request, body={"streamName": name}
                )
            finally:
                hub.release(ip)
            if answer is not None:
                return answer
        stream = await _live_stream(app, name)
        hub.admit(name, ip)
    except Refused as exc:
        if exc.kind == "mjpeg_max_viewers_per_ip":  # this client's own share: 429
            return error_response(request, 429, str(exc), headers={"Retry-After": "1"})
        return failure_response(request, exc)
    except FAILURES as exc:
        return failure_response(request, exc)
    variant = hub.join(stream, picture, fps, ip)
    try:
        while variant.latest is None and not variant.ended:
            await variant.changed(0, IDLE_CHECK_S)
        if variant.latest is None:
            if isinstance(variant.error, StreamStale):  # as the image GET: try again later
                headers = {"Retry-After": STALE_RETRY_S}
                return error_response(request, 503, str(variant.error), headers=headers)
            return failure_response(request, variant.error or StreamNotFound("stream ended"))
        return await _serve(request, hub, variant)
    finally:
        hub.leave(variant, ip)


async def _serve(request: web.Request, hub: MjpegHub, variant: Variant) -> web.StreamResponse:
    boundary = b"streamsnap" + secrets.token_hex(8).encode()
    resp = web.StreamResponse(
        headers={
            "Content-Type": f"multipart/x-mixed-replace; boundary={boundary.decode()}",
            "Cache-Control": "no-store",
            "X-Stream-Name": variant.stream.name.encode("unicode_escape").decode("ascii"),
        }
    )
    await resp.prepare(request)
    transport = request.transport
    if transport is None:
        return resp  # the viewer left already
    hub.transports.add(transport)
    seen = 0  # the last part written
    last_size = 0
    taken = time.monotonic()  # when the viewer last took what it was sent
    stalled_s = hub.settings.stalled_viewer_s
    try:
        while not transport.is_closing():
            snap, seq = variant.latest, variant.seq
            fresh = seq > seen and snap is not None
            # one part in flight at most: while the connection still holds more than the
            # previous part, the newest waits, and newer ones replace it
            if fresh and snap is not None and (not seen or _queued(transport) <= last_size):
                if seen:
                    hub.parts_skipped += seq - seen - 1
                head = _part_head(boundary, snap, first=not seen)
                # a viewer that stops reading would hold the write (and its viewer slot)
                # for ever: it gets stalled_s to take a part
                await asyncio.wait_for(resp.write(head + snap.data), stalled_s)
                hub.parts_sent += 1
                seen, last_size = seq, len(head) + len(snap.data)
                taken = time.monotonic()
                continue
            if fresh and time.monotonic() - taken > stalled_s:
                raise TimeoutError  # parts are waiting and the viewer takes none
            if variant.ended:
                await resp.write(b"\r\n--" + boundary + b"--\r\n")
                await resp.write_eof()
                break
            if fresh:
                await variant.changed(seq, BACKLOG_POLL_S)
            else:
                await variant.changed(seen, IDLE_CHECK_S)
    except ConnectionError:  # the viewer left while a part was being written
        pass
    except TimeoutError:
        hub.stalled += 1
        log.warning(
            "stream %s: MJPEG viewer %s took nothing for %g s ([mjpeg] stalled_viewer_s): let go",
            variant.stream.name,
            request.remote,
            stalled_s,
        )
        transport.abort()
    finally:
        hub.transports.discard(transport)
    return resp


@hookimpl
def settings_sections() -> dict[str, type]:
    return {"mjpeg": MjpegSettings}


@hookimpl
async def lifespan(app: App) -> AsyncIterator[None]:
    hub = MjpegHub(app, app.config.of(MjpegSettings))
    app.state[MJPEG] = hub
    yield
    hub.close()  # viewers get the closing boundary, before the HTTP server stops
    app.state.pop(MJPEG)


@hookimpl
def on_unpublish(stream: Stream, app: App) -> None:
    hub = app.state.get(MJPEG)
    if hub is not None:
        hub.stream_ended(stream)


@hookimpl
def register_routes(app: App) -> list[web.RouteDef]:
    # a plain route: it needs the API credentials when [auth] is on, as the image GET does
    return [web.get(r"/streams/{name:.+}/stream.mjpeg", stream_mjpeg)]


@hookimpl
def collect_metrics(app: App) -> list[Any]:
    hub = app.state.get(MJPEG)
    if hub is None:
        return []
    return [
        ("streamsnap_mjpeg_viewers", "gauge", "MJPEG viewers connected.", [(hub.viewers, None)]),
        (
            "streamsnap_mjpeg_producers",
            "gauge",
            "MJPEG variants being made (stream, size, quality, fit, crop, fps).",
            [(len(hub.variants), None)],
        ),
        (
            "streamsnap_mjpeg_encodes_total",
            "counter",
            "Pictures made for MJPEG viewers: one per frame shown per variant, whatever the "
            "number of its viewers.",
            [(hub.encodes, None)],
        ),
        (
            "streamsnap_mjpeg_parts_sent_total",
            "counter",
            "MJPEG parts written to viewers.",
            [(hub.parts_sent, None)],
        ),
        (
            "streamsnap_mjpeg_parts_skipped_total",
            "counter",
            "MJPEG parts a viewer never got: newer ones came while it was still reading.",
            [(hub.parts_skipped, None)],
        ),
        (
            "streamsnap_mjpeg_viewers_stalled_total",
            "counter",
            "MJPEG viewers let go: they took no part for [mjpeg] stalled_viewer_s while parts "
            "were waiting.",
            [(hub.stalled, None)],
        ),
        (
            "streamsnap_mjpeg_buffered_bytes",
            "gauge",
            "Bytes written to MJPEG viewers that this process still holds.",
            [(hub.buffered_bytes(), None)],
        ),
    ]
