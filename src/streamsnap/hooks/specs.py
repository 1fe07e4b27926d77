"""Hook specifications: every extension point of streamsnap, with when it fires and what it returns.

An implementation may return a plain value or an awaitable; the core awaits what it gets
(``on_frame``'s awaitables run as tasks). Every hook is called by
:class:`streamsnap.core.plugins.PluginManager`, in one of three ways: every implementation in
turn (a broadcast), until the first non-None answer (hooks marked firstresult), or on the hot
path of ``on_frame``; the same rules hold for all.

Error rules

1. ``StartupError`` (``ConfigError`` included), raised by a plain or an async implementation of
   any hook called while the server starts (``settings_sections``, ``make_stream_registry``,
   ``register_storage_backends``, ``register_routes``, the setup of ``lifespan``,
   ``on_startup``), stops the start with its message; what was set up is cleaned up.
2. streamsnap's own errors raised by a firstresult hook (``InvalidStreamName``, ``NotAllowed``
   from ``resolve_stream``) are answers: they reach the client that asked.
3. Any other exception is logged with the plugin's and the hook's name, and that
   implementation is skipped: the other plugins still run, the server keeps serving. Two hooks
   fail closed instead: an ``authorize_publish`` that raises refuses the publisher, a
   ``make_stream_registry`` that raises stops the start.
4. A plain implementation of ``on_frame`` or ``on_snapshot_saved`` that holds the event loop
   longer than ``[plugins] slow_hook_s`` is logged; that plugin's calls of those two hooks then
   run on a thread of its own, dropped while its backlog is full.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _hookspec

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from aiohttp import web

    from ..core.app import App
    from ..core.frames import FrameHandle
    from ..core.snapshot import Snapshot, SnapshotRequest
    from ..core.streams import Stream, StreamRegistry


@_hookspec
def register_storage_backends(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Contribute storage backends: call ``register(name, factory)`` once per backend.

    Fires once while the app is built. ``factory(config: dict)`` must return an object with an
    async ``store(stream, path)`` method. Names must be unique; a duplicate is refused with an
    error naming both plugins.
    """


@_hookspec
def settings_sections() -> dict[str, type] | None:
    """The config sections this plugin owns: ``{"name": SettingsDataclass}``.

    Fires once, while the app is built, before any other hook. The core reads ``[name]`` into
    the dataclass the way it reads its own sections (an unknown key is warned about by name; a
    value of the wrong type, or outside a range declared with
    :func:`streamsnap.core.config.setting`, stops the start naming key and value; a
    ``check(self)`` method may refuse combinations by raising ``ConfigError``); the plugin
    then gets it with ``app.config.of(SettingsDataclass)``. Environment variables
    ``STREAMSNAP_<NAME>_<KEY>`` override the file. A class attribute ``aliases`` names older
    sections read first, with a warning to rename them.
    """


@_hookspec(firstresult=True)
def make_stream_registry(app: App) -> StreamRegistry | None:
    """Provide the stream registry of ``app`` instead of the in-memory one (e.g. a registry
    shared by the nodes of a cluster).

    Fires once, while the app is built, before any plugin starts. Return a
    :class:`streamsnap.core.streams.StreamRegistry`, or None to leave the default. Stops at the
    first non-None result. A registry that cannot be made stops the start (raise
    :class:`streamsnap.StartupError` with a message naming what is wrong).
    """


@_hookspec(firstresult=True)
def authenticate_request(app: App, request: web.Request) -> str | None:
    """Who sent ``request``, for a request to a route that is not open: return a name (the
    request then counts as having API credentials: e.g. a node of the cluster proving it with
    a signature), or None for no opinion. Raise :class:`streamsnap.core.errors.NotAllowed` to
    refuse the request (403 with the message; a forged or replayed forward).

    Fires for every such request, before the ``[auth]`` check, also when ``[auth]`` is off:
    keep the common case (a request that is none of yours) to a header lookup. May return an
    awaitable. Stops at the first non-None result.
    """


@_hookspec(firstresult=True)
def streams_elsewhere(app: App) -> list[dict[str, Any]] | None:
    """The live streams other servers hold, as ``/rest-api/stream/find_all`` shows them, each
    with its ``node`` (in a cluster), for the pages that show every stream (the gallery); None
    for a server on its own.

    May return an awaitable; raise :class:`streamsnap.core.errors.Unavailable` when they
    cannot be asked. Stops at the first non-None result.
    """


