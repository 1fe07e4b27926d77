"""The ``capacity`` part: how many 720p RTSP cameras one server holds, each snapshotted every
10 s, with the adaptive policy and decoding every frame (what Frigate does, the anchor): the
latency, the CPU of the server and its FFmpeg children and the machine's load at each step,
the criterion a step holds by (``holds``), and the plot of latency and CPU against cameras
(``bench/capacity.png``)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import (
    ROOT,
    SimCameras,
    camera_h264,
    log,
    percentile,
    scheduled,
    threaded_rest_snapshot,
    tree_cpu_seconds,
    tree_pss_mib,
)
from tests.helpers.server import ServerProcess, write_config

PLOT = ROOT / "bench" / "capacity.png"


def machine_jiffies() -> tuple[float, float]:
    """(busy, total) CPU time of the whole machine since boot, from /proc/stat."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])
    return total - fields[3] - fields[4], total


SATURATED_PCT = 95  # machine busy from here on: readings are capped by the CPU that is left


def holds(run: dict) -> bool:
    """A capacity step holds: every snapshot answered, p99 <= 250 ms, streamsnap (server and
    its FFmpeg children) leaves >= 30 % of the machine, and the machine was not saturated (the
    camera simulator shares it: when it is, streamsnap's share is capped, not sufficient)."""
    return bool(
        run["n"]
        and not run["failed"]
        and run["p99_ms"] <= 250
        and run["cpu_left_pct"] >= 30
        and run["machine_busy_pct"] < SATURATED_PCT
    )


def bench_capacity(counts: list[int], window: float, interval: float = 10.0) -> dict:
    """720p RTSP cameras pulled at once, each snapshotted every ``interval`` s: latency and CPU
    against the number of cameras, for the adaptive policy and for decoding every frame (what
    Frigate does), until a step misses p99 <= 250 ms or leaves less than 30 % of the CPU."""
    cores = os.cpu_count() or 1
    # one process replays a pre-encoded camera clip to every session (bench/camera_sim.py): no
    # encoder, so the simulator is not the limit. Encoded as IP cameras encode: main profile,
    # CABAC, deblocking, no B-frames, GOP 2 s, a busy scene (noise) at 2.5 Mbit/s
    cam = SimCameras(camera_h264("1280x720"))
    out: dict = {
        "camera": "bench/camera_sim.py replaying x264 veryfast main profile (CABAC, deblocking, "
        "no B-frames, as IP cameras encode) 720p30 at 2.5 Mbit/s of a busy scene (noise), "
        "keyframe every 60 frames",
        "interval_s": interval,
        "window_s": window,
        "modes": {},
    }
    try:
        for mode in ("adaptive", "continuous"):
            work = Path(tempfile.mkdtemp(prefix=f"bench-capacity-{mode}-"))
            config = write_config(
                work / "capacity.toml",
                server={"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
                rtsp={"idle_timeout_s": 3600, "allowed_hosts": ["127.0.0.1"]},
                streams={"decode": mode},
            )
            server = ServerProcess(config, cwd=work).start()
            pid = server.proc.pid
            runs: list[dict] = []
            urls: list[str] = []
            try:
                for n in counts:
                    while len(urls) < n:  # find starts a pull without asking for a picture
                        urls.append(cam.url(f"cap{len(urls)}"))
                        server.request("POST", "/rest-api/stream/find", {"name": urls[-1]})
                    deadline = time.monotonic() + 60
                    for url in urls:
                        while time.monotonic() < deadline:
                            status, raw, _ = server.request(
                                "POST", "/rest-api/stream/find", {"name": url}
                            )
                            if status == 200 and json.loads(raw)[0]["framesIn"] > 0:
                                break
                            time.sleep(0.2)
                    time.sleep(5)
                    c0, (b0, t0) = tree_cpu_seconds(pid), machine_jiffies()
                    w0 = time.monotonic()
                    answers, failed = scheduled(
                        threaded_rest_snapshot(server), urls, interval, window
                    )
                    lat = [a["ms"] for a in answers]
                    wall = time.monotonic() - w0
                    c1, (b1, t1) = tree_cpu_seconds(pid), machine_jiffies()
                    cpu = (c1 - c0) / wall * 100  # % of one core: server + FFmpeg children
                    left = 100 - cpu / cores
                    run = {
                        "cameras": n,
                        "p50_ms": statistics.median(lat) if lat else None,
                        "p99_ms": percentile(lat, 99) if lat else None,
                        "n": len(lat),
                        "failed": failed,
                        "cpu_pct": cpu,
                        "cpu_left_pct": left,
                        "machine_busy_pct": (b1 - b0) / (t1 - t0) * 100,
                        "mem_mib": tree_pss_mib(pid),
                    }
                    run["held"] = holds(run)
                    runs.append(run)
                    log(
                        f"capacity {mode} x{n}: p50 {run['p50_ms'] or 0:.0f} ms, p99 "
                        f"{run['p99_ms'] or 0:.0f} ms, {failed} failed, streamsnap {cpu:.0f} % "
                        f"of a core ({left:.0f} % of the machine left; machine busy "
                        f"{run['machine_busy_pct']:.0f} %) -> {'held' if run['held'] else 'MISSED'}"
                    )
                    if not run["held"]:
                        break
            finally:
                server.stop()
                shutil.rmtree(work, ignore_errors=True)
            out["modes"][mode] = runs
    finally:
        cam.stop()
    return out


def capacity_plot(cap: dict, path: Path) -> bool:
    """Latency percentiles and CPU per camera against the number of cameras (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plot (pip install -e '.[bench]')")
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"adaptive": "tab:blue", "continuous": "tab:red"}
    labels = {"adaptive": "streamsnap adaptive", "continuous": "decode every frame"}
    for mode, runs in cap["modes"].items():
        xs = [r["cameras"] for r in runs if r["p50_ms"] is not None]
        runs = [r for r in runs if r["p50_ms"] is not None]
        color = styles.get(mode, "gray")
        ax1.plot(xs, [r["p50_ms"] for r in runs], "o-", color=color, label=f"{labels[mode]} p50")
        ax1.plot(xs, [r["p99_ms"] for r in runs], "s--", color=color, label=f"{labels[mode]} p99")
        ax2.plot(
            xs, [r["cpu_pct"] / r["cameras"] for r in runs], "o-", color=color, label=labels[mode]
        )
    ax1.axhline(250, color="gray", linewidth=0.8, linestyle=":")
    ax1.set(xlabel="720p30 RTSP cameras", ylabel="snapshot latency, ms", title="Latency")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    ax2.set(
        xlabel="720p30 RTSP cameras",
        ylabel="% of one core per camera",
        title="CPU per camera (server + FFmpeg)",
    )
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=8)
    fig.suptitle(
        f"Each camera snapshotted every {cap['interval_s']:.0f} s; {os.cpu_count()} cores",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
