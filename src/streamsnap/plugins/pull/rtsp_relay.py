"""A loopback relay in front of an RTSP camera asked for by URL.

FFmpeg follows an RTSP redirect (3xx ``Location``) wherever it points and has no option to
stop it, so an on-demand camera is reached through this relay: FFmpeg connects to it on
127.0.0.1, the relay connects to the address the allow-list checked, and reads the camera's
answers on the way back. A redirect to a host the allow-list refuses ends the connection before
FFmpeg sees it; an allowed one is rewritten to come back through the relay, to its own checked
address. Answers are read the way FFmpeg reads them (lines end at ``\n``, one ``\r`` dropped;
the status is the number after a first word starting ``RTSP/``; the last ``Location`` and
``Content-Length`` count; ``$`` frames before an answer are skipped) and passed on rewritten in
one canonical form, so FFmpeg sees exactly what was checked; what does not parse closes the
connection. Once the camera has answered PLAY, nothing more is parsed (FFmpeg follows
redirects only while it connects) and the bytes pass as they come. The hop costs a 720p camera
about 0.3 % of a core here, mostly the kernel's loopback TCP work (BENCHMARKS.md); cameras
listed in the config connect directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1 << 20  # an SDP or a parameter answer; more is no camera
WRITE_HIGH_WATER = 1 << 20  # a side that does not read stops the other from reading
_REQUEST = re.compile(rb"^([A-Z_]+) \S+ RTSP/", re.MULTILINE)

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

    async def redirect(self, location: str) -> str | None:
        """``location`` rewritten to come back through the relay (to its checked address),
        or None to refuse it (not an rtsp:// URL, or a host the allow-list refuses)."""
        parts = urlsplit(location)
        try:
            port = parts.port or 554
        except ValueError:
            port = 0
        if parts.scheme.lower() != "rtsp" or not parts.hostname or not port:
            return self._refuse(f"the camera redirected to {location[:80]!r}, not an rtsp:// URL")
        try:
            address = await self.check(parts.hostname, port)
        except Exception as exc:
            return self._refuse(f"the camera redirected to {parts.hostname}: {exc}")
        self._redirected = (address, port)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (userinfo + "@" if userinfo else "") + f"127.0.0.1:{self.port}"
        log.info("stream %s: camera redirected to %s:%d", self.name, parts.hostname, port)
        return urlunsplit(("rtsp", netloc, parts.path, parts.query, ""))

    def _refuse(self, reason: str) -> None:
        self.refused = reason
        log.warning("stream %s: redirect refused: %s", self.name, reason)
        return None


class Answer:
    """One RTSP answer as FFmpeg's ``ff_rtsp_read_reply`` reads it, or why it cannot be."""

    def __init__(self, lines: list[bytes], body: bytes) -> None:
        self.lines = lines
        self.body = body
        words = lines[0].split()
        self.status = _atoi(words[1]) if len(words) > 1 and words[0].startswith(b"RTSP/") else 0

    def values(self, name: bytes) -> list[bytes]:
        """Every value of header ``name`` (case-insensitive, leading blanks dropped)."""
        prefix = name.lower() + b":"
        return [
            line[len(prefix) :].lstrip(b" \t")
            for line in self.lines[1:]
            if line[: len(prefix)].lower() == prefix
        ]

    def serialized(self) -> bytes:
        return b"".join(line + b"\r\n" for line in self.lines) + b"\r\n" + self.body


def read_answer(buf: bytearray) -> tuple[Answer, int] | str | None:
    """The answer at the start of ``buf`` and its size; None while incomplete; a string
    saying why it cannot be passed on."""
    lines: list[bytes] = []
    pos = 0
    while True:
        end = buf.find(b"\n", pos)
        if end < 0:
            return "answer header too long" if len(buf) > MAX_HEADER_BYTES else None
        line = bytes(buf[pos:end])
        pos = end + 1
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if not lines:
                continue  # FFmpeg skips empty lines before the status line
            break
        lines.append(line)
        if pos > MAX_HEADER_BYTES:
            return "answer header too long"
    answer = Answer(lines, b"")
    lengths = {_atoi(v) for v in answer.values(b"content-length")}
    if len(lengths) > 1:
        return "answer with several Content-Length headers"
    size = lengths.pop() if lengths else 0
    if size > MAX_BODY_BYTES:
        return f"answer body of {size} bytes"
    if len(buf) < pos + size:
        return None
    answer.body = bytes(buf[pos : pos + size])
    return answer, pos + size


def _atoi(text: bytes) -> int:
    """C's atoi: the digits at the start (after blanks), 0 without any."""
    m = re.match(rb"[ \t]*([+-]?\d+)", text)
    return int(m.group(1)) if m else 0


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
        self._requests = bytearray()  # FFmpeg's bytes after the last complete line
        self.methods: deque[bytes] = deque()  # requests sent, not answered yet, in order

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
        upstream = self.peer
        if not (isinstance(upstream, _Upstream) and upstream.raw):
            # FFmpeg's requests while it connects: which answer is the one to PLAY
            self._requests += data
            cut = self._requests.rfind(b"\n") + 1  # complete lines only
            self.methods.extend(_REQUEST.findall(bytes(self._requests[:cut])))
            del self._requests[:cut]
            if len(self._requests) > MAX_HEADER_BYTES:
                self.close()
        if upstream is None:
            self._early += data
            if len(self._early) > MAX_HEADER_BYTES:
                self.close()
        else:
            upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay._pairs.discard(self)
        super().connection_lost(exc)


class _Upstream(_Side):
    """The relay's connection to the camera: answers are read until the one to PLAY."""

    def __init__(self, downstream: _Downstream) -> None:
        self.peer = downstream
        self.downstream = downstream
        self.relay = downstream.relay
        self._buffer = bytearray()
        self.raw = False  # media flows: pass everything on unread
        self._checking = False

    def data_received(self, data: bytes) -> None:
        if self.raw:
            self.downstream.write(data)
            return
        self._buffer += data
        self._parse()

    def _parse(self) -> None:
        buf = self._buffer
        while buf and not self._checking and not self.raw:
            if buf[0] == 0x24:  # "$": an interleaved frame, which FFmpeg skips here
                if len(buf) < 4:
                    return
                size = 4 + int.from_bytes(buf[2:4], "big")
                if len(buf) < size:
                    return
                self.downstream.write(bytes(buf[:size]))
                del buf[:size]
                continue
            read = read_answer(buf)
            if read is None:
                return
            if isinstance(read, str):
                log.warning("stream %s: camera answer refused: %s", self.relay.name, read)
                self.close()
                return
            answer, size = read
            del buf[:size]
            method = self.downstream.methods.popleft() if self.downstream.methods else b""
            if 300 <= answer.status < 400:
                self._checking = True
                self.reading(held=True)
                asyncio.get_running_loop().create_task(self._redirect(answer))
                return
            self.downstream.write(answer.serialized())
            if method == b"PLAY" and 200 <= answer.status < 300:
                self.raw = True  # from here on FFmpeg follows no redirect
                if buf:
                    self.downstream.write(bytes(buf))
                    buf.clear()

    async def _redirect(self, answer: Answer) -> None:
        locations = answer.values(b"location")
        rewritten = None
        if len(locations) == 1:
            rewritten = await self.relay.redirect(locations[0].decode("latin-1"))
        else:
            self.relay._refuse(f"a redirect with {len(locations)} Location headers")
        if rewritten is None:
            self.close()
            return
        answer.lines = [
            b"Location: " + rewritten.encode("latin-1")
            if line[:9].lower() == b"location:"
            else line
            for line in answer.lines
        ]
        self.downstream.write(answer.serialized())
        self._checking = False
        self.reading(held=False)
        self._parse()
