"""The REST API on ``http_port``: WCS's ``/rest-api/stream/*`` methods, image GETs, health.

Errors use the WCS body (``exception``, ``reason``, ``path``, ``error``, ``message``,
``timestamp``, ``status``) for every status, as the WCS snapshot page shows it for a timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from .._version import __version__
from ..core.app import APP_KEY, App
from ..core.errors import (
    SnapshotError,
    StreamNameInUse,
    StreamNotFound,
    StreamStale,
)
from ..core.http import (
    FAILURES,
    BadRequest,
    error_response,
    failure_response,
    json_body,
    open_route,
)
from ..core.imaging import FORMATS
from ..core.snapshot import Snapshot, SnapshotRequest, picture_headers
from ..core.streams import Stream
from ..core.supervisor import mask_credentials
from ..hooks import hookimpl
from .image_query import STALE_RETRY_S, image_request, instant

log = logging.getLogger(__name__)

OPENAPI = Path(__file__).resolve().parent.parent / "web" / "openapi.yaml"


def _app(request: web.Request) -> App:
    return request.app[APP_KEY]


def _client(request: web.Request) -> str:
    """The connection a request came on (``ip:port``), for coalescing a burst of clients."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""


async def _snapshot(request: web.Request, name: str, req: SnapshotRequest) -> Snapshot:
    """Take the snapshot within ``[limits] max_concurrent_snapshots``; failures are logged."""
    app = _app(request)
    try:
        with app.admission.snapshot_slot(name, request.remote or ""):
            return await app.snapshot(name, req)
    except SnapshotError as exc:
        log.warning("stream %s: %s snapshot failed: %s", mask_credentials(name), req.source, exc)
        raise


async def snapshot(request: web.Request) -> web.Response:
    """``POST /rest-api/stream/snapshot {"streamName"}`` → ``{"data": "<base64 PNG>"}``."""
    started = time.perf_counter()
    try:
        body = await json_body(request, ("streamName",))
        req = SnapshotRequest(
            source="rest",
            client=_client(request),
            pull_for=request.remote or "",
            at=instant(body.get("at"), "field 'at'"),
        )
        snap = await _snapshot(request, body["streamName"], req)
    except FAILURES as exc:
        return failure_response(request, exc)
    return web.Response(
        body=snap.rest_json,
        content_type="application/json",
        charset="utf-8",
        headers=picture_headers(snap, started),
    )


async def snapshot_image(request: web.Request) -> web.StreamResponse:
    """``GET /streams/NAME/snapshot.(png|jpg|webp)[?width=&height=&quality=&fit=&crop=&at=
    &stale=ok]``: the image (docs/images.md)."""
    started = time.perf_counter()
    name = request.match_info["name"]
    try:
        fmt = FORMATS[request.match_info["ext"]]
        req = dataclasses.replace(
            image_request(request, fmt, source="rest", client=_client(request)),
            at=instant(request.query.get("at"), "query parameter at"),
        )
        snap = await _snapshot(request, name, req)
    except StreamStale as exc:
        # an image URL polled by a dashboard: "try again", not "broken"
        headers = {"Retry-After": STALE_RETRY_S, "X-Stream-Stale": str(int(exc.quiet_s))}
        return error_response(request, 503, str(exc), headers=headers)
    except FAILURES as exc:
        return failure_response(request, exc)
    return web.Response(
        body=snap.data,
        content_type=snap.content_type,
        headers={
            "Cache-Control": "no-store",
            "X-Stream-Name": snap.stream_name.encode("unicode_escape").decode("ascii"),
            "X-Media-Session-Id": snap.media_session_id,
            "X-Frame-Index": str(snap.frame_index),
            "X-Frames-Behind": str(snap.frames_behind),
            "X-Snapshot-Timestamp": str(snap.taken_ms),
            **picture_headers(snap, started),
        },
    )


