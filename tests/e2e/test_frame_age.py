"""The truth about age: every image answer says when its frame came and how old it is; a
publisher that stalls while connected is stale; a picture of a past instant (?at=) comes from
the stream's history."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import time

import pytest

from tests.helpers.media import ffmpeg_counter, read_counter
from tests.helpers.server import find, wait_for

pytestmark = pytest.mark.e2e


def now_ms() -> int:
    return int(time.time() * 1000)


def get_png(srv, name: str, query: str = "") -> tuple[int, bytes, dict[str, str]]:
    return srv.request("GET", f"/streams/{name}/snapshot.png{query}")


def test_every_image_answer_carries_the_frame_time_and_its_age(make_server):
    srv = make_server()
    pub = ffmpeg_counter(srv.rtmp_url("age"), 640, 360)
    try:
        srv.wait_stream("age", frames=10)
        for ext in ("png", "jpg", "webp"):
            before = now_ms()
            status, _, headers = srv.request("GET", f"/streams/age/snapshot.{ext}")
            after = now_ms()
            assert status == 200
            stamp, age = int(headers["X-Frame-Timestamp"]), int(headers["X-Frame-Age-Ms"])
            # the frame arrived at most a frame interval or two before the request
            assert before - 300 <= stamp <= after, (before, stamp, after)
            assert 0 <= age <= after - stamp + 5
        status, _, headers = srv.request("POST", "/rest-api/stream/snapshot", {"streamName": "age"})
        assert status == 200 and int(headers["X-Frame-Age-Ms"]) < 1000
        assert abs(int(headers["X-Frame-Timestamp"]) - now_ms()) < 1500
        steps = server_timing(headers)  # made for it, or shared from the GET just before
        assert "total" in steps and (
            {"decode", "convert", "encode"} <= set(steps) or "shared" in steps
        )
    finally:
        pub.stop()


def server_timing(headers: dict[str, str]) -> dict[str, float]:
    """``Server-Timing`` as {name: ms} (0 for a step without a duration)."""
    steps = {}
    for entry in headers["Server-Timing"].split(","):
        name, *params = (p.strip() for p in entry.split(";"))
        durations = [float(p[4:]) for p in params if p.startswith("dur=")]
        steps[name] = durations[0] if durations else 0.0
    return steps


def test_server_timing_says_where_the_time_went(make_server):
    srv = make_server(snapshot={"coalesce_ms": 1000})
    pub = ffmpeg_counter(srv.rtmp_url("timed"), 640, 360)
    try:
        srv.wait_stream("timed", frames=10)
        status, _, headers = srv.request("GET", "/streams/timed/snapshot.jpg?width=320")
        assert status == 200
        first = server_timing(headers)
        assert {"decode", "convert", "encode", "total"} <= set(first), headers["Server-Timing"]
        assert first["encode"] > 0.1 and first["convert"] > 0.1  # a 320x180 JPEG: real work
        assert first["total"] >= first["decode"] + first["convert"] + first["encode"]
        assert 'desc="image encoding"' in headers["Server-Timing"]
        # asked again at once: the picture just made is shared, and says so (tried a few
        # times: a frame that arrives in between makes a new picture)
        for _ in range(5):
            status, _, headers = srv.request("GET", "/streams/timed/snapshot.jpg?width=320")
            again = server_timing(headers)
            if "shared" in again or "cached" in again:
                break
        assert status == 200 and ("shared" in again or "cached" in again), again
        assert "encode" not in again and again["total"] < first["total"] + 50
    finally:
        pub.stop()


def test_a_publisher_that_stalls_while_connected_is_stale(make_server):
    srv = make_server(streams={"stale_after_s": 1.5})
    pub = ffmpeg_counter(srv.rtmp_url("stall"), 640, 360)
    try:
        srv.wait_stream("stall", frames=10)
        assert get_png(srv, "stall")[0] == 200
        os.kill(pub.proc.pid, signal.SIGSTOP)  # the TCP connection stays open, no video comes
        time.sleep(2.5)
        status, body = srv.snapshot("stall")
        assert status == 500 and body["status"] == 500, body
        assert re.search(r"is stale: no video for \d+\.\d s", body["message"]), body
        assert "[streams] stale_after_s = 1.5" in body["message"]
        status, raw, headers = get_png(srv, "stall")
        assert status == 503 and headers["Retry-After"] == "2"
        assert "is stale" in json.loads(raw)["message"]
        status, raw, headers = srv.request("GET", "/streams/stall/stream.mjpeg")
        assert status == 503 and headers["Retry-After"] == "2" and b"is stale" in raw
        status, raw, headers = get_png(srv, "stall", "?stale=ok")  # the last picture anyway
        assert status == 200 and raw[:4] == b"\x89PNG"
        assert int(headers["X-Frame-Age-Ms"]) >= 2000
        info = find(srv, "stall")
        assert info["stale"] is True and info["lastFrameAgeMs"] >= 2000
        assert "no video for" in info["faults"]["stale"]
        metrics = srv.request("GET", "/metrics")[1].decode()
        assert 'streamsnap_stream_stale{stream="stall"} 1' in metrics
        assert "streamsnap_streams_stale 1" in metrics
        assert get_png(srv, "stall", "?stale=yes")[0] == 400
        os.kill(pub.proc.pid, signal.SIGCONT)
        wait_for(lambda: get_png(srv, "stall")[0] == 200, 10, "fresh again")
        assert find(srv, "stall")["stale"] is False
    finally:
        os.kill(pub.proc.pid, signal.SIGCONT)
        pub.stop()


def counter_at(srv, name: str, at: int) -> int:
    status, raw, _ = get_png(srv, name, f"?at={at}")
    assert status == 200, raw
    return read_counter(raw)


def test_a_picture_of_the_past_from_the_history(make_server):
    srv = make_server(
        streams={
            "history_s": 0,
            "per_stream": [
                {"name": "door*", "history_s": 6},
                {"name": "tiny", "history_s": 60, "history_max_bytes": 150_000},
            ],
        }
    )
    started = time.monotonic()
    door = ffmpeg_counter(srv.rtmp_url("door1"), 640, 360, gop=30)
    other = ffmpeg_counter(srv.rtmp_url("other"), 640, 360, gop=30)
    tiny = ffmpeg_counter(srv.rtmp_url("tiny"), 640, 360, gop=30)
    try:
        for name in ("door1", "other", "tiny"):
            srv.wait_stream(name, frames=30)
        # what the live stream showed at three instants, by the client's clock and the frame's
        seen = []
        for _ in range(3):
            asked = now_ms()
            status, raw, headers = get_png(srv, "door1")
            took = now_ms() - asked  # frames that came meanwhile may be the one shown
            assert status == 200
            seen.append((asked, took, int(headers["X-Frame-Timestamp"]), read_counter(raw)))
            time.sleep(0.7)
        time.sleep(1.0)  # the instants are in the past now, some GOPs ago
        for asked, took, stamp, shown in seen:
            assert counter_at(srv, "door1", stamp) == shown  # the frame of that instant
            # the frame on air at the client's instant: within two frames of what it was
            # shown, and of the frames that came while its request was being answered
            on_air = counter_at(srv, "door1", asked)
            assert shown - 2 - took * 30 // 1000 <= on_air <= shown, (on_air, shown, took)
            status, body, _ = srv.request(
                "POST", "/rest-api/stream/snapshot", {"streamName": "door1", "at": stamp}
            )
            assert status == 200
            assert read_counter(base64.b64decode(json.loads(body)["data"])) == shown
        # outside the history: 410 naming the oldest instant held (once the stream has run
        # longer than its history, so that the history, not the stream's start, is the limit)
        time.sleep(max(0.0, started + 9 - time.monotonic()))
        status, raw, _ = get_png(srv, "door1", f"?at={now_ms() - 60_000}")
        message = json.loads(raw)["message"]
        assert status == 410 and "history_s = 6" in message, message
        oldest = int(re.search(r"oldest instant held is (\d+)", message).group(1))
        # 6 s and the keyframe group it starts in (1 s at 30 fps; longer on a loaded machine)
        assert now_ms() - 12_000 < oldest < now_ms() - 4000, now_ms() - oldest
        # a stream without history holds only its current keyframe group
        status, raw, _ = get_png(srv, "other", f"?at={seen[0][2]}")
        assert status == 410 and "history_s = 0" in json.loads(raw)["message"]
        # bounded by bytes as well as seconds: 60 s asked, 150 kB kept
        metrics = srv.request("GET", "/metrics")[1].decode()
        kept = int(re.search(r'streamsnap_stream_history_bytes\{stream="tiny"\} (\d+)', metrics)[1])
        assert 0 < kept <= 150_000
        status, raw, _ = get_png(srv, "tiny", f"?at={now_ms() - 20_000}")
        assert status == 410
        # bad instants
        assert get_png(srv, "door1", "?at=yesterday")[0] == 400
        assert get_png(srv, "door1", f"?at={now_ms() + 60_000}")[0] == 400
        for bad in ("soon", [], {}, 1.5, True):
            status, body, _ = srv.request(
                "POST", "/rest-api/stream/snapshot", {"streamName": "door1", "at": bad}
            )
            assert status == 400 and "'at'" in json.loads(body)["message"], (bad, body)
    finally:
        for pub in (door, other, tiny):
            pub.stop()
