"""FLV: video tags as RTMP carries them, and FLV byte streams as FFmpeg writes them to a pipe.

Covers classic FLV (AVC, HEVC's unofficial id 12, Sorenson H.263) and Enhanced RTMP/FLV
(FourCC ``avc1``, ``hvc1``, ``av01``, ``vp09``), which OBS 30+ and FFmpeg 6.1+ send.
:func:`ingest_video` is the one path from a video tag into a stream's frame store, shared by
the RTMP server and the FFmpeg pulls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
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
    data: bytes


_IGNORE = VideoTag("", -1, False, 0, b"")


def _si24(b: bytes, pos: int) -> int:
    v = (b[pos] << 16) | (b[pos + 1] << 8) | b[pos + 2]
    return v - (1 << 24) if v & 0x800000 else v


def parse_video(payload: bytes) -> VideoTag:
    """Parse one RTMP video message; malformed or unsupported tags come back with kind -1."""
    if not payload:
        return _IGNORE
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
            return VideoTag(codec, CODED_FRAMES, keyframe, _si24(payload, 5), payload[8:])
        if packet_type in (CODED_FRAMES, CODED_FRAMES_X):
            return VideoTag(codec, CODED_FRAMES, keyframe, 0, payload[5:])
        if packet_type in (SEQUENCE_START, SEQUENCE_END):
            return VideoTag(codec, packet_type, keyframe, 0, payload[5:])
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
        return VideoTag(codec, kind, keyframe, _si24(payload, 2), payload[5:])
    if codec:
        return VideoTag(codec, CODED_FRAMES, keyframe, 0, payload[1:])
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


def ingest_video(app: App, stream: Stream, payload: bytes, dts: int) -> None:
    """Put one FLV/RTMP video tag of ``stream`` into its frame store and tell the plugins."""
    tag = parse_video(payload)
    frames = stream.frames
    if tag.kind == SEQUENCE_START:
        if tag.codec:
            frames.set_codec(tag.codec, tag.data or None)
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


MAX_TAG_BYTES = 16 << 20


async def read_tags(reader: asyncio.StreamReader) -> AsyncIterator[tuple[int, int, bytes]]:
    """Yield ``(tag type, timestamp ms, data)`` from an FLV byte stream until it ends."""
    header = await reader.readexactly(9)
    if header[:3] != b"FLV":
        raise FlvError(f"not an FLV stream (starts with {header[:3]!r})")
    offset = int.from_bytes(header[5:9], "big")
    if offset > 9:
        await reader.readexactly(offset - 9)
    await reader.readexactly(4)  # PreviousTagSize0
    while True:
        try:
            head = await reader.readexactly(11)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise FlvError("FLV stream cut inside a tag header") from None
            return
        size = int.from_bytes(head[1:4], "big")
        if size > MAX_TAG_BYTES:
            raise FlvError(f"FLV tag of {size} bytes")
        ts = int.from_bytes(head[4:7], "big") | (head[7] << 24)
        body = await reader.readexactly(size + 4)
        yield head[0] & 0x1F, ts, body[:size]
