"""The ``auto`` part: auto snapshots at rate 30 (every 30th frame written as PNG) of 720p30
RTMP streams, adding two streams a step, until the server skips a turn or misses a file: the
most streams it keeps up with and its CPU per stream."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from bench.common import log, make_clip, metrics_of, publish_spread, stop, tree_cpu_seconds
from tests.helpers.server import ServerProcess, write_config


def bench_auto(window: float, max_streams: int) -> dict:
    """Auto snapshots at rate 30 of 720p30 streams: the most streams kept up with."""
    clip = make_clip("1280x720")
    work = Path(tempfile.mkdtemp(prefix="bench-auto-"))
    config = write_config(
        work / "auto.toml",
        server={"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
        snapshot={
            "snapshot_auto_enabled": True,
            "snapshot_auto_dir": str(work / "snaps"),
            "snapshot_auto_rate": 30,
            "snapshot_auto_retention": 5,
        },
    )
    server = ServerProcess(config, cwd=work).start()
    runs = []
    try:
        n = 2
        while n <= max_streams:
            pubs = publish_spread(clip, [server.rtmp_url(f"auto{i}") for i in range(n)])
            try:
                for i in range(n):
                    server.wait_stream(f"auto{i}", timeout=30, frames=60)
                time.sleep(3)
                m0, c0, t0 = metrics_of(server), tree_cpu_seconds(server.proc.pid), time.monotonic()
                time.sleep(window)
                m1, c1, t1 = metrics_of(server), tree_cpu_seconds(server.proc.pid), time.monotonic()
            finally:
                for p in pubs:
                    stop(p)
            for i in range(n):
                server.wait_gone(f"auto{i}", timeout=30)
            frames = m1["streamsnap_stream_frames_total"] - m0["streamsnap_stream_frames_total"]
            written = (
                m1["streamsnap_auto_snapshots_written_total"]
                - m0["streamsnap_auto_snapshots_written_total"]
            )
            skipped = (
                m1["streamsnap_auto_snapshots_skipped_total"]
                - m0["streamsnap_auto_snapshots_skipped_total"]
            )
            cpu = (c1 - c0) / (t1 - t0) * 100
            expected = frames / 30
            kept_up = skipped == 0 and written >= expected - n
            runs.append(
                {
                    "streams": n,
                    "cpu_pct": cpu,
                    "frames": frames,
                    "written": written,
                    "expected": expected,
                    "skipped": skipped,
                    "kept_up": kept_up,
                }
            )
            log(
                f"auto-snapshot x{n}: {cpu:.0f} % CPU, {written:.0f}/{expected:.0f} files, "
                f"{skipped:.0f} skipped -> {'kept up' if kept_up else 'FELL BEHIND'}"
            )
            if not kept_up or cpu > 180:
                break
            n += 2
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"window_s": window, "runs": runs}
