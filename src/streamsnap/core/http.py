"""The WCS shape of HTTP API answers, in one place: error bodies, the JSON request body rule,
and the answer for each way a stream request fails (REST, pulls, unmatched API paths).

Every error uses the WCS body (``exception``, ``reason``, ``path``, ``error``, ``message``,
``timestamp``, ``status``), as the WCS snapshot page shows it for a timeout.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .errors import (
    InvalidStreamName,
    NotAllowed,
    NotInHistory,
    Refused,
    SnapshotError,
    StreamNotFound,
    Unavailable,
)

MAX_BODY = 64 * 1024

# Who may use a route when [auth] is on: a plugin says so where it registers the route.
Guard = Callable[[web.Request], bool]  # True: this request may pass without API credentials


@dataclass(frozen=True)
class Route:
    """A route a plugin contributes with its access: ``"api"`` (API credentials when
    ``[auth]`` is on: the default for every route a plugin returns plainly), ``"open"`` (pages,
    health), or a guard that lets some requests pass on their own terms (a WHIP publisher's
    stream key) and leaves the others to the API credentials."""

    definition: web.AbstractRouteDef
    access: str | Guard = "api"


def open_route(definition: web.AbstractRouteDef) -> Route:
    """``definition`` served without credentials, also when ``[auth]`` is on."""
    return Route(definition, "open")


def guarded_route(definition: web.AbstractRouteDef, guard: Guard) -> Route:
    """``definition`` open to the requests ``guard`` accepts, else to API credentials."""
    return Route(definition, guard)


_EXCEPTIONS = {
    400: "com.flashphoner.rest.server.exception.BadRequestException",
    403: "com.flashphoner.rest.server.exception.ForbiddenException",
    404: "com.flashphoner.rest.server.exception.NotFoundException",
    405: "com.flashphoner.rest.server.exception.MethodNotAllowedException",
    413: "com.flashphoner.rest.server.exception.BadRequestException",
    410: "com.flashphoner.rest.server.exception.NotFoundException",
    415: "com.flashphoner.rest.server.exception.UnsupportedMediaTypeException",
    429: "com.flashphoner.rest.server.exception.TooManyRequestsException",
    500: "com.flashphoner.rest.server.exception.InternalErrorException",
    503: "com.flashphoner.rest.server.exception.ServiceUnavailableException",
}
_ERRORS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    410: "Gone",
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


RAW_BODY: web.RequestKey[bytes] = web.RequestKey("streamsnap_raw_body", bytes)
# the client a request is made for, when a plugin proved it was passed on for one (another
# node of a cluster); per-client limits count that client, not the node that passed it on
CLIENT: web.RequestKey[str] = web.RequestKey("streamsnap_client", str)


def client_address(request: web.Request) -> str:
    """The address of the client the request is made for (:data:`CLIENT`, else the peer)."""
    return request.get(CLIENT) or request.remote or ""


async def read_body(request: web.Request) -> bytes:
    """The request's body, at most ``MAX_BODY + 1`` bytes, read once and kept on the request
    (a plugin that checks it, e.g. a signature, and the handler both read it)."""
    if RAW_BODY not in request:
        request[RAW_BODY] = await request.content.read(MAX_BODY + 1)
    return request[RAW_BODY]


async def json_body(request: web.Request, required: tuple[str, ...] = ()) -> dict[str, Any]:
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
    raw = await read_body(request)
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


def failure_response(request: web.Request, exc: Exception) -> web.Response:
    """The answer for a stream request that failed with ``exc`` (one of streamsnap's errors or
    BadRequest); anything else is re-raised."""
    if isinstance(exc, BadRequest):
        return error_response(request, exc.status, str(exc))
    if isinstance(exc, Refused):
        return refused_response(request, exc)
    if isinstance(exc, StreamNotFound):
        return error_response(request, 404, "Stream not found")
    if isinstance(exc, InvalidStreamName):
        return error_response(request, 400, str(exc))
    if isinstance(exc, NotAllowed):
        return error_response(request, exc.status, str(exc))
    if isinstance(exc, NotInHistory):
        return error_response(request, 410, str(exc))
    if isinstance(exc, SnapshotError):
        return error_response(request, 500, str(exc) or "Snapshot taking error")
    if isinstance(exc, Unavailable):
        return error_response(request, 503, str(exc), headers={"Retry-After": "1"})
    raise exc


# what a stream request may fail with: caught and answered by failure_response
FAILURES = (
    BadRequest,
    Refused,
    StreamNotFound,
    InvalidStreamName,
    NotAllowed,
    SnapshotError,
    Unavailable,
)
