"""The REST API on ``http_port``: WCS's ``/rest-api/stream/*`` methods, image GETs, health.

Errors use the WCS body (``exception``, ``reason``, ``path``, ``error``, ``message``,
``timestamp``, ``status``) for every status, as the WCS snapshot page shows it for a timeout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from .._version import __version__
from ..core.app import APP_KEY, App
from ..core.errors import (
    InvalidStreamName,
    NotAllowed,
    Refused,
    SnapshotError,
    StreamNotFound,
)
from ..core.imaging import FORMATS
from ..core.snapshot import SnapshotRequest
from ..core.supervisor import mask_credentials
from ..hooks import hookimpl

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
OPENAPI = Path(__file__).resolve().parent.parent / "web" / "openapi.yaml"
MAX_IMAGE_SIDE = 8192

_EXCEPTIONS = {
    400: "com.flashphoner.rest.server.exception.BadRequestException",
    403: "com.flashphoner.rest.server.exception.ForbiddenException",
    404: "com.flashphoner.rest.server.exception.NotFoundException",
    413: "com.flashphoner.rest.server.exception.BadRequestException",
    415: "com.flashphoner.rest.server.exception.UnsupportedMediaTypeException",
    429: "com.flashphoner.rest.server.exception.TooManyRequestsException",
    500: "com.flashphoner.rest.server.exception.InternalErrorException",
    503: "com.flashphoner.rest.server.exception.ServiceUnavailableException",
}
_ERRORS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def error_response(
    request: web.Request, status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """A WCS-shaped error body."""
    ts = int(time.time() * 1000)
    exception = _EXCEPTIONS.get(status, _EXCEPTIONS[500])
    error = _ERRORS.get(status, "Error")
    body = {
        "exception": exception,
        "reason": f"{exception}, {error}, {message}, ts: {ts}, path: {request.path}",
        "path": request.path,
        "error": error,
        "message": message,
        "timestamp": ts,
        "status": status,
    }
    return web.json_response(body, status=status, headers=headers)


def refused_response(request: web.Request, exc: Refused) -> web.Response:
    """A limit reached: 429 for one client's own share, else 503; try again shortly."""
    status = 429 if exc.kind == "max_pulls_per_ip" else 503
    return error_response(request, status, str(exc), headers={"Retry-After": "1"})


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def _json_body(request: web.Request, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The request's JSON object (empty for no body); BadRequest with a precise message.

    Every REST method needs ``Content-Type: application/json``, also without a body: a web page
    can send any other type (a form, ``text/plain``, a body-less ``fetch``) to this server from
    a user's browser without the browser asking the server first (CORS preflight)."""
    if request.content_type != "application/json":
        given = request.headers.get("Content-Type", "none")
        raise BadRequest(
            f"Content-Type {given} refused: REST methods need Content-Type: application/json",
            415,
        )
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadRequest(
            f"request body of {request.content_length} bytes exceeds {MAX_BODY} bytes", 413
        )
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise BadRequest(f"request body exceeds {MAX_BODY} bytes", 413)
    if not raw.strip():
        body: Any = {}
    else:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    for key in required:
        if key not in body:
            raise BadRequest(f"missing required field {key!r}")
        if not isinstance(body[key], str) or not body[key]:
            raise BadRequest(f"field {key!r} must be a non-empty string")
    return body


def _app(request: web.Request) -> App:
    return request.app[APP_KEY]


def _client(request: web.Request) -> str:
    """The connection a request came on (``ip:port``), for coalescing a burst of clients."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""


async def snapshot(request: web.Request) -> web.Response:
    """``POST /rest-api/stream/snapshot {"streamName"}`` → ``{"data": "<base64 PNG>"}``."""
    try:
        body = await _json_body(request, ("streamName",))
    except BadRequest as exc:
        return error_response(request, exc.status, str(exc))
    name = body["streamName"]
    app = _app(request)
    req = SnapshotRequest(source="rest", client=_client(request), pull_for=request.remote or "")
    try:
        with app.snapshot_slot(name, request.remote or ""):
            snap = await app.snapshot(name, req)
    except Refused as exc:
        return refused_response(request, exc)
    except StreamNotFound:
        return error_response(request, 404, "Stream not found")
    except InvalidStreamName as exc:
        return error_response(request, 400, str(exc))
    except NotAllowed as exc:
        return error_response(request, exc.status, str(exc))
    except SnapshotError as exc:
        log.warning("stream %s: REST snapshot failed: %s", mask_credentials(name), exc)
        return error_response(request, 500, str(exc) or "Snapshot taking error")
    return web.Response(body=snap.rest_json, content_type="application/json", charset="utf-8")


def _int_param(request: web.Request, key: str, low: int, high: int) -> int | None:
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


async def snapshot_image(request: web.Request) -> web.StreamResponse:
    """``GET /streams/NAME/snapshot.(png|jpg|webp)[?width=&height=&quality=]``: the image."""
    name = request.match_info["name"]
    try:
        fmt = FORMATS[request.match_info["ext"]]
        req = SnapshotRequest(
            format=fmt,
            width=_int_param(request, "width", 2, MAX_IMAGE_SIDE),
            height=_int_param(request, "height", 2, MAX_IMAGE_SIDE),
            quality=_int_param(request, "quality", 1, 100) or 85,
            source="rest",
            client=_client(request),
        )
    except BadRequest as exc:
        return error_response(request, exc.status, str(exc))
    app = _app(request)
    try:
        with app.snapshot_slot(name, request.remote or ""):
            snap = await app.snapshot(name, req)
    except Refused as exc:
        return refused_response(request, exc)
    except StreamNotFound:
        return error_response(request, 404, "Stream not found")
    except InvalidStreamName as exc:
        return error_response(request, 400, str(exc))
    except NotAllowed as exc:
        return error_response(request, exc.status, str(exc))
    except SnapshotError as exc:
        log.warning("stream %s: image snapshot failed: %s", mask_credentials(name), exc)
        return error_response(request, 500, str(exc) or "Snapshot taking error")
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


async def find(request: web.Request) -> web.Response:
    """``/rest-api/stream/find``: streams matching ``name``/``mediaSessionId``/``published``.

    A ``name`` that is not live but can be pulled (an ``rtsp://`` URL) starts the pull.
    """
    app = _app(request)
    try:
        filters = _filters(await _json_body(request))
        if "name" in filters:
            with contextlib.suppress(StreamNotFound):
                stream = await app.resolve(filters["name"], request.remote or "")
                filters["name"] = stream.name
        streams = app.streams.find(**filters)
    except BadRequest as exc:
        return error_response(request, exc.status, str(exc))
    except InvalidStreamName as exc:
        return error_response(request, 400, str(exc))
    except NotAllowed as exc:
        return error_response(request, exc.status, str(exc))
    except Refused as exc:
        return refused_response(request, exc)
    except SnapshotError as exc:
        return error_response(request, 500, str(exc))
    if not streams:
        return error_response(request, 404, "Stream not found")
    return web.json_response([s.describe() for s in streams])


async def find_all(request: web.Request) -> web.Response:
    try:
        await _json_body(request)  # no fields, but the same content rules
    except BadRequest as exc:
        return error_response(request, exc.status, str(exc))
    streams = list(_app(request).streams)
    if not streams:
        return error_response(request, 404, "Stream not found")
    return web.json_response([s.describe() for s in streams])


async def terminate(request: web.Request) -> web.Response:
    """``/rest-api/stream/terminate``: end the matching streams (``{}`` ends them all)."""
    app = _app(request)
    try:
        body = await _json_body(request)
        ids = body.get("mediaSessionIds")
        if ids is not None and (
            not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)
        ):
            raise BadRequest("field 'mediaSessionIds' must be a list of strings")
        streams = app.streams.find(**_filters(body))
    except BadRequest as exc:
        return error_response(request, exc.status, str(exc))
    if ids is not None:
        streams = [s for s in streams if s.media_session_id in ids]
    if not streams:
        return error_response(request, 404, "Stream not found")
    for stream in streams:
        log.info("stream %s: terminated over REST", stream.name)
        await app.terminate(stream)
    return web.Response(status=200)


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
        web.get("/healthz", healthz),
        web.get("/plugins", plugins),
        web.get("/openapi.yaml", openapi),
    ]
    return routes
