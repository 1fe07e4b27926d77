"""streamsnap: the current frame of live streams, over REST, WebSocket and snapshot folders.

Public surface for plugin authors: ``hookimpl``, ``Stream``, ``Snapshot``, ``SnapshotRequest``,
``FrameHandle``, ``StartupError``.
"""

from __future__ import annotations

from ._version import __version__
from .core.errors import StartupError
from .core.frames import FrameHandle
from .core.snapshot import Snapshot, SnapshotRequest
from .core.streams import Stream
from .hooks import hookimpl

__all__ = [
    "FrameHandle",
    "Snapshot",
    "SnapshotRequest",
    "StartupError",
    "Stream",
    "__version__",
    "hookimpl",
]
