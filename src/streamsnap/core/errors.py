"""Errors a user can act on: each names the key, the stream or the plugin concerned."""

from __future__ import annotations


class StreamsnapError(Exception):
    """Base class of streamsnap's own errors."""


class StartupError(StreamsnapError):
    """The server cannot start: bad config, a port in use, a plugin that cannot load."""


class ConfigError(StartupError):
    """A config file or value is invalid; the message names the key and the value."""


class StreamNotFound(StreamsnapError):
    """No live stream has this name."""


class InvalidStreamName(StreamsnapError):
    """A name that can never be served: a URL with a scheme that is not allowed, a host not on
    the allow-list, malformed. REST answers 400."""


class NotAllowed(StreamsnapError):
    """Refused by a setting that could allow it (a host not in ``[pull] allowed_hosts``, a
    query key no allow-list names); the message names the setting. REST answers 403, or 400
    for a malformed request (``status``)."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


class Unavailable(StreamsnapError):
    """What a request needs cannot be reached now (another node of the cluster, the cluster's
    registry); REST answers 503 with the reason, at once."""


class StreamNameInUse(StreamsnapError):
    """A second publisher (or pull) tried to take a name that is live; ``name`` is the name
    as it is held (a source URL without its credentials)."""

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name


class SnapshotError(StreamsnapError):
    """A snapshot could not be taken (timeout, decode or encode failure)."""


class Refused(StreamsnapError):
    """A publisher or request turned away by auth or a limit.

    ``kind`` says which rule (``bad_name``, ``publish_key``, ``plugin``, ``max_streams``,
    ``max_publishers_per_ip``, ``max_concurrent_snapshots``): the ``/metrics`` label, and what
    each protocol maps to its own error (RTMP onStatus, HTTP status, WCS status).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class StreamStale(SnapshotError):
    """The source stays connected but has sent no video for ``[streams] stale_after_s``."""

    def __init__(self, message: str, quiet_s: float) -> None:
        super().__init__(message)
        self.quiet_s = quiet_s


class NotInHistory(SnapshotError):
    """No frame of the instant asked for is held (``oldest_ms``: the oldest held, -1: none)."""

    def __init__(self, message: str, oldest_ms: int) -> None:
        super().__init__(message)
        self.oldest_ms = oldest_ms
