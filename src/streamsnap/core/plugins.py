"""The plugin manager: built by a factory, in a fixed order, and the only place hooks are
called from.

Order: block-list (``[plugins] disabled``, or everything not in ``enabled``) → built-ins →
entry points of group ``streamsnap`` → ``check_pending`` (a misspelt hook fails the start).
Three ways to call a hook, with the error rules of :mod:`streamsnap.hooks.specs`:
:meth:`PluginManager.broadcast` (every implementation), :meth:`PluginManager.afirst` (the
first answer) and :meth:`PluginManager.frame` (``on_frame``, the hot path). ``lifespan`` is
entered through :meth:`PluginManager.enter_lifespans`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from .._version import __version__
from ..hooks import PROJECT_NAME, specs
from .config import Config, PluginsConfig
from .errors import StartupError, StreamsnapError
from .hookguard import HookGuard

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "streamsnap"

# Every built-in feature, registered exactly like a third-party plugin; the name is the last part.
# Lifespans are set up in this order and cleaned up in reverse: what consumes streams (files,
# the engine the WebRTC doors use) before what brings them in (RTMP, pulls: configured cameras
# publish during their setup), and at shutdown the sources stop first.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "streamsnap.plugins.rest",
    "streamsnap.plugins.mjpeg",
    "streamsnap.plugins.cluster",
    "streamsnap.plugins.storage",
    "streamsnap.plugins.storage_local",
    "streamsnap.plugins.webhook",
    "streamsnap.plugins.auto_snapshot",
    "streamsnap.plugins.folder_watch",
    "streamsnap.plugins.metrics",
    "streamsnap.plugins.webrtc",
    "streamsnap.plugins.webrtc.wcs_websocket",
    "streamsnap.plugins.webrtc.whip",
    "streamsnap.plugins.web",
    "streamsnap.plugins.rtmp",
    "streamsnap.plugins.pull",
)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    source: str  # "built-in" or the distribution that installed it
    hooks: tuple[str, ...]


def _builtin_name(module: str) -> str:
    return module.rsplit(".", 1)[-1]


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus where each plugin came from and isolated broadcast calls."""

    def __init__(self, slow_hook_s: float = 0.5) -> None:
        super().__init__(PROJECT_NAME)
        self.add_hookspecs(specs)
        self.guard = HookGuard(slow_hook_s)
        self.sources: dict[str, tuple[str, str]] = {}  # name -> (source, version)
        self._frame_impls: list[tuple[Any, list[int]]] | None = None
        if os.environ.get("STREAMSNAP_TRACE_PLUGINS"):
            self.trace.root.setwriter(lambda msg: log.info("plugin trace: %s", msg.rstrip()))
            self.enable_tracing()

    def describe(self) -> list[PluginInfo]:
        out = []
        for name, plugin in sorted(self.list_name_plugin(), key=lambda np: np[0]):
            if plugin is None:
                continue
            source, version = self.sources.get(name, ("registered", ""))
            hooks = tuple(sorted(h.name for h in self.get_hookcallers(plugin) or ()))
            out.append(PluginInfo(name, version, source, hooks))
        return out

    def declare_settings(self, config: Config) -> None:
        """Have every plugin's ``settings_sections`` checked into ``config``."""
        for name, sections in self.broadcast("settings_sections"):
            for section, cls in (sections or {}).items():
                if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
                    raise StartupError(f"plugin {name!r}: section [{section}] is not a dataclass")
                config.declare(section, cls)

    def broadcast(
        self,
        hook_name: str,
        per_plugin: Callable[[str], dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> list[tuple[str, Any]]:
        """Call every implementation of a hook; one that raises is logged and skipped.

        Returns ``(plugin name, result)`` pairs in call order; results may be awaitables.
        ``per_plugin(name)`` adds arguments of each plugin's own (e.g. a ``register`` that
        knows who registers). A plugin that blocked the loop before runs its offloadable hooks
        on its own thread (no result then).
        """
        caller = getattr(self.hook, hook_name)
        guard = self.guard
        stream = kwargs.get("stream")
        results = []
        for impl in self._impls(caller):
            given = {**kwargs, **per_plugin(impl.plugin_name)} if per_plugin else kwargs
            args = tuple(given[a] for a in impl.argnames)
            worker = guard.offloaded(impl.plugin_name, hook_name)
            if worker is not None:
                worker.submit(hook_name, impl.function, args)
                continue
            started = time.perf_counter()
            try:
                result = impl.function(*args)
            except StartupError:
                raise  # stops the start, from a plain implementation as from an async one
            except Exception as exc:
                guard.failed(impl.plugin_name, hook_name, exc, stream)
                continue
            finally:
                guard.took(impl.plugin_name, hook_name, time.perf_counter() - started, stream)
            results.append((impl.plugin_name, result))
        return results

    def frame(self, stream: Any, handle: Any, app: Any) -> None:
        """``on_frame`` for every implementation: :meth:`broadcast`'s rules on the hot path
        (the argument order worked out once, no result list)."""
        if self._frame_impls is None:
            order = ("stream", "frame", "app")
            self._frame_impls = [
                (i, [order.index(a) for a in i.argnames]) for i in self._impls(self.hook.on_frame)
            ]
        if not self._frame_impls:
            return
        args = (stream, handle, app)
        guard = self.guard
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
            if result is not None and inspect.isawaitable(result):  # the ABC check is slow
                guard.spawn_result(result, impl.plugin_name, "on_frame")

    @staticmethod
    def _impls(caller: Any) -> list[Any]:
        """The plain implementations of a hook in pluggy's call order (last registered first)."""
        return [i for i in reversed(caller.get_hookimpls()) if not (i.hookwrapper or i.wrapper)]

    async def abroadcast(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """:meth:`broadcast`, awaiting the implementations that return awaitables."""
        out = []
        for name, result in self.broadcast(hook_name, **kwargs):
            if inspect.isawaitable(result):
                try:
                    result = await result
                except StartupError:
                    raise
                except Exception as exc:
                    self.guard.failed(name, hook_name, exc, kwargs.get("stream"))
                    continue
            out.append((name, result))
        return out

    async def enter_lifespans(self, stack: contextlib.AsyncExitStack, **kwargs: Any) -> None:
        """Run every ``lifespan`` setup in registration order (built-ins, then installed
        plugins: a plugin finds what those before it set up), each registered on ``stack`` so
        that cleanups run in reverse and only for setups that finished. StartupError
        propagates; another failure leaves that plugin out, logged."""
        for impl in reversed(self._impls(self.hook.lifespan)):  # registration order
            args = tuple(kwargs[a] for a in impl.argnames)
            try:
                cm = contextlib.asynccontextmanager(impl.function)(*args)
                await stack.enter_async_context(_Logged(cm, impl.plugin_name, self.guard))
            except StartupError:
                raise
            except Exception as exc:
                self.guard.failed(impl.plugin_name, "lifespan", exc, None)

    async def afirstresult(self, hook_name: str, **kwargs: Any) -> Any:
        """Call a first-result hook: the first non-None answer wins, awaited if awaitable."""
        return (await self.afirst(hook_name, kwargs))[0]

    async def afirst(
        self, hook_name: str, kwargs: dict[str, Any], on_error: Any = None
    ) -> tuple[Any, str]:
        """The first non-None answer of a first-result hook and the plugin that gave it.

        Walked here rather than by pluggy so that async implementations can decline too
        (their coroutine is not None until awaited). An implementation that raises is
        logged with its name and skipped, or, when ``on_error`` is given, answers it (fail
        closed); streamsnap's own errors are answers (e.g. InvalidStreamName from
        ``resolve_stream``) and propagate.
        """
        for impl in self._impls(getattr(self.hook, hook_name)):
            try:
                result = impl.function(*[kwargs[a] for a in impl.argnames])
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                result = self._first_failed(impl, hook_name, kwargs, exc, on_error)
            if result is not None:
                return result, impl.plugin_name
        return None, ""

    def first(
        self, hook_name: str, kwargs: dict[str, Any], on_error: Any = None
    ) -> tuple[Any, str]:
        """:meth:`afirst` for a hook called before the event loop runs (implementations must
        answer synchronously)."""
        for impl in self._impls(getattr(self.hook, hook_name)):
            try:
                result = impl.function(*[kwargs[a] for a in impl.argnames])
            except Exception as exc:
                result = self._first_failed(impl, hook_name, kwargs, exc, on_error)
            if result is not None:
                return result, impl.plugin_name
        return None, ""

    def _first_failed(
        self, impl: Any, hook_name: str, kwargs: dict[str, Any], exc: Exception, on_error: Any
    ) -> Any:
        """A first-result implementation raised: streamsnap's own errors are answers (e.g.
        InvalidStreamName) and propagate; another is logged and skipped (None), or answers
        ``on_error`` (fail closed)."""
        if isinstance(exc, StreamsnapError):
            raise exc
        self.guard.failed(impl.plugin_name, hook_name, exc, kwargs.get("stream"))
        return on_error


class _Logged:
    """A plugin's lifespan on the exit stack: a cleanup that raises is logged with the
    plugin's name, and the other cleanups still run."""

    def __init__(self, cm: Any, name: str, guard: HookGuard) -> None:
        self.cm, self.name, self.guard = cm, name, guard

    async def __aenter__(self) -> None:
        await self.cm.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool:
        try:
            await self.cm.__aexit__(None, None, None)
        except Exception as exc:
            self.guard.failed(self.name, "lifespan", exc, None)
        return False


def _entry_points() -> Iterable[Any]:
    return entry_points(group=ENTRY_POINT_GROUP)


def make_plugin_manager(
    config: PluginsConfig,
    *,
    builtins: Iterable[str] = BUILTIN_PLUGINS,
    load_entry_points: bool = True,
    extra: Iterable[tuple[str, object]] = (),
) -> PluginManager:
    """Build the plugin manager for ``config``; raises :class:`StartupError` naming the plugin."""
    pm = PluginManager(config.slow_hook_s)
    enabled, disabled = set(config.enabled), set(config.disabled)
    builtins = tuple(builtins)
    eps = list(_entry_points()) if load_entry_points else []
    known = {_builtin_name(m) for m in builtins} | {ep.name for ep in eps} | {n for n, _ in extra}

    # 1. block-list
    for name in sorted(known):
        if name in disabled or (enabled and name not in enabled):
            pm.set_blocked(name)
    for name in sorted((enabled | disabled) - known):
        what = "enabled" if name in enabled else "disabled"
        raise StartupError(
            f"[plugins] {what} names {name!r}, which is neither built in nor installed "
            f"(known: {', '.join(sorted(known))})"
        )

    # 2. built-ins, through the same door as third-party plugins
    for module_name in builtins:
        name = _builtin_name(module_name)
        if pm.is_blocked(name):
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise StartupError(f"built-in plugin {name!r} failed to import: {exc}") from exc
        _register(pm, module, name, ("built-in", __version__))

    # 3. installed plugins (entry points of group "streamsnap")
    for ep in eps:
        if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
            continue
        dist = getattr(ep, "dist", None)
        source = (dist.metadata["Name"] if dist else ep.value, dist.version if dist else "")
        try:
            plugin = ep.load()
        except Exception as exc:
            raise StartupError(
                f"plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        _register(pm, plugin, ep.name, source)

    for name, plugin in extra:
        if not pm.is_blocked(name):
            _register(pm, plugin, name, ("registered", ""))

    # 4. every implementation must match a spec
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        hooks = re.findall(r"unknown hook '([^']+)'", str(exc))
        raise StartupError(
            f"plugin {name!r} implements unknown hook {', '.join(map(repr, hooks)) or '?'} "
            f"(misspelt? known hooks: {', '.join(sorted(pm.hook.__dict__))})"
        ) from exc
    return pm


def _register(pm: PluginManager, plugin: object, name: str, source: tuple[str, str]) -> None:
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise StartupError(f"plugin {name!r} cannot be registered: {exc}") from exc
    pm.sources[name] = source
