"""FLV: video tags as RTMP carries them, and FLV byte streams as FFmpeg writes them to a pipe.

Covers classic FLV (AVC, HEVC's unofficial id 12, Sorenson H.263) and Enhanced RTMP/FLV
(FourCC ``avc1``, ``hvc1``, ``av01``, ``vp09``), which OBS 30+ and FFmpeg 6.1+ send.
:func:`ingest_video` is the one path from a video tag into a stream's frame store, shared by
the RTMP server and the FFmpeg pulls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .app import App
    from .streams import Stream

log = logging.getLogger(__name__)

# FFmpeg decoder names by FLV codec id / Enhanced RTMP FourCC
CLASSIC_CODECS = {2: "flv", 7: "h264", 12: "hevc"}
FOURCC_CODECS = {b"avc1": "h264", b"hvc1": "hevc", b"av01": "av1", b"vp09": "vp9"}

# what the codecs FLV can name but nothing here decodes are, for the error a user sees
CLASSIC_NAMES = {1: "JPEG", 3: "Screen Video", 4: "VP6", 5: "VP6 with alpha", 6: "Screen Video 2"}

SEQUENCE_START, CODED_FRAMES, SEQUENCE_END, CODED_FRAMES_X = 0, 1, 2, 3
KEYFRAME, COMMAND_FRAME = 1, 5


class VideoTag(NamedTuple):
    codec: str  # FFmpeg decoder name, "" if unsupported
    kind: int  # SEQUENCE_START, CODED_FRAMES, SEQUENCE_END, or -1 (ignore)
    keyframe: bool
    cts: int  # composition time offset, ms (pts = dts + cts)
    data: bytes | memoryview


_IGNORE = VideoTag("", -1, False, 0, b"")


def _si24(b: bytes, pos: int) -> int:
    v = (b[pos] << 16) | (b[pos + 1] << 8) | b[pos + 2]
    return v - (1 << 24) if v & 0x800000 else v


def parse_video(payload: bytes | bytearray) -> VideoTag:
    """Parse one RTMP video message; malformed or unsupported tags come back with kind -1.
    The tag's data is a view into ``payload``: a frame is not copied again to drop its header."""
    if not payload:
        return _IGNORE
    body = memoryview(payload)
    b0 = payload[0]
    if b0 & 0x80:  # Enhanced RTMP
        frame_type = (b0 >> 4) & 0x07
        packet_type = b0 & 0x0F
        if len(payload) < 5 or frame_type == COMMAND_FRAME:
            return _IGNORE
        codec = FOURCC_CODECS.get(bytes(payload[1:5]), "")
        keyframe = frame_type == KEYFRAME
        if packet_type == CODED_FRAMES and codec in ("h264", "hevc"):
            if len(payload) < 8:
                return _IGNORE
            return VideoTag(codec, CODED_FRAMES, keyframe, _si24(payload, 5), body[8:])
        if packet_type in (CODED_FRAMES, CODED_FRAMES_X):
            return VideoTag(codec, CODED_FRAMES, keyframe, 0, body[5:])
        if packet_type in (SEQUENCE_START, SEQUENCE_END):
            return VideoTag(codec, packet_type, keyframe, 0, body[5:])
        return _IGNORE
    frame_type = b0 >> 4
    codec = CLASSIC_CODECS.get(b0 & 0x0F, "")
    if frame_type == COMMAND_FRAME:
        return _IGNORE
    keyframe = frame_type == KEYFRAME
    if codec in ("h264", "hevc"):
        if len(payload) < 5:
            return _IGNORE
        kind = payload[1]
        if kind not in (SEQUENCE_START, CODED_FRAMES, SEQUENCE_END):
            return _IGNORE
        return VideoTag(codec, kind, keyframe, _si24(payload, 2), body[5:])
    if codec:
        return VideoTag(codec, CODED_FRAMES, keyframe, 0, body[1:])
    return VideoTag("", CODED_FRAMES, keyframe, 0, b"")


AUDIO_CODECS = {
    0: "pcm",
    1: "adpcm",
    2: "mp3",
    3: "pcm",
    7: "pcm_alaw",
    8: "pcm_mulaw",
    10: "aac",
    11: "speex",
    14: "mp3",
}
AUDIO_FOURCC = {
    b"mp4a": "aac",
    b"Opus": "opus",
    b"fLaC": "flac",
    b".mp3": "mp3",
    b"ac-3": "ac3",
    b"ec-3": "eac3",
}


