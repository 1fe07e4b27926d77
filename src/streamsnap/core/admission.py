"""Who may publish, and how much the server takes on: the name rule, the ``authorize_publish``
hook, publish keys, ``[limits]`` on streams, publishers per address and snapshots in flight.
Every refusal is logged with the stream's name and counted by rule (``/metrics``)."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from .errors import Refused
from .names import check_publish_name
from .streams import Stream
from .supervisor import mask_credentials

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger(__name__)


class Admission:
    def __init__(self, app: App, refused: Counter[str]) -> None:
        self.app = app
        self.limits = app.config.limits
        self.refused = refused  # the app's count of refusals by rule, for /metrics
        self.snapshots_in_flight = 0  # REST and WebSocket snapshots being served

    async def admit(self, stream: Stream, params: Mapping[str, str], user: str = "") -> None:
        """Decide whether a new publisher may publish ``stream``, then claim it.

        ``params`` are what the publisher sent with the name (RTMP ``?key=``, WHIP query and
        bearer token). In order: the name rule (before any plugin sees the name), the
        ``authorize_publish`` hook (True allows, a string refuses), the publish key or API token
        unless a plugin allowed or ``user`` (API credentials) is set, then the limits. Raises
        :class:`Refused` (logged and counted) or StreamNameInUse.
        """
        reason = check_publish_name(stream.name)
        if reason:
            raise self.refuse(stream, Refused("bad_name", reason))
        answer, plugin = await self._authorize_publish(stream, params)
        if isinstance(answer, str):
            raise self.refuse(stream, Refused("plugin", answer), f"plugin {plugin}")
        if answer is not True and not user:
            reason = self.app.auth.check_publish_key(stream.name, params.get("key", ""))
            if reason:
                raise self.refuse(stream, Refused("publish_key", reason))
        streams = self.app.streams
        if streams.lookup(stream.name) is None:  # else claim() names the real problem
            self.check_capacity(stream)
            ip, most = stream.remote_ip, self.limits.max_publishers_per_ip
            if most and ip and sum(s.remote_ip == ip for s in streams) >= most:
                message = f"{ip} already publishes {most} streams (the limit per address)"
                raise self.refuse(stream, Refused("max_publishers_per_ip", message))
        await self.app.claim(stream)

    def check_capacity(self, stream: Stream) -> None:
        """``[limits] max_streams``, for publishers and pulls alike (raises :class:`Refused`)."""
        most = self.limits.max_streams
        if most and len(self.app.streams) >= most:
            message = f"server at its limit of {most} streams ([limits] max_streams)"
            raise self.refuse(stream, Refused("max_streams", message))

    async def _authorize_publish(
        self, stream: Stream, params: Mapping[str, str]
    ) -> tuple[bool | str | None, str]:
        """The first plugin answer to ``authorize_publish`` and who gave it; a plugin that
        raises refuses the publisher (fail closed) instead of being skipped."""
        kwargs = {
            "app": self.app,
            "stream_name": stream.name,
            "protocol": stream.protocol,
            "remote": stream.remote_ip or stream.remote,
            "params": dict(params),
        }
        answer, by = await self.app.pm.afirst(
            "authorize_publish", kwargs, on_error="publish check failed"
        )
        if answer is False:
            return "refused", by
        if answer is True or isinstance(answer, str):
            return answer, by
        return None, ""

    def refuse(self, stream: Stream, exc: Refused, by: str = "") -> Refused:
        """Log and count a refused publisher; returns ``exc`` to raise."""
        self.refused[exc.kind] += 1
        log.warning(
            "stream %s: publish over %s from %s refused (%s%s): %s",
            # a refused name may hold a line break (a forged log line): quoted, and cut
            repr(stream.name[:64]) if exc.kind == "bad_name" else stream.name,
            stream.protocol,
            stream.remote or "-",
            exc.kind,
            f", {by}" if by else "",
            exc,
        )
        return exc

    @contextlib.contextmanager
    def snapshot_slot(self, name: str, remote: str) -> Iterator[None]:
        """Hold one of ``[limits] max_concurrent_snapshots`` while serving a snapshot request;
        raises :class:`Refused` when all are taken."""
        limit = self.limits.max_concurrent_snapshots
        if limit and self.snapshots_in_flight >= limit:
            self.refused["max_concurrent_snapshots"] += 1
            log.warning(
                "stream %s: snapshot for %s refused: %d snapshot requests already in progress",
                mask_credentials(name),
                remote or "-",
                limit,
            )
            raise Refused(
                "max_concurrent_snapshots",
                f"too many snapshot requests in progress (limit {limit}); try again shortly",
            )
        self.snapshots_in_flight += 1
        try:
            yield
        finally:
            self.snapshots_in_flight -= 1
