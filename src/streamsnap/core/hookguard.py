"""Plugin hook calls kept contained: failures logged once and counted, slow plugins moved off
the event loop.

A plugin that raises is logged with its name the first time it fails in a hook with a given
error type, and counted every time (``/metrics``), so a plugin failing on every frame cannot
flood the log. A synchronous implementation that holds the event loop longer than
``[plugins] slow_hook_s`` is logged with its name; from then on its ``on_frame`` and
``on_snapshot_saved`` calls run on that plugin's own worker thread, with a bounded backlog
(calls beyond it are dropped and counted), so one slow plugin stalls only itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# Broadcast hooks whose results nobody waits for: these may run on a plugin's own thread.
OFFLOADABLE = frozenset({"on_frame", "on_snapshot_saved"})
# Hooks that run while streams flow (start-up and shutdown may take their time).
TIMED = frozenset({"on_publish", "on_unpublish", "on_frame", "on_snapshot_saved"})
BACKLOG = 64


def _where(stream: Any) -> str:
    name = getattr(stream, "name", None)
    return f" (stream {name})" if name else ""


class PluginWorker:
    """One daemon thread running a slow plugin's calls in order (daemon: a plugin that never
    returns must not hold up the server's exit)."""

    def __init__(self, guard: HookGuard, plugin: str) -> None:
        self.guard = guard
        self.plugin = plugin
        self.queue: queue.Queue[tuple[str, Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.Queue(BACKLOG)
        )
        self.loop = asyncio.get_running_loop()
        self.thread = threading.Thread(target=self._run, name=f"plugin-{plugin}", daemon=True)
        self.thread.start()

    def submit(self, hook: str, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self.queue.put_nowait((hook, function, args))
        except queue.Full:
            self.guard.dropped[self.plugin] += 1

    def stop(self) -> None:
        with contextlib.suppress(queue.Full):  # a full backlog: the daemon thread ends with us
            self.queue.put_nowait(None)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            hook, function, args = item
            try:
                result = function(*args)
            except Exception as exc:
                self.guard.failed(self.plugin, hook, exc, args[0] if args else None)
                continue
            if inspect.isawaitable(result):
                # an awaitable from a plugin's worker thread is run on the loop it belongs to
                self.loop.call_soon_threadsafe(self.guard.spawn_result, result, self.plugin, hook)


class HookGuard:
    """What the core uses around every plugin call it makes itself."""

    def __init__(self, slow_s: float = 0.5) -> None:
        self.slow_s = slow_s
        self.errors: Counter[tuple[str, str]] = Counter()  # (plugin, hook) -> failures
        self.slow: Counter[tuple[str, str]] = Counter()  # (plugin, hook) -> slow calls
        self.dropped: Counter[str] = Counter()  # plugin -> offloaded calls dropped (backlog full)
        self.workers: dict[str, PluginWorker] = {}
        self._logged: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()  # errors are counted from worker threads too
        self.spawn: Callable[[Any, str], Any] | None = None  # the app's task spawner

    def failed(self, plugin: str, hook: str, exc: BaseException, stream: Any = None) -> None:
        """Count a failure; log it (with traceback) once per plugin, hook and error type."""
        key = (plugin, hook, type(exc).__name__)
        with self._lock:
            self.errors[plugin, hook] += 1
            first = key not in self._logged
            self._logged.add(key)
        if first:
            log.error(
                "plugin %s failed in %s%s: %s: %s (later %s failures of this plugin in %s are "
                "counted in /metrics, not logged)",
                plugin,
                hook,
                _where(stream),
                type(exc).__name__,
                exc,
                type(exc).__name__,
                hook,
                exc_info=exc,
            )
        else:
            log.debug("plugin %s failed in %s%s again: %r", plugin, hook, _where(stream), exc)

    def took(self, plugin: str, hook: str, seconds: float, stream: Any = None) -> None:
        """A synchronous call of ``plugin`` held the event loop for ``seconds``."""
        if seconds < self.slow_s or hook not in TIMED:
            return
        self.slow[plugin, hook] += 1
        if hook in OFFLOADABLE and plugin not in self.workers:
            self.workers[plugin] = PluginWorker(self, plugin)
            log.warning(
                "plugin %s blocked the event loop for %.1f s in %s%s: its on_frame and "
                "on_snapshot_saved calls run on a thread of their own from now on (at most %d "
                "waiting; more are dropped)",
                plugin,
                seconds,
                hook,
                _where(stream),
                BACKLOG,
            )
        elif self.slow[plugin, hook] == 1:
            log.warning(
                "plugin %s blocked the event loop for %.1f s in %s%s (hooks must not block; "
                "make it async or hand the work to a thread)",
                plugin,
                seconds,
                hook,
                _where(stream),
            )

    def offloaded(self, plugin: str, hook: str) -> PluginWorker | None:
        if hook not in OFFLOADABLE:
            return None
        return self.workers.get(plugin)

    def spawn_result(self, result: Any, plugin: str, hook: str) -> None:
        async def run() -> None:
            try:
                await result
            except Exception as exc:
                self.failed(plugin, hook, exc)

        if self.spawn is not None:
            self.spawn(run(), f"{hook}:{plugin}")

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()
