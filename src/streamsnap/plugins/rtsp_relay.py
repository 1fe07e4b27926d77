"""A loopback relay in front of an RTSP camera asked for by URL.

FFmpeg follows an RTSP redirect (3xx ``Location``) wherever it points and has no option to
stop it, so an on-demand camera is reached through this relay: FFmpeg connects to it on
127.0.0.1, the relay connects to the address the allow-list checked, and reads the camera's
answers on the way back. A redirect to a host the allow-list refuses ends the connection before
FFmpeg sees it; an allowed one is rewritten to come back through the relay, to its own checked
address. Once media flows (the first interleaved ``$`` frame) nothing more is parsed: FFmpeg
follows redirects only while it connects, and the bytes are passed on as they come. The hop
costs a 720p camera about 0.3 % of a core here, mostly the kernel's loopback TCP work
(BENCHMARKS.md); cameras listed in the config connect directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
WRITE_HIGH_WATER = 1 << 20  # a side that does not read stops the other from reading
_STATUS = re.compile(rb"^RTSP/\d\.\d (\d{3})")
_LOCATION = re.compile(rb"^location:[ \t]*(\S+)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_LENGTH = re.compile(rb"^content-length:[ \t]*(\d+)", re.IGNORECASE | re.MULTILINE)

# (host, port) of a redirect -> the address to connect to; raises to refuse it
Checker = Callable[[str, int], Awaitable[str]]


class RtspRelay:
    """Relays FFmpeg's RTSP connections to ``target``; redirects are checked by ``check``."""

    def __init__(
        self,
        name: str,
        target: tuple[str, int],
        check: Checker,
        timeout: float,
    ):
        self.name = name
        self.target = target
        self.check = check
        self.timeout = timeout
        self.refused = ""  # why the last redirect was refused, for the log
        self._redirected: tuple[str, int] | None = None  # where FFmpeg's next connection goes
        self._server: asyncio.Server | None = None
        self._pairs: set[_Downstream] = set()
        self.port = 0

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Downstream(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in list(self._pairs):
            pair.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def next_target(self) -> tuple[str, int]:
        target, self._redirected = self._redirected or self.target, None
        return target

    async def redirect(self, header: bytes) -> bytes | None:
        """``header`` of a 3xx answer with its Location rewritten to the relay, or None to
        refuse it (a scheme other than rtsp, or a host the allow-list refuses)."""
        found = _LOCATION.search(header)
        if found is None:
            return header
        parts = urlsplit(found.group(1).decode("latin-1"))
        try:
            port = parts.port or 554
        except ValueError:
            port = 0
        if parts.scheme.lower() != "rtsp" or not parts.hostname or not port:
            return self._refuse("the camera redirected to a URL that is not rtsp://")
        try:
            address = await self.check(parts.hostname, port)
        except Exception as exc:
            return self._refuse(f"the camera redirected to {parts.hostname}: {exc}")
        self._redirected = (address, port)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (userinfo + "@" if userinfo else "") + f"127.0.0.1:{self.port}"
        rewritten = urlunsplit(("rtsp", netloc, parts.path, parts.query, ""))
        log.info("stream %s: camera redirected to %s:%d", self.name, parts.hostname, port)
        start, end = found.span(1)
        return header[:start] + rewritten.encode("latin-1") + header[end:]

    def _refuse(self, reason: str) -> None:
        self.refused = reason
        log.warning("stream %s: redirect refused: %s", self.name, reason)
        return None


class _Side(asyncio.Protocol):
    """One connection of a relayed pair; ``peer`` is the other one."""

    transport: asyncio.Transport | None = None
    peer: _Side | None = None
    blocked = False  # the peer cannot take more: not reading
    held = False  # a redirect is being checked: not reading

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def reading(self, blocked: bool | None = None, held: bool | None = None) -> None:
        """Read only while neither the peer's backlog nor a redirect check holds this side."""
        was = self.blocked or self.held
        self.blocked = self.blocked if blocked is None else blocked
        self.held = self.held if held is None else held
        now = self.blocked or self.held
        if self.transport is not None and was != now:
            if now:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    # a side whose writes pile up stops its peer from reading
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.reading(blocked=True)

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.reading(blocked=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.peer is not None:
            self.peer.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Downstream(_Side):
    """FFmpeg's connection to the relay: its requests go to the camera as they are."""

    def __init__(self, relay: RtspRelay) -> None:
        self.relay = relay
        self._early = bytearray()  # what FFmpeg sent before the camera's connection was up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.relay._pairs.add(self)
        asyncio.get_running_loop().create_task(self._connect(self.relay.next_target()))

    async def _connect(self, target: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await asyncio.wait_for(
                loop.create_connection(lambda: _Upstream(self), *target), self.relay.timeout
            )
        except (OSError, TimeoutError):
            self.close()
            return
        if self.transport is None:  # FFmpeg gave up meanwhile
            upstream.close()
            return
        self.peer = upstream
        if self._early:
            upstream.write(bytes(self._early))
            self._early.clear()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self._early += data
            if len(self._early) > MAX_HEADER_BYTES:
                self.close()
        else:
            self.peer.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay._pairs.discard(self)
        super().connection_lost(exc)


class _Upstream(_Side):
    """The relay's connection to the camera: answers are read until media flows."""

    def __init__(self, downstream: _Downstream) -> None:
        self.peer = downstream
        self.relay = downstream.relay
        self._buffer = bytearray()
        self._raw = False  # media flows: pass everything on unread
        self._checking = False

    def data_received(self, data: bytes) -> None:
        if self._raw:
            self.peer.write(data)  # type: ignore[union-attr]
            return
        self._buffer += data
        self._parse()

    def _parse(self) -> None:
        """Pass on whole answers (redirects checked first), until the first ``$`` frame."""
        buf = self._buffer
        while buf and not self._checking:
            if buf[0] == 0x24:  # "$": interleaved media; from here on bytes pass unread
                self._raw = True
                self.peer.write(bytes(buf))  # type: ignore[union-attr]
                buf.clear()
                return
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    self.close()
                return
            header = bytes(buf[: end + 4])
            length = _LENGTH.search(header)
            size = len(header) + (int(length.group(1)) if length else 0)
            if len(buf) < size:
                return
            message = bytes(buf[:size])
            del buf[:size]
            status = _STATUS.match(header)
            if status and 300 <= int(status.group(1)) < 400:
                self._checking = True
                self.reading(held=True)
                asyncio.get_running_loop().create_task(
                    self._redirect(header, message[len(header) :])
                )
                return
            self.peer.write(message)  # type: ignore[union-attr]

    async def _redirect(self, header: bytes, body: bytes) -> None:
        rewritten = await self.relay.redirect(header)
        if rewritten is None:
            self.close()
            return
        self.peer.write(rewritten + body)  # type: ignore[union-attr]
        self._checking = False
        self.reading(held=False)
        self._parse()