@_hookspec(firstresult=True)
def assign_sources(app: App, names: list[str]) -> dict[str, str] | None:
    """Which of the sources configured on this server (``[[pull.cameras]]``,
    ``[[pull.sources]]``, by name) it should pull: for each name ``"pull"`` (pull it here; when
    another server still holds the name, pull on standby until it is handed over), ``"keep"``
    (not this server's any more, but hold it until its new puller is ready) or ``"drop"``
    (stop, or do not start). Return None to pull every one (a single server).

    Fires at start and then twice a second while a plugin answers (in a cluster: the nodes
    share the configured sources out). May return an awaitable; keep it cheap. Stops at the
    first non-None result.
    """


@_hookspec(firstresult=True)
def snapshot_elsewhere(
    app: App, name: str, held_as: str, request: SnapshotRequest
) -> Snapshot | None:
    """A snapshot of ``name``, which this server does not hold, is asked for (REST, image
    GETs, WebSocket): a plugin that can get it elsewhere (from the node of a cluster that
    holds the stream) returns it, or None to let this server resolve the name as usual (a
    pull, or 404). ``held_as`` is the name the stream would be held under: ``name`` itself,
    or, for a source URL another server already pulls, that URL without its credentials
    (ask the holder for ``name``, which it checks the credentials of).

    Fires before ``resolve_stream``, and again when a pull cannot start because another server
    holds its source. May return an awaitable; raise
    :class:`streamsnap.core.errors.Unavailable` (503) when the holder cannot be reached, or
    the error the holder answered (``StreamNotFound``, ``SnapshotError``). Stops at the first
    non-None result.
    """


@_hookspec(firstresult=True)
def forward_request(
    app: App, request: web.Request, body: dict[str, Any]
) -> web.StreamResponse | None:
    """A request about streams this server may not hold: ``find``, ``terminate`` or
    ``snapshot/save`` that matched nothing here, every ``find_all``, and ``stream.mjpeg`` of a
    stream not held here (``body``: its ``streamName``). A plugin returns the answer to give
    instead (in a cluster: the holder's answer, passed on as it comes for a live one, or for
    ``find_all`` every node's streams), or None to answer from this server alone. ``body`` is
    the request's JSON object, already checked.

    May return an awaitable; raise :class:`streamsnap.core.errors.Unavailable` (503) when the
    holder cannot be reached. Stops at the first non-None result.
    """


@_hookspec
def collect_metrics(
    app: App,
) -> list[tuple[str, str, str, list[tuple[float, dict[str, str] | None]]]]:
    """Metrics of the plugin's own for ``GET /metrics``: a list of
    ``(name, kind, help, samples)``, ``kind`` a Prometheus type (``counter``, ``gauge``),
    ``samples`` a list of ``(value, labels or None)``.

    Fires on every scrape, on the event loop: read counters you keep, do no I/O. Name your
    metrics ``streamsnap_<plugin>_...``. A family that is not such a tuple is logged and left
    out.
    """


@_hookspec
def register_routes(app: App) -> list[web.RouteDef] | None:
    """Contribute HTTP routes to the server on ``http_port``.

    Fires once while the app is built. Return a list of aiohttp route definitions
    (``web.get(...)``, ``web.post(...)``), or None.
    """


@_hookspec
def lifespan(app: App) -> AsyncIterator[None]:
    """The plugin's life in the server, as an async generator: set up (open listeners, start
    tasks, put what it owns into ``app.state`` under its own :class:`StateKey`), ``yield``
    while the server runs, then clean up.

    Setups run once, in plugin order (built-ins, then installed plugins), after the config is
    loaded and the HTTP server is bound, before the server reports itself ready; cleanups run
    when it stops, in reverse order, and only for the plugins whose setup finished. Raising
    :class:`streamsnap.StartupError` in the setup stops the start (the setups already done are
    cleaned up); another exception is logged and the plugin left out. The whole shutdown is
    bounded by ``[server] shutdown_timeout_s``.
    """


@_hookspec
def on_startup(app: App) -> Any:
    """The app is starting (after every ``lifespan`` setup): open listeners, start background
    work. Kept for plugins written before ``lifespan``.

    Fires once, after the config is loaded and the HTTP server is bound. May return an
    awaitable, which is awaited before the server reports itself ready. Raising
    :class:`streamsnap.StartupError`, from a plain or an async implementation, stops the start;
    another exception is logged and the plugin left out.
    """


