"""What every listener (HTTP, HTTPS, WebSocket, RTMP) shares: the per-address connection limit,
the deadline for HTTP request headers and the check of the ``Host`` header (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from .config import ServerConfig
from .errors import StartupError

log = logging.getLogger(__name__)

# A request's headers (and a TLS handshake) must have arrived this long after the connection
# opened, or after the previous answer on a kept-alive one; aiohttp's default is an hour.
HEADER_TIMEOUT_S = 15.0
# A refused address is logged again at most this often while its burst goes on.
REFUSAL_LOG_INTERVAL_S = 60.0

_REFUSAL_TEXT = b"too many connections from this address ([limits] max_connections_per_ip)\n"
HTTP_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_REFUSAL_TEXT), _REFUSAL_TEXT)
)


def make_runner(application: web.Application) -> web.AppRunner:
    """The runner of one of the server's aiohttp applications (HTTP or WebSocket)."""
    return web.AppRunner(
        application, handle_signals=False, access_log=None, keepalive_timeout=HEADER_TIMEOUT_S
    )


class ConnectionLimiter:
    """Counts the open connections of each client address over all listeners and closes those
    beyond ``[limits] max_connections_per_ip`` (0: no limit) as they open."""

    def __init__(self, limit: int, refused: Counter[str]) -> None:
        self.limit = limit
        self.refused = refused
        self.open: Counter[str] = Counter()
        self._logged: dict[str, tuple[float, int]] = {}  # address -> (last line, refused since)

    def protocol(self, inner: asyncio.Protocol, refusal: bytes = b"") -> asyncio.Protocol:
        """``inner`` counted; a connection over the limit gets ``refusal`` and is closed."""
        return inner if not self.limit else _Counted(self, inner, refusal)

    def acquire(self, ip: str) -> bool:
        if self.open[ip] < self.limit:
            self.open[ip] += 1
            return True
        self.refused["max_connections_per_ip"] += 1
        now = time.monotonic()
        entry = self._logged.get(ip)
        if entry is not None and now - entry[0] < REFUSAL_LOG_INTERVAL_S:
            self._logged[ip] = (entry[0], entry[1] + 1)
            return False
        log.warning(
            "connections from %s refused: %d open, the limit of [limits] max_connections_per_ip%s",
            ip,
            self.limit,
            f" ({entry[1]} more refused since the last such line)" if entry else "",
        )
        self._logged[ip] = (now, 0)
        return False

    def release(self, ip: str) -> None:
        self.open[ip] -= 1
        if self.open[ip] <= 0:
            del self.open[ip]
            self._logged.pop(ip, None)  # the burst is over


class _Counted(asyncio.Protocol):
    """Passes everything to the listener's own protocol once its address is admitted."""

    def __init__(self, limiter: ConnectionLimiter, inner: asyncio.Protocol, refusal: bytes):
        self.limiter = limiter
        self.inner = inner
        self.refusal = refusal
        self.ip: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) else ""
        if not self.limiter.acquire(ip):
            if self.refusal:
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(self.refusal)
            transport.close()
            return
        self.ip = ip
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.ip is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.ip is not None else None

    def pause_writing(self) -> None:
        if self.ip is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.ip is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ip is not None:
            self.limiter.release(self.ip)
            self.inner.connection_lost(exc)


class LimitedSite(web.TCPSite):
    """A TCPSite whose connections go through a :class:`ConnectionLimiter` (aiohttp gives no
    hook between accepting a connection and handing it to its protocol)."""

    def __init__(self, runner: web.AppRunner, limiter: ConnectionLimiter, **kwargs: Any) -> None:
        super().__init__(runner, **kwargs)
        self.limiter = limiter

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: self.limiter.protocol(server(), HTTP_REFUSAL),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl_handshake_timeout=HEADER_TIMEOUT_S if self._ssl_context else None,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


