"""A loopback relay in front of an RTSP camera asked for by URL.

FFmpeg follows an RTSP redirect (3xx ``Location``) wherever it points and has no option to
stop it, so an on-demand camera is reached through this relay: FFmpeg connects to it on
127.0.0.1, the relay connects to the address the allow-list checked, and reads the camera's
answers on the way back. A redirect to a host the allow-list refuses ends the connection before
FFmpeg sees it; an allowed one is rewritten to come back through the relay, to its own checked
address. Interleaved RTP (``$`` frames) and request bodies pass untouched.
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
_STATUS = re.compile(rb"^RTSP/\d\.\d (\d{3})")
_LOCATION = re.compile(rb"^location:[ \t]*(\S+)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_LENGTH = re.compile(rb"^content-length:[ \t]*(\d+)", re.IGNORECASE | re.MULTILINE)

# (host, port) of a redirect -> the address to connect to; raises to refuse it
Checker = Callable[[str, int], Awaitable[str]]


class RtspRelay:
    """Relays FFmpeg's RTSP connections to ``target``; redirects are checked by ``check``."""

    def __init__(self, name: str, target: tuple[str, int], check: Checker, timeout: float):
        self.name = name
        self.target = target
        self.check = check
        self.timeout = timeout
        self.refused = ""  # why the last redirect was refused, for the pull's failure
        self._redirected: tuple[str, int] | None = None  # where FFmpeg's next connection goes
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._conns):
            writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target, self._redirected = self._redirected or self.target, None
        self._conns.add(writer)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(*target), self.timeout
            )
            self._conns.add(upstream_writer)
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._answers(up_reader, writer)
            )
        except (OSError, TimeoutError, asyncio.IncompleteReadError, _Refused):
            pass
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    self._conns.discard(w)
                    w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """FFmpeg to the camera: requests and RTCP, as they come."""
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _answers(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The camera to FFmpeg, message by message: ``$`` frames as they are, answers with
        their headers read (a redirect is checked and rewritten)."""
        while True:
            first = await reader.read(1)
            if not first:
                writer.close()
                return
            if first == b"$":
                head = await reader.readexactly(3)
                size = int.from_bytes(head[1:3], "big")
                writer.write(first + head + await reader.readexactly(size))
            else:
                try:
                    header = first + await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    raise _Refused("answer header too long") from None
                if len(header) > MAX_HEADER_BYTES:
                    raise _Refused("answer header too long")
                length = _LENGTH.search(header)
                body = await reader.readexactly(int(length.group(1))) if length else b""
                status = _STATUS.match(header)
                if status and 300 <= int(status.group(1)) < 400:
                    header = await self._redirect(header)
                writer.write(header + body)
            await writer.drain()

    async def _redirect(self, header: bytes) -> bytes:
        found = _LOCATION.search(header)
        if found is None:
            return header
        location = found.group(1).decode("latin-1")
        parts = urlsplit(location)
        try:
            port = parts.port or 554
        except ValueError:
            port = 0
        if parts.scheme.lower() != "rtsp" or not parts.hostname or not port:
            self.refused = "the camera redirected to a URL that is not rtsp://"
            log.warning("stream %s: redirect refused: %s", self.name, self.refused)
            raise _Refused(self.refused)
        try:
            address = await self.check(parts.hostname, port)
        except Exception as exc:
            self.refused = f"the camera redirected to {parts.hostname}: {exc}"
            log.warning("stream %s: redirect refused: %s", self.name, self.refused)
            raise _Refused(self.refused) from None
        self._redirected = (address, port)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (userinfo + "@" if userinfo else "") + f"127.0.0.1:{self.port}"
        rewritten = urlunsplit(("rtsp", netloc, parts.path, parts.query, ""))
        log.info("stream %s: camera redirected to %s:%d", self.name, parts.hostname, port)
        start, end = found.span(1)
        return header[:start] + rewritten.encode("latin-1") + header[end:]


class _Refused(Exception):
    pass
