"""The app: owns the config, the plugins, the stream registry, the snapshot service and the
HTTP server, and runs their lifecycle. Plugins reach everything through the ``App`` they get.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
import os
import ssl
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from . import allocator
from .auth import Authenticator, LoginThrottled
from .config import Config
from .decoding import DecodePolicy
from .errors import Refused, StartupError, StreamNotFound
from .frames import FrameHandle, FrameStore
from .http import Guard, Route, error_response
from .listeners import ConnectionLimiter, HostCheck, LimitedSite, make_runner
from .names import check_publish_name
from .plugins import BackendRegistry, PluginManager, make_plugin_manager
from .snapshot import Snapshot, SnapshotRequest, SnapshotService
from .state import State
from .streams import MemoryRegistry, Stream, StreamRegistry
from .supervisor import mask_credentials

log = logging.getLogger(__name__)

APP_KEY: web.AppKey[App] = web.AppKey("streamsnap_app", object)  # type: ignore[arg-type]
API_USER: web.RequestKey[str] = web.RequestKey("streamsnap_api_user", str)  # who they proved


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _credentials(request: web.Request) -> str:
    """The Authorization header, or ``?access_token=`` (EventSource and <img src> cannot set
    headers) as a bearer token."""
    given = request.headers.get("Authorization", "")
    if not given and "access_token" in request.query:
        given = "Bearer " + request.query["access_token"]
    return given


def open_access_warning(config: Config) -> str | None:
    """What to warn about at start when the server listens beyond loopback without auth."""
    auth, host = config.auth, config.server.host
    if auth.token or auth.users or is_loopback(host):
        return None
    return (
        f"serving on {host} without authentication: anyone who can reach it can publish, take "
        "snapshots and terminate streams; set [auth] token or [auth] users (see "
        "conf/streamsnap.toml), or listen on 127.0.0.1"
    )


class App:
    """One streamsnap server."""

    def __init__(self, config: Config, pm: PluginManager | None = None) -> None:
        self.config = config
        self.pm = pm if pm is not None else make_plugin_manager(config.plugins)
        self.streams = self._make_registry()
        workers = config.snapshot.workers or max(1, os.cpu_count() or 1)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="snapshot")
        # File writes wait on the disk (fsync), not the CPU: they get their own threads so a
        # slow disk never holds up decoding and encoding.
        self.io_executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="io")
        self._release_pending = False
        self.snapshots = SnapshotService(config.snapshot, self.executor)
        self.decoding = DecodePolicy(self)
        self.backends = BackendRegistry()
        self.ports: dict[str, int] = {}  # what each listener really bound ("http", "rtmp", ...)
        self._access: dict[Any, str | Guard] = {}  # route -> its declared access
        self._api_prefixes: set[str] = set()  # first path segments of API routes
        self.state = State()  # what plugins own for this app, under their StateKeys
        self._lifespans = contextlib.AsyncExitStack()  # plugins' lifespans, cleaned up on stop
        self.web: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._frame_impls: list[tuple[Any, list[int]]] | None = None
        self._tls: ssl.SSLContext | None = None
        self.storage: dict[str, Any] = {}  # active storage backends by name
        auth = config.auth
        self.auth = Authenticator(
            auth.token, auth.users, auth.publish_keys, open_publish=auth.open_publish
        )
        self.refused: Counter[str] = Counter()  # refusals by rule, for /metrics
        self.connections = ConnectionLimiter(config.limits.max_connections_per_ip, self.refused)
        self.hosts = HostCheck(config.server.server_names, self.refused)
        self.snapshots_in_flight = 0  # REST and WebSocket snapshots being served
        self.pm.guard.spawn = lambda coro, name: self.spawn(coro, name=name)
        self.ended: Counter[tuple[str, str]] = Counter()  # (protocol, reason) -> streams ended

    def _make_registry(self) -> StreamRegistry:
        """The registry a plugin provides (``make_stream_registry``), else the in-memory one."""
        try:
            registry = self.pm.hook.make_stream_registry(app=self)
        except StartupError:
            raise
        except Exception as exc:
            raise StartupError(f"make_stream_registry failed: {exc}") from exc
        if registry is None:
            return MemoryRegistry()
        if not isinstance(registry, StreamRegistry):
            raise StartupError(
                f"make_stream_registry returned {type(registry).__name__}, not a StreamRegistry"
            )
        return registry

    def _warn_unknown_sections(self) -> None:
        known = {name for name, _ in self.pm.list_name_plugin()} | set(self.backends.factories)
        for section in self.config.extra:
            if section not in known:
                log.warning(
                    "config %s: unknown section [%s] (no plugin of that name is loaded)",
                    self.config.source,
                    section,
                )

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.backends.collect(self.pm)
        self._warn_unknown_sections()
        for name in self.config.storage.backends:
            factory = self.backends.factories.get(name)
            if factory is None:
                raise StartupError(
                    f"[storage] backends names {name!r}, which no plugin registered "
                    f"(known: {', '.join(sorted(self.backends.factories)) or 'none'})"
                )
            try:
                self.storage[name] = factory(self.config.section(name))
            except Exception as exc:
                raise StartupError(
                    f"storage backend {name!r} (plugin {self.backends.owners[name]!r}): {exc}"
                ) from exc
        self.web = web.Application(
            client_max_size=1 << 20, middlewares=[self.hosts.middleware, self._auth]
        )
        self.web[APP_KEY] = self
        for name, routes in self.pm.broadcast("register_routes", app=self):
            try:
                self._add_routes(routes or [])
            except Exception as exc:
                raise StartupError(f"plugin {name!r} contributed bad routes: {exc}") from exc
        srv = self.config.server
        tls = self.tls_context()
        self._runner = make_runner(self.web)
        await self._runner.setup()
        if self.plaintext:
            self.ports["http"] = await start_site(self, self._runner, srv.http_port, "http_port")
        if not srv.plaintext and tls is None:
            log.warning(
                "[server] plaintext = false has no effect without [server] tls_cert and tls_key: "
                "the plain HTTP and WebSocket ports are open"
            )
        if tls is not None:
            self.ports["https"] = await start_site(
                self, self._runner, srv.https_port, "https_port", tls
            )
        try:
            await self.pm.enter_lifespans(self._lifespans, app=self)
            for name, result in self.pm.broadcast("on_startup", app=self):
                if inspect.isawaitable(result):
                    try:
                        await result
                    except StartupError:
                        raise
                    except Exception:
                        log.exception("plugin %s failed in on_startup (left out)", name)
        except StartupError:
            await self.stop()
            raise
        self.spawn(self.decoding.run(), name="decode-policy")
        warning = open_access_warning(self.config)
        if warning:
            log.warning("%s", warning)
        log.info("streamsnap ready: %s", ", ".join(f"{k}={v}" for k, v in self.ports.items()))

    def _add_routes(self, routes: list[Any]) -> None:
        """Add a plugin's routes, remembering the access each declares (``Route``; a plain
        route definition needs API credentials) and the first path segment of those that need
        them: an unmatched request under it is an API request too (credentials, then a WCS
        error body)."""
        assert self.web is not None
        for item in routes:
            route = item if isinstance(item, Route) else Route(item)
            for added in self.web.add_routes([route.definition]):
                self._access[added] = route.access  # per route: a resource has several methods
                if added.resource is None:
                    continue
                for twin in added.resource:  # the HEAD route aiohttp adds beside a GET
                    if twin.method == "HEAD" and twin.handler is added.handler:
                        self._access[twin] = route.access
                if route.access != "open":
                    self._api_prefixes.add(_first_segment(added.resource.canonical))

    def route_access(self, request: web.Request) -> str | Guard:
        """The access of the route ``request`` matched: ``"open"``, ``"api"`` or a guard;
        an unmatched request is ``"api"`` under an API route's first segment, else open."""
        route = request.match_info.route
        if route in self._access:
            return self._access[route]
        return "api" if _first_segment(request.path) in self._api_prefixes else "open"

    def access_of(self, route: web.AbstractRoute) -> str | Guard:
        """The access a plugin declared for one of its routes."""
        return self._access.get(route, "api")

    @property
    def plaintext(self) -> bool:
        """Are the plain HTTP and WebSocket ports open? ``[server] plaintext = false`` closes
        them when TLS is on; without TLS they are the only ones."""
        return self.config.server.plaintext or not self.config.server.tls_cert

    def tls_context(self) -> ssl.SSLContext | None:
        """The server TLS context when ``[server] tls_cert``/``tls_key`` are set."""
        srv = self.config.server
        if not srv.tls_cert:
            return None
        if self._tls is None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                ctx.load_cert_chain(srv.tls_cert, srv.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise StartupError(
                    f"[server] tls_cert/tls_key ({srv.tls_cert}, {srv.tls_key}): {exc}"
                ) from exc
            self._tls = ctx
        return self._tls

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """With ``[auth] token`` or ``users``: the APIs (not the pages) need credentials."""
        access = self.route_access(request)
        if self.auth.enabled and request.method != "OPTIONS" and access != "open":
            if callable(access) and access(request):
                request[API_USER] = ""  # let in by the route's own rule, not as an API user
            else:
                try:
                    user = await self.api_user(request)
                except LoginThrottled as exc:
                    return self._throttled(request, exc)
                if not user:
                    return self._unauthorized(request, bool(_credentials(request)))
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
            if access == "open":
                raise
            # API paths answer in JSON, in the WCS error shape, even when no route matched
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return error_response(request, exc.status, exc.reason, headers=headers)

    async def api_user(self, request: web.Request) -> str:
        """Who the request's API credentials prove (``"token"`` or a user name), or "".
        Raises LoginThrottled while the client's address has failed too often."""
        if not self.auth.enabled:
            return ""
        if API_USER not in request:  # checked once per request, however many ask
            given = _credentials(request)
            user = await self.auth.check_header(given, request.remote or "")
            request[API_USER] = user or ""
        return request[API_USER]

    def _throttled(self, request: web.Request, exc: LoginThrottled) -> web.Response:
        log.warning("http %s %s from %s: %s", request.method, request.path, request.remote, exc)
        self.refused["failed_logins"] += 1
        return web.json_response(
            {
                "status": 429,
                "error": "Too Many Requests",
                "path": request.path,
                "message": str(exc),
            },
            status=429,
            headers={"Retry-After": str(exc.retry_after)},
        )

    def _unauthorized(self, request: web.Request, wrong: bool) -> web.Response:
        what = "wrong credentials" if wrong else "no credentials"
        log.warning("http %s %s from %s: %s", request.method, request.path, request.remote, what)
        self.refused["unauthorized"] += 1
        schemes = []
        if self.auth.token:
            schemes.append("Bearer <token>")
        if self.auth.users:
            schemes.append("Basic <user:password>")
        headers: CIMultiDict[str] = CIMultiDict()
        if self.auth.token:
            headers.add("WWW-Authenticate", 'Bearer realm="streamsnap"')
        if self.auth.users:
            headers.add("WWW-Authenticate", 'Basic realm="streamsnap", charset="UTF-8"')
        return web.json_response(
            {
                "status": 401,
                "error": "Unauthorized",
                "path": request.path,
                "message": f"{what}: Authorization: {' or '.join(schemes)} required",
            },
            status=401,
            headers=headers,
        )

    async def stop(self) -> None:
        timeout = self.config.server.shutdown_timeout_s
        try:
            await asyncio.wait_for(self._stop_plugins(), timeout)
        except TimeoutError:
            log.error("plugins did not shut down within %.1f s", timeout)
        for stream in list(self.streams):
            await self.unpublish(stream, "server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for name, backend in self.storage.items():
            close = getattr(backend, "close", None)
            if close is not None:
                try:
                    result = close()
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("storage backend %s failed to close", name)
        for task in list(self._tasks):
            task.cancel()
        self.pm.guard.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.auth.close()
        self.io_executor.shutdown(wait=True)  # files being written are finished, not cut

    async def _stop_plugins(self) -> None:
        """``on_shutdown``, then the ``lifespan`` cleanups in reverse order."""
        await self.pm.abroadcast("on_shutdown", app=self)
        await self._lifespans.aclose()

    def spawn(self, coro: Any, name: str | None = None) -> asyncio.Task[Any]:
        """Run a background task owned by the app (kept referenced, cancelled on stop)."""
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    # ---------------------------------------------------------------- streams
    def new_stream(self, name: str, protocol: str, **fields: Any) -> Stream:
        limits = self.config.streams
        frames = FrameStore(name, limits.max_gop_packets, limits.max_gop_bytes)
        return Stream(name=name, protocol=protocol, frames=frames, **fields)

    async def admit(self, stream: Stream, params: Mapping[str, str], user: str = "") -> None:
        """Decide whether a new publisher may publish ``stream``, then claim it.

        ``params`` are what the publisher sent with the name (RTMP ``?key=``, WHIP query and
        bearer token). In order: the name rule (before any plugin sees the name), the
        ``authorize_publish`` hook (True allows, a string refuses), the publish key or API token
        unless a plugin allowed or ``user`` (API credentials) is set, then the limits. Raises
        :class:`Refused` (logged and counted) or StreamNameInUse.
        """
        reason = check_publish_name(stream.name)
        if reason:
            raise self._refuse(stream, Refused("bad_name", reason))
        answer, plugin = await self._authorize_publish(stream, params)
        if isinstance(answer, str):
            raise self._refuse(stream, Refused("plugin", answer), f"plugin {plugin}")
        if answer is not True and not user:
            reason = self.auth.check_publish_key(stream.name, params.get("key", ""))
            if reason:
                raise self._refuse(stream, Refused("publish_key", reason))
        limits = self.config.limits
        if self.streams.lookup(stream.name) is None:  # else claim() names the real problem
            self.check_capacity(stream)
            ip, most = stream.remote_ip, limits.max_publishers_per_ip
            if most and ip and sum(s.remote_ip == ip for s in self.streams) >= most:
                message = f"{ip} already publishes {most} streams (the limit per address)"
                raise self._refuse(stream, Refused("max_publishers_per_ip", message))
        await self.claim(stream)

    def check_capacity(self, stream: Stream) -> None:
        """``[limits] max_streams``, for publishers and pulls alike (raises :class:`Refused`)."""
        most = self.config.limits.max_streams
        if most and len(self.streams) >= most:
            message = f"server at its limit of {most} streams ([limits] max_streams)"
            raise self._refuse(stream, Refused("max_streams", message))

    async def _authorize_publish(
        self, stream: Stream, params: Mapping[str, str]
    ) -> tuple[bool | str | None, str]:
        """The first plugin answer to ``authorize_publish`` and who gave it; a plugin that
        raises refuses the publisher (fail closed) instead of being skipped."""
        kwargs = {
            "app": self,
            "stream_name": stream.name,
            "protocol": stream.protocol,
            "remote": stream.remote_ip or stream.remote,
            "params": dict(params),
        }
        answer, by = await self.pm.afirst(
            "authorize_publish", kwargs, on_error="publish check failed"
        )
        if answer is False:
            return "refused", by
        if answer is True or isinstance(answer, str):
            return answer, by
        return None, ""

    def _refuse(self, stream: Stream, exc: Refused, by: str = "") -> Refused:
        self.refused[exc.kind] += 1
        log.warning(
            "stream %s: publish over %s from %s refused (%s%s): %s",
            # a refused name may hold a line break (a forged log line): quoted, and cut
            repr(stream.name[:64]) if exc.kind == "bad_name" else stream.name,
            stream.protocol,
            stream.remote or "-",
            exc.kind,
            f", {by}" if by else "",
            exc,
        )
        return exc

    @contextlib.contextmanager
    def snapshot_slot(self, name: str, remote: str) -> Iterator[None]:
        """Hold one of ``[limits] max_concurrent_snapshots`` while serving a snapshot request;
        raises :class:`Refused` when all are taken."""
        limit = self.config.limits.max_concurrent_snapshots
        if limit and self.snapshots_in_flight >= limit:
            self.refused["max_concurrent_snapshots"] += 1
            log.warning(
                "stream %s: snapshot for %s refused: %d snapshot requests already in progress",
                mask_credentials(name),
                remote or "-",
                limit,
            )
            raise Refused(
                "max_concurrent_snapshots",
                f"too many snapshot requests in progress (limit {limit}); try again shortly",
            )
        self.snapshots_in_flight += 1
        try:
            yield
        finally:
            self.snapshots_in_flight -= 1

    async def claim(self, stream: Stream) -> None:
        """Register ``stream`` now (raises StreamNameInUse); :meth:`announce` must follow."""
        await self.streams.claim(stream)
        log.info(
            "stream %s: published over %s from %s (mediaSessionId %s)",
            stream.name,
            stream.protocol,
            stream.remote or "-",
            stream.media_session_id,
        )

    async def announce(self, stream: Stream) -> None:
        """Fire ``on_publish`` for a claimed stream."""
        await self.pm.abroadcast("on_publish", stream=stream, app=self)

    async def unpublish(self, stream: Stream, reason: str = "") -> None:
        if not await self.streams.release(stream):
            return
        stream.status = "UNPUBLISHED"
        self.ended[stream.protocol, _reason_kind(reason or "publisher left")] += 1
        stream.frames.reset()
        self.snapshots.forget(stream)
        self._release_memory_soon()
        log.info(
            "stream %s: unpublished (%s; %d frames) mediaSessionId %s",
            stream.name,
            reason or "publisher left",
            stream.frames.frames_in,
            stream.media_session_id,
        )
        await self.pm.abroadcast("on_unpublish", stream=stream, app=self)

    def _release_memory_soon(self) -> None:
        """A stream ended and its packets and pictures were freed: give the memory back to the
        system a second later (once for streams ending together), off the event loop. The
        allocator keeps freed picture buffers for reuse (allocator.py); without this, a server
        whose streams come and go would hold on to the most it ever used."""
        if self._release_pending:
            return
        self._release_pending = True
        loop = asyncio.get_running_loop()

        def release() -> None:
            self._release_pending = False
            with contextlib.suppress(RuntimeError):  # shutting down: the pool is closed
                loop.run_in_executor(self.io_executor, allocator.release_free_memory)

        loop.call_later(1.0, release)

    def is_live(self, stream: Stream) -> bool:
        return self.streams.lookup(stream.name) is stream

    def frame(self, stream: Stream, handle: FrameHandle) -> None:
        """Tell the plugins a video frame arrived (hot path: no work unless someone listens)."""
        if stream.frames.continuous:
            self.decoding.kick(stream)
        if self._frame_impls is None:
            order = ("stream", "frame", "app")
            self._frame_impls = [
                (i, [order.index(a) for a in i.argnames])
                for i in reversed(self.pm.hook.on_frame.get_hookimpls())
                if not (i.hookwrapper or i.wrapper)
            ]
        if not self._frame_impls:
            return
        args = (stream, handle, self)
        guard = self.pm.guard
        for impl, positions in self._frame_impls:
            call_args = tuple(args[p] for p in positions)
            worker = guard.offloaded(impl.plugin_name, "on_frame")
            if worker is not None:
                worker.submit("on_frame", impl.function, call_args)
                continue
            started = time.perf_counter()
            try:
                result = impl.function(*call_args)
            except Exception as exc:
                guard.failed(impl.plugin_name, "on_frame", exc, stream)
                continue
            finally:
                guard.took(impl.plugin_name, "on_frame", time.perf_counter() - started, stream)
            if inspect.isawaitable(result):
                self.spawn(result, name=f"on_frame:{impl.plugin_name}")

    async def terminate(self, stream: Stream, reason: str = "Stopped by rest /terminate") -> None:
        if stream.terminator is not None:
            result = stream.terminator(reason)
            if inspect.isawaitable(result):
                await result
        await self.unpublish(stream, reason)

    # ---------------------------------------------------------------- snapshots
    async def resolve(self, name: str, remote: str | None = None) -> Stream:
        """The live stream ``name``, or one a plugin starts for it (e.g. an RTSP pull) on behalf
        of client address ``remote`` (None: nothing is started, as for image GETs).

        Raises StreamNotFound, InvalidStreamName for a name no plugin may serve, NotAllowed
        for one a setting refuses.
        """
        stream = self.streams.lookup(name)
        if stream is not None and stream.check_name is not None:
            stream.check_name(name)
        if stream is None:
            stream = await self.pm.afirstresult(
                "resolve_stream", app=self, name=name, remote=remote
            )
            if stream is None:
                raise StreamNotFound(f"stream {name!r} not found")
        stream.touch()
        return stream

    async def snapshot(self, name: str, request: SnapshotRequest | None = None) -> Snapshot:
        """The current picture of stream ``name`` (raises StreamNotFound, SnapshotError);
        ``request.pull_for`` may start a pull for that client."""
        request = request or SnapshotRequest()
        stream = await self.resolve(name, request.pull_for)
        self.decoding.note_request(stream)
        answer = await self.pm.afirstresult("on_snapshot_request", stream=stream, request=request)
        if answer is not None:
            return answer
        if not self.is_live(stream):
            raise StreamNotFound(f"stream {name!r} ended")
        return await self.snapshots.take(stream, request, is_live=self.is_live)

    async def snapshot_saved(self, stream: Stream | None, path: str) -> None:
        """A complete snapshot file exists at ``path``: tell the plugins (once per file) and
        hand it to every active storage backend."""
        for name, backend in self.storage.items():
            self.spawn(self._store(name, backend, stream, path), name=f"store:{name}")
        await self.pm.abroadcast("on_snapshot_saved", stream=stream, path=path, app=self)

    async def _store(self, name: str, backend: Any, stream: Stream | None, path: str) -> None:
        try:
            await backend.store(stream, path)
        except Exception:
            log.exception("storage backend %s failed to store %s", name, path)


def _first_segment(path: str) -> str:
    """``/rest-api`` of ``/rest-api/stream/find``; ``/metrics`` of ``/metrics``."""
    return "/" + path.lstrip("/").split("/", 1)[0]


def _reason_kind(reason: str) -> str:
    """A bounded label for why a stream ended: the reason up to its details."""
    return reason.split(":", 1)[0].split(" (", 1)[0].strip()[:48] or "unknown"


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp exposes the bound sockets only here
    sockets = getattr(server, "sockets", None) or []
    return sockets[0].getsockname()[1] if sockets else 0


async def start_site(
    app: App, runner: web.AppRunner, port: int, key: str, tls: ssl.SSLContext | None = None
) -> int:
    """Listen on ``[server] host``:``port`` for ``runner``, within the app's connection limit;
    returns the bound port. A port that cannot be bound cleans the runner up and raises
    StartupError naming the config key."""
    host = app.config.server.host
    site = LimitedSite(
        runner, app.connections, host=host, port=port, ssl_context=tls, reuse_address=True
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(
            f"cannot listen on {host}:{port} ({key}): {exc.strerror or exc}"
        ) from exc
    return _bound_port(site) or port
