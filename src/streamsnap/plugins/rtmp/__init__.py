"""RTMP ingest: encoders publish to ``rtmp://HOST:rtmp_port/APP/NAME``; many at once on one port.

The stream is named NAME and gets a new mediaSessionId per publish; it ends when the publisher
leaves, goes silent for ``[rtmp] idle_timeout_s``, or is terminated over REST.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ...core.app import App
from ...core.config import setting
from ...core.errors import StartupError
from ...core.state import StateKey
from ...hooks import hookimpl
from .session import RtmpSession

log = logging.getLogger(__name__)


@dataclass
class RtmpSettings:
    chunk_size: int = setting(4096, minimum=128, maximum=0x7FFFFFFF)
    handshake_timeout_s: float = setting(10.0, minimum=0.1)
    idle_timeout_s: float = setting(30.0, minimum=0.1)
    max_message_bytes: int = setting(16 * 1024 * 1024, minimum=1024)  # larger: connection closed


class RtmpServer:
    def __init__(self, app: App) -> None:
        self.app = app
        self.config = app.config.of(RtmpSettings)
        self.sessions: set[RtmpSession] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        host, port = self.app.config.server.host, self.app.config.server.rtmp_port
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: self.app.connections.protocol(
                    RtmpSession(self.app, self.config, self.sessions)
                ),
                host,
                port,
                reuse_address=True,
            )
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {host}:{port} (rtmp_port): {exc.strerror or exc}"
            ) from exc
        self.app.ports["rtmp"] = self._server.sockets[0].getsockname()[1]
        self._sweeper = self.app.spawn(self._sweep(), name="rtmp-timeouts")

    async def _sweep(self) -> None:
        """Close connections stuck in the handshake or silent for too long (one timer for all).
        The handshake deadline counts from the connection's start: a byte now and then does not
        hold it open."""
        while True:
            await asyncio.sleep(min(1.0, self.config.handshake_timeout_s / 2))
            self._sweep_once(time.monotonic())

    def _sweep_once(self, now: float) -> None:
        """One look at every connection (a function of its own: the last one looked at must
        not stay referenced by the sweeper's frame after it has gone)."""
        for session in list(self.sessions):
            idle = now - session.last_data
            age = now - session.connected_at
            if not session.handshake_done and age > self.config.handshake_timeout_s:
                session.close(
                    f"handshake not completed within {self.config.handshake_timeout_s:g} s",
                    logging.WARNING,
                )
            elif idle > self.config.idle_timeout_s:
                session.close(f"no data for {self.config.idle_timeout_s:g} s", logging.WARNING)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.close("server shutting down")
        if self._server is not None:
            await self._server.wait_closed()


RTMP: StateKey[RtmpServer] = StateKey("rtmp", RtmpServer)


@hookimpl
def settings_sections() -> dict[str, type]:
    return {"rtmp": RtmpSettings}


@hookimpl
async def lifespan(app: App) -> AsyncIterator[None]:
    server = RtmpServer(app)
    await server.start()
    app.state[RTMP] = server
    yield
    app.state.pop(RTMP)
    await server.stop()