def _filters(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, arg, kind in (
        ("name", "name", str),
        ("mediaSessionId", "media_session_id", str),
        ("published", "published", bool),
        ("status", "status", str),
    ):
        if key in body:
            if not isinstance(body[key], kind):
                raise BadRequest(f"field {key!r} must be a {kind.__name__}")
            out[arg] = body[key]
    return out


def stream_json(stream: Stream) -> dict[str, Any]:
    """The WCS stream object (REST ``/stream/find``), with streamsnap's own extras; a
    pulled stream's name shows no credentials or secret query values."""
    frames = stream.frames
    now = time.monotonic()
    quiet = stream.stale_for(now)
    return {
        "appKey": stream.app_name,
        "mediaSessionId": stream.media_session_id,
        "name": mask_credentials(stream.name),
        "published": True,
        "hasVideo": stream.has_video,
        "hasAudio": stream.has_audio,
        "status": stream.status,
        "audioCodec": stream.audio_codec,
        "videoCodec": frames.codec_name,
        "record": False,
        "width": frames.width,
        "height": frames.height,
        "bitrate": frames.bitrate_kbps(),
        "fps": round(frames.fps(), 2),
        "gop": frames.gop_length,
        "createDate": stream.created_ms,
        "mediaType": "publish",
        "mediaProvider": stream.protocol.upper(),
        "protocol": stream.protocol,
        "framesIn": frames.frames_in,
        "info": stream.failure,
        "decode": "continuous" if frames.continuous else "lazy",
        "faults": _faults(stream),
        "stale": quiet > 0,
        # how long ago the newest video frame came (-1: none yet)
        "lastFrameAgeMs": int((now - frames.last_arrival) * 1000) if frames.last_arrival else -1,
        "historyS": frames.history.seconds,
    }


def _faults(stream: Stream) -> dict[str, str]:
    """What goes wrong around the stream, the frame store's own findings included."""
    faults = dict(stream.faults)
    if stream.frames.codec_error:
        faults["codec"] = stream.frames.codec_error
    quiet = stream.stale_for()
    if quiet:
        faults["stale"] = f"no video for {quiet:.1f} s"
    return faults


async def find(request: web.Request) -> web.Response:
    """``/rest-api/stream/find``: streams matching ``name``/``mediaSessionId``/``published``.

    A ``name`` that is not live but can be pulled (an ``rtsp://`` URL) starts the pull.
    """
    app = _app(request)
    try:
        body = await json_body(request)
        filters = _filters(body)
        if "name" in filters:
            with contextlib.suppress(StreamNotFound, StreamNameInUse):  # else: elsewhere?
                stream = await app.resolve(filters["name"], request.remote or "")
                filters["name"] = stream.name
        streams = app.streams.find(**filters)
        if not streams:
            return await _none_here(request, body)
    except FAILURES as exc:
        return failure_response(request, exc)
    return web.json_response([stream_json(s) for s in streams])


async def find_all(request: web.Request) -> web.Response:
    try:
        body = await json_body(request)  # no fields, but the same content rules
        answer = await _elsewhere(request, body)  # a cluster: every node's streams
    except FAILURES as exc:
        return failure_response(request, exc)
    if answer is not None:
        return answer
    streams = list(_app(request).streams)
    if not streams:
        return error_response(request, 404, "Stream not found")
    return web.json_response([stream_json(s) for s in streams])


async def terminate(request: web.Request) -> web.Response:
    """``/rest-api/stream/terminate``: end the matching streams (``{}`` ends them all)."""
    app = _app(request)
    try:
        body = await json_body(request)
        ids = body.get("mediaSessionIds")
        if ids is not None and (
            not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)
        ):
            raise BadRequest("field 'mediaSessionIds' must be a list of strings")
        streams = app.streams.find(**_filters(body))
        if ids is not None:
            streams = [s for s in streams if s.media_session_id in ids]
        if not streams:
            return await _none_here(request, body)
    except FAILURES as exc:
        return failure_response(request, exc)
    for stream in streams:
        log.info("stream %s: terminated over REST", stream.name)
        await app.terminate(stream)
    return web.Response(status=200)


async def _elsewhere(request: web.Request, body: dict[str, Any]) -> web.StreamResponse | None:
    """The answer a plugin gives for streams this node does not hold (``forward_request``)."""
    app = _app(request)
    return await app.pm.afirstresult("forward_request", app=app, request=request, body=body)


async def _none_here(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """No stream here matches: another server's answer (a cluster), else 404."""
    answer = await _elsewhere(request, body)
    return answer if answer is not None else error_response(request, 404, "Stream not found")


async def healthz(request: web.Request) -> web.Response:
    app = _app(request)
    return web.json_response(
        {"status": "ok", "version": __version__, "streams": len(app.streams), "ports": app.ports}
    )


async def openapi(request: web.Request) -> web.StreamResponse:
    """The OpenAPI description of this API."""
    return web.FileResponse(OPENAPI, headers={"Content-Type": "application/yaml"})


async def plugins(request: web.Request) -> web.Response:
    return web.json_response(
        [
            {"name": p.name, "version": p.version, "source": p.source, "hooks": list(p.hooks)}
            for p in _app(request).pm.describe()
        ]
    )


@hookimpl
def register_routes(app: App) -> list[web.RouteDef]:
    # POST only: a GET is what any <img src> on any web page can make a browser send
    routes = [
        web.post(f"/rest-api/stream/{path}", handler)
        for path, handler in (
            ("snapshot", snapshot),
            ("find", find),
            ("find_all", find_all),
            ("terminate", terminate),
        )
    ]
    routes += [
        web.get(r"/streams/{name:.+}/snapshot.{ext:png|jpg|jpeg|webp}", snapshot_image),
        open_route(web.get("/healthz", healthz)),
        web.get("/plugins", plugins),
        open_route(web.get("/openapi.yaml", openapi)),
    ]
    return routes
