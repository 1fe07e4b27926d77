"""The WebRTC engine (aiortc): ingest of browser/WHIP publishers, and playback of any stream.

Publishing: aiortc decodes every received frame; the engine always drains the receiver (aiortc's
queue is unbounded) and keeps only the newest picture in the stream's frame store, so memory
stays flat however long a publisher stays. Audio is declined in the answer (``a=inactive``):
publishers send none, and nothing decodes it. Playing: a track that
hands the newest picture of any stream (WebRTC, RTMP, RTSP) to aiortc's encoder as it arrives.

Consent (RFC 7675): while a publisher's video arrives, it stands in for ICE consent checks
(:func:`consent_from_media`): FFmpeg's WHIP muxer stops answering them once media flows, and
aioice would close its session after about 33 s.

ICE: no outside STUN unless ``[webrtc] ice_servers`` lists one; ``ice_addresses`` chooses the
host candidates (aiortc/aioice offer every non-loopback interface and no way to choose, so the
engine installs its own address list into aioice); ``public_address`` rewrites host candidates
for a server behind 1:1 NAT.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aioice.ice
import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from ...core.app import App
from ...core.errors import StartupError
from ...core.state import StateKey
from .settings import WebRtcSettings

if TYPE_CHECKING:
    from ...core.streams import Stream

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( \d+ typ host.*)$", re.M)
_original_host_addresses = aioice.ice.get_host_addresses


def consent_from_media(pc: RTCPeerConnection, last_media: Callable[[], float]) -> None:
    """Let a publisher's media stand in for ICE consent checks while it arrives.

    aioice asks the peer for consent (a STUN binding request) every ~5 s and closes the
    connection after six unanswered ones. FFmpeg's WHIP muxer (9.0) answers binding requests
    only during its handshake, so every FFmpeg WHIP publish was cut after about 33 s.
    Consent protects a sender from flooding an address that never agreed (RFC 7675 section
    1); to a publisher this server sends only RTCP, and video that arrived decrypted with the
    session's SRTP keys came from the peer itself. So while video has arrived within two
    consent intervals, no check is asked; once it stops, aioice's own checks take over (and
    the engine's ``idle_timeout_s`` ends the publish). ``last_media``: the monotonic time of
    the newest video frame (0 before the first). Call between the remote and the local
    description: ICE connects, and starts the checks, after both."""
    connections = {}
    for transceiver in pc.getTransceivers():
        ice = transceiver.receiver.transport.transport
        connection = getattr(ice, "_connection", None)  # aioice.Connection; one when bundled
        if connection is not None:
            connections[id(connection)] = connection
    for connection in connections.values():
        checks = connection.query_consent  # aioice's own loop, bound to the connection

        async def query_consent(checks: Callable[[], Any] = checks) -> None:
            started = time.monotonic()
            while True:
                interval = aioice.ice.CONSENT_INTERVAL
                await asyncio.sleep(interval)
                if time.monotonic() - (last_media() or started) > 2 * interval:
                    return await checks()

        connection.query_consent = query_consent


def configure_ice(config: WebRtcSettings) -> None:
    """Make aioice gather host candidates on the configured addresses only."""
    addresses = list(config.ice_addresses)
    if not addresses:
        aioice.ice.get_host_addresses = _original_host_addresses
        return

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


class PictureTrack(MediaStreamTrack):
    """A video track showing the newest picture of a stream, one frame per new picture."""

    kind = "video"

    def __init__(self, app: App, stream: Stream) -> None:
        super().__init__()
        self.app = app
        self.stream = stream
        self._last_index = -1
        self._epoch = time.monotonic()

    async def recv(self) -> av.VideoFrame:
        frames = self.stream.frames
        while True:
            if self.readyState != "live" or not self.app.is_live(self.stream):
                raise MediaStreamError
            if frames.newest_index > self._last_index and frames.decodable:
                picture = await asyncio.get_running_loop().run_in_executor(
                    self.app.executor, frames.decode_latest
                )
                if picture is not None and picture.index > self._last_index:
                    self._last_index = picture.index
                    frame = picture.frame
                    # Every player of the stream shares this frame object: give it a timestamp
                    # from one clock so that concurrent players agree on it.
                    frame.pts = int((time.monotonic() - self._epoch) * VIDEO_CLOCK)
                    frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
                    return frame
            await frames.wait_newer(self._last_index, 1.0)


class WebRtcEngine:
    def __init__(self, app: App) -> None:
        self.app = app
        self.config = app.config.of(WebRtcSettings)
        self.peers: set[RTCPeerConnection] = set()

    def _configuration(self) -> RTCConfiguration:
        return RTCConfiguration(iceServers=[RTCIceServer(urls=u) for u in self.config.ice_servers])

    def _answer_sdp(self, pc: RTCPeerConnection) -> str:
        sdp = pc.localDescription.sdp
        if self.config.public_address:
            sdp = _CANDIDATE.sub(
                lambda m: m.group(1) + self.config.public_address + m.group(3), sdp
            )
        return sdp

    def _new_pc(self, label: str, on_closed: Any = None) -> RTCPeerConnection:
        pc = RTCPeerConnection(self._configuration())
        self.peers.add(pc)

        @pc.on("connectionstatechange")
        async def _state() -> None:
            state = pc.connectionState
            log.debug("%s: connection %s", label, state)
            if state in ("failed", "closed"):
                self.peers.discard(pc)
                if on_closed is not None:
                    await on_closed(state)

        return pc

    async def publish(
        self, stream: Stream, offer_sdp: str, on_closed: Any = None
    ) -> tuple[RTCPeerConnection, str]:
        """Answer a publisher's offer; its video goes into ``stream``. Returns (pc, answer)."""
        pc = self._new_pc(f"stream {stream.name}", on_closed)

        @pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            if track.kind == "video":
                self.app.spawn(self._ingest(stream, track), name=f"webrtc-in:{stream.name}")
            else:
                stream.has_audio = True  # offered; declined below

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            _require_video(pc)
            for transceiver in pc.getTransceivers():
                # audio is declined (a=inactive): no picture needs it, and received it would be
                # decoded on a thread of its own, 50 frames a second, for nothing
                transceiver.direction = "recvonly" if transceiver.kind == "video" else "inactive"
            consent_from_media(pc, lambda: stream.frames.last_arrival)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception:
            await self.close(pc)
            raise
        stream.frames.codec_name = video_codec_of(pc.localDescription.sdp)
        return pc, self._answer_sdp(pc)

    async def play(
        self, stream: Stream, offer_sdp: str, on_closed: Any = None
    ) -> tuple[RTCPeerConnection, str]:
        """Answer a player's offer with the stream's pictures. Returns (pc, answer)."""
        pc = self._new_pc(f"player of {stream.name}", on_closed)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            _require_video(pc)
            pc.addTrack(PictureTrack(self.app, stream))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception:
            await self.close(pc)
            raise
        return pc, self._answer_sdp(pc)

    async def _ingest(self, stream: Stream, track: MediaStreamTrack) -> None:
        """Drain the receiver, keeping only the newest picture (aiortc queues every frame)."""
        frames = stream.frames
        first = True
        idle = self.config.idle_timeout_s
        try:
            while True:
                try:
                    # a publisher that vanished (tab killed, no DELETE) sends nothing more;
                    # ICE consent would notice only after about 30 s
                    frame = await asyncio.wait_for(track.recv(), idle)
                except TimeoutError:
                    if self.app.is_live(stream):
                        log.warning(
                            "stream %s: no video for %g s, ending the publish", stream.name, idle
                        )
                        await self.app.terminate(stream, f"no video for {idle:g} s")
                    return
                if first:
                    first = False
                    log.info(
                        "stream %s: receiving %dx%d video over WebRTC",
                        stream.name,
                        frame.width,
                        frame.height,
                    )
                pts = int(frame.pts * frame.time_base * 1000) if frame.pts is not None else 0
                self.app.frame(stream, frames.push_picture(frame, pts))
        except MediaStreamError:
            return

    async def close(self, pc: RTCPeerConnection) -> None:
        self.peers.discard(pc)
        try:
            await pc.close()
        except Exception:  # closing a half-open connection must not hide the real error
            log.debug("closing a peer connection failed", exc_info=True)

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close(pc) for pc in list(self.peers)))


