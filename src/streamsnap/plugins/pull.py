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
import fnmatch
import ipaddress
import logging
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import ffmpeg  # ffmpeg-python: builds the command line
from aiohttp import web

from ..core import flv
from ..core.app import APP_KEY, App
from ..core.config import Config
from ..core.errors import ConfigError, InvalidStreamName, StreamNameInUse
from ..core.streams import Stream
from ..core.supervisor import ChildExit, FfmpegSupervisor, SupervisorPolicy, mask_credentials
from ..hooks import hookimpl

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
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)[:,]")  # "subfile,,start,..." too
_UNSAFE = re.compile(r"[\x00-\x20\x7f|\\]")


@dataclass(frozen=True)
class SourceUrl:
    url: str  # as FFmpeg gets it, credentials included
    public: str  # credentials removed: the stream's name, and what logs show
    scheme: str
    host: str


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


def parse_source_url(name: str, config: Config) -> SourceUrl:
    """Validate a source URL; raises InvalidStreamName with the reason."""
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
    host = parts.hostname or ""
    if not host:
        raise InvalidStreamName("source URL has no host")
    hostport = f"[{host}]" if ":" in host else host
    if port is not None:
        hostport += f":{port}"
    user, password = parts.username, parts.password
    if user is None:
        for entry in config.rtsp.credentials:
            if _host_matches(host, str(entry.get("host", ""))):
                user, password = entry.get("username"), entry.get("password")
                break
    userinfo = ""
    if user is not None:
        userinfo = (
            quote(unquote(user), safe="")
            + (":" + quote(unquote(password), safe="") if password is not None else "")
            + "@"
        )
    url = urlunsplit((scheme, userinfo + hostport, parts.path, parts.query, ""))
    public = urlunsplit((scheme, hostport, parts.path, parts.query, ""))
    return SourceUrl(url, public, scheme, host.lower())


