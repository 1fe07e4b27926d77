"""FLV video tags as RTMP carries them: codec, keyframe flag, timestamps and the payload.

Covers classic FLV (AVC, HEVC's unofficial id 12, Sorenson H.263) and Enhanced RTMP
(FourCC ``avc1``, ``hvc1``, ``av01``, ``vp09``), which OBS 30+ and FFmpeg 6.1+ send.
"""

from __future__ import annotations

from typing import NamedTuple

# FFmpeg decoder names by FLV codec id / Enhanced RTMP FourCC
CLASSIC_CODECS = {2: "flv", 7: "h264", 12: "hevc"}
FOURCC_CODECS = {b"avc1": "h264", b"hvc1": "hevc", b"av01": "av1", b"vp09": "vp9"}

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


def audio_codec(payload: bytes) -> str:
    if not payload:
        return ""
    fmt = payload[0] >> 4
    if fmt == 9 and len(payload) >= 5:  # Enhanced RTMP audio: FourCC follows
        return AUDIO_FOURCC.get(bytes(payload[1:5]), "")
    return AUDIO_CODECS.get(fmt, "")
