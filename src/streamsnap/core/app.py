"""The app: one streamsnap server. It holds the config, the plugin manager, the stream
registry and the snapshot service, runs the plugins' lifecycle, and carries a stream from its
claim to its end. What is not that lives beside it: who may use which route
(:mod:`.access`), who may publish and how much is taken on (:mod:`.admission`), the
listeners (:mod:`.listeners`), process tuning (:mod:`.runtime`); every feature is a plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import ssl
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from .access import Access, open_access_warning
from .admission import Admission
from .allocator import ReleaseSoon, trim_periodically
from .auth import Authenticator
from .config import Config
from .decoding import DecodePolicy
from .errors import StartupError, StreamNameInUse, StreamNotFound
from .frames import FrameHandle, FrameStore
from .listeners import (
    ConnectionLimiter,
    ForwardedFor,
    HostCheck,
    load_tls,
    make_runner,
    start_site,
)
from .plugins import PluginManager, make_plugin_manager
from .snapshot import Snapshot, SnapshotRequest, SnapshotService
from .state import State
from .streams import MemoryRegistry, Stream, StreamRegistry, reason_kind

log = logging.getLogger(__name__)
# loop turns from reading a connection's end to its stream's release (transport, protocol,
# unpublish task), and some to spare
PACED_END_TURNS = 10

APP_KEY: web.AppKey[App] = web.AppKey("streamsnap_app", object)  # type: ignore[arg-type]
_FAILED = object()


class App:
    """One streamsnap server."""

    def __init__(self, config: Config, pm: PluginManager | None = None) -> None:
        self.config = config
        self.pm = pm if pm is not None else make_plugin_manager(config.plugins)
        self.pm.declare_settings(config)  # the plugins' sections, checked before anything runs
        self.state = State()  # what plugins own for this app, under their StateKeys
        self.streams = self._make_registry()
        workers = config.snapshot.workers or max(1, os.cpu_count() or 1)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="snapshot")
        # File writes wait on the disk (fsync), not the CPU: they get their own threads so a
        # slow disk never holds up decoding and encoding.
        self.io_executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="io")
        self.snapshots = SnapshotService(config.snapshot, self.executor)
        self.decoding = DecodePolicy(self)
        self.ports: dict[str, int] = {}  # what each listener really bound ("http", "rtmp", ...)
        self._lifespans = contextlib.AsyncExitStack()  # plugins' lifespans, cleaned up on stop
        self.web: web.Application | None = None
        self.tls: ssl.SSLContext | None = None  # with [server] tls_cert/tls_key, once started
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        auth = config.auth
        self.auth = Authenticator(
            auth.token, auth.users, auth.publish_keys, open_publish=auth.open_publish
        )
        self.refused: Counter[str] = Counter()  # refusals by rule, for /metrics
        self.admission = Admission(self, self.refused)
        self.access = Access(self, self.auth, self.refused)
        self.connections = ConnectionLimiter(config.limits.max_connections_per_ip, self.refused)
        self.hosts = HostCheck(config.server.server_names, self.refused)
        self.forwarded = ForwardedFor(config.server.trusted_proxies)
        self.pm.guard.spawn = lambda coro, name: self.spawn(coro, name=name)
        self.ended: Counter[tuple[str, str]] = Counter()  # (protocol, reason) -> streams ended
        self._release_memory_soon = ReleaseSoon(self.io_executor)

    def _make_registry(self) -> StreamRegistry:
        """The registry a plugin provides (``make_stream_registry``), else the in-memory one."""
        registry, by = self.pm.first("make_stream_registry", {"app": self}, on_error=_FAILED)
        if registry is _FAILED:  # fail closed: not silently a registry of this node alone
            raise StartupError(f"plugin {by!r} failed in make_stream_registry (see the log)")
        if registry is None:
            return MemoryRegistry()
        if not isinstance(registry, StreamRegistry):
            raise StartupError(
                f"plugin {by!r}: make_stream_registry returned {type(registry).__name__}, "
                "not a StreamRegistry"
            )
        return registry

    def _warn_unknown_sections(self) -> None:
        loaded = {name for name, plugin in self.pm.list_name_plugin() if plugin is not None}
        for section in self.config.undeclared():
            if section in loaded:
                continue
            why = "no plugin of that name is loaded"
            if self.pm.is_blocked(section):
                why = f"the {section!r} plugin is left out by [plugins] enabled/disabled"
            log.warning(
                "config %s: section [%s] is not used (%s)", self.config.source, section, why
            )

    @property
    def plaintext(self) -> bool:
        """Are the plain HTTP and WebSocket ports open? ``[server] plaintext = false`` closes
        them when TLS is on; without TLS they are the only ones."""
        return self.config.server.plaintext or not self.config.server.tls_cert

    async def listen(self, runner: web.AppRunner, port: int, key: str, tls: bool = False) -> int:
        """Serve ``runner`` on ``[server] host``:``port`` (with TLS: the server's certificate),
        within ``[limits] max_connections_per_ip``; returns the bound port."""
        context = self.tls if tls else None
        host = self.config.server.host
        return await start_site(runner, self.connections, host, port, key, context)

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        srv = self.config.server
        self.tls = load_tls(srv)
        self.web = web.Application(
            client_max_size=1 << 20,
            middlewares=[self.forwarded.middleware, self.hosts.middleware, self.access.middleware],
        )
        self.web[APP_KEY] = self
        for name, routes in self.pm.broadcast("register_routes", app=self):
            try:
                self.access.add_routes(self.web, routes or [])
            except Exception as exc:
                raise StartupError(f"plugin {name!r} contributed bad routes: {exc}") from exc
        self._runner = make_runner(self.web)
        await self._runner.setup()
        if self.plaintext:
            self.ports["http"] = await self.listen(self._runner, srv.http_port, "http_port")
        elif self.tls is None:
            log.warning(
                "[server] plaintext = false has no effect without [server] tls_cert and tls_key: "
                "the plain HTTP and WebSocket ports are open"
            )
        if self.tls is not None:
            self.ports["https"] = await self.listen(
                self._runner, srv.https_port, "https_port", True
            )
        try:
            await self.pm.enter_lifespans(self._lifespans, app=self)
            await self.pm.abroadcast("on_startup", app=self)
        except StartupError:
            await self.stop()
            raise
        self._warn_unknown_sections()
        self.spawn(self.decoding.run(), name="decode-policy")
        self.spawn(trim_periodically(self.io_executor), name="memory-trim")
        warning = open_access_warning(self.config)
        if warning:
            log.warning("%s", warning)
        log.info("streamsnap ready: %s", ", ".join(f"{k}={v}" for k, v in self.ports.items()))

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
        stale_after_s, history_s, history_bytes = limits.for_stream(name)
        frames = FrameStore(
            name, limits.max_gop_packets, limits.max_gop_bytes, history_s, history_bytes
        )
        return Stream(
            name=name, protocol=protocol, frames=frames, stale_after_s=stale_after_s, **fields
        )

    async def claim(self, stream: Stream) -> None:
        """Register ``stream`` now (raises StreamNameInUse); :meth:`announce` must follow.
        Publishers go through ``admission.admit``, which checks them first."""
        held = self.streams.lookup(stream.name)
        if held is not None and held.frames.pacer is not None and held.frames.pacer.paused:
            # a paced publisher may have left already (a reconnecting encoder): its
            # connection's end is read now, and handled in the loop's next turns
            held.frames.flush_source()
            for _ in range(PACED_END_TURNS):
                await asyncio.sleep(0)
                if self.streams.lookup(stream.name) is not held:
                    break
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
        self.ended[stream.protocol, reason_kind(reason or "publisher left")] += 1
        stream.frames.reset()
        # An ended stream may be remembered a long time (the folder its snapshots went to):
        # it keeps nothing of its publisher. These closures hold the connection (a WebRTC
        # peer connection with its receivers and buffers, an RTMP session, a pull).
        stream.terminator = stream.check_name = None
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

    def is_live(self, stream: Stream) -> bool:
        return self.streams.lookup(stream.name) is stream

    def frame(self, stream: Stream, handle: FrameHandle) -> None:
        """A video frame arrived: decode it if the stream is kept decoded, tell the plugins."""
        if stream.frames.continuous:
            self.decoding.kick(stream)
        self.pm.frame(stream, handle, self)

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
        stream.frames.flush_source()  # a paced source's queued frames, before anyone looks
        return stream

    async def snapshot(self, name: str, request: SnapshotRequest | None = None) -> Snapshot:
        """The current picture of stream ``name`` (raises StreamNotFound, SnapshotError);
        ``request.pull_for`` may start a pull for that client."""
        request = request or SnapshotRequest()
        if self.streams.lookup(name) is None:  # perhaps held by another node of a cluster
            answer = await self._elsewhere(name, name, request)
            if answer is not None:
                return answer
        try:
            stream = await self.resolve(name, request.pull_for)
        except StreamNameInUse as exc:  # a source another node pulls: ask that node
            answer = await self._elsewhere(name, exc.name or name, request)
            if answer is None:
                raise StreamNotFound(f"stream {name!r} not found") from None
            return answer
        self.decoding.note_request(stream)
        answer = await self.pm.afirstresult("on_snapshot_request", stream=stream, request=request)
        if answer is not None:
            return answer
        if not self.is_live(stream):
            raise StreamNotFound(f"stream {name!r} ended")
        return await self.snapshots.take(stream, request, is_live=self.is_live)

    async def _elsewhere(self, name: str, held_as: str, request: SnapshotRequest) -> Any:
        return await self.pm.afirstresult(
            "snapshot_elsewhere", app=self, name=name, held_as=held_as, request=request
        )

    async def snapshot_saved(self, stream: Stream | None, path: str) -> None:
        """A complete snapshot file exists at ``path``: tell the plugins, once per file."""
        await self.pm.abroadcast("on_snapshot_saved", stream=stream, path=path, app=self)
