"""REST input errors: precise answers in the WCS error shape, and the server keeps serving."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.e2e

WCS_FIELDS = {"exception", "reason", "path", "error", "message", "timestamp", "status"}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"streamName": ', 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (b"[]", 400, "JSON object"),
        (b"{}", 400, "missing required field 'streamName'"),
        (b'{"streamName": 5}', 400, "must be a non-empty string"),
        (b'{"streamName": ""}', 400, "must be a non-empty string"),
        (b'{"streamName": "../../etc/passwd"}', 404, "Stream not found"),
    ],
)
def test_snapshot_bad_input(server, body, status, message):
    code, raw, headers = server.request("POST", "/rest-api/stream/snapshot", body)
    assert code == status
    assert headers["Content-Type"].startswith("application/json")
    payload = json.loads(raw)
    assert set(payload) == WCS_FIELDS
    assert message in payload["message"]
    assert payload["status"] == status
    assert payload["path"] == "/rest-api/stream/snapshot"


def test_ten_megabyte_body_is_refused(server):
    body = b'{"streamName": "' + b"a" * (10 << 20) + b'"}'
    code, raw, _ = server.request("POST", "/rest-api/stream/snapshot", body)
    assert code == 413
    assert "exceeds" in json.loads(raw)["message"]
    code, raw, _ = server.request("GET", "/healthz")
    assert code == 200 and json.loads(raw)["status"] == "ok"


def test_find_and_find_all_when_empty(server):
    for path in ("/rest-api/stream/find_all", "/rest-api/stream/find"):
        code, raw, _ = server.request("POST", path, b"{}")
        assert code == 404 and json.loads(raw)["message"] == "Stream not found"
    code, raw, _ = server.request("GET", "/rest-api/stream/find_all")
    assert code == 405 and json.loads(raw)["status"] == 405  # POST only
    code, raw, _ = server.request("POST", "/rest-api/stream/find", {"published": "yes"})
    assert code == 400 and "published" in json.loads(raw)["message"]


def test_metrics_in_prometheus_text_format(server):
    from tests.helpers.media import ffmpeg_testsrc

    pub = ffmpeg_testsrc(server.rtmp_url("metered"), size="320x240")
    try:
        server.wait_stream("metered", frames=5)
        assert server.snapshot("metered")[0] == 200
        status, raw, headers = server.request("GET", "/metrics")
    finally:
        pub.stop()
    text = raw.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert "# TYPE streamsnap_streams gauge" in text
    assert 'streamsnap_streams{protocol="rtmp"} 1' in text
    assert 'streamsnap_stream_frames_total{stream="metered",protocol="rtmp"}' in text
    assert "streamsnap_snapshot_requests_total 1" in text
    assert 'streamsnap_snapshot_outcomes_total{outcome="ok"} 1' in text
    assert 'streamsnap_snapshot_outcomes_total{outcome="timeout"} 0' in text
    assert "# TYPE streamsnap_snapshot_encode_seconds histogram" in text
    assert "streamsnap_snapshot_encode_seconds_count 1" in text
    assert 'streamsnap_snapshot_frames_behind_bucket{le="+Inf"} 1' in text
    assert 'streamsnap_decode_passes_total{stream="metered"}' in text
    samples = dict(
        line.split(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert float(samples["process_cpu_seconds_total"]) > 0.1
    assert float(samples["process_resident_memory_bytes"]) > 20e6
    assert 5 < float(samples["process_open_fds"]) < float(samples["process_max_fds"])
    assert float(samples["process_threads"]) >= 2
    assert abs(float(samples["process_start_time_seconds"]) - time.time()) < 600
    assert samples["streamsnap_children"] == "0"  # RTMP needs no FFmpeg child
    # the allocators' own figures: glibc's heap in use (codecs, pictures) and free, Python's
    in_use, free = (
        float(samples["streamsnap_heap_in_use_bytes"]),
        samples["streamsnap_heap_free_bytes"],
    )
    assert 5e6 < in_use < float(samples["process_resident_memory_bytes"]) and float(free) >= 0
    assert float(samples["streamsnap_python_allocated_blocks"]) > 50_000
    assert float(samples["streamsnap_heap_trims_total"]) >= 0  # once a minute: none yet
    assert 0 < float(samples["streamsnap_metrics_read_seconds"]) < 5  # read off the loop
    for line in text.splitlines():  # every sample line is NAME{labels} VALUE
        if line and not line.startswith("#"):
            assert __import__("re").fullmatch(r"[a-z_]+(\{.*\})? [0-9.e+-]+", line), line