@_hookspec
def on_shutdown(app: App) -> Any:
    """The app is stopping (before the ``lifespan`` cleanups): close listeners, stop children,
    finish in-flight work. Kept for plugins written before ``lifespan``.

    Fires once. May return an awaitable; the core bounds the whole shutdown with a timeout.
    """


@_hookspec
def on_publish(stream: Stream, app: App) -> Any:
    """A stream has started: a publisher connected and announced it, or a pull began.

    ``app`` is the server the stream belongs to (take it only if you need it).

    Fires once per publish session, after the stream is registered (so it is findable and its
    ``media_session_id`` is set) and before its first frame. Return value ignored.
    """


@_hookspec(firstresult=True)
def authorize_publish(
    app: App, stream_name: str, protocol: str, remote: str, params: dict[str, str]
) -> bool | str | None:
    """A publisher wants to publish ``stream_name`` over ``protocol`` (``rtmp``, ``whip``,
    ``webrtc``) from IP address ``remote``: may it?

    Fires before the stream is claimed (it is not yet findable), for every RTMP, WHIP and
    WebSocket publish. ``params`` are what the publisher sent with the name: the RTMP query
    (``?key=...`` on the name or the connect URL), the WHIP query and bearer token (as ``key``),
    the WebSDK ``custom`` object (string values); ``user`` is set when the WHIP request carried
    API credentials. Return True to allow (the built-in publish-key check is skipped; limits
    still apply), a string to refuse with that reason (sent to the publisher), False to refuse
    without one, or None for no opinion. May return an awaitable. Stops at the first non-None
    result. A plugin that raises refuses the publisher (logged with its name).
    """


@_hookspec
def on_unpublish(stream: Stream, app: App) -> Any:
    """A stream has ended (publisher left, terminated, or failed).

    ``app`` is the server the stream belonged to (take it only if you need it).

    Fires once per publish session, after the stream left the registry. Return value ignored.
    """


@_hookspec
def on_frame(stream: Stream, frame: FrameHandle, app: App) -> None:
    """A video frame (access unit) of ``stream`` arrived (``app``: take it only if needed).

    Fires for every video frame, on the event loop, so it must be cheap and must not block.
    A plugin whose synchronous call blocks longer than ``[plugins] slow_hook_s`` is logged and
    gets its ``on_frame`` (and ``on_snapshot_saved``) calls on a thread of its own from then on,
    dropped while its backlog is full.
    ``frame`` is a light handle (``index``, ``pts``, ``keyframe``, ``size``); it holds no pixels.
    Ask the snapshot service for a picture when one is needed: that is what triggers decoding.
    Return value ignored; awaitables are not awaited.
    """


@_hookspec(firstresult=True)
def resolve_stream(app: App, name: str, remote: str | None) -> Stream | None:
    """A stream that is not live is asked for by ``name`` (snapshot, find, play).

    A plugin that can provide it (e.g. by pulling the ``rtsp://`` URL the name is) starts it,
    registers it and returns it (or an awaitable of it); it may also return a live stream known
    under another name (an alias). ``remote`` is the address of the client that asks, or None
    when nothing may be started for this request (image GETs, which a web page can make any
    browser send): then only an alias of a live stream may be returned. Raise
    :class:`streamsnap.core.errors.InvalidStreamName` to refuse a name outright (REST answers
    400), or :class:`~streamsnap.core.errors.NotAllowed` naming the setting that would allow
    it (403). Stops at the first non-None result; return None to decline.
    """


@_hookspec(firstresult=True)
def on_snapshot_request(stream: Stream, request: SnapshotRequest) -> Snapshot | None:
    """A snapshot of ``stream`` is asked for (REST, WebSocket, CLI, auto-snapshot).

    Stops at the first non-None result. Return a :class:`streamsnap.Snapshot` (or an
    awaitable of one) to answer instead of the built-in snapshot service; to decline, return
    None synchronously.
    """


@_hookspec
def on_snapshot_saved(stream: Stream | None, path: str, app: App) -> Any:
    """A complete snapshot file was written to ``path``.

    Fires once per file. ``stream`` is the stream the file belongs to (it may have ended
    since), or None for a file no stream wrote (e.g. one another process put into a watched
    folder). May return an awaitable.
    """
