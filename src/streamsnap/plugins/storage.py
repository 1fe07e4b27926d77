"""Storage backends: every saved snapshot is handed to the backends ``[storage] backends``
names, each contributed by a plugin through ``register_storage_backends`` and configured in
the section of its own name (``[local]``, ``[s3]``).

A backend is a factory ``factory(settings: dict)`` returning an object with an async
``store(stream, path)`` (and optionally ``close()``); a store that fails is logged with the
backend's name and never holds up the snapshot or the other backends.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.app import App
from ..core.errors import StartupError
from ..core.plugins import PluginManager
from ..core.state import StateKey
from ..core.streams import Stream
from ..hooks import hookimpl

log = logging.getLogger(__name__)


@dataclass
class StorageSettings:
    backends: list[str] = field(default_factory=list)  # e.g. ["local", "s3"]; settings in [name]


class BackendRegistry:
    """Storage backends contributed by plugins through ``register_storage_backends``."""

    def __init__(self) -> None:
        self.factories: dict[str, Callable[..., Any]] = {}
        self.owners: dict[str, str] = {}

    def collect(self, pm: PluginManager) -> None:
        def registrar(owner: str) -> dict[str, Any]:
            return {"register": lambda name, factory: self.add(name, factory, owner)}

        pm.broadcast("register_storage_backends", per_plugin=registrar)

    def add(self, name: str, factory: Callable[..., Any], owner: str) -> None:
        if not isinstance(name, str) or not name:
            raise StartupError(f"plugin {owner!r} registered a storage backend without a name")
        if not callable(factory):
            raise StartupError(f"plugin {owner!r}: storage backend {name!r} is not callable")
        if name in self.factories:
            raise StartupError(
                f"storage backend {name!r} registered twice: by {self.owners[name]!r} "
                f"and by {owner!r}"
            )
        self.factories[name] = factory
        self.owners[name] = owner


class Storage:
    """The active backends of an app."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.registry = BackendRegistry()
        self.registry.collect(app.pm)
        self.backends: dict[str, Any] = {}
        for name in app.config.of(StorageSettings).backends:
            factory = self.registry.factories.get(name)
            if factory is None:
                known = ", ".join(sorted(self.registry.factories)) or "none"
                raise StartupError(
                    f"[storage] backends names {name!r}, which no plugin registered "
                    f"(known: {known})"
                )
            try:
                self.backends[name] = factory(app.config.section(name))
            except Exception as exc:
                raise StartupError(
                    f"storage backend {name!r} (plugin {self.registry.owners[name]!r}): {exc}"
                ) from exc

    def saved(self, stream: Stream | None, path: str) -> None:
        for name, backend in self.backends.items():
            self.app.spawn(self._store(name, backend, stream, path), name=f"store:{name}")

    async def _store(self, name: str, backend: Any, stream: Stream | None, path: str) -> None:
        try:
            await backend.store(stream, path)
        except Exception:
            log.exception("storage backend %s failed to store %s", name, path)

    async def close(self) -> None:
        for name, backend in self.backends.items():
            close = getattr(backend, "close", None)
            if close is None:
                continue
            try:
                result = close()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("storage backend %s failed to close", name)


STORAGE: StateKey[Storage] = StateKey("storage", Storage)


@hookimpl
def settings_sections() -> dict[str, type]:
    return {"storage": StorageSettings}


@hookimpl
async def lifespan(app: App) -> AsyncIterator[None]:
    storage = Storage(app)
    app.state[STORAGE] = storage
    yield
    app.state.pop(STORAGE)
    await storage.close()


@hookimpl
def on_snapshot_saved(stream: Stream | None, path: str, app: App) -> None:
    storage = app.state.get(STORAGE)
    if storage is not None:
        storage.saved(stream, path)
