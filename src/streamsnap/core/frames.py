"""Per-stream frame store: compressed packets since the last keyframe, decoded only on demand.

Ingest pushes every video access unit with :meth:`FrameStore.push_packet` (cheap: a list append
on the event loop). :meth:`FrameStore.decode_latest` (called from a worker thread) feeds one
persistent decoder with the packets it has not seen yet and returns the newest picture. A
stream nobody looks at therefore costs only its packets. Sources that arrive decoded (WebRTC)
hand over pictures with :meth:`FrameStore.push_picture` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import av

from . import h264, history
from .history import History

if TYPE_CHECKING:
    from .pacing import ReadPacer

log = logging.getLogger(__name__)


class FrameHandle(NamedTuple):
    """What ``on_frame`` receives: a video frame's identity, no pixels."""

    index: int  # 0-based count of video frames received by this stream
    pts: int  # presentation time, milliseconds
    keyframe: bool
    size: int  # compressed bytes


class _Packet(NamedTuple):
    data: bytes | memoryview  # RTMP: a view into the message it came in (not copied again)
    pts: int
    dts: int
    index: int
    arrival: int  # Unix ms when the server received it


# a source clock that moved by more than this against ours jumped (a new session, a wrap)
CLOCK_RESYNC_MS = 2000
PACED_SLACK_MS = 20  # a paced read comes a loop turn after its timer, not at once
# FFmpeg decoders to try per codec, best first: FFmpeg's native AV1 decoder only drives
# hardware (software decoding fails with ENOSYS), libdav1d decodes AV1 on the CPU
DECODERS = {"av1": ("libdav1d", "libaom-av1", "av1")}


def decoder_name(codec_name: str) -> str | None:
    """The decoder :class:`FrameStore` opens for ``codec_name``, or None if there is none."""
    for name in DECODERS.get(codec_name, (codec_name,)):
        try:
            av.CodecContext.create(name, "r")
        except (av.FFmpegError, ValueError):
            continue
        return name
    return None


class OutOfHistory(LookupError):
    """No frame of the instant asked for is held (``oldest_ms``: the oldest instant held)."""

    def __init__(self, message: str, oldest_ms: int) -> None:
        super().__init__(message)
        self.oldest_ms = oldest_ms


@dataclass(frozen=True)
class Picture:
    """A decoded picture and which received frame it shows."""

    frame: av.VideoFrame
    index: int
    pts: int
    gop: int  # the keyframe group it belongs to (a new picture is never older)
    arrival: int = -1  # Unix ms when the frame it shows was received