def describe_unsupported(payload: bytes) -> str:
    """Names the codec of a video tag that :func:`parse_video` does not support."""
    b0 = payload[0]
    if b0 & 0x80 and len(payload) >= 5:
        fourcc = bytes(payload[1:5]).decode("ascii", "backslashreplace")
        return f"unsupported video codec {fourcc!r} (Enhanced RTMP FourCC)"
    codec_id = b0 & 0x0F
    name = CLASSIC_NAMES.get(codec_id, "unknown")
    return f"unsupported video codec {name} (FLV codec id {codec_id})"


def audio_codec(payload: bytes) -> str:
    if not payload:
        return ""
    fmt = payload[0] >> 4
    if fmt == 9 and len(payload) >= 5:  # Enhanced RTMP audio: FourCC follows
        return AUDIO_FOURCC.get(bytes(payload[1:5]), "")
    return AUDIO_CODECS.get(fmt, "")


def ingest_video(app: App, stream: Stream, payload: bytes | bytearray, dts: int) -> None:
    """Put one FLV/RTMP video tag of ``stream`` into its frame store and tell the plugins."""
    tag = parse_video(payload)
    frames = stream.frames
    if tag.kind == SEQUENCE_START:
        if tag.codec:
            frames.set_codec(tag.codec, bytes(tag.data) or None)
    elif tag.kind == CODED_FRAMES:
        if not tag.codec:
            # named at once (REST, find), never left to look like a slow source
            frames.unsupported(
                describe_unsupported(payload) + "; snapshots need H.264, HEVC, AV1 or VP9"
            )
            frames.frames_in += 1
            return
        if tag.codec != frames.codec_name:
            frames.set_codec(tag.codec, None)  # codecs without a sequence header (FLV1)
        handle = frames.push_packet(tag.data, dts + tag.cts, tag.keyframe, dts)
        if handle is not None:
            app.frame(stream, handle)


class FlvError(ValueError):
    """The byte stream is not FLV."""


class TagParser:
    """An FLV byte stream cut into tags as it arrives (FFmpeg's output on a pipe):
    ``on_tag(tag type, timestamp ms, data)`` for every complete tag of what :meth:`feed` is
    given, in one pass over each read. :meth:`end` says whether the stream ended cleanly."""

    def __init__(self, on_tag: Callable[[int, int, bytes], None]) -> None:
        self.on_tag = on_tag
        self._buffer = bytearray()
        self._header_done = False

    def feed(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        pos = 0
        if not self._header_done:
            if len(buffer) < 9:
                return
            if buffer[:3] != b"FLV":
                raise FlvError(f"not an FLV stream (starts with {bytes(buffer[:3])!r})")
            offset = int.from_bytes(buffer[5:9], "big")
            if len(buffer) < offset + 4:  # the header and PreviousTagSize0
                return
            pos = offset + 4
            self._header_done = True
        end = len(buffer)
        on_tag = self.on_tag
        try:
            while end - pos >= 11:
                size = (buffer[pos + 1] << 16) | (buffer[pos + 2] << 8) | buffer[pos + 3]
                if end - pos < 15 + size:
                    break  # the rest of this tag is still in the pipe
                ts = (
                    (buffer[pos + 4] << 16)
                    | (buffer[pos + 5] << 8)
                    | buffer[pos + 6]
                    | (buffer[pos + 7] << 24)
                )
                kind = buffer[pos] & 0x1F
                data = bytes(buffer[pos + 11 : pos + 11 + size])
                pos += 15 + size  # the tag and its PreviousTagSize
                on_tag(kind, ts, data)
        finally:
            del buffer[:pos]  # what was delivered is gone, also when ``on_tag`` raised

    def end(self) -> None:
        """The stream ended: raises when it ended before its header or inside a tag."""
        left = len(self._buffer)
        if not self._header_done:
            raise FlvError("FLV stream ended before its header")
        if left:
            where = "header" if left < 11 else "body"
            raise FlvError(f"FLV stream cut inside a tag {where} ({left} bytes left)")
