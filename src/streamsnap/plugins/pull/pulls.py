"""The pull plugin's object: it starts, admits, resolves and drops the pulls (each a
:class:`~.source.Pull`), and keeps the on-demand ones only while they are used."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import AsyncIterator

from ...core import hosts
from ...core.app import App
from ...core.errors import (
    ConfigError,
    InvalidStreamName,
    NotAllowed,
    Refused,
    SnapshotError,
    StreamNameInUse,
    StreamsnapError,
)
from ...core.state import StateKey
from ...core.streams import Stream
from ...core.supervisor import mask_credentials
from .rtsp_relay import RtspRelay
from .settings import PullSettings
from .source import Pull, Target
from .urls import (
    ALLOWED_HOSTS,
    CredentialRule,
    SourceUrl,
    parse_source_url,
    scheme_of,
)

log = logging.getLogger(__name__)

PLACEMENT_PERIOD_S = 0.5
MAX_REMEMBERED = 1024  # sources remembered as needing NUT


class PullPlugin:
    def __init__(self, app: App) -> None:
        self.app = app
        self.settings = settings = app.config.of(PullSettings)
        self.ffmpeg = settings.ffmpeg or _bundled_ffmpeg()
        self.cameras: dict[str, Pull] = {}  # by stream name
        # the names of pulls being admitted right now, by client address
        self._admitting: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._sweeper: asyncio.Task[None] | None = None
        self._placer: asyncio.Task[None] | None = None
        self.configured: dict[str, tuple[SourceUrl, str]] = {}  # [[pull.cameras]], [[pull.sources]]
        self.standby: dict[str, Pull] = {}  # pulled, waiting for their name to be handed over
        self.taken_over = 0  # standby pulls that got their name: sources moved here
        # sources whose codec FLV cannot carry (by public URL): their next pulls ask for NUT
        # at once instead of learning it again from a failed start
        self.nut_sources: OrderedDict[str, None] = OrderedDict()
        self.allowed = hosts.HostAllowList(settings.allowed_hosts, ALLOWED_HOSTS)
        self.credentials = [CredentialRule.parse(i, e) for i, e in enumerate(settings.credentials)]

    def remember_nut(self, source: str) -> None:
        self.nut_sources[source] = None
        self.nut_sources.move_to_end(source)
        while len(self.nut_sources) > MAX_REMEMBERED:
            self.nut_sources.popitem(last=False)

    def children(self) -> list[tuple[str, int, dict[str, int]]]:
        """``(stream name, FFmpeg starts, exits by kind)`` of every pull (read by /metrics)."""
        return [
            (p.name, p.supervisor.starts, dict(p.supervisor.exits)) for p in self.cameras.values()
        ]

    def child_pids(self) -> list[int]:
        """The pids of the FFmpeg children running now (their cost, read by /metrics)."""
        return [
            p.supervisor.pid
            for p in [*self.cameras.values(), *self.standby.values()]
            if p.supervisor.pid is not None and p.supervisor.state in ("starting", "running")
        ]

    def with_credentials(self, url: SourceUrl, address: hosts.Address | None) -> SourceUrl:
        """``url`` with the configured credentials of its scheme, host and port, when it
        carries none of its own."""
        if url.username is not None:
            return url
        for rule in self.credentials:
            if rule.matches(url, address):
                return dataclasses.replace(url, username=rule.username, password=rule.password)
        return url

    def _configured(self) -> list[tuple[str, SourceUrl, str]]:
        out = []
        entries = [("[[pull.cameras]]", e) for e in self.settings.cameras]
        entries += [("[[pull.sources]]", e) for e in self.settings.sources]
        for i, (table, entry) in enumerate(entries):
            where = f"{table} {entry.get('name', f'#{i + 1}')!r}"
            name, url = entry.get("name"), entry.get("url")
            if not isinstance(name, str) or not name or not isinstance(url, str):
                raise ConfigError(
                    f"{where}: needs a name and a url (got {mask_credentials(str(entry))})"
                )
            transport = entry.get("transport", self.settings.transport)
            if transport not in ("tcp", "udp"):
                raise ConfigError(f"{where} transport = {transport!r}: must be 'tcp' or 'udp'")
            try:
                parsed = parse_source_url(url, self.settings, trusted=True)
            except InvalidStreamName as exc:
                raise ConfigError(f"{where} url: {exc}") from None
            if "username" in entry and parsed.username is None:
                parsed = dataclasses.replace(
                    parsed,
                    username=str(entry["username"]),
                    password=str(entry.get("password", "")),
                )
            out.append((name, self.with_credentials(parsed, None), transport))
        return out

    async def start(self) -> None:
        self.configured = {name: (url, transport) for name, url, transport in self._configured()}
        plan = await self._plan()
        for name in self.configured:
            if plan is None or plan.get(name) == "pull":
                await self._take(name)
        if plan is not None:  # shared out with other servers: follow the plan as it changes
            self._placer = self.app.spawn(self._place(), name="pull-placement")
        self._sweeper = self.app.spawn(self._sweep(), name="pull-idle")

    # ---------------------------------------------------------------- placement
    async def _plan(self) -> dict[str, str] | None:
        """What to do with each configured source (``assign_sources``); None: pull them all."""
        if not self.configured:
            return None
        return await self.app.pm.afirstresult(
            "assign_sources", app=self.app, names=list(self.configured)
        )

    async def _take(self, name: str, moved: bool = False) -> None:
        """Pull the configured source ``name`` here: at once when its name is free, else on
        standby (FFmpeg running, frames arriving, the name not held) until it is handed over.
        ``moved``: after start-up, so the source came from another server."""
        if name in self.cameras or name in self.standby:
            return
        url, transport = self.configured[name]
        try:
            await self.start_pull(
                name, url, transport, on_demand=False, target=Target(trusted=True)
            )
            self.taken_over += moved
        except StreamNameInUse as exc:
            pull = Pull(self.app, self, name, url, transport, False, Target(trusted=True))
            self.standby[name] = pull
            pull.supervisor.start()
            log.info("stream %s: pulling on standby until it is handed over (%s)", name, exc)

    async def _promote(self, pull: Pull) -> None:
        """A standby pull with pictures takes the name as soon as it is free."""
        if not pull.stream.frames.decodable:
            return
        try:
            await self.app.claim(pull.stream)
        except StreamNameInUse:
            return
        del self.standby[pull.name]
        self.cameras[pull.name] = pull
        self.taken_over += 1
        await self.app.announce(pull.stream)
        log.info("stream %s: handed over: pulled here from now on", pull.name)

    async def _place(self) -> None:
        while True:
            await asyncio.sleep(PLACEMENT_PERIOD_S)
            try:
                plan = await self._plan() or dict.fromkeys(self.configured, "pull")
            except StreamsnapError as exc:
                log.warning("pulls: no placement this time: %s", exc)
                continue
            for name in self.configured:
                try:
                    await self._follow(name, plan.get(name, "drop"))
                except Exception as exc:  # this source this time; the others, and next time
                    log.warning("stream %s: placement %r failed: %s", name, plan.get(name), exc)

    async def _follow(self, name: str, action: str) -> None:
        pull = self.cameras.get(name)
        if action == "pull":
            if name in self.standby:
                await self._promote(self.standby[name])
            else:
                await self._take(name, moved=True)
        elif action == "drop":
            if pull is not None and not pull.on_demand:
                await self.drop(pull, "moved to another node")
            waiting = self.standby.pop(name, None)
            if waiting is not None:
                await waiting.supervisor.stop()

    async def start_pull(
        self, name: str, url: SourceUrl, transport: str, on_demand: bool, target: Target
    ) -> Pull:
        pull = Pull(self.app, self, name, url, transport, on_demand, target)
        if self.app.streams.lookup(name) is None:  # else claim() names the real problem
            self.app.admission.check_capacity(pull.stream)
        await self.app.claim(pull.stream)  # raises StreamNameInUse before anything starts
        self.cameras[name] = pull
        if target.address is not None and url.scheme == "rtsp":
            port = url.effective_port or 554
            pull.relay = RtspRelay(
                name,
                (str(target.address), port),
                self._redirect_check,
                self.settings.connect_timeout_s,
            )
            await pull.relay.start()
        await self.app.announce(pull.stream)
        pull.supervisor.start()
        return pull

    async def stop(self) -> None:
        for task in (self._sweeper, self._placer):
            if task is not None:
                task.cancel()
        for pull in list(self.standby.values()):
            await pull.supervisor.stop()
        self.standby.clear()
        await asyncio.gather(
            *(self.drop(p, "server shutting down") for p in list(self.cameras.values())),
            return_exceptions=True,
        )

    def running(self, url: SourceUrl) -> Pull | None:
        """The pull of the source ``url`` names (by its public URL), if one runs."""
        public = url.public
        return self.cameras.get(public) or next(
            (p for p in self.cameras.values() if p.url.public == public), None
        )

    async def resolve(self, name: str, remote: str | None) -> Stream | None:
        """The stream of source URL ``name``: the running pull (when its credentials are the
        ones given), else a new on-demand pull for client ``remote`` (None: start nothing)."""
        if scheme_of(name) is None:
            return None
        url = parse_source_url(name, self.settings)
        existing = self.running(url)
        if existing is not None:
            existing.check_credentials(url)
            return existing.stream
        configured = next(
            (n for n, (u, _) in self.configured.items() if u.public == url.public), ""
        )
        if configured:  # a camera of the config that another server pulls: ask it, by URL
            raise StreamNameInUse(
                f"{url.public} is the configured source {configured!r}", configured
            )
        if remote is None:
            return None
        async with self._admission(remote, url.public):
            target = await self.admit(url, remote)
            existing = self.running(url)  # asked for twice at once: the first one started it
            if existing is not None:
                existing.check_credentials(url)
                return existing.stream
            log.info("stream %s: pulling on demand for %s", url.public, remote or "-")
            pull = await self.start_pull(
                url.public,
                self.with_credentials(url, target.address),
                self.transport_for(url),
                on_demand=True,
                target=target,
            )
        return pull.stream

    def transport_for(self, url: SourceUrl) -> str:
        """RTSP cameras asked for by URL run over TCP, through the relay: over UDP a camera
        would choose where FFmpeg sends its RTP and RTCP packets."""
        return "tcp" if url.scheme == "rtsp" else self.settings.transport

    @contextlib.asynccontextmanager
    async def _admission(self, remote: str, name: str) -> AsyncIterator[None]:
        """Count the pull of stream ``name`` being admitted for ``remote`` from before its DNS
        look-up until it runs, so that requests at once cannot all pass
        ``[limits] max_pulls_per_ip``."""
        admitting = self._admitting[remote]
        admitting[name] += 1
        try:
            yield
        finally:
            admitting[name] -= 1
            if not admitting[name]:
                del admitting[name]
            if not admitting:
                del self._admitting[remote]

    async def admit(self, url: SourceUrl, remote: str, name: str | None = None) -> Target:
        """May client ``remote`` have ``url`` pulled (as stream ``name``, by default its public
        URL)? The allow-list is checked on the address the host resolves to, which FFmpeg then
        connects to. Raises NotAllowed or Refused."""
        if url.scheme == "rtsps":
            # TLS hides its answers from the relay, and FFmpeg follows their redirects anywhere
            raise NotAllowed(
                "rtsps:// cameras cannot be pulled by URL (their redirects cannot be checked): "
                "list the camera in [[pull.cameras]]"
            )
        most = self.app.config.limits.max_pulls_per_ip
        name = name or url.public
        # each stream once: a pull that started while still being admitted is in both
        running = {n for n, p in self.cameras.items() if p.target.requested_by == remote}
        started = len(running | {n for n in self._admitting.get(remote, ()) if n != name})
        if most and remote and started >= most:
            self.app.refused["max_pulls_per_ip"] += 1
            log.warning("stream %s: pull for %s refused: %d pulls", url.public, remote, started)
            raise Refused(
                "max_pulls_per_ip",
                f"{remote} already has {started} pulls running ([limits] max_pulls_per_ip)",
            )
        address = await self.checked_address(url.host, url.effective_port)
        return Target(address=address, requested_by=remote)

    async def checked_address(self, host: str, port: int | None) -> hosts.Address:
        """The first address of ``host`` that ``[pull] allowed_hosts`` allows; NotAllowed
        naming the setting, or SnapshotError when the name does not resolve."""
        if not self.allowed:
            self.app.refused["allowed_hosts"] += 1
            raise NotAllowed(
                f"on-demand pulls are off: list the host of the source ({host}) in {ALLOWED_HOSTS}"
            )
        if not self.allowed.host_may_be_tried(host):
            self.app.refused["allowed_hosts"] += 1
            raise NotAllowed(f"host {host!r} is not in {ALLOWED_HOSTS}")
        loop = asyncio.get_running_loop()
        try:
            addresses = await asyncio.wait_for(
                loop.run_in_executor(self.app.io_executor, hosts.resolve, host, port),
                self.settings.connect_timeout_s,
            )
        except (OSError, TimeoutError, UnicodeError) as exc:
            log.warning("pull of %s: cannot resolve the host: %s", host, exc)
            raise SnapshotError(
                f"could not pull from {host}: the host name does not resolve"
            ) from None
        for address in addresses:
            if self.allowed.allows(host, address):
                return address
        self.app.refused["allowed_hosts"] += 1
        special = [a for a in addresses if hosts.is_special(a)]
        if special:
            raise NotAllowed(
                f"host {host!r} is {special[0]}, an address of this machine or its link "
                f"(loopback, link-local, multicast, ...): allowed only when {ALLOWED_HOSTS} "
                "lists it by address or network"
            )
        raise NotAllowed(
            f"host {host!r} ({addresses[0] if addresses else '?'}) is not in {ALLOWED_HOSTS}"
        )

    async def _redirect_check(self, host: str, port: int) -> str:
        return str(await self.checked_address(host, port))

    async def drop(self, pull: Pull, reason: str, unpublish: bool = True) -> None:
        if self.cameras.get(pull.name) is pull:
            del self.cameras[pull.name]
        await pull.supervisor.stop()
        if pull.relay is not None:
            await pull.relay.close()
        if unpublish:
            await self.app.unpublish(pull.stream, reason)

    async def _sweep(self) -> None:
        idle_timeout = self.settings.idle_timeout_s
        while True:
            await asyncio.sleep(min(5.0, idle_timeout / 2))
            now = time.monotonic()
            for pull in list(self.cameras.values()):
                if pull.on_demand and now - pull.stream.last_used > idle_timeout:
                    log.info(
                        "stream %s: unused for %.0f s, dropping the pull",
                        pull.name,
                        now - pull.stream.last_used,
                    )
                    await self.drop(pull, "idle timeout")


# the plugin's public interface: /metrics reads the pulls
PULL: StateKey[PullPlugin] = StateKey("pull", PullPlugin)


def _bundled_ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()
