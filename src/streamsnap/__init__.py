"""streamsnap: the current frame of live streams, over REST, WebSocket and snapshot folders.

Public surface for plugin authors: ``hookimpl``, ``Stream``, ``Snapshot``, ``SnapshotRequest``,
``FrameHandle``, ``StartupError``, ``StateKey``.
"""

from __future__ import annotations

from ._version import __version__
from .core.errors import StartupError
from .core.frames import FrameHandle
from .core.snapshot import Snapshot, SnapshotRequest
from .core.state import StateKey
from .core.streams import Stream
from .hooks import hookimpl

__all__ = [
    "FrameHandle",
    "Snapshot",
    "SnapshotRequest",
    "StartupError",
    "StateKey",
    "Stream",
    "__version__",
    "hookimpl",
]
