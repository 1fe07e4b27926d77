"""Every codec cameras and encoders send: FFmpeg publishing H.264, H.265, VP9 and AV1 over
(Enhanced) RTMP; GStreamer RTSP cameras sending H.265, MJPEG and MPEG-4 Part 2; a codec nothing
decodes, named at once."""

from __future__ import annotations

import base64
import io
import socket
import time

import pytest
from PIL import Image

from tests.helpers.media import FFMPEG, ListeningEncoder, ffmpeg_counter, gst_has, read_counter
from tests.helpers.rtmp_client import FlvTag, RtmpClient
from tests.helpers.server import find, wait_for

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png_of(body: dict) -> bytes:
    data = base64.b64decode(body["data"])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return data


@pytest.mark.parametrize(
    ("encoder", "codec"),
    # H.264 over RTMP: tests/e2e/test_rtmp_snapshot.py
    [("libx265", "hevc"), ("libvpx-vp9", "vp9"), ("libsvtav1", "av1")],
)
def test_rtmp_publisher_codecs_give_the_current_frame(server, encoder, codec):
    name = f"cam-{codec}"
    pub = ffmpeg_counter(server.rtmp_url(name), 640, 360, fps=15, gop=30, codec=encoder)
    try:
        info = server.wait_stream(name, frames=20, timeout=30)
        assert info["videoCodec"] == codec, info
        for _ in range(3):
            time.sleep(0.3)
            sent = pub.sent
            status, body = server.snapshot(name)
            assert status == 200, body
            png = png_of(body)
            assert Image.open(io.BytesIO(png)).size == (640, 360)
            shown = read_counter(png)
            # the encoder's own delay (lookahead, AV1's frame buffer) is all it may lag
            assert sent - 30 <= shown <= pub.sent, (codec, shown, sent)
        info = find(server, name)
        assert (info["width"], info["height"]) == (640, 360) and not info["faults"], info
    finally:
        pub.stop()


def rtsp_server(make_server, camera):
    """A server pulling ``camera`` as the configured stream "cam"."""
    return make_server(
        snapshot={"snapshot_taking_interval_ms": 8000},
        pull={
            "allowed_hosts": ["127.0.0.1"],
            "stall_timeout_s": 3.0,
            "connect_timeout_s": 3.0,
            "backoff_max_s": 1.0,
            "cameras": [{"name": "cam", "url": camera.url()}],
        },
    )


@pytest.mark.parametrize(
    ("codec", "decoder", "element"),
    [("h265", "hevc", "x265enc"), ("mjpeg", "mjpeg", "jpegenc")],
)
def test_rtsp_camera_codecs(make_server, make_camera, codec, decoder, element):
    if not gst_has(element):
        pytest.skip(f"GStreamer {element} not installed")
    cam = make_camera(codec=codec, size="640x360", fps=15)
    srv = rtsp_server(make_server, cam)
    t0 = time.monotonic()
    status, body = srv.snapshot("cam")
    assert status == 200, body
    assert Image.open(io.BytesIO(png_of(body))).size == (640, 360)
    print(f"RTSP {codec}: first snapshot after {time.monotonic() - t0:.2f} s")
    info = find(srv, "cam")
    assert info["videoCodec"] == decoder and info["status"] == "PUBLISHING", info
    if codec == "mjpeg":  # FLV cannot carry it: the pull reads NUT instead
        assert "reading the camera through NUT" in srv.log
    # the picture is live: the frame index moves on between two snapshots
    first = int(srv.request("GET", "/streams/cam/snapshot.png")[2]["X-Frame-Index"])
    time.sleep(0.5)
    second = int(srv.request("GET", "/streams/cam/snapshot.png")[2]["X-Frame-Index"])
    assert second > first


