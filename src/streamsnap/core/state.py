"""What plugins keep for one app, under typed keys (like aiohttp's ``web.AppKey``).

A plugin declares its key once, next to what it stores (``PULL = StateKey("pull", PullPlugin)``)
and other plugins that need it import that key: the key is the plugin's public interface, and
a type checker knows what ``app.state[PULL]`` is.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")
D = TypeVar("D")


class StateKey(Generic[T]):
    """The key of one thing in :class:`State`; ``kind`` is what is stored under it."""

    __slots__ = ("kind", "name")

    def __init__(self, name: str, kind: type[T] | Any = object) -> None:
        self.name = name
        self.kind = kind

    def __repr__(self) -> str:
        return f"StateKey({self.name!r})"


class State:
    """Typed storage: ``state[key] = value``, ``state[key]``, ``state.get(key)``,
    ``state.pop(key)``; only :class:`StateKey` keys."""

    def __init__(self) -> None:
        self._items: dict[StateKey[Any], Any] = {}

    def __setitem__(self, key: StateKey[T], value: T) -> None:
        if not isinstance(key, StateKey):
            raise TypeError(f"app.state keys are StateKey objects, not {key!r}")
        self._items[key] = value

    def __getitem__(self, key: StateKey[T]) -> T:
        return self._items[key]  # type: ignore[no-any-return]

    def __contains__(self, key: object) -> bool:
        return key in self._items

    @overload
    def get(self, key: StateKey[T]) -> T | None: ...

    @overload
    def get(self, key: StateKey[T], default: D) -> T | D: ...

    def get(self, key: StateKey[T], default: Any = None) -> Any:
        return self._items.get(key, default)

    def pop(self, key: StateKey[T], default: Any = None) -> Any:
        return self._items.pop(key, default)

    def setdefault(self, key: StateKey[T], default: T) -> T:
        if not isinstance(key, StateKey):
            raise TypeError(f"app.state keys are StateKey objects, not {key!r}")
        return self._items.setdefault(key, default)  # type: ignore[no-any-return]