def _host_matches(host: str, pattern: str) -> bool:
    pattern = pattern.strip().lower()
    if not pattern:
        return False
    with contextlib.suppress(ValueError):
        network = ipaddress.ip_network(pattern, strict=False)
        with contextlib.suppress(ValueError):
            return ipaddress.ip_address(host) in network
        return False
    return fnmatch.fnmatchcase(host.lower(), pattern)


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
    ) -> None:
        self.app = app
        self.plugin = plugin
        self.url = url
        self.transport = transport
        self.on_demand = on_demand
        protocol = "rtsp" if url.scheme.startswith("rtsp") else url.scheme
        self.stream = app.new_stream(
            name, protocol, remote=url.public, status="PENDING", terminator=self._terminated
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
        else:
            opts.update(rw_timeout=timeout_us)
        return opts

    def build_argv(self) -> list[str]:
        source = ffmpeg.input(self.url.url, **self.input_options())
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
        stream.faults["pull"] = (
            f"FFmpeg child {result.kind} (exit {result.returncode}): {result.message}; restarting"
        )
        if result.kind in ("auth", "not_found", "unreachable", "timeout", "refused"):
            message = result.message
            if result.kind != "not_found" and not self.url.scheme.startswith("rtsp"):
                message = failure_text(self.url.scheme)
            stream.fail(message)
        else:
            stream.status = "PENDING"
        if (
            self.on_demand
            and not self.frames_seen
            and result.kind in ("auth", "not_found", "refused")
        ):
            # asked for once and refused by the source: forget it, the next request retries
            self.app.spawn(
                self.plugin.drop(self, f"source refused: {result.message}"),
                name=f"pull-drop:{self.name}",
            )

    def describe(self) -> dict[str, Any]:
        """The pull as ``/rest-api/pull/find_all`` shows it (credentials removed)."""
        return {
            "localStreamName": self.name,
            "uri": self.url.public,
            "status": self.stream.status,
            "info": self.stream.failure,
            "mediaSessionId": self.stream.media_session_id,
            "onDemand": self.on_demand,
            "restarts": max(0, self.supervisor.starts - 1),
            "createDate": self.started_ms,
        }

    async def start(self) -> None:
        self.app.claim(self.stream)
        await self.app.announce(self.stream)
        self.supervisor.start()

    async def _terminated(self, reason: str) -> None:
        await self.plugin.drop(self, reason, unpublish=False)


class PullPlugin:
    def __init__(self, app: App) -> None:
        self.app = app
        self.config = app.config
        self.ffmpeg = app.config.rtsp.ffmpeg or _bundled_ffmpeg()
        self.cameras: dict[str, Pull] = {}  # by stream name
        self._sweeper: asyncio.Task[None] | None = None

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
            if "username" in entry and "@" not in url.split("://", 1)[-1].split("/", 1)[0]:
                scheme, rest = url.split("://", 1)
                cred = (
                    quote(str(entry["username"]), safe="")
                    + ":"
                    + quote(str(entry.get("password", "")), safe="")
                )
                url = f"{scheme}://{cred}@{rest}"
            try:
                parsed = parse_source_url(url, self.config)
            except InvalidStreamName as exc:
                raise ConfigError(f"{where} url: {exc}") from None
            out.append((name, parsed, transport))
        return out

    async def start(self) -> None:
        for name, url, transport in self._configured():
            await self.start_pull(name, url, transport, on_demand=False)
        self._sweeper = self.app.spawn(self._sweep(), name="pull-idle")

    async def start_pull(self, name: str, url: SourceUrl, transport: str, on_demand: bool) -> Pull:
        pull = Pull(self.app, self, name, url, transport, on_demand)
        self.app.claim(pull.stream)  # raises StreamNameInUse before anything starts
        self.cameras[name] = pull
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

    async def resolve(self, name: str) -> Stream | None:
        if scheme_of(name) is None:
            return None
        url = parse_source_url(name, self.config)
        existing = self.cameras.get(url.public) or next(
            (p for p in self.cameras.values() if p.url.public == url.public), None
        )
        if existing is not None:
            return existing.stream
        self.check_host(url)
        log.info("stream %s: pulling on demand", url.public)
        pull = await self.start_pull(url.public, url, self.config.rtsp.transport, on_demand=True)
        return pull.stream

    def check_host(self, url: SourceUrl) -> None:
        """Pulls asked for at run time (by name or REST) only from allowed hosts."""
        allowed = self.config.rtsp.allowed_hosts
        if allowed and not any(_host_matches(url.host, p) for p in allowed):
            raise InvalidStreamName(f"host {url.host!r} is not in [rtsp] allowed_hosts")

    async def drop(self, pull: Pull, reason: str, unpublish: bool = True) -> None:
        if self.cameras.get(pull.name) is pull:
            del self.cameras[pull.name]
        await pull.supervisor.stop()
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


def _bundled_ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# ---------------------------------------------------------------- REST (WCS-style pull API)
def _plugin(request: web.Request) -> PullPlugin | None:
    return request.app[APP_KEY].state.get("pull")


async def _body(request: web.Request) -> dict[str, Any]:
    from .rest import _json_body

    return await _json_body(request)


async def rest_startup(request: web.Request) -> web.Response:
    """``POST /rest-api/pull/startup {"uri", "localStreamName"}``: pull until terminated."""
    from .rest import BadRequest, error_response

    plugin = _plugin(request)
    try:
        body = await _body(request)
        uri, name = body.get("uri"), body.get("localStreamName") or body.get("uri")
        if not isinstance(uri, str) or not uri or not isinstance(name, str) or not name:
            raise BadRequest("fields 'uri' and 'localStreamName' must be non-empty strings")
        if plugin is None:
            raise BadRequest("the pull plugin is disabled")
        url = parse_source_url(uri, plugin.config)
        plugin.check_host(url)
        if name == uri:
            name = url.public
        pull = await plugin.start_pull(name, url, plugin.config.rtsp.transport, on_demand=False)
    except BadRequest as exc:
        return error_response(request, exc.status, str(exc))
    except InvalidStreamName as exc:
        return error_response(request, 400, str(exc))
    except StreamNameInUse:
        return error_response(request, 409, "Stream name is already in use")
    return web.json_response(pull.describe())


async def rest_find_all(request: web.Request) -> web.Response:
    from .rest import error_response

    plugin = _plugin(request)
    pulls = [p.describe() for p in plugin.cameras.values()] if plugin else []
    if not pulls:
        return error_response(request, 404, "Pull not found")
    return web.json_response(pulls)


async def rest_terminate(request: web.Request) -> web.Response:
    """``POST /rest-api/pull/terminate {"localStreamName"}``: stop pulling."""
    from .rest import BadRequest, error_response

    plugin = _plugin(request)
    try:
        body = await _body(request)
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
        web.get("/rest-api/pull/find_all", rest_find_all),
        web.post("/rest-api/pull/terminate", rest_terminate),
    ]


@hookimpl
async def on_startup(app: App) -> None:
    plugin = PullPlugin(app)
    app.state["pull"] = plugin
    await plugin.start()


@hookimpl
async def on_shutdown(app: App) -> None:
    plugin = app.state.pop("pull", None)
    if plugin is not None:
        await plugin.stop()


@hookimpl
async def resolve_stream(app: App, name: str) -> Any:
    plugin = app.state.get("pull")
    return None if plugin is None else await plugin.resolve(name)