class FrameStore:
    """Packets of the current GOP, one decoder, the newest picture.

    Thread model: ``push_*``, ``reset`` and the waiters run on the event loop; ``decode_latest``
    runs in a worker thread and reads the GOP list by reference (a new GOP gets a new list, so a
    reader never sees it change under it). The event loop never waits for a decode: ``reset``
    and ``set_codec`` only bump a generation under ``_state`` (held for a few statements), and
    a decode that started before them neither publishes its picture nor keeps its decoder.
    """

    def __init__(
        self,
        stream_name: str,
        max_packets: int = 1800,
        max_bytes: int = 64 << 20,
        history_s: float = 0.0,
        history_bytes: int = 32 << 20,
    ):
        self.stream_name = stream_name
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.codec_name = ""
        self.decoder = ""  # the FFmpeg decoder for codec_name ("" until one is known)
        # why pictures cannot be made: no decoder for the codec, or the decoder refuses it
        self.codec_error = ""
        self.history = History(history_s, history_bytes)
        self.last_arrival = 0.0  # monotonic time of the newest video frame (0: none yet)
        self.width = 0
        self.height = 0
        self._extradata: bytes | None = None
        self._decoder_extradata: bytes | None = None
        self._h264_length = 0
        self._gop: list[_Packet] = []
        self._gop_bytes = 0
        self._gop_id = 0
        self.gop_length = 0  # frames in the last complete GOP
        self.frames_in = 0
        self.bytes_in = 0
        self.dropped = 0  # packets dropped while waiting for a keyframe
        self._overflowed = False
        self._recent: deque[tuple[float, int]] = deque(maxlen=64)  # (arrival, bytes)
        self._decoder: av.CodecContext | None = None
        self._dec_gop = -1
        self._dec_pos = 0
        self._dec_best: Picture | None = None
        self._dec_index: dict[int, int] = {}  # pts -> frame index, for the GOP being decoded
        self._latest: Picture | None = None
        self._seen = (-1, 0)  # (GOP id, packets) that _latest was last brought up to date with
        self._lock = threading.Lock()  # one decode at a time
        self._state = threading.Lock()  # brief: reading and publishing against a reset
        self._epoch = 0  # bumped by reset(): pictures decoded before it are stale
        self._codec_gen = 0  # bumped by set_codec() and reset(): the decoder must be reopened
        self._dec_codec_gen = 0
        self._waiters: list[asyncio.Future[None]] = []
        self.decode_errors = 0
        self.last_decode_error = ""
        self.decode_passes = 0  # decode_latest calls that fed the decoder (or drained it)
        self.frames_decoded = 0  # frames fed to the decoder and not skipped (H.264)
        self.continuous = False  # decoded as frames arrive (the decode policy decides)
        self.decodes_itself = False  # pictures arrive decoded (push_picture)
        self.pacer: ReadPacer | None = None  # paces the reads of the source (pacing.py)
        self.read_late_ms = 0  # how late the read being handled may be (after a paced pause)
        self._clock_offset: int | None = None  # our clock minus the source's, least seen

    # ---------------------------------------------------------------- ingest (event loop)
    def set_codec(self, codec_name: str, extradata: bytes | None = None) -> None:
        """Declare the codec (an FFmpeg decoder name) and its global header."""
        if codec_name == self.codec_name and extradata == self._extradata:
            return
        if self.codec_name:
            log.info(
                "stream %s: codec changed to %s, waiting for a keyframe",
                self.stream_name,
                codec_name,
            )
        decoder = decoder_name(codec_name) or ""
        self.codec_error = "" if decoder else f"no decoder for video codec {codec_name!r}"
        if self.codec_error:
            log.error("stream %s: %s: no snapshots", self.stream_name, self.codec_error)
        self._h264_length = 0  # H.264: the NAL length size of in-band SPS to rewrite
        decoder_extradata = extradata
        if codec_name == "h264" and extradata:
            # the decoder then returns each I/P picture as soon as it is decoded (h264.py)
            decoder_extradata = h264.no_reorder_avcc(extradata)
            self._h264_length = h264.avcc_length_size(extradata)
        with self._state:  # a decode of the past reads the decoder and its packets together
            self.codec_name = codec_name
            self._extradata = extradata
            self.decoder = decoder
            self._decoder_extradata: bytes | None = decoder_extradata
            self._gop = []
            self._gop_bytes = 0
            self._gop_id += 1
            self._codec_gen += 1
            self.history.clear()  # frames of another codec
        self._release_decoder()

    def unsupported(self, description: str) -> None:
        """The source sends video in a codec nothing here reads (``description`` names it)."""
        if self.codec_error != description:
            self.codec_error = description
            log.error("stream %s: %s: no snapshots", self.stream_name, description)
        self.wake()  # a snapshot waiting for a picture learns at once that none will come

    def push_packet(
        self, data: bytes | memoryview, pts: int, keyframe: bool, dts: int | None = None
    ) -> FrameHandle | None:
        """Keep one compressed video frame. Returns its handle, or None if it was dropped."""
        index = self.frames_in
        self.frames_in += 1
        size = len(data)
        self.bytes_in += size
        now = self.last_arrival = time.monotonic()
        arrival = int(time.time() * 1000)
        decode_ts = pts if dts is None else dts
        seen = arrival - decode_ts  # the source's clock against ours, and the way here
        offset = self._clock_offset
        if offset is None or seen < offset or seen > offset + CLOCK_RESYNC_MS:
            self._clock_offset = seen  # the first frame, a quicker one, or the source jumped
        else:
            self._clock_offset = offset + 1  # creeps up: clocks drift, the least is renewed
        if self.read_late_ms and offset is not None:
            # a paced read: the frame came some time since the pause; when, the source's
            # clock tells (the read's own time is the latest it can have been)
            earliest = arrival - self.read_late_ms - PACED_SLACK_MS
            arrival = max(earliest, min(arrival, decode_ts + offset))
        self._recent.append((now, size))
        if self.codec_error and self.decoder:
            self.codec_error = ""  # a stray tag of an unknown codec on a stream we decode
        if keyframe:
            if self._h264_length:
                data = h264.no_reorder_access_unit(data, self._h264_length)
            if self._gop:
                self.gop_length = len(self._gop)
            packet = _Packet(data, pts, pts if dts is None else dts, index, arrival)
            with self._state:  # a decoding worker reads the GOP and its id together
                if self._gop and self.history.seconds > 0:
                    self.history.keep(self._gop_id, self._gop, self._gop_bytes, arrival)
                self._gop = [packet]
                self._gop_id += 1
            self._gop_bytes = size
            self._overflowed = False
        elif not self._gop:
            self.dropped += 1  # nothing to decode it against until the next keyframe
            return None
        else:
            if len(self._gop) >= self.max_packets or self._gop_bytes + size > self.max_bytes:
                if not self._overflowed:
                    log.warning(
                        "stream %s: no keyframe for %d frames / %d bytes, dropping until the "
                        "next keyframe",
                        self.stream_name,
                        len(self._gop),
                        self._gop_bytes,
                    )
                self._overflowed = True
                self._gop = []
                self._gop_bytes = 0
                self.dropped += 1
                return None
            self._gop.append(_Packet(data, pts, pts if dts is None else dts, index, arrival))
            self._gop_bytes += size
        self.wake()
        return FrameHandle(index, pts, keyframe, size)

    def push_picture(self, frame: av.VideoFrame, pts: int) -> FrameHandle:
        """Keep an already decoded picture (sources that decode themselves, e.g. aiortc)."""
        index = self.frames_in
        self.frames_in += 1
        self.decodes_itself = True
        now = self.last_arrival = time.monotonic()
        self._recent.append((now, 0))
        self.width, self.height = frame.width, frame.height
        self._latest = Picture(frame, index, pts, self._gop_id, int(time.time() * 1000))
        self.wake()
        return FrameHandle(index, pts, True, 0)

    def reset(self) -> None:
        """Forget packets and pictures (the publisher is gone)."""
        with self._state:  # a decode in progress publishes nothing after this
            self._epoch += 1
            self._codec_gen += 1  # its decoder, and the pictures it holds, go with the stream
            self._clock_offset = None  # the next source has a clock of its own
            self._gop = []
            self._gop_bytes = 0
            self._gop_id += 1
            self._latest = None
            self._seen = (-1, 0)
            self.history.clear()
        self.codec_error = self.last_decode_error = ""  # the source comes again, perhaps mended
        self.last_arrival = 0.0
        self._release_decoder()
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    def _release_decoder(self) -> None:
        """Free the decoder and the pictures it holds now, unless a decode is using them (then
        the codec generation it was opened for is stale, and the next decode drops it)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._decoder = None
            self._dec_best = None
            self._dec_index = {}
            self._dec_gop = -1
            self._dec_codec_gen = self._codec_gen
        finally:
            self._lock.release()

    # ---------------------------------------------------------------- queries (event loop)
    @property
    def decodable(self) -> bool:
        """True when a picture can be produced now (a keyframe or a decoded picture is held)."""
        return bool(self._gop) or self._latest is not None

    @property
    def epoch(self) -> int:
        """The source's generation: :meth:`reset` starts a new one."""
        return self._epoch

    @property
    def newest_index(self) -> int:
        return self.frames_in - 1

    @property
    def gop_packets(self) -> int:
        return len(self._gop)

    @property
    def gop_bytes(self) -> int:
        return self._gop_bytes

    def fps(self) -> float:
        if len(self._recent) < 2:
            return 0.0
        span = self._recent[-1][0] - self._recent[0][0]
        return (len(self._recent) - 1) / span if span > 0 else 0.0

    def bitrate_kbps(self) -> int:
        if len(self._recent) < 2:
            return 0
        span = self._recent[-1][0] - self._recent[0][0]
        total = sum(size for _, size in list(self._recent)[1:])
        return int(total * 8 / span / 1000) if span > 0 else 0

    async def wait_decodable(self, timeout: float) -> bool:
        """Wait until :attr:`decodable` (or ``timeout`` seconds); returns :attr:`decodable`."""
        if not self.decodable:
            await self._next_wake(timeout)
        return self.decodable

    async def wait_newer(self, index: int, timeout: float) -> bool:
        """Wait until a frame newer than ``index`` arrived (or ``timeout`` seconds)."""
        if self.newest_index <= index:
            await self._next_wake(timeout)
        return self.newest_index > index

    def flush_source(self) -> None:
        """Take what the source has queued for a paced read now (someone looks)."""
        if self.pacer is not None:
            self.pacer.flush()

    def pace_ok(self) -> bool:
        """Whether the source may be read in paced turns: nobody decodes it as it comes or
        waits for its next frame."""
        return not (self.continuous or self._waiters or self.decodes_itself)

    async def _next_wake(self, timeout: float) -> None:
        """Sleep until :meth:`wake` (a frame, or a failure) or ``timeout`` seconds."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.flush_source()  # what is queued may be the frame waited for; the rest comes live
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    def wake(self) -> None:
        """Wake everything waiting for data (a new frame, or a failure)."""
        if self._waiters:
            for fut in self._waiters:
                if not fut.done():
                    fut.set_result(None)
            self._waiters.clear()

    # ---------------------------------------------------------------- decoding (worker thread)
    def decode_latest(self, fresh: bool = False) -> Picture | None:
        """Decode what has not been decoded yet and return the newest picture.

        ``fresh`` (a snapshot request on a lazily decoded stream): when the decoder holds back
        newer pictures for reordering (B-frames), drain it so the newest frame received is
        shown, not the one ``has_b_frames`` frames older. Draining costs a decoder restart
        from the keyframe, which a lazy stream's next request (usually in a later GOP) pays
        anyway; continuously decoded streams are not drained, so their decoder never restarts.

        Blocking (CPU): call it from a worker thread. Concurrent callers are serialised.
        """
        with self._lock:
            with self._state:
                gop, gop_id, latest = self._gop, self._gop_id, self._latest
                epoch, codec_gen = self._epoch, self._codec_gen
            n = len(gop)
            if n == 0:
                return latest
            if self._dec_codec_gen != codec_gen:
                self._decoder = None
                self._dec_codec_gen = codec_gen
            if (
                latest is not None
                and self._seen == (gop_id, n)
                and (not fresh or self.continuous or latest.pts >= self._max_pts(gop, n))
            ):
                return latest  # no packet since, and nothing newer held back
            decoder = self._decoder
            if decoder is None:
                decoder = self._decoder = self._open_decoder()
                if decoder is None:
                    return latest
                self._dec_gop = -1
            if self._dec_gop != gop_id:
                start = 0
                self._dec_best = None
                self._dec_index = {}
            else:
                start = self._dec_pos
            best = self._dec_best
            index_of = self._dec_index
            self.decode_passes += 1
            # Catching up lazily, only the newest picture is wanted: frames no other frame
            # refers to (non-reference B-frames, ~40 % of an x264 stream) are skipped, except
            # the newest in decode and in display order. Continuous decoding keeps every frame
            # so that its output order (and reorder delay) stays that of the stream.
            skipping = not self.continuous and n - start > 1
            if skipping:
                wanted = (n - 1, max(range(start, n), key=lambda i: gop[i].pts))
            for i in range(start, n):
                pkt = gop[i]
                index_of[pkt.pts] = pkt.index
                if skipping:
                    decoder.skip_frame = "DEFAULT" if i in wanted else "NONREF"
                if not (
                    skipping
                    and i not in wanted
                    and self._h264_length
                    and not h264.is_reference(pkt.data, self._h264_length)
                ):
                    self.frames_decoded += 1
                for frame in self._decode(decoder, pkt):
                    best = self._better(best, frame, index_of, gop_id, gop)
            if skipping:
                decoder.skip_frame = "DEFAULT"
            self._dec_gop, self._dec_pos = gop_id, n
            if best is None or (fresh and not self.continuous and best.pts < self._max_pts(gop, n)):
                # The decoder holds back frames for reordering (B-frames): none of this GOP
                # yet, or a newer one than it gave. Drain it; it restarts from the keyframe.
                best = self._drain(decoder, best, index_of, gop_id, gop)
            self._dec_best = best
            with self._state:
                if self._epoch != epoch:  # reset while decoding: the picture is stale, and
                    self._decoder = self._dec_best = None  # reset left these to this decode
                    self._dec_index, self._dec_gop = {}, -1
                    return None
                self._seen = (gop_id, n)
                if best is not None and (
                    latest is None or latest.gop != gop_id or best.pts >= latest.pts
                ):
                    self._latest = best
                    self.width, self.height = best.frame.width, best.frame.height
                return self._latest

    def newest_packet(self) -> tuple[int, _Packet] | None:
        """``(GOP id, packet)`` of the newest frame received (codecs whose every frame is a
        picture of its own, such as MJPEG, can be served from it without decoding)."""
        with self._state:
            return (self._gop_id, self._gop[-1]) if self._gop else None

    def _past(self) -> list[tuple[int, list[_Packet]]]:
        """Every keyframe group held, oldest first (the current one a copy): under ``_state``."""
        groups = [(gop_id, packets) for gop_id, packets, _ in self.history.gops]
        groups.append((self._gop_id, self._gop[:]))
        return groups

    def _find(self, groups: list[tuple[int, list[_Packet]]], at_ms: int) -> tuple:
        found = history.find(groups, at_ms)
        if found is None:
            oldest = next((packets[0].arrival for _, packets in groups if packets), None)
            if oldest is None:
                raise OutOfHistory("no frame is held", -1)
            raise OutOfHistory(f"the oldest instant held is {oldest}", oldest)
        return found

    def instant_of(self, at_ms: int) -> tuple[int, int]:
        """``(GOP id, frame index)`` of the frame shown at ``at_ms``: cheap (no decode), for
        sharing one picture of the past between the requests for it. Raises
        :class:`OutOfHistory`."""
        if self.decodes_itself:
            latest = self._latest
            if latest is not None and latest.arrival <= at_ms:
                return latest.gop, latest.index
            oldest = latest.arrival if latest is not None else -1
            raise OutOfHistory(f"the oldest instant held is {oldest}", oldest)
        with self._state:
            gop_id, packets = self._find(self._past(), at_ms)
        return gop_id, packets[-1].index

    def picture_at(self, at_ms: int) -> Picture:
        """The picture shown at the instant ``at_ms`` (Unix ms): the newest frame in display
        order of those received by then, decoded from its keyframe by a decoder of its own.
        Raises :class:`OutOfHistory` when no frame of that instant is held.

        Blocking (CPU): call it from a worker thread."""
        if self.decodes_itself:  # WebRTC: pictures arrive decoded, only the newest is kept
            latest = self._latest
            if latest is not None and latest.arrival <= at_ms:
                return latest
            oldest = latest.arrival if latest is not None else -1
            raise OutOfHistory(f"the oldest instant held is {oldest}", oldest)
        with self._state:  # the packets, and the decoder they were received for
            groups = self._past()
            epoch, codec_gen = self._epoch, self._codec_gen
            decoder_name, extradata = self.decoder, self._decoder_extradata
        gop_id, packets = self._find(groups, at_ms)
        decoder = self._open_decoder(decoder_name, extradata)
        if decoder is None:
            raise OutOfHistory(self.codec_error or "no decoder", -1)
        wanted = max(range(len(packets)), key=lambda i: packets[i].pts)
        index_of = {pkt.pts: pkt.index for pkt in packets}
        best: Picture | None = None
        for i, pkt in enumerate(packets):
            # only the frame asked for and those it may refer to are needed
            decoder.skip_frame = "DEFAULT" if i == wanted else "NONREF"
            for frame in self._decode(decoder, pkt):
                best = self._better(best, frame, index_of, gop_id, packets)
        decoder.skip_frame = "DEFAULT"
        with contextlib.suppress(av.FFmpegError):
            for frame in decoder.decode(None):
                best = self._better(best, frame, index_of, gop_id, packets)
        if best is None or (self._epoch, self._codec_gen) != (epoch, codec_gen):
            raise OutOfHistory("the frame of that instant could not be decoded", -1)
        return best

    @staticmethod
    def _max_pts(gop: list[_Packet], n: int) -> int:
        return max(pkt.pts for pkt in gop[:n])

    def frames_behind(self, picture: Picture, received: int | None = None) -> int:
        """Freshness: how many of the first ``received`` frames (default: all so far) are newer,
        in display order, than ``picture``. 0: it shows the newest frame received by then."""
        return self.frames_behind_of(picture.gop, picture.pts, received)

    def frames_behind_of(self, gop_id: int, pts: int, received: int | None = None) -> int:
        """:meth:`frames_behind` of the picture at ``pts`` in keyframe group ``gop_id``."""
        gop, limit = self._gop, self.frames_in if received is None else received
        same_gop = gop_id == self._gop_id
        return sum(1 for pkt in gop if pkt.index < limit and (not same_gop or pkt.pts > pts))

    def _open_decoder(
        self, name: str | None = None, extradata: bytes | None = None
    ) -> av.CodecContext | None:
        """A decoder for the stream's codec (or ``name`` with ``extradata``, as read under
        ``_state`` together with the packets it will decode)."""
        if name is None:
            name, extradata = self.decoder, self._decoder_extradata
        if not name:
            return None  # set_codec logged it, codec_error says it
        try:
            ctx = av.CodecContext.create(name, "r")
        except (av.FFmpegError, ValueError) as exc:
            log.error("stream %s: no decoder %r: %s", self.stream_name, name, exc)
            return None
        if extradata:
            ctx.extradata = extradata
        ctx.thread_count = 1  # one core per stream at most; the pool spreads streams over cores
        ctx.thread_type = "NONE"
        return ctx

    def _decode(self, decoder: av.CodecContext, pkt: _Packet) -> list[av.VideoFrame]:
        packet = av.Packet(pkt.data)
        packet.pts = pkt.pts
        packet.dts = pkt.dts
        try:
            return decoder.decode(packet)
        except av.FFmpegError as exc:
            self.decode_errors += 1
            self.last_decode_error = str(exc)
            if self.decode_errors in (1, 10, 100) or self.decode_errors % 1000 == 0:
                log.warning(
                    "stream %s: decode error on frame %d (%d so far): %s",
                    self.stream_name,
                    pkt.index,
                    self.decode_errors,
                    exc,
                )
            return []

    def _drain(
        self,
        decoder: av.CodecContext,
        best: Picture | None,
        index_of: dict[int, int],
        gop_id: int,
        gop: list[_Packet],
    ) -> Picture | None:
        try:
            for frame in decoder.decode(None):
                best = self._better(best, frame, index_of, gop_id, gop)
        except av.FFmpegError:
            pass
        decoder.flush_buffers()
        self._dec_gop = -1
        return best

    @staticmethod
    def _better(
        best: Picture | None,
        frame: av.VideoFrame,
        index_of: dict[int, int],
        gop_id: int,
        packets: list[_Packet],
    ) -> Picture | None:
        pts = frame.pts if frame.pts is not None else -1
        index = index_of.get(pts, -1)
        if index < 0:
            return best  # a frame of an earlier GOP leaving the reorder buffer
        if best is None or best.gop != gop_id or pts >= best.pts:
            first = packets[0].index if packets else index
            arrival = packets[index - first].arrival if 0 <= index - first < len(packets) else -1
            return Picture(frame, index, pts, gop_id, arrival)
        return best