def _require_video(pc: RTCPeerConnection) -> None:
    """aiortc accepts an offer without media sections (even a garbage string): refuse it."""
    if not any(t.kind == "video" for t in pc.getTransceivers()):
        raise ValueError("the offer has no video media section")


def video_codec_of(sdp: str) -> str:
    """The codec of the first video format in an SDP answer, FFmpeg-style ("vp8", "h264")."""
    m = re.search(r"^m=video \S+ \S+ (\d+)", sdp, re.M)
    if not m:
        return ""
    rtpmap = re.search(rf"^a=rtpmap:{m.group(1)} ([^/\s]+)/", sdp, re.M)
    return rtpmap.group(1).lower() if rtpmap else ""


WEBRTC: StateKey[WebRtcEngine] = StateKey("webrtc", WebRtcEngine)


def engine_of(app: App) -> WebRtcEngine:
    """The app's WebRTC engine, made by this plugin's lifespan (the WebSocket API and WHIP use
    it; they refuse to start without this plugin, see :func:`require`)."""
    return app.state[WEBRTC]


def require(app: App, plugin: str) -> None:
    """StartupError when this plugin is left out: ``plugin`` cannot run without it."""
    if app.pm.get_plugin("webrtc") is None:
        raise StartupError(
            f"plugin {plugin!r} needs the 'webrtc' plugin, which [plugins] leaves out: enable "
            f"webrtc, or disable {plugin} too"
        )
