"""RTMP publishers (FFmpeg, GStreamer rtmp2sink, librtmp) → REST snapshot of the current frame."""

from __future__ import annotations

import base64
import io
import json
import socket
import time

import pytest
from PIL import Image

from tests.helpers.media import (
    ffmpeg_counter,
    ffmpeg_testsrc,
    gst_counter,
    gst_has,
    gst_testsrc,
    read_counter,
)

pytestmark = pytest.mark.e2e


def decode_png(payload: dict) -> tuple[bytes, Image.Image]:
    png = base64.b64decode(payload["data"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return png, Image.open(io.BytesIO(png))


def assert_current(
    server, publisher, name: str, width: int, height: int, tries: int = 5, max_behind: int = 6
) -> list[int]:
    """Snapshots show the picture on air now: within ``max_behind`` frames of the newest sent."""
    behind = []
    for _ in range(tries):
        time.sleep(0.4)
        sent_before = publisher.sent
        status, body = server.snapshot(name)
        sent_after = publisher.sent
        assert status == 200, body
        png, img = decode_png(body)
        assert img.size == (width, height)
        shown = read_counter(png)
        assert shown <= sent_after, (shown, sent_after)
        behind.append(sent_before - shown)
    assert min(behind) <= max_behind, f"snapshot lags the publisher by {behind} frames"
    return behind


def test_ffmpeg_publish_and_snapshot_current_frame(server):
    pub = ffmpeg_counter(server.rtmp_url("cam1"))
    try:
        info = server.wait_stream("cam1", frames=10)
        assert info["mediaProvider"] == "RTMP" and info["appKey"] == "live"
        behind = assert_current(server, pub, "cam1", 1280, 720)
        print("ffmpeg frames behind:", behind)
        info = server.wait_stream("cam1")
        assert (info["width"], info["height"], info["videoCodec"]) == (1280, 720, "h264")
    finally:
        pub.stop()
    server.wait_gone("cam1")
    status, body = server.snapshot("cam1")
    assert status == 404 and body["message"] == "Stream not found"


def test_ffmpeg_with_bframes_and_audio(server):
    # libx264's default preset: B-frames, lookahead; and an AAC track beside the video
    pub = ffmpeg_testsrc(server.rtmp_url("bframes"), size="1280x720", extra=("-preset", "fast"))
    try:
        server.wait_stream("bframes", frames=30)
        frames = []
        for _ in range(3):
            status, body = server.snapshot("bframes")
            assert status == 200, body
            _, img = decode_png(body)
            assert img.size == (1280, 720)
            frames.append(img.convert("RGB").getpixel((640, 600)))
            time.sleep(0.5)
        info = server.wait_stream("bframes")
        assert info["hasAudio"] and info["audioCodec"] == "aac"
    finally:
        pub.stop()


def test_bframe_stream_snapshot_shows_the_newest_frame_received(make_server):
    # x264 "fast" reorders frames (B-frames): the decoder releases a picture only 2 frames
    # later, so a lazy snapshot drains it to show the newest frame the server holds.
    server = make_server(streams={"decode": "lazy"})
    pub = ffmpeg_counter(server.rtmp_url("fresh"), extra=("-preset", "fast", "-bf", "3"))
    try:
        server.wait_stream("fresh", frames=10)
        shown = []
        for _ in range(5):
            time.sleep(0.3)
            status, png, headers = server.request("GET", "/streams/fresh/snapshot.png")
            assert status == 200, png
            # the newest frame received when asked (without the drain: the reorder delay, 2)
            assert headers["X-Frames-Behind"] == "0", headers
            shown.append(read_counter(png))
            assert shown[-1] <= pub.sent  # x264's lookahead holds ~40 frames: no lower bound
        assert shown == sorted(shown) and len(set(shown)) == len(shown), shown
    finally:
        pub.stop()


@pytest.mark.skipif(not gst_has("rtmp2sink"), reason="GStreamer rtmp2sink not installed")
def test_gstreamer_rtmp2sink_current_frame(server):
    pub = gst_counter(server.rtmp_url("gst2"), sink="rtmp2sink", width=1280, height=720)
    try:
        server.wait_stream("gst2", timeout=20, frames=10)
        print(
            "rtmp2sink frames behind:",
            assert_current(server, pub, "gst2", 1280, 720, max_behind=10),
        )
    finally:
        pub.stop()


@pytest.mark.skipif(not gst_has("rtmpsink"), reason="GStreamer rtmpsink (librtmp) not installed")
def test_gstreamer_librtmp_rtmpsink(server):
    pub = gst_counter(server.rtmp_url("librtmp"), sink="rtmpsink", width=640, height=360)
    try:
        server.wait_stream("librtmp", timeout=20, frames=10)
        print(
            "librtmp frames behind:",
            assert_current(server, pub, "librtmp", 640, 360, max_behind=10),
        )
    finally:
        pub.stop()


@pytest.mark.skipif(not gst_has("rtmp2sink"), reason="GStreamer not installed")
def test_many_publishers_at_once(server):
    pubs = [
        ffmpeg_testsrc(server.rtmp_url(f"multi{i}"), size="320x240", audio=i % 2 == 0)
        for i in range(3)
    ]
    pubs.append(gst_testsrc(server.rtmp_url("multi3")))
    try:
        for i in range(4):
            server.wait_stream(f"multi{i}", timeout=20, frames=5)
        status, raw, _ = server.request("POST", "/rest-api/stream/find_all")
        names = {s["name"] for s in json.loads(raw)}
        assert {f"multi{i}" for i in range(4)} <= names
        ids = {s["mediaSessionId"] for s in json.loads(raw)}
        assert len(ids) == len(names)
        for i, size in enumerate([(320, 240)] * 3 + [(640, 360)]):
            status, body = server.snapshot(f"multi{i}")
            assert status == 200, body
            assert decode_png(body)[1].size == size
    finally:
        for p in pubs:
            p.stop()


def test_second_publisher_of_live_name_is_refused(server):
    first = ffmpeg_counter(server.rtmp_url("dup"), width=640, height=360)
    try:
        info = server.wait_stream("dup", frames=5)
        second = ffmpeg_testsrc(server.rtmp_url("dup"), size="320x240")
        second.proc.wait(15)
        assert second.proc.returncode != 0
        server.wait_log(r"publish of 'dup' refused")
        # the first publisher is unharmed: same session, still the current picture
        again = server.wait_stream("dup")
        assert again["mediaSessionId"] == info["mediaSessionId"]
        assert_current(server, first, "dup", 640, 360, tries=2)
    finally:
        first.stop()


def test_new_media_session_id_per_publish(server):
    ids = []
    for _ in range(2):
        pub = ffmpeg_testsrc(server.rtmp_url("again"), size="320x240")
        try:
            ids.append(server.wait_stream("again", frames=2)["mediaSessionId"])
        finally:
            pub.stop()
        server.wait_gone("again")
    assert ids[0] != ids[1]


def test_snapshot_waits_then_times_out_without_video(make_server):
    srv = make_server(snapshot={"snapshot_taking_interval_ms": 1500, "snapshot_taking_attempts": 5})
    pub = ffmpeg_testsrc(srv.rtmp_url("audioonly"), video=False)
    try:
        srv.wait_stream("audioonly", frames=0)
        t0 = time.monotonic()
        status, body = srv.snapshot("audioonly")
        elapsed = time.monotonic() - t0
        assert status == 500
        assert body["message"] == "Snapshot response timeout"
        assert set(body) == {
            "exception",
            "reason",
            "path",
            "error",
            "message",
            "timestamp",
            "status",
        }
        assert body["status"] == 500 and body["path"] == "/rest-api/stream/snapshot"
        assert body["error"] == "Internal Server Error"
        assert 1.4 <= elapsed < 5, elapsed
    finally:
        pub.stop()


def test_terminate_ends_publisher(server):
    pub = ffmpeg_testsrc(server.rtmp_url("term"), size="320x240")
    try:
        info = server.wait_stream("term", frames=2)
        status, _, _ = server.request(
            "POST", "/rest-api/stream/terminate", {"mediaSessionId": info["mediaSessionId"]}
        )
        assert status == 200
        server.wait_gone("term")
        pub.proc.wait(15)  # the encoder sees its connection closed
        status, _, _ = server.request("POST", "/rest-api/stream/terminate", {"name": "term"})
        assert status == 404
    finally:
        pub.stop()


def test_image_get_formats_and_scaling(server):
    pub = ffmpeg_testsrc(server.rtmp_url("img"), size="1280x720")
    try:
        server.wait_stream("img", frames=5)
        for path, fmt, size in (
            ("/streams/img/snapshot.png", "PNG", (1280, 720)),
            ("/streams/img/snapshot.jpg?width=640", "JPEG", (640, 360)),
            ("/streams/img/snapshot.webp?height=180&quality=50", "WEBP", (320, 180)),
        ):
            status, raw, headers = server.request("GET", path)
            assert status == 200, raw[:300]
            img = Image.open(io.BytesIO(raw))
            assert (img.format, img.size) == (fmt, size)
            assert headers["Cache-Control"] == "no-store"
        status, raw, _ = server.request("GET", "/streams/img/snapshot.png?width=abc")
        assert status == 400 and "width" in json.loads(raw)["message"]
        status, raw, _ = server.request("GET", "/streams/nothere/snapshot.png")
        assert status == 404
    finally:
        pub.stop()


def test_garbage_and_half_handshakes_do_not_disturb_publishers(make_server):
    srv = make_server(rtmp={"handshake_timeout_s": 1.0})
    pub = ffmpeg_counter(srv.rtmp_url("steady"), width=640, height=360)
    try:
        srv.wait_stream("steady", frames=5)
        port = srv.ports["rtmp"]
        # an HTTP request on the RTMP port
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100) == b""  # closed at once
        # random bytes after a valid version byte, and a handshake that stops half way
        half = socket.create_connection(("127.0.0.1", port), timeout=5)
        half.sendall(b"\x03" + bytes(700))
        junk = socket.create_connection(("127.0.0.1", port), timeout=5)
        junk.sendall(b"\x03" + bytes(1536))
        junk.recv(3073)
        junk.sendall(bytes(1536) + b"\xff" * 4000)  # C2, then chunks that make no sense
        srv.wait_log(r"not an RTMP client")
        srv.wait_log(r"handshake not completed within 1 s", timeout=5)
        half.close()
        junk.close()
        assert_current(srv, pub, "steady", 640, 360, tries=2)
    finally:
        pub.stop()


def test_adaptive_decoding_follows_snapshot_demand(make_server):
    srv = make_server(streams={"decode_warm_s": 2.0, "decode_demand_per_s": 1.0})
    pub = ffmpeg_counter(srv.rtmp_url("hot"), width=640, height=360)
    try:
        assert srv.wait_stream("hot", frames=10)["decode"] == "lazy"  # nobody looks: packets
        deadline = time.monotonic() + 20
        info = {}
        while time.monotonic() < deadline:  # two snapshots a second
            assert srv.snapshot("hot")[0] == 200
            time.sleep(0.5)
            info = srv.wait_stream("hot")
            if info["decode"] == "continuous":
                break
        assert info["decode"] == "continuous", info
        # decoded as frames arrive: a snapshot now only encodes, and shows the newest frame
        behind = assert_current(srv, pub, "hot", 640, 360, tries=3)
        print("continuous decoding, frames behind:", behind)
        srv.wait_log(r"stream hot: continuous decoding")
        deadline = time.monotonic() + 30  # demand stops: back to lazy after the warm period
        while time.monotonic() < deadline and srv.wait_stream("hot")["decode"] != "lazy":
            time.sleep(0.5)
        assert srv.wait_stream("hot")["decode"] == "lazy"
    finally:
        pub.stop()
