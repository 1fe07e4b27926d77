"""The stream registry: the one place that knows which streams are live.

A :class:`Stream` is one publish session of a name: a new ``media_session_id`` every time a
publisher (RTMP encoder, browser, camera pull) starts. A second publisher of a live name is
refused. :class:`StreamRegistry` is the interface the core uses; :class:`MemoryRegistry` the
default.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import StreamNameInUse, StreamNotFound
from .frames import FrameStore

Terminator = Callable[[str], Awaitable[None] | None]


@dataclass(eq=False)
class Stream:
    """A live stream: identity, source and what is known of its video."""

    name: str
    protocol: str  # "rtmp", "rtsp", "webrtc", "whip"
    frames: FrameStore
    media_session_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    status: str = "PUBLISHING"
    remote: str = ""  # publisher address, for logs
    remote_ip: str = ""  # publisher IP address, for [limits] max_publishers_per_ip
    app_name: str = ""  # RTMP application ("live") or WCS appKey
    has_audio: bool = False
    audio_codec: str = ""
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    metadata: dict[str, Any] = field(default_factory=dict)
    terminator: Terminator | None = None
    # raises SnapshotError for a name that must not reach this stream although it is the
    # stream's own (the pull of a camera with credentials, asked for without them)
    check_name: Callable[[str], None] | None = None
    failure: str = ""  # why the source cannot deliver now (WCS wording), "" when fine
    last_used: float = field(default_factory=time.monotonic)  # last snapshot/find of it
    requests: deque[float] = field(default_factory=lambda: deque(maxlen=64))  # snapshot times
    # what is going wrong around the stream while it stays live, by the plugin that noticed
    # (e.g. {"auto_snapshot": "cannot write ...: No space left on device"}); "" entries removed
    faults: dict[str, str] = field(default_factory=dict)
    stale_after_s: float = 0.0  # [streams] stale_after_s of this stream (0: never stale)

    def stale_for(self, now: float | None = None) -> float:
        """Seconds without video beyond ``stale_after_s`` while the source stays connected:
        how long the stream has sent nothing, or 0.0 when it is not stale."""
        frames = self.frames
        if not self.stale_after_s or not frames.last_arrival or self.status != "PUBLISHING":
            return 0.0
        quiet = (time.monotonic() if now is None else now) - frames.last_arrival
        return quiet if quiet >= self.stale_after_s else 0.0

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def fail(self, reason: str) -> None:
        """The source failed: waiting snapshots give up with ``reason``."""
        self.failure = reason
        self.status = "FAILED"
        self.frames.wake()

    @property
    def width(self) -> int:
        return self.frames.width

    @property
    def height(self) -> int:
        return self.frames.height

    @property
    def video_codec(self) -> str:
        return self.frames.codec_name

    @property
    def has_video(self) -> bool:
        return self.frames.frames_in > 0 or bool(self.frames.codec_name)

    def __repr__(self) -> str:
        return f"Stream({self.name!r}, {self.protocol}, {self.media_session_id})"


class StreamRegistry(ABC):
    """Which streams are live and who holds each name: the interface the core depends on.

    :class:`MemoryRegistry` (one server) is the default; a plugin may provide another through
    the ``make_stream_registry`` hook, e.g. one shared by several nodes, whose :meth:`claim`
    asks the others. The local view (``add``, ``remove``, ``get``, ``lookup``, ``list``) is
    what this server holds, used from the event loop only, synchronously: the hot paths
    (a snapshot's name, the ``find`` filters) never wait on a network.
    """

    @abstractmethod
    def add(self, stream: Stream) -> None:
        """Hold ``stream`` here; raises StreamNameInUse when its name is live here."""

    @abstractmethod
    def remove(self, stream: Stream) -> bool:
        """Forget this publish session (a newer one of the same name is left alone); whether
        it was held."""

    @abstractmethod
    def lookup(self, name: str) -> Stream | None:
        """The live stream ``name`` held here, or None."""

    @abstractmethod
    def list(self) -> list[Stream]:
        """Every stream held here."""

    async def claim(self, stream: Stream) -> None:
        """Take ``stream``'s name for it and hold it (raises StreamNameInUse); a shared
        registry refuses a name live elsewhere too."""
        self.add(stream)

    async def release(self, stream: Stream) -> bool:
        """Give the name of this publish session back; whether it was held."""
        return self.remove(stream)

    def get(self, name: str) -> Stream:
        stream = self.lookup(name)
        if stream is None:
            raise StreamNotFound(f"stream {name!r} not found")
        return stream

    def find(
        self,
        name: str | None = None,
        media_session_id: str | None = None,
        published: bool | None = None,
        status: str | None = None,
    ) -> list[Stream]:
        """Streams matching every filter given (WCS ``/stream/find`` semantics)."""
        out = []
        for stream in self.list():
            if name is not None and stream.name != name:
                continue
            if media_session_id is not None and stream.media_session_id != media_session_id:
                continue
            if published is False:  # registry holds published streams only
                continue
            if status is not None and stream.status != status:
                continue
            out.append(stream)
        return out

    def __iter__(self) -> Iterator[Stream]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self.list())


class MemoryRegistry(StreamRegistry):
    """Live streams of this server by name, in memory: the default registry."""

    def __init__(self) -> None:
        self._by_name: dict[str, Stream] = {}

    def add(self, stream: Stream) -> None:
        current = self._by_name.get(stream.name)
        if current is not None:
            raise StreamNameInUse(
                f"stream {stream.name!r} is already published "
                f"({current.protocol} from {current.remote or 'unknown'})",
                stream.name,
            )
        self._by_name[stream.name] = stream

    def remove(self, stream: Stream) -> bool:
        if self._by_name.get(stream.name) is stream:
            del self._by_name[stream.name]
            return True
        return False

    def lookup(self, name: str) -> Stream | None:
        return self._by_name.get(name)

    def list(self) -> list[Stream]:
        return list(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)


def reason_kind(reason: str) -> str:
    """A bounded label for why a stream ended (``/metrics``): the reason up to its details."""
    return reason.split(":", 1)[0].split(" (", 1)[0].strip()[:48] or "unknown"
