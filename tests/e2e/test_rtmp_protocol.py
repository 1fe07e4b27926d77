"""RTMP at the protocol level: what encoders do that a server must tolerate, and what it refuses.

The media are real (FFmpeg-encoded FLV tags); the client sends them the way a test needs.
"""

from __future__ import annotations

import io
import threading
import time

import pytest
from PIL import Image

from streamsnap.plugins.rtmp import amf0
from tests.helpers.rtmp_client import RtmpClient, make_flv

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tags(tmp_path_factory):
    return make_flv(tmp_path_factory.mktemp("flv") / "c.flv", size="640x360", seconds=3, gop=30)


def client_for(server) -> RtmpClient:
    return RtmpClient("127.0.0.1", server.ports["rtmp"])


def png_size(server, name: str) -> tuple[int, int]:
    status, raw, _ = server.request("GET", f"/streams/{name}/snapshot.png")
    assert status == 200, raw[:300]
    return Image.open(io.BytesIO(raw)).size


def test_snapshot_waits_for_the_first_keyframe_then_answers(make_server, tags):
    srv = make_server(snapshot={"snapshot_taking_interval_ms": 5000})
    c = client_for(srv)
    try:
        c.publish("late")
        video = [t for t in tags if t.type_id == 9]
        c.send_tag(video[0])  # the sequence header, no picture yet
        result: dict = {}

        def ask() -> None:
            t0 = time.monotonic()
            result["status"], result["body"] = srv.snapshot("late")
            result["elapsed"] = time.monotonic() - t0

        asker = threading.Thread(target=ask)
        asker.start()
        time.sleep(1.0)
        assert asker.is_alive()  # still waiting: nothing decodable
        for tag in video[1:4]:  # the keyframe arrives
            c.send_tag(tag)
        asker.join(10)
        assert result["status"] == 200, result
        assert 0.9 <= result["elapsed"] < 4
    finally:
        c.close()


def test_encoder_quirks_are_tolerated(server, tags):
    """Chunk-size changes mid-stream, AMF3 commands, metadata, audio, timestamps that jump
    backwards (librtmp), and an Enhanced RTMP (FourCC) header all keep the stream working."""
    c = client_for(server)
    try:
        c.publish("quirks")
        meta = amf0.encode(
            "@setDataFrame", "onMetaData", {"width": 640.0, "height": 360.0, "encoder": "test"}
        )
        c.send(4, 18, c.stream_id, 0, meta)
        c.send(3, 17, 0, 0, b"\x00" + amf0.encode("getStreamLength", 0.0, None, "quirks"))
        sizes = [128, 4096, 1000, 60000]
        for i, tag in enumerate(tags[:60]):
            if i % 15 == 0:
                c.set_chunk_size(sizes[(i // 15) % len(sizes)])
            ts = tag.timestamp if i % 7 else max(0, tag.timestamp - 500)  # jumps back
            c.send_tag(tag, timestamp=ts)
        # until every frame sent is in (a burst, then nothing: stale after stale_after_s)
        deadline, last = time.monotonic() + 5, -1
        while time.monotonic() < deadline:
            info = server.wait_stream("quirks")
            if info["framesIn"] >= 50 or info["framesIn"] == last:
                break
            last = info["framesIn"]
            time.sleep(0.3)
        assert png_size(server, "quirks") == (640, 360)
        assert info["hasAudio"] and info["audioCodec"] == "aac"
    finally:
        c.close()
    server.wait_gone("quirks")


def test_enhanced_rtmp_fourcc_video(server, tags):
    """Enhanced RTMP: the same H.264 with an 'avc1' FourCC header (OBS 30+, FFmpeg 6.1+)."""
    c = client_for(server)
    try:
        c.publish("ertmp")
        for tag in [t for t in tags if t.type_id == 9][:40]:
            frame_type = tag.data[0] >> 4
            kind = tag.data[1]
            if kind == 2:
                continue
            packet_type = 0 if kind == 0 else 1
            header = bytes([0x80 | (frame_type << 4) | packet_type]) + b"avc1"
            body = tag.data[5:] if kind == 0 else tag.data[2:5] + tag.data[5:]
            c.send(6, 9, c.stream_id, tag.timestamp, header + body)
        server.wait_stream("ertmp", frames=20)
        assert png_size(server, "ertmp") == (640, 360)
    finally:
        c.close()


def test_publisher_cut_mid_message_ends_only_its_stream(server, tags):
    steady = client_for(server)
    cut = client_for(server)
    try:
        steady.publish("steady2")
        for tag in tags[:20]:
            steady.send_tag(tag)
        cut.publish("cut")
        for tag in tags[:10]:
            cut.send_tag(tag)
        big = next(t for t in tags if t.type_id == 9 and len(t.data) > 2000)
        from streamsnap.plugins.rtmp.chunks import encode_message

        wire = encode_message(6, 9, cut.stream_id, 400, big.data, cut.chunk_size)
        cut.sock.sendall(wire[: len(wire) // 2])  # then the TCP connection is reset
        cut.sock.setsockopt(
            __import__("socket").SOL_SOCKET,
            __import__("socket").SO_LINGER,
            b"\x01\x00\x00\x00\x00\x00\x00\x00",
        )
        cut.close()
        server.wait_gone("cut")
        server.wait_log(r"stream cut: unpublished")
        assert png_size(server, "steady2") == (640, 360)
    finally:
        steady.close()


def test_publish_refusals(server, tags):
    first = client_for(server)
    second = client_for(server)
    bad = client_for(server)
    try:
        assert "NetStream.Publish.Start" in repr(first.publish("taken"))
        reply = repr(second.publish("taken"))
        assert "NetStream.Publish.BadName" in reply and "already in use" in reply
        reply = repr(bad.publish("bad\x01name"))
        assert "NetStream.Publish.BadName" in reply
        for tag in tags[:30]:
            first.send_tag(tag)
        server.wait_stream("taken", frames=5)
    finally:
        for c in (first, second, bad):
            c.close()


def test_query_string_is_not_part_of_the_name(server, tags):
    c = client_for(server)
    try:
        c.publish("keyed?key=secret123")
        for tag in tags[:15]:
            c.send_tag(tag)
        info = server.wait_stream("keyed", frames=2)
        assert info["name"] == "keyed"
        assert "secret123" not in server.log
    finally:
        c.close()
