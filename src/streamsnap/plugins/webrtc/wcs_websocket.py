"""The WCS-compatible WebSocket API (``ws_port``, any path): what the Flashphoner WebSDK speaks.

This module is the server: the listener, the Origin rule, and the players of every stream;
each socket is a :class:`~.wcs_session.WcsSession`, which holds the messages and their
answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import WSCloseCode, WSMsgType, web
from yarl import URL

from ...core.app import App
from ...core.listeners import host_of, make_runner
from ...core.state import StateKey
from ...core.streams import Stream
from ...hooks import hookimpl
from .engine import engine_of, require
from .settings import WebRtcSettings
from .wcs_session import STOPPED_BY_PUBLISHER, Player, WcsSession

log = logging.getLogger(__name__)

# A socket that has not sent ``connection`` this long after opening is closed.
CONNECTION_TIMEOUT_S = 15.0


class WcsApi:
    """The WebSocket server on ``ws_port`` and the players of every stream."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.engine = engine_of(app)
        self.sessions: set[WcsSession] = set()
        self._players: dict[str, set[Player]] = {}
        self._runner: web.AppRunner | None = None

    def add_player(self, player: Player) -> None:
        self._players.setdefault(player.name, set()).add(player)

    def remove_player(self, player: Player) -> None:
        players = self._players.get(player.name)
        if players is not None:
            players.discard(player)
            if not players:
                del self._players[player.name]

    def players_of(self, name: str) -> list[Player]:
        return list(self._players.get(name, ()))

    async def stream_ended(self, stream: Stream) -> None:
        for player in self.players_of(stream.name):
            await player.session._end_player(player, "STOPPED", STOPPED_BY_PUBLISHER)

    def media_session_in_use(self, msid: str) -> bool:
        return bool(self.app.streams.find(media_session_id=msid)) or any(
            msid in s.publications or msid in s.players for s in self.sessions
        )

    def origin_refusal(self, request: web.Request) -> str | None:
        """Why the browser page that opens this socket may not use the API, or None. Pages of
        the host the request was made to (the server's own) and of ``[server] allowed_origins``
        may; a client that sends no Origin is no browser page."""
        origin = request.headers.get("Origin")
        if origin is None:
            return None
        origin = origin.strip().lower().rstrip("/")
        allowed = {o.strip().lower().rstrip("/") for o in self.app.config.server.allowed_origins}
        if "*" in allowed or origin in allowed:
            return None
        try:
            origin_host = URL(origin).host
        except ValueError:
            origin_host = None
        host = request.headers.get("Host")
        if origin_host and host is not None and host_of(origin_host) == host_of(host):
            return None
        return f"Origin {origin} is not in [server] allowed_origins"

    def _no_connection(self, session: WcsSession) -> None:
        if session.established or session.ws.closed:
            return
        log.warning(
            "websocket %s: no connection message within %g s: closing",
            session.peer,
            CONNECTION_TIMEOUT_S,
        )
        self.app.spawn(
            session.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"connection expected"),
            name="websocket-close",
        )

    async def handler(self, request: web.Request) -> web.StreamResponse:
        peer = request.remote or "?"
        refusal = self.origin_refusal(request)
        if refusal is not None:
            log.warning("websocket %s: refused: %s", peer, refusal)
            self.app.refused["origin"] += 1
            return web.Response(status=403, text=refusal + "\n")
        ws = web.WebSocketResponse(
            max_msg_size=self.app.config.of(WebRtcSettings).max_message_bytes, heartbeat=30.0
        )
        await ws.prepare(request)
        session = WcsSession(self, ws, peer, request.path)
        self.sessions.add(session)
        log.info("websocket %s: connected (path %s)", peer, request.path)
        loop = asyncio.get_running_loop()
        deadline = loop.call_later(CONNECTION_TIMEOUT_S, self._no_connection, session)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await session.handle(msg.data)
                elif msg.type == WSMsgType.ERROR:
                    log.warning("websocket %s: %s", peer, ws.exception())
                    break
        finally:
            deadline.cancel()
            self.sessions.discard(session)
            await session.close()
            log.info("websocket %s: closed (%s)", peer, ws.close_code)
        return ws

    async def start(self) -> None:
        # the client behind a trusted proxy first: limits and logs name it, not the proxy
        middlewares = [self.app.forwarded.middleware, self.app.hosts.middleware]
        http = web.Application(middlewares=middlewares)
        http.router.add_get("/{path:.*}", self.handler)
        self._runner = make_runner(http)
        await self._runner.setup()
        srv, app = self.app.config.server, self.app
        if app.plaintext:
            app.ports["ws"] = await app.listen(self._runner, srv.ws_port, "ws_port")
        if app.tls is not None:
            app.ports["wss"] = await app.listen(self._runner, srv.wss_port, "wss_port", tls=True)

    async def stop(self) -> None:
        for session in list(self.sessions):
            await session.ws.close(code=1001, message=b"server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()


WCS_API: StateKey[WcsApi] = StateKey("wcs_websocket", WcsApi)


@hookimpl
async def lifespan(app: App) -> AsyncIterator[None]:
    require(app, "wcs_websocket")
    api = WcsApi(app)
    app.state[WCS_API] = api
    await api.start()
    yield
    app.state.pop(WCS_API)
    await api.stop()


@hookimpl
async def on_unpublish(app: App, stream: Stream) -> None:
    api = app.state.get(WCS_API)
    if api is not None:
        await api.stream_ended(stream)
