"""WHIP ingest (RFC 9725): ``POST /whip/NAME`` with an SDP offer publishes stream NAME.

201 Created with the SDP answer (ICE candidates inline) and ``Location`` of the session
resource; ``DELETE`` on that location ends the publish. Trickle ICE is not supported: PATCH is
answered 405, as the RFC allows. With ``[auth] token`` or ``users`` set, requests need
API credentials (checked for every HTTP API by the core), or with ``[auth] open_publish`` none
for a stream without its own key. A stream with a publish key (``[auth] publish_keys``) needs
it as the bearer token (``Authorization: Bearer <key>``, what WHIP clients send) or ``?key=``,
unless the request carries API credentials. Names follow the one publish-name rule (400).
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from aiortc import RTCPeerConnection

from ...core.app import APP_KEY, App
from ...core.errors import Refused, StreamNameInUse
from ...core.http import Route, guarded_route, open_route
from ...core.state import StateKey
from ...core.streams import Stream
from ...hooks import hookimpl
from .engine import engine_of, require

log = logging.getLogger(__name__)

MAX_OFFER_BYTES = 64 * 1024
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, PATCH, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Link",
}
# HTTP status of each refusal: the key is a credential, limits say whether to come back later
REFUSED_STATUS = {
    "bad_name": 400,
    "publish_key": 401,
    "plugin": 403,
    "max_publishers_per_ip": 429,
}


@dataclass(eq=False)
class WhipSession:
    id: str
    stream: Stream
    pc: RTCPeerConnection | None = None


WHIP_SESSIONS: StateKey[dict[str, WhipSession]] = StateKey("whip_sessions", dict)


def _sessions(app: App) -> dict[str, WhipSession]:
    return app.state.setdefault(WHIP_SESSIONS, {})


def _problem(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers=CORS)


async def publish(request: web.Request) -> web.Response:
    app = request.app[APP_KEY]
    name = request.match_info["name"]
    if request.content_type != "application/sdp":
        return _problem(415, "WHIP offers must be sent as application/sdp")
    if (request.content_length or 0) > MAX_OFFER_BYTES:
        return _problem(413, f"SDP offer larger than {MAX_OFFER_BYTES} bytes")
    offer = (await request.content.read(MAX_OFFER_BYTES + 1)).decode("utf-8", "replace")
    if len(offer) > MAX_OFFER_BYTES or not offer.startswith("v=0"):
        return _problem(400, "the body is not an SDP offer")
    remote = request.remote or ""
    session = WhipSession(
        str(uuid.uuid4()), app.new_stream(name, "whip", remote=remote, remote_ip=remote)
    )
    sessions = _sessions(app)

    async def end(reason: str) -> None:
        if sessions.pop(session.id, None) is not None:
            pc, session.pc = session.pc, None
            if pc is not None:
                await engine_of(app).close(pc)
            await app.unpublish(session.stream, reason)

    session.stream.terminator = end
    params = {k: v for k, v in request.query.items() if k != "access_token"}  # not for plugins
    user = await app.access.api_user(request)
    scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
    if user:
        params["user"] = user
    elif scheme.lower() == "bearer" and bearer.strip() and "key" not in params:
        params["key"] = bearer.strip()
    try:
        await app.admission.admit(session.stream, params, user=user)
    except StreamNameInUse:
        return _problem(409, f"stream {name!r} is already published")
    except Refused as exc:
        status = REFUSED_STATUS.get(exc.kind, 503)
        response = _problem(status, f"publish of {name!r} refused: {exc}")
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="streamsnap"'
        elif status in (429, 503):
            response.headers["Retry-After"] = "5"
        return response
    sessions[session.id] = session
    try:
        session.pc, answer = await engine_of(app).publish(
            session.stream, offer, on_closed=lambda state: end(f"WebRTC {state}")
        )
    except Exception as exc:
        await end("SDP negotiation failed")
        return _problem(400, f"cannot answer this offer: {exc}")
    await app.announce(session.stream)
    location = f"/whip/{name}/{session.id}"
    return web.Response(
        status=201,
        text=answer,
        content_type="application/sdp",
        headers={**CORS, "Location": location, "ETag": f'"{session.id}"'},
    )


async def delete(request: web.Request) -> web.Response:
    app = request.app[APP_KEY]
    session = _sessions(app).get(request.match_info["session"])
    if session is None or session.stream.name != request.match_info["name"]:
        return _problem(404, "no such WHIP session")
    await app.terminate(session.stream, "WHIP DELETE")
    return web.Response(status=200, headers=CORS)


async def patch(request: web.Request) -> web.Response:
    return web.Response(
        status=405,
        headers={**CORS, "Allow": "DELETE"},
        text="trickle ICE is not supported: candidates are in the answer\n",
    )


async def options(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={**CORS, "Accept-Post": "application/sdp"})


def _publisher(request: web.Request) -> bool:
    """A WHIP request may come without API credentials when it carries its stream's publish
    key (as the bearer token, what WHIP clients send, or ``?key=``), or, with ``[auth]
    open_publish``, for a stream without a key of its own. The publish itself is decided
    again by ``Admission.admit``."""
    auth = request.app[APP_KEY].auth
    key = auth.key_for(request.match_info["name"])
    if key is None:
        return auth.open_publish
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    offered = value.strip() if scheme.lower() == "bearer" else request.query.get("key", "")
    return hmac.compare_digest(offered.encode(), key.encode())


@hookimpl
def register_routes(app: App) -> list[Route]:
    return [
        guarded_route(web.post("/whip/{name}", publish), _publisher),
        open_route(web.options("/whip/{name}", options)),
        guarded_route(web.delete("/whip/{name}/{session}", delete), _publisher),
        guarded_route(web.patch("/whip/{name}/{session}", patch), _publisher),
        open_route(web.options("/whip/{name}/{session}", options)),
    ]


@hookimpl
async def lifespan(app: App) -> AsyncIterator[None]:
    require(app, "whip")
    yield
    for session in list(_sessions(app).values()):
        await app.terminate(session.stream, "server shutting down")
