"""One pulled source: its stream and the supervised FFmpeg child that feeds it (``-c copy``
into FLV on a pipe, read back into the stream's frame store; NUT for the codecs FLV cannot
carry, such as MJPEG and MPEG-4 Part 2)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ffmpeg  # ffmpeg-python: builds the command line

from ...core import flv, hosts, nut
from ...core.app import App
from ...core.errors import SnapshotError
from ...core.supervisor import (
    ChildExit,
    FfmpegSupervisor,
    PipeSink,
    SupervisorPolicy,
    mask_credentials,
)
from .rtsp_relay import RtspRelay
from .urls import (
    PROTOCOL_WHITELISTS,
    TLS_SCHEMES,
    SourceUrl,
    failure_text,
    parse_source_url,
    same_credentials,
    scheme_of,
)

if TYPE_CHECKING:
    from .pulls import PullPlugin

log = logging.getLogger(__name__)


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
        cfg = plugin.settings
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
            sink=self.sink,
        )
        if url.username is not None:
            self.stream.check_name = self._check_name
        self.frames_seen = False
        # the pipe format: FLV until FFmpeg says it cannot carry the codec, then NUT
        self.container = "nut" if url.public in plugin.nut_sources else "flv"
        self.started_ms = int(time.time() * 1000)

    @property
    def name(self) -> str:
        return self.stream.name

    def input_options(self) -> dict[str, Any]:
        timeout_us = int(self.plugin.settings.connect_timeout_s * 1_000_000)
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
        options: dict[str, Any] = {"format": self.container, "c": "copy", "flush_packets": 1}
        if self.container == "flv":
            options["flvflags"] = "no_duration_filesize"
        out = source.output("pipe:1", an=None, dn=None, sn=None, **options)
        # global options first: FFmpeg ignores options after the last output
        return [
            self.plugin.ffmpeg,
            "-hide_banner",
            "-nostdin",
            "-nostats",  # the progress line would be built twice a second and never shown
            "-loglevel",
            "warning",
            *out.get_args(),
        ]

    def sink(self) -> PipeSink | None:
        """FLV is cut into tags where the pipe delivers it; NUT goes to its demuxer thread
        through :meth:`consume`."""
        if self.container != "flv":
            return None
        parser = flv.TagParser(self._flv_tag)
        interval = self.app.config.streams.read_interval_ms / 1000
        return PipeSink(parser.feed, parser.end, pace=(self.stream.frames, interval))

    async def consume(self, stdout: asyncio.StreamReader) -> None:
        await nut.read_packets(stdout, self._nut_codec, self._nut_packet, self.name)

    def _flv_tag(self, tag_type: int, ts: int, data: bytes) -> None:
        self.supervisor.progress()
        if tag_type != 9 or not data:
            return
        flv.ingest_video(self.app, self.stream, data, ts)
        self._check_receiving()

    def _nut_codec(self, codec: str, extradata: bytes | None) -> None:
        self.supervisor.progress()
        if codec:
            self.stream.frames.set_codec(codec, extradata)
        else:
            self.stream.frames.unsupported(
                "unsupported video codec: none of this server's decoders reads it (FFmpeg's "
                "log of the pull names it)"
            )

    def _nut_packet(self, packet: nut.Packet) -> None:
        self.supervisor.progress()
        handle = self.stream.frames.push_packet(
            packet.data, packet.pts, packet.keyframe, packet.dts
        )
        if handle is not None:
            self.app.frame(self.stream, handle)
        self._check_receiving()

    def _check_receiving(self) -> None:
        stream = self.stream
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
        if result.kind == "container" and self.container == "flv":
            # FLV cannot carry this codec (FFmpeg named it): the next start asks for NUT
            self.container = "nut"
            self.plugin.remember_nut(self.url.public)
            log.info(
                "stream %s: %s; reading the camera through NUT instead of FLV",
                stream.name,
                result.detail or result.message,
            )
            return
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
        if not same_credentials(given, self.url.credentials):
            log.warning(
                "stream %s: asked for with other credentials than its pull's: refused", self.name
            )
            raise SnapshotError(failure_text(self.url.scheme))

    def _check_name(self, name: str) -> None:
        if scheme_of(name) is not None:
            self.check_credentials(parse_source_url(name, self.plugin.settings, trusted=True))

    async def _terminated(self, reason: str) -> None:
        await self.plugin.drop(self, reason, unpublish=False)
