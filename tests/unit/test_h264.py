"""The SPS rewrite that lets the decoder return each picture at once (core/h264.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsnap.core import h264
from tests.helpers.media import FFMPEG

ENCODES = {
    "veryfast": ("-preset", "veryfast"),
    "high-hrd-pyramid": (
        *("-preset", "slow", "-profile:v", "high"),
        "-x264-params",
        "b-pyramid=strict:nal-hrd=vbr:bitrate=900:vbv-maxrate=900:vbv-bufsize=900",
    ),
    "main-cqm": ("-preset", "fast", "-profile:v", "main"),
    "baseline": ("-preset", "ultrafast", "-profile:v", "baseline"),
}


@pytest.fixture(scope="module", params=sorted(ENCODES))
def clip(request, tmp_path_factory) -> tuple[str, Path]:
    path = tmp_path_factory.mktemp("h264") / f"{request.param}.mp4"
    subprocess.run(
        [
            *(FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30"),
            *("-frames:v", "45", "-c:v", "libx264", *ENCODES[request.param], "-g", "30"),
            *("-pix_fmt", "yuv420p", str(path)),
        ],
        check=True,
    )
    return request.param, path


def sps_of(extradata: bytes) -> bytes:
    size = int.from_bytes(extradata[6:8], "big")
    return extradata[8 : 8 + size]


def decode_all(path: Path, extradata: bytes) -> dict[int, np.ndarray]:
    """Every picture the decoder returns (pts -> luma), fed packet by packet."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        ctx = av.CodecContext.create("h264", "r")
        ctx.extradata = extradata
        out: dict[int, np.ndarray] = {}
        newest_in, behind = -1, []
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            newest_in = max(newest_in, packet.pts)
            for frame in ctx.decode(packet):
                out[frame.pts] = frame.to_ndarray(format="gray")
                behind.append(newest_in - frame.pts)
        return out, behind


def test_rewritten_sps_gives_the_newest_picture_at_once_and_the_same_pixels(clip):
    name, path = clip
    with av.open(str(path)) as container:
        extradata = container.streams.video[0].codec_context.extradata
    rewritten = h264.no_reorder_avcc(extradata)
    field = h264._reorder_field(h264._unescape(sps_of(extradata)[1:]))
    assert field is not None  # x264 writes the VUI bitstream restriction
    if field[2] == 0:  # no B-frames (baseline): nothing to change
        assert rewritten == extradata
        return
    new_field = h264._reorder_field(h264._unescape(sps_of(rewritten)[1:]))
    assert new_field == (field[0], 1, 0), (name, field, new_field)
    normal, held = decode_all(path, extradata)
    at_once, behind = decode_all(path, rewritten)
    assert max(held) > 0  # the stream's own SPS makes the decoder hold pictures back
    assert set(behind) == {0}  # every picture returned is the newest received
    assert len(at_once) < len(normal)  # only I/P pictures come out ...
    common = set(at_once) & set(normal)  # (the normal decode still holds its last ones)
    assert len(common) >= len(at_once) - 2
    for pts in common:  # ... pixel for pixel the same as a normal decode
        assert np.array_equal(at_once[pts], normal[pts]), (name, pts)


def test_in_band_sps_in_an_access_unit_is_rewritten(clip):
    _, path = clip
    with av.open(str(path)) as container:
        sps = sps_of(container.streams.video[0].codec_context.extradata)
    slice_nal = b"\x65\x88\x84\x00"
    unit = len(sps).to_bytes(4, "big") + sps + len(slice_nal).to_bytes(4, "big") + slice_nal
    out = h264.no_reorder_access_unit(unit)
    new_sps = h264.no_reorder_sps(sps)
    assert out == len(new_sps).to_bytes(4, "big") + new_sps + unit[4 + len(sps) :]
    aud = b"\x00\x00\x00\x02\x09\xf0"  # an SPS after another NAL, in a view of the frame
    framed = memoryview(b"\xaa" + aud + unit)[1:]
    assert h264.no_reorder_access_unit(framed) == aud + out
    # a keyframe whose SPS already says so comes back as it was given: not copied
    already = len(new_sps).to_bytes(4, "big") + new_sps + unit[4 + len(sps) :]
    view = memoryview(already)
    assert h264.no_reorder_access_unit(view) is view


def test_reference_flag_of_access_units():
    assert h264.is_reference(b"\x00\x00\x00\x02\x65\x88")  # IDR slice, nal_ref_idc 3
    assert not h264.is_reference(b"\x00\x00\x00\x02\x01\x9e")  # non-reference slice
    assert h264.is_reference(b"\x00\x00\x00\x01\x09\x00\x00\x00\x02\x41\x9a")  # AUD, then P


def test_emulation_prevention_round_trip():
    rbsp = bytes([0, 0, 0, 0, 0, 1, 0, 0, 2, 0, 0, 3, 7])
    escaped = h264._escape(rbsp)
    assert b"\x00\x00\x00" not in escaped and b"\x00\x00\x01" not in escaped
    assert h264._unescape(escaped) == rbsp


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_sps_is_left_alone_or_rewritten_never_raises(data):
    nal = bytes([0x67]) + data
    out = h264.no_reorder_sps(nal)
    assert out[:1] == b"\x67"
    h264.no_reorder_access_unit(len(nal).to_bytes(4, "big") + nal)
    h264.no_reorder_avcc(b"\x01\x64\x00\x1f\xff\xe1" + len(nal).to_bytes(2, "big") + nal)
