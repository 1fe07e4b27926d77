"""RTSP cameras: pulled by supervised FFmpeg children, on demand by URL or from config.

A stream whose name is an ``rtsp://``/``rtsps://`` URL is pulled when first asked for and
dropped after ``[rtsp] idle_timeout_s`` without use; cameras listed in ``[[rtsp.cameras]]``
are pulled from start-up under their friendly name. FFmpeg remuxes without decoding
(``-c copy``) into FLV on a pipe; the server reads the FLV tags into the stream's frame store,
so a stuck camera or a crashing demuxer never takes the server down. Only RTSP ever reaches
FFmpeg: other schemes are refused before, and FFmpeg's protocol whitelist holds inside.
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

from ..core import flv
from ..core.app import App
from ..core.config import RtspConfig
from ..core.errors import ConfigError, InvalidStreamName
from ..core.streams import Stream
from ..core.supervisor import ChildExit, FfmpegSupervisor, SupervisorPolicy, mask_credentials
from ..hooks import hookimpl

log = logging.getLogger(__name__)

SCHEMES = ("rtsp", "rtsps")
# What FFmpeg may open for an RTSP source: RTSP itself and the transports under it.
PROTOCOL_WHITELIST = "rtsp,rtsps,rtp,srtp,udp,tcp,tls"
# Names that would make FFmpeg read something other than a camera.
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
    "srt",
    "udp",
    "tcp",
    "tls",
    "rtp",
    "srtp",
    "mmsh",
    "mmst",
    "ipfs",
    "ipns",
    "amqp",
    "librtmp",
    "bluray",
    "icecast",
    "prompeg",
}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_UNSAFE = re.compile(r"[\x00-\x20\x7f|\\]")
FAILED_TO_CONNECT = "Failed to connect to rtsp stream"


@dataclass(frozen=True)
class CameraUrl:
    url: str  # as FFmpeg gets it, credentials included
    public: str  # credentials removed: the stream's name, and what logs show
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


def parse_camera_url(name: str, config: RtspConfig) -> CameraUrl:
    """Validate an RTSP URL; raises InvalidStreamName with the reason."""
    scheme = scheme_of(name)
    if scheme not in SCHEMES:
        raise InvalidStreamName(
            f"{scheme}: URLs are not allowed as stream names; only rtsp:// and rtsps:// "
            "cameras are pulled"
        )
    if _UNSAFE.search(name):
        raise InvalidStreamName("camera URL contains spaces, control characters, '|' or '\\'")
    try:
        parts = urlsplit(name)
        port = parts.port
    except ValueError as exc:
        raise InvalidStreamName(f"malformed camera URL: {exc}") from None
    host = parts.hostname or ""
    if not host:
        raise InvalidStreamName("camera URL has no host")
    hostport = f"[{host}]" if ":" in host else host
    if port is not None:
        hostport += f":{port}"
    user, password = parts.username, parts.password
    if user is None:
        for entry in config.credentials:
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
    return CameraUrl(url, public, host.lower())


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


class Camera:
    """One pulled camera: its stream and the FFmpeg child that feeds it."""

    def __init__(
        self,
        app: App,
        plugin: RtspPlugin,
        name: str,
        url: CameraUrl,
        transport: str,
        on_demand: bool,
    ) -> None:
        self.app = app
        self.plugin = plugin
        self.url = url
        self.transport = transport
        self.on_demand = on_demand
        self.stream = app.new_stream(
            name, "rtsp", remote=url.public, status="PENDING", terminator=self._terminated
        )
        cfg = plugin.config
        self.supervisor = FfmpegSupervisor(
            f"rtsp {name}",
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

    @property
    def name(self) -> str:
        return self.stream.name

    def build_argv(self) -> list[str]:
        source = ffmpeg.input(
            self.url.url,
            rtsp_transport=self.transport,
            timeout=int(self.plugin.config.connect_timeout_s * 1_000_000),
            protocol_whitelist=PROTOCOL_WHITELIST,
            fflags="nobuffer",
        )
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
                self.frames_seen = True
                log.info(
                    "stream %s: receiving video from %s (%s)",
                    stream.name,
                    self.url.public,
                    stream.frames.codec_name,
                )

    def on_exit(self, result: ChildExit) -> None:
        stream = self.stream
        stream.frames.reset()  # no stale picture: snapshots wait for the camera again
        if result.kind in ("auth", "not_found", "unreachable", "timeout", "refused"):
            stream.fail(result.message)
        else:
            stream.status = "PENDING"
        if (
            self.on_demand
            and not self.frames_seen
            and result.kind in ("auth", "not_found", "refused")
        ):
            # asked for once and refused by the camera: forget it, the next request retries
            self.app.spawn(
                self.plugin.drop(self, f"camera refused: {result.message}"),
                name=f"rtsp-drop:{self.name}",
            )

    async def start(self) -> None:
        self.app.claim(self.stream)
        await self.app.announce(self.stream)
        self.supervisor.start()

    async def stop(self, reason: str) -> None:
        await self.supervisor.stop()
        await self.app.unpublish(self.stream, reason)

    async def _terminated(self, reason: str) -> None:
        await self.plugin.drop(self, reason, unpublish=False)


class RtspPlugin:
    def __init__(self, app: App) -> None:
        self.app = app
        self.config = app.config.rtsp
        self.ffmpeg = self.config.ffmpeg or _bundled_ffmpeg()
        self.cameras: dict[str, Camera] = {}  # by stream name
        self._sweeper: asyncio.Task[None] | None = None

    def _configured(self) -> list[tuple[str, CameraUrl, str]]:
        out = []
        for i, entry in enumerate(self.config.cameras):
            where = f"[[rtsp.cameras]] #{i + 1}"
            name, url = entry.get("name"), entry.get("url")
            if not isinstance(name, str) or not name or not isinstance(url, str):
                raise ConfigError(
                    f"{where}: needs a name and a url (got {mask_credentials(str(entry))})"
                )
            transport = entry.get("transport", self.config.transport)
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
                parsed = parse_camera_url(url, self.config)
            except InvalidStreamName as exc:
                raise ConfigError(f"{where} url: {exc}") from None
            out.append((name, parsed, transport))
        return out

    async def start(self) -> None:
        for name, url, transport in self._configured():
            camera = Camera(self.app, self, name, url, transport, on_demand=False)
            self.cameras[name] = camera
            await camera.start()
        self._sweeper = self.app.spawn(self._sweep(), name="rtsp-idle")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await asyncio.gather(
            *(c.stop("server shutting down") for c in list(self.cameras.values())),
            return_exceptions=True,
        )
        self.cameras.clear()

    async def resolve(self, name: str) -> Stream | None:
        if scheme_of(name) is None:
            return None
        url = parse_camera_url(name, self.config)
        camera = self.cameras.get(url.public) or next(
            (c for c in self.cameras.values() if c.url.public == url.public), None
        )
        if camera is not None:
            return camera.stream
        allowed = self.config.allowed_hosts
        if allowed and not any(_host_matches(url.host, p) for p in allowed):
            raise InvalidStreamName(f"camera host {url.host!r} is not in [rtsp] allowed_hosts")
        camera = Camera(self.app, self, url.public, url, self.config.transport, on_demand=True)
        self.cameras[url.public] = camera
        log.info("stream %s: pulling on demand", url.public)
        await camera.start()
        return camera.stream

    async def drop(self, camera: Camera, reason: str, unpublish: bool = True) -> None:
        if self.cameras.get(camera.name) is camera:
            del self.cameras[camera.name]
        await camera.supervisor.stop()
        if unpublish:
            await self.app.unpublish(camera.stream, reason)

    async def _sweep(self) -> None:
        idle_timeout = self.config.idle_timeout_s
        while True:
            await asyncio.sleep(min(5.0, idle_timeout / 2))
            now = time.monotonic()
            for camera in list(self.cameras.values()):
                if camera.on_demand and now - camera.stream.last_used > idle_timeout:
                    log.info(
                        "stream %s: unused for %.0f s, dropping the pull",
                        camera.name,
                        now - camera.stream.last_used,
                    )
                    await self.drop(camera, "idle timeout")


def _bundled_ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@hookimpl
async def on_startup(app: App) -> None:
    plugin = RtspPlugin(app)
    app.state["rtsp"] = plugin
    await plugin.start()


@hookimpl
async def on_shutdown(app: App) -> None:
    plugin = app.state.pop("rtsp", None)
    if plugin is not None:
        await plugin.stop()


@hookimpl
async def resolve_stream(app: App, name: str) -> Any:
    plugin = app.state.get("rtsp")
    return None if plugin is None else await plugin.resolve(name)
