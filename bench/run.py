"""streamsnap benchmark: snapshot latency and idle-stream cost, each against its anchor, in one run.

Anchors measured in the same run on the same streams:
- latency: the FFmpeg command line users run today without server support,
  ``ffmpeg -i rtmp://SERVER/live/NAME -frames:v 1 out.png``, against nginx-rtmp carrying the
  same stream;
- idle cost: the CPU nginx-rtmp itself spends per relayed stream (a C server that only keeps
  packets), next to streamsnap's.

Writes BENCHMARKS.md (and bench/out/results.json). Usage: ``make bench`` or
``python bench/run.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import OUT, log, machine  # noqa: E402
from bench.part_auto import bench_auto  # noqa: E402
from bench.part_capacity import PLOT, bench_capacity, capacity_plot  # noqa: E402
from bench.part_idle import bench_idle  # noqa: E402
from bench.part_latency import bench_latency  # noqa: E402
from bench.part_rtsp import bench_rtsp  # noqa: E402
from bench.part_webrtc import bench_webrtc  # noqa: E402
from bench.report import kept_text, summarize  # noqa: E402
from tests.helpers.nginx import NginxRtmp, nginx_available  # noqa: E402
from tests.helpers.server import ServerProcess, write_config  # noqa: E402

PARTS = ["rtmp", "rtsp", "capacity", "webrtc", "auto", "profile"]
RESULT_KEYS = ["latency", "idle", "idle_1080", "rtsp", "capacity", "webrtc", "auto", "profile"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    parser.add_argument("--idle-streams", type=int, default=10)
    parser.add_argument("--max-auto-streams", type=int, default=40)
    parser.add_argument(
        "--cameras",
        default="",
        help="capacity steps, e.g. 10,20,30 (default: 10 to 40 per core, in steps of 10)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="only rewrite BENCHMARKS.md from bench/out/results.json",
    )
    parser.add_argument(
        "--only",
        choices=PARTS,
        help="run one part; the others' numbers come from the last bench/out/results.json",
    )
    args = parser.parse_args()
    n_rest, n_cli, window = (10, 3, 5.0) if args.quick else (100, 15, 20.0)
    idle_streams, idle_rounds = (4, 1) if args.quick else (9, 5)  # stream 0 is the warm one
    cores = os.cpu_count() or 1
    cameras = (
        [int(v) for v in args.cameras.split(",")]
        if args.cameras
        else list(range(10, 40 * cores + 1, 10))
    )
    results_file = OUT / "results.json"
    previous = json.loads(results_file.read_text()) if results_file.exists() else {}
    results = {
        "machine": machine(),
        "runs": previous.get("runs", {}),
        **{k: previous.get(k, {}) for k in RESULT_KEYS},
    }
    if args.report:
        (ROOT / "BENCHMARKS.md").write_text(summarize(results, [], kept_text()))
        return 0

    def run(part: str) -> bool:
        return args.only in (None, part)

    nginx = None
    if run("rtmp"):
        nginx = NginxRtmp() if nginx_available() else None
        if nginx is None:
            log("nginx-rtmp not installed: anchors skipped (scripts/install-system-deps.sh bench)")
    work = Path(tempfile.mkdtemp(prefix="bench-streamsnap-"))
    config = write_config(
        work / "bench.toml",
        server={"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
        rtsp={"idle_timeout_s": 10},
        pull={"allowed_hosts": ["127.0.0.1"]},  # the bench's cameras, pulled by URL
        webrtc={"ice_addresses": ["127.0.0.1"]},
        limits={"max_connections_per_ip": 0},  # one address plays the 200 clients of a burst
    )
    server = ServerProcess(config, cwd=work).start()
    try:
        if run("rtmp"):
            sizes = ["1280x720", "1920x1080"]
            lazy_config = write_config(
                work / "lazy.toml",
                server={"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
                streams={"decode": "lazy"},
                limits={"max_connections_per_ip": 0},  # as above
            )
            lazy = ServerProcess(lazy_config, cwd=work).start()
            try:
                results["latency"] = bench_latency(
                    {"lazy": lazy, "adaptive": server},
                    nginx,
                    sizes,
                    n_rest,
                    n_cli,
                    idle_streams,
                    idle_rounds,
                )
            finally:
                lazy.stop()
            results["idle"] = bench_idle(server, nginx, args.idle_streams, window)
            results["idle_1080"] = bench_idle(
                server, nginx, args.idle_streams, window, size="1920x1080"
            )
        if run("rtsp"):
            results["rtsp"] = bench_rtsp(server, n_cli, n_rest, args.idle_streams, window)
        if run("webrtc"):
            results["webrtc"] = bench_webrtc(server, n_rest, window)
    finally:
        server.stop()
        if nginx:
            nginx.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    if run("capacity"):
        results["capacity"] = bench_capacity(cameras, window=10.0 if args.quick else 30.0)
        if results["capacity"]:
            capacity_plot(results["capacity"], PLOT)
    if run("auto"):
        results["auto"] = bench_auto(window / 2, args.max_auto_streams)
    if run("profile"):
        from bench.profile_ingest import profile

        log("profiling idle ingest (cProfile): RTMP, then RTSP")
        results["profile"] = {
            "rtmp": profile(args.idle_streams, window),
            "rtsp": profile(args.idle_streams, window, rtsp=True),
        }
    command = " ".join(["python", "bench/run.py", *sys.argv[1:]])
    runs = results.setdefault("runs", {})
    for part in PARTS:
        if run(part):
            runs[part] = {"command": command, "time": time.strftime("%Y-%m-%d %H:%M")}
    OUT.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(results, indent=1))
    argv = ["python", "bench/run.py", *sys.argv[1:]]
    report = summarize(results, argv, kept_text())
    (ROOT / "BENCHMARKS.md").write_text(report)
    log("wrote BENCHMARKS.md")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