def host_of(authority: str) -> str:
    """The host of a ``Host`` header or URL authority: lower case, without the port, the IPv6
    brackets or a trailing dot."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    if authority.count(":") == 1:
        authority = authority.partition(":")[0]
    return authority.rstrip(".")


class HostCheck:
    """Refuses requests whose ``Host`` names neither this machine nor ``[server] server_names``:
    a DNS-rebinding page reaches the server under its own (attacker's) name. IP literals and
    ``localhost`` always pass; a request without a Host header (HTTP/1.0) too."""

    def __init__(self, server_names: Iterable[str], refused: Counter[str]) -> None:
        names = {"localhost", socket.gethostname(), socket.getfqdn(), *server_names}
        self.names = {host_of(n) for n in names if n}
        self.refused = refused

    def allows(self, host: str) -> bool:
        if "*" in self.names or host in self.names:
            return True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        given = request.headers.get("Host")
        if given is None or self.allows(host_of(given)):
            return await handler(request)
        self.refused["host"] += 1
        message = f"Host {given!r} is not a name of this server: add it to [server] server_names"
        log.warning("http %s %s from %s: %s", request.method, request.path, request.remote, message)
        return web.json_response(
            {
                "status": 421,
                "error": "Misdirected Request",
                "path": request.path,
                "message": message,
            },
            status=421,
        )


class ForwardedFor:
    """The client behind a trusted reverse proxy: a request that comes from an address of
    ``[server] trusted_proxies`` gets its ``remote`` from ``X-Forwarded-For`` (the address the
    nearest untrusted hop gave, read from the right, as nginx's ``real_ip_recursive`` does) and
    its scheme from ``X-Forwarded-Proto``. From any other address those headers are ignored:
    a client could write anything there. Everything after this middleware (per-address
    limits, the login throttle, logs) sees the real client."""

    def __init__(self, trusted: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(t, strict=False) for t in trusted]

    def trusts(self, address: str | None) -> bool:
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        # a dual-stack socket gives IPv4 peers as ::ffff:a.b.c.d
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        return any(ip in net or (mapped is not None and mapped in net) for net in self.networks)

    def client(self, peer: str, forwarded_for: list[str]) -> str:
        """The client's address for a request from trusted ``peer`` with these
        ``X-Forwarded-For`` values."""
        hops = [h.strip() for value in forwarded_for for h in value.split(",")]
        client = peer
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break  # not an address: nothing to its left can be believed either
            client = hop
            if not self.trusts(hop):
                break
        return client

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.networks and self.trusts(request.remote):
            changes: dict[str, str] = {}
            forwarded = request.headers.getall("X-Forwarded-For", [])
            if forwarded:
                changes["remote"] = self.client(request.remote or "", forwarded)
            proto = request.headers.get("X-Forwarded-Proto", "").strip().lower()
            if proto in ("http", "https"):
                changes["scheme"] = proto
            if changes:
                request = request.clone(**changes)
        return await handler(request)


def load_tls(server: ServerConfig) -> ssl.SSLContext | None:
    """The server TLS context when ``[server] tls_cert``/``tls_key`` are set."""
    if not server.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(server.tls_cert, server.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(
            f"[server] tls_cert/tls_key ({server.tls_cert}, {server.tls_key}): {exc}"
        ) from exc
    return ctx


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp exposes the bound sockets only here
    sockets = getattr(server, "sockets", None) or []
    return sockets[0].getsockname()[1] if sockets else 0


async def start_site(
    runner: web.AppRunner,
    connections: ConnectionLimiter,
    host: str,
    port: int,
    key: str,
    tls: ssl.SSLContext | None = None,
) -> int:
    """Listen on ``host``:``port`` for ``runner``, within the connection limit; returns the
    bound port. A port that cannot be bound cleans the runner up and raises StartupError
    naming the config key."""
    site = LimitedSite(
        runner, connections, host=host, port=port, ssl_context=tls, reuse_address=True
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(
            f"cannot listen on {host}:{port} ({key}): {exc.strerror or exc}"
        ) from exc
    return _bound_port(site) or port
