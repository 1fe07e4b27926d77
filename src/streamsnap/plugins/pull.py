"""Pulled streams: IP cameras (RTSP) and streams on other servers (RTMP, RTMPS, SRT, HLS),
each through a supervised FFmpeg child.

A stream whose name is a URL with a scheme from ``[pull] allowed_schemes`` is pulled when first
asked for (snapshot, play, find) and dropped after ``[rtsp] idle_timeout_s`` without use.
Sources listed in ``[[rtsp.cameras]]`` or ``[[pull.sources]]``, or started over REST
(``/rest-api/pull/startup``), are pulled under a friendly name until terminated. FFmpeg
remuxes without decoding (``-c copy``) into FLV on a pipe; the server reads the FLV tags into
the stream's frame store, so a stuck source or a crashing demuxer never takes the server down.
Only allowed schemes ever reach FFmpeg, and FFmpeg's protocol whitelist, set per scheme, keeps
it from opening anything else (``file``, ``concat``, ``subfile``, ``data``, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import ipaddress
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import ffmpeg  # ffmpeg-python: builds the command line
from aiohttp import web

from ..core import flv, hosts
from ..core.app import APP_KEY, App
from ..core.config import Config
from ..core.errors import (
    ConfigError,
    InvalidStreamName,
    NotAllowed,
    Refused,
    SnapshotError,
    StreamNameInUse,
)
from ..core.http import FAILURES, BadRequest, error_response, failure_response, json_body
from ..core.names import check_publish_name
from ..core.state import StateKey
from ..core.streams import Stream
from ..core.supervisor import ChildExit, FfmpegSupervisor, SupervisorPolicy, mask_credentials
from ..hooks import hookimpl
from .rtsp_relay import RtspRelay

log = logging.getLogger(__name__)

# What FFmpeg may open for each kind of source: the protocol and the transports under it.
PROTOCOL_WHITELISTS = {
    "rtsp": "rtsp,rtp,srtp,udp,tcp",
    "rtsps": "rtsps,rtsp,rtp,srtp,udp,tcp,tls",
    "rtmp": "rtmp,tcp",
    "rtmps": "rtmps,rtmp,tcp,tls",
    "srt": "srt,udp",
    "https": "https,tls,tcp,crypto",  # HLS: playlists and segments over HTTPS (crypto: AES-128)
    "http": "http,tcp,crypto",
}
# Scheme-like prefixes that name an FFmpeg protocol: refused unless allowed, even without "//"
FFMPEG_PROTOCOLS = {
    "file",
    "concat",
    "concatf",
    "subfile",
    "data",
    "pipe",
    "fd",
    "crypto",
    "cache",
    "async",
    "tee",
    "hls",
    "http",
    "https",
    "httpproxy",
    "ftp",
    "gopher",
    "gophers",
    "sftp",
    "smb",
    "unix",
    "md5",
    "zmq",
    "rtmp",
    "rtmps",
    "rtmpt",
    "rtmpe",
    "rtmpte",
    "rtmpts",
    "srt",
    "udp",
    "udplite",
    "tcp",
    "tls",
    "dtls",
    "rtp",
    "srtp",
    "rist",
    "mmsh",
    "mmst",
    "ipfs",
    "ipns",
    "amqp",
    "librtmp",
    "bluray",
    "icecast",
    "prompeg",
    "shared",
    "ffrtmpcrypt",
    "ffrtmphttp",
}
# What a URL's query may carry to FFmpeg and the source, by scheme; more with
# [pull] allowed_query_keys. RTSP and HTTP queries go to the camera or server (a channel, a
# signed-URL token); SRT's are FFmpeg options, so only the caller's own settings pass (never
# "mode=listener", which would open a port anyone could publish into).
QUERY_KEYS = {
    "rtsp": (
        "channel", "subtype", "stream", "streamtype", "profile", "resolution", "fps",
        "videocodec", "compression", "transportmode", "unicast", "camera", "chn", "ch",
        "user", "password", "pwd",
    ),
    "srt": ("streamid", "passphrase", "latency", "pbkeylen"),
    "rtmp": ("key", "token"),
    "https": ("token", "expires", "signature", "sig", "policy", "key-pair-id", "hdnts", "hdnea"),
}  # fmt: skip
QUERY_KEYS["rtsps"] = QUERY_KEYS["rtsp"]
QUERY_KEYS["rtmps"] = QUERY_KEYS["rtmp"]
QUERY_KEYS["http"] = QUERY_KEYS["https"]
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "rtmps": 443, "https": 443, "http": 80}
# FFmpeg checks these sources' certificates against the host name, which an address in the URL
# would lose (and SNI with it): they are reached by name, the certificate standing in for the
# address check.
TLS_SCHEMES = {"rtsps", "rtmps", "https"}
ALLOWED_HOSTS = "[pull] allowed_hosts"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)[:,]")  # "subfile,,start,..." too
_UNSAFE = re.compile(r"[\x00-\x20\x7f|\\]")


@dataclass(frozen=True)
class SourceUrl:
    """A source URL taken apart; ``public`` (no credentials) is the stream's name and what logs
    and the API show."""

    scheme: str
    host: str  # lower case, IPv6 without brackets
    port: int | None  # as written; None: the scheme's default
    path: str
    query: str
    username: str | None = None
    password: str | None = None

    @property
    def public(self) -> str:
        return urlunsplit((self.scheme, self._hostport(self.host), self.path, self.query, ""))

    @property
    def effective_port(self) -> int | None:
        return self.port if self.port is not None else DEFAULT_PORTS.get(self.scheme)

    @property
    def credentials(self) -> tuple[str | None, str | None]:
        return self.username, self.password

    def _hostport(self, host: str, port: int | None = None) -> str:
        out = f"[{host}]" if ":" in host else host
        port = self.port if port is None else port
        return out + (f":{port}" if port is not None else "")

    def ffmpeg_url(self, host: str | None = None, port: int | None = None) -> str:
        """The URL FFmpeg opens, credentials included; ``host``/``port`` put the checked
        address (or the relay) in place of the name."""
        userinfo = ""
        if self.username is not None:
            userinfo = quote(self.username, safe="")
            if self.password is not None:
                userinfo += ":" + quote(self.password, safe="")
            userinfo += "@"
        netloc = userinfo + self._hostport(host or self.host, port)
        return urlunsplit((self.scheme, netloc, self.path, self.query, ""))


def scheme_of(name: str) -> str | None:
    """The URL scheme of ``name`` if it looks like a URL FFmpeg would open, else None."""
    m = _SCHEME.match(name)
    if not m:
        return None
    scheme = m.group(1).lower()
    if "://" in name or scheme in FFMPEG_PROTOCOLS:
        return scheme
    return None


def failure_text(scheme: str) -> str:
    """WCS wording for RTSP; the same shape for other sources."""
    return f"Failed to connect to {'rtsp' if scheme.startswith('rtsp') else scheme} stream"


def parse_source_url(name: str, config: Config, trusted: bool = False) -> SourceUrl:
    """Validate a source URL; raises InvalidStreamName with the reason, or NotAllowed (400)
    for a query key no allow-list names. ``trusted`` (the operator's own config) skips the
    query check."""
    scheme = scheme_of(name)
    allowed = [s.lower() for s in config.pull.allowed_schemes]
    if scheme is None:
        raise InvalidStreamName(f"{name[:64]!r} is not a source URL (scheme://host/path)")
    if scheme not in allowed or scheme not in PROTOCOL_WHITELISTS:
        raise InvalidStreamName(
            f"{scheme}: URLs are not allowed as stream names (pulled schemes: "
            f"{', '.join(s + '://' for s in allowed if s in PROTOCOL_WHITELISTS)}; "
            "see [pull] allowed_schemes)"
        )
    if _UNSAFE.search(name):
        raise InvalidStreamName("source URL contains spaces, control characters, '|' or '\\'")
    try:
        parts = urlsplit(name)
        port = parts.port
    except ValueError as exc:
        raise InvalidStreamName(f"malformed source URL: {exc}") from None
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidStreamName("source URL has no host")
    if not trusted:
        check_query(scheme, parts.query, config.pull.allowed_query_keys)
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return SourceUrl(scheme, host, port, parts.path, parts.query, user, password)


def check_query(scheme: str, query: str, extra: list[str]) -> None:
    """Every query key of a requested URL must be on its scheme's allow-list."""
    allowed = set(QUERY_KEYS.get(scheme, ()))
    for entry in extra:
        key_scheme, sep, key = entry.lower().rpartition(":")
        if not sep or key_scheme == scheme:
            allowed.add(key)
    for key, _ in parse_qsl(query, keep_blank_values=True):
        if key.lower() not in allowed:
            raise NotAllowed(
                f"query key {key!r} is not allowed in {scheme}:// source URLs (allowed: "
                f"{', '.join(sorted(allowed)) or 'none'}; add it to [pull] allowed_query_keys)",
                status=400,
            )


@dataclass(frozen=True)
class CredentialRule:
    """One ``[rtsp] credentials`` entry: given only to its scheme, host and port."""

    scheme: str
    host: str  # a name pattern, or "" when ``network`` is set
    network: hosts.Network | None
    port: int | None
    username: str
    password: str

    @classmethod
    def parse(cls, i: int, entry: dict[str, Any]) -> CredentialRule:
        where = f"[rtsp] credentials #{i + 1}"
        host, user = entry.get("host"), entry.get("username")
        scheme = str(entry.get("scheme", "rtsp")).lower()
        if not isinstance(host, str) or not host.strip() or not isinstance(user, str):
            raise ConfigError(f"{where}: needs a host and a username")
        if scheme not in PROTOCOL_WHITELISTS:
            raise ConfigError(f"{where} scheme = {scheme!r}: not a pulled scheme")
        port = entry.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
            raise ConfigError(f"{where} port = {port!r}: must be an integer")
        if port is None and scheme not in DEFAULT_PORTS:
            raise ConfigError(f"{where}: {scheme}:// has no default port: give the port")
        network = None
        with contextlib.suppress(ValueError):
            network = ipaddress.ip_network(host.strip().strip("[]"), strict=False)
        return cls(
            scheme,
            "" if network else host.strip().lower(),
            network,
            port if port is not None else DEFAULT_PORTS.get(scheme),
            user,
            str(entry.get("password", "")),
        )

    def matches(self, url: SourceUrl, address: hosts.Address | None) -> bool:
        if url.scheme != self.scheme or url.effective_port != self.port:
            return False
        if self.network is not None:
            addr = address or hosts.address_of(url.host)
            return (
                addr is not None and addr.version == self.network.version and (addr in self.network)
            )
        return hosts.name_matches(self.host, url.host)


@dataclass(frozen=True)
class Target:
    """Where a pull connects: the checked address of an on-demand source (None: configured,
    reached by name), and who asked for it."""

    address: hosts.Address | None = None
    requested_by: str = ""  # the client address that started it; "" for configured sources
    trusted: bool = False  # the operator's config: no allow-list, FFmpeg errors shown as they are


class Pull:
    """One pulled source: its stream and the FFmpeg child that feeds it."""

    def __init__(
        self,
        app: App,
        plugin: PullPlugin,
        name: str,
        url: SourceUrl,
        transport: str,
        on_demand: bool,
        target: Target,
    ) -> None:
        self.app = app
        self.plugin = plugin
        self.url = url
        self.transport = transport
        self.on_demand = on_demand
        self.target = target
        self.relay: RtspRelay | None = None
        protocol = "rtsp" if url.scheme.startswith("rtsp") else url.scheme
        self.stream = app.new_stream(
            name,
            protocol,
            remote=url.public,
            remote_ip=target.requested_by,
            status="PENDING",
            terminator=self._terminated,
        )
        cfg = app.config.rtsp
        self.supervisor = FfmpegSupervisor(
            f"pull {name}",
            self.build_argv,
            self.consume,
            SupervisorPolicy(
                stall_timeout_s=cfg.stall_timeout_s,
                start_timeout_s=cfg.connect_timeout_s + 2,
                backoff_max_s=cfg.backoff_max_s,
            ),
            on_exit=self.on_exit,
        )
        if url.username is not None:
            self.stream.check_name = self._check_name
        self.frames_seen = False
        self.started_ms = int(time.time() * 1000)

    @property
    def name(self) -> str:
        return self.stream.name

    def input_options(self) -> dict[str, Any]:
        timeout_us = int(self.app.config.rtsp.connect_timeout_s * 1_000_000)
        opts: dict[str, Any] = {
            "protocol_whitelist": PROTOCOL_WHITELISTS[self.url.scheme],
            "fflags": "nobuffer",
        }
        if self.url.scheme.startswith("rtsp"):
            opts.update(rtsp_transport=self.transport, timeout=timeout_us)
        elif self.url.scheme in ("http", "https"):  # HLS: start at the newest segment
            opts.update(rw_timeout=timeout_us, live_start_index=-1)
            if not self.target.trusted:
                opts.update(max_redirects=0)  # a redirect could point anywhere
        else:
            opts.update(rw_timeout=timeout_us)
        if self.url.scheme in TLS_SCHEMES and not self.target.trusted:
            opts.update(tls_verify=1)  # the certificate stands in for the address check
        if self.url.scheme.startswith("rtmp") and self.target.address is not None:
            opts.update(rtmp_tcurl=self.url.public.rsplit("/", 1)[0])  # the name, for vhosts
        return opts

    def source_url(self) -> str:
        """What FFmpeg opens: the relay, the checked address, or (configured, TLS) the name."""
        if self.relay is not None:
            return self.url.ffmpeg_url("127.0.0.1", self.relay.port)
        if self.target.address is not None and self.url.scheme not in TLS_SCHEMES:
            return self.url.ffmpeg_url(str(self.target.address), self.url.port)
        return self.url.ffmpeg_url()

    def build_argv(self) -> list[str]:
        source = ffmpeg.input(self.source_url(), **self.input_options())
        out = source.output(
            "pipe:1",
            format="flv",
            c="copy",
            an=None,
            dn=None,
            sn=None,
            flvflags="no_duration_filesize",
            flush_packets=1,
        )
        # global options first: FFmpeg ignores options after the last output
        return [
            self.plugin.ffmpeg,
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "warning",
            *out.get_args(),
        ]

    async def consume(self, stdout: asyncio.StreamReader) -> None:
        stream = self.stream
        async for tag_type, ts, data in flv.read_tags(stdout):
            self.supervisor.progress()
            if tag_type != 9 or not data:
                continue
            flv.ingest_video(self.app, stream, data, ts)
            if stream.status != "PUBLISHING" and stream.frames.decodable:
                stream.status = "PUBLISHING"
                stream.failure = ""
                stream.faults.pop("pull", None)
                self.frames_seen = True
                log.info(
                    "stream %s: receiving video from %s (%s)",
                    stream.name,
                    self.url.public,
                    stream.frames.codec_name,
                )

    def on_exit(self, result: ChildExit) -> None:
        stream = self.stream
        stream.frames.reset()  # no stale picture: snapshots wait for the source again
        if self.target.trusted:
            stream.faults["pull"] = (
                f"FFmpeg child {result.kind} (exit {result.returncode}): {result.message}; "
                "restarting"
            )
        else:
            # a URL anyone may ask for: closed port, refusal and timeout look the same, so
            # the server cannot be used to scan (the log keeps FFmpeg's own words)
            stream.faults["pull"] = f"{failure_text(self.url.scheme)}; retrying"
        if result.kind in ("auth", "not_found", "unreachable", "timeout", "refused"):
            message = result.message
            if not self.target.trusted or (
                result.kind != "not_found" and not self.url.scheme.startswith("rtsp")
            ):
                message = failure_text(self.url.scheme)
            stream.fail(message)
        elif not self.target.trusted and not self.frames_seen:
            stream.fail(failure_text(self.url.scheme))
        else:
            stream.status = "PENDING"
        if self.on_demand and not self.frames_seen:
            # asked for once and never delivered: forget it, the next request tries again
            self.app.spawn(
                self.plugin.drop(self, f"source failed: {result.message}"),
                name=f"pull-drop:{self.name}",
            )

    def describe(self) -> dict[str, Any]:
        """The pull as ``/rest-api/pull/find_all`` shows it (credentials removed)."""
        return {
            "localStreamName": mask_credentials(self.name),
            "uri": mask_credentials(self.url.public),
            "status": self.stream.status,
            "info": self.stream.failure,
            "mediaSessionId": self.stream.media_session_id,
            "onDemand": self.on_demand,
            "restarts": max(0, self.supervisor.starts - 1),
            "createDate": self.started_ms,
        }

    def check_credentials(self, asked: SourceUrl) -> None:
        """A URL asking for this pull's source gets its pictures only with the same
        credentials (its own, or the configured ones of its host): a wrong password answers
        as a cold pull with it would."""
        given = self.plugin.with_credentials(asked, self.target.address).credentials
        if not _same_credentials(given, self.url.credentials):
            log.warning(
                "stream %s: asked for with other credentials than its pull's: refused", self.name
            )
            raise SnapshotError(failure_text(self.url.scheme))

    def _check_name(self, name: str) -> None:
        if scheme_of(name) is not None:
            self.check_credentials(parse_source_url(name, self.app.config, trusted=True))

    async def _terminated(self, reason: str) -> None:
        await self.plugin.drop(self, reason, unpublish=False)


class PullPlugin:
    def __init__(self, app: App) -> None:
        self.app = app
        self.config = app.config
        self.ffmpeg = app.config.rtsp.ffmpeg or _bundled_ffmpeg()
        self.cameras: dict[str, Pull] = {}  # by stream name
        self._admitting: Counter[str] = Counter()  # pulls being admitted, by client address
        self._sweeper: asyncio.Task[None] | None = None
        self.allowed = hosts.HostAllowList(
            [*app.config.pull.allowed_hosts, *app.config.rtsp.allowed_hosts], ALLOWED_HOSTS
        )
        self.credentials = [
            CredentialRule.parse(i, e) for i, e in enumerate(app.config.rtsp.credentials)
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
        entries = [("[[rtsp.cameras]]", e) for e in self.config.rtsp.cameras]
        entries += [("[[pull.sources]]", e) for e in self.config.pull.sources]
        for i, (table, entry) in enumerate(entries):
            where = f"{table} {entry.get('name', f'#{i + 1}')!r}"
            name, url = entry.get("name"), entry.get("url")
            if not isinstance(name, str) or not name or not isinstance(url, str):
                raise ConfigError(
                    f"{where}: needs a name and a url (got {mask_credentials(str(entry))})"
                )
            transport = entry.get("transport", self.config.rtsp.transport)
            if transport not in ("tcp", "udp"):
                raise ConfigError(f"{where} transport = {transport!r}: must be 'tcp' or 'udp'")
            try:
                parsed = parse_source_url(url, self.config, trusted=True)
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
        for name, url, transport in self._configured():
            await self.start_pull(
                name, url, transport, on_demand=False, target=Target(trusted=True)
            )
        self._sweeper = self.app.spawn(self._sweep(), name="pull-idle")

    async def start_pull(
        self, name: str, url: SourceUrl, transport: str, on_demand: bool, target: Target
    ) -> Pull:
        pull = Pull(self.app, self, name, url, transport, on_demand, target)
        if self.app.streams.lookup(name) is None:  # else claim() names the real problem
            self.app.check_capacity(pull.stream)
        await self.app.claim(pull.stream)  # raises StreamNameInUse before anything starts
        self.cameras[name] = pull
        if target.address is not None and url.scheme == "rtsp":
            port = url.effective_port or 554
            pull.relay = RtspRelay(
                name,
                (str(target.address), port),
                self._redirect_check,
                self.config.rtsp.connect_timeout_s,
            )
            await pull.relay.start()
        await self.app.announce(pull.stream)
        pull.supervisor.start()
        return pull

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
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
        url = parse_source_url(name, self.config)
        existing = self.running(url)
        if existing is not None:
            existing.check_credentials(url)
            return existing.stream
        if remote is None:
            return None
        async with self._admission(remote):
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
        return "tcp" if url.scheme == "rtsp" else self.config.rtsp.transport

    @contextlib.asynccontextmanager
    async def _admission(self, remote: str) -> AsyncIterator[None]:
        """Count a pull being admitted for ``remote`` from before its DNS look-up, so that
        requests at once cannot all pass ``[limits] max_pulls_per_ip``."""
        self._admitting[remote] += 1
        try:
            yield
        finally:
            self._admitting[remote] -= 1
            if not self._admitting[remote]:
                del self._admitting[remote]

    async def admit(self, url: SourceUrl, remote: str) -> Target:
        """May client ``remote`` have ``url`` pulled? The allow-list is checked on the address
        the host resolves to, which FFmpeg then connects to. Raises NotAllowed or Refused."""
        if url.scheme == "rtsps":
            # TLS hides its answers from the relay, and FFmpeg follows their redirects anywhere
            raise NotAllowed(
                "rtsps:// cameras cannot be pulled by URL (their redirects cannot be checked): "
                "list the camera in [[rtsp.cameras]]"
            )
        most = self.config.limits.max_pulls_per_ip
        started = sum(p.target.requested_by == remote for p in self.cameras.values())
        started += max(0, self._admitting[remote] - 1)  # others being admitted right now
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
                self.config.rtsp.connect_timeout_s,
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
        idle_timeout = self.config.rtsp.idle_timeout_s
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


def _same_credentials(a: tuple[str | None, str | None], b: tuple[str | None, str | None]) -> bool:
    """Constant-time comparison: timing must not tell how much of a password was right."""
    left = "\0".join("-" if v is None else "+" + v for v in a).encode("utf-8", "surrogatepass")
    right = "\0".join("-" if v is None else "+" + v for v in b).encode("utf-8", "surrogatepass")
    return hmac.compare_digest(left, right)


# the plugin's public interface: /metrics reads the pulls
PULL: StateKey[PullPlugin] = StateKey("pull", PullPlugin)


def _bundled_ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# ---------------------------------------------------------------- REST (WCS-style pull API)
def _plugin(request: web.Request) -> PullPlugin | None:
    return request.app[APP_KEY].state.get(PULL)


async def rest_startup(request: web.Request) -> web.Response:
    """``POST /rest-api/pull/startup {"uri", "localStreamName"}``: pull until terminated."""
    plugin = _plugin(request)
    try:
        body = await json_body(request)
        uri, name = body.get("uri"), body.get("localStreamName") or body.get("uri")
        if not isinstance(uri, str) or not uri or not isinstance(name, str) or not name:
            raise BadRequest("fields 'uri' and 'localStreamName' must be non-empty strings")
        if plugin is None:
            raise BadRequest("the pull plugin is disabled")
        url = parse_source_url(uri, plugin.config)
        if name == uri:
            name = url.public
        else:
            reason = check_publish_name(name)  # the rule every publisher's name follows
            if reason:
                raise BadRequest(f"localStreamName: {reason}")
        remote = request.remote or ""
        async with plugin._admission(remote):
            target = await plugin.admit(url, remote)
            log.info("stream %s: pull of %s started over REST by %s", name, url.public, remote)
            pull = await plugin.start_pull(
                name,
                plugin.with_credentials(url, target.address),
                plugin.transport_for(url),
                on_demand=False,
                target=target,
            )
    except StreamNameInUse:
        return error_response(request, 409, "Stream name is already in use")
    except FAILURES as exc:
        return failure_response(request, exc)
    return web.json_response(pull.describe())


async def rest_find_all(request: web.Request) -> web.Response:
    try:
        await json_body(request)  # no fields, but the same content rules
    except BadRequest as exc:
        return error_response(request, exc.status, str(exc))
    plugin = _plugin(request)
    pulls = [p.describe() for p in plugin.cameras.values()] if plugin else []
    if not pulls:
        return error_response(request, 404, "Pull not found")
    return web.json_response(pulls)


async def rest_terminate(request: web.Request) -> web.Response:
    """``POST /rest-api/pull/terminate {"localStreamName"}``: stop pulling."""
    plugin = _plugin(request)
    try:
        body = await json_body(request)
        name = body.get("localStreamName")
        if not isinstance(name, str) or not name:
            raise BadRequest("field 'localStreamName' must be a non-empty string")
    except BadRequest as exc:
        return error_response(request, exc.status, str(exc))
    pull = plugin.cameras.get(name) if plugin else None
    if pull is None:
        return error_response(request, 404, "Pull not found")
    await plugin.drop(pull, "Stopped by rest /pull/terminate")
    return web.Response(status=200)


@hookimpl
def register_routes(app: App) -> list[web.RouteDef]:
    return [
        web.post("/rest-api/pull/startup", rest_startup),
        web.post("/rest-api/pull/find_all", rest_find_all),
        web.post("/rest-api/pull/terminate", rest_terminate),
    ]


@hookimpl
async def lifespan(app: App) -> AsyncIterator[None]:
    plugin = PullPlugin(app)
    app.state[PULL] = plugin
    try:
        await plugin.start()
    except BaseException:
        await plugin.stop()  # the cameras started before the one that failed
        app.state.pop(PULL)
        raise
    yield
    app.state.pop(PULL)
    await plugin.stop()


@hookimpl
async def resolve_stream(app: App, name: str, remote: str | None) -> Any:
    plugin = app.state.get(PULL)
    return None if plugin is None else await plugin.resolve(name, remote)