def test_mpeg4_part2_encoder_over_srt(make_server):
    """An encoder box sending MPEG-4 Part 2 in MPEG-TS over SRT (FFmpeg as the SRT listener)."""
    port = free_port()
    encoder = ListeningEncoder(
        [
            FFMPEG,
            "-hide_banner",
            "-loglevel",
            "warning",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=480x270:rate=15",
            "-c:v",
            "mpeg4",
            "-g",
            "15",
            "-bf",
            "2",
            "-q:v",
            "5",
            "-f",
            "mpegts",
            f"srt://127.0.0.1:{port}?mode=listener",
        ]
    )
    try:
        time.sleep(1)
        url = f"srt://127.0.0.1:{port}"
        srv = make_server(
            # FFmpeg probes MPEG-TS for up to 5 s, once for FLV and once more for NUT
            snapshot={"snapshot_taking_interval_ms": 20000},
            pull={"allowed_hosts": ["127.0.0.1"], "cameras": [{"name": "box", "url": url}]},
        )
        status, body = srv.snapshot("box")
        assert status == 200, body
        assert Image.open(io.BytesIO(png_of(body))).size == (480, 270)
        assert find(srv, "box")["videoCodec"] == "mpeg4"
        assert "reading the camera through NUT" in srv.log
        # FFmpeg was stopped as soon as it said FLV cannot carry MPEG-4, not after a stall
        assert "made no progress" not in srv.log
        first = int(srv.request("GET", "/streams/box/snapshot.png")[2]["X-Frame-Index"])
        time.sleep(0.5)
        assert int(srv.request("GET", "/streams/box/snapshot.png")[2]["X-Frame-Index"]) > first
    finally:
        encoder.stop()


def test_mjpeg_camera_jpeg_is_the_cameras_own_frame(make_server, make_camera):
    if not gst_has("jpegenc"):
        pytest.skip("GStreamer jpegenc not installed")
    cam = make_camera(codec="mjpeg", size="640x360", fps=15, quality=40)
    srv = rtsp_server(make_server, cam)
    assert srv.snapshot("cam")[0] == 200
    status, data, headers = srv.request("GET", "/streams/cam/snapshot.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    own = Image.open(io.BytesIO(data))
    assert own.size == (640, 360)
    # the camera's quantization tables (jpegenc quality 40), not those of an encode at 85
    reference = io.BytesIO()
    own.convert("RGB").save(reference, "JPEG", quality=40)
    assert own.quantization == Image.open(reference).quantization
    # a size or a quality of its own is decoded and encoded as usual
    status, data, _ = srv.request("GET", "/streams/cam/snapshot.jpg?width=320&quality=85")
    scaled = Image.open(io.BytesIO(data))
    assert status == 200 and scaled.size == (320, 180)
    assert scaled.quantization != own.quantization


def test_a_codec_nothing_decodes_is_named_at_once_not_a_timeout(make_server):
    srv = make_server(snapshot={"snapshot_taking_interval_ms": 5000})
    client = RtmpClient("127.0.0.1", srv.ports["rtmp"])
    try:
        client.publish("vvc")
        # Enhanced RTMP, FourCC "vvc1" (H.266): a sequence start, then coded keyframes
        client.send_tag(FlvTag(9, 0, b"\x90vvc1" + b"\x00" * 16))
        for i in range(5):
            client.send_tag(FlvTag(9, 40 * i, b"\x91vvc1" + bytes(200)))
        wait_for(lambda: (i := find(srv, "vvc")) and i["framesIn"] >= 5, 5, "frames")
        t0 = time.monotonic()
        status, body = srv.snapshot("vvc")
        assert time.monotonic() - t0 < 1.0  # not the 5 s snapshot wait
        assert status == 500 and "'vvc1'" in body["message"], body
        assert "timeout" not in body["message"].lower()
        info = find(srv, "vvc")
        assert "vvc1" in info["faults"]["codec"], info
        status, _, _ = srv.request("GET", "/streams/vvc/snapshot.png")
        assert status == 500
        assert "stream vvc: unsupported video codec 'vvc1'" in srv.log
    finally:
        client.close()
