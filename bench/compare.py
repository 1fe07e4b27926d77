"""Old code against new code in one run: idle cost per RTMP stream and warm REST latency.

For a change that must not cost speed (a refactor), both servers run on this machine in the
same run, interleaved round by round (old, new, new, old, ...) so that a noisy neighbour
weighs on both alike. The old code is ``git archive REV src`` unpacked to a temporary folder
and put first on ``PYTHONPATH`` of its server; the new code is the work tree. Media is
camera-like: 720p30 x264 veryfast with B-frames, GOP 60, temporal sensor noise, 2.5 Mbit/s.

    python bench/compare.py --old f4e1b4c --rounds 3 --streams 10 --window 20 --requests 60
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    OUT,
    idle_cpu,
    log,
    make_clip,
    percentile,
    publish,
    rest_snapshot_ms,
    stop,
)
from bench.part_latency import wait_decoded  # noqa: E402
from tests.helpers.server import ServerProcess, write_config  # noqa: E402


def camera_clip(seconds: int = 20) -> Path:
    """720p30 like an IP camera sends it: sensor noise that changes every frame, B-frames,
    2.5 Mbit/s, no audio (bench/common.py ``make_clip``)."""
    return make_clip("1280x720", seconds, bframes=True, audio=False)


def old_tree(rev: str, into: Path) -> Path:
    """``src/`` of ``rev``, unpacked under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def one_round(src: Path, workdir: Path, clip: Path, streams: int, window: float, n: int) -> dict:
    """Start a server on ``src``, measure its idle cost for ``streams`` publishers, then
    ``n`` warm REST snapshots of one of them."""
    cfg = write_config(
        workdir / "c.toml",
        server={"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
    )
    server = ServerProcess(cfg, env={"PYTHONPATH": str(src)}, cwd=workdir).start()
    pubs = []
    try:
        time.sleep(2)

        def start() -> None:
            order = random.sample(range(streams), streams)
            for i in order:  # 2 s apart at most: spread over the GOP
                pubs.append(publish(clip, server.rtmp_url(f"idle{i}")))
                time.sleep(2.0 / streams)
            for i in range(streams):
                server.wait_stream(f"idle{i}", timeout=30, frames=30)

        base, used = idle_cpu(server.proc.pid, window, start)
        rest_snapshot_ms(server, "idle0")  # asked for once: the policy warms it
        wait_decoded(server, "idle0")
        warm = []
        for _ in range(n):
            time.sleep(random.uniform(0.2, 1.2))  # land anywhere in the GOP
            warm.append(rest_snapshot_ms(server, "idle0"))
    finally:
        for p in pubs:
            stop(p)
        server.stop()
    return {"idle_pct_per_stream": (used - base) / streams * 100, "warm_ms": warm}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", default="f4e1b4c", help="git revision of the old code")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--window", type=float, default=20.0, help="idle measure, seconds")
    ap.add_argument("--requests", type=int, default=60, help="warm snapshots per round")
    args = ap.parse_args()
    clip = camera_clip()
    results: dict[str, list[dict]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="compare-") as tmp:
        trees = {"old": old_tree(args.old, Path(tmp) / "old"), "new": ROOT / "src"}
        for r in range(args.rounds):
            order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
            for label in order:
                work = Path(tmp) / f"{label}-{r}"
                work.mkdir()
                res = one_round(trees[label], work, clip, args.streams, args.window, args.requests)
                log(
                    f"round {r + 1} {label}: {res['idle_pct_per_stream']:.2f} % per idle stream, "
                    f"warm p50 {statistics.median(res['warm_ms']):.1f} ms"
                )
                results[label].append(res)
    summary = {}
    for label, runs in results.items():
        warm = [ms for run in runs for ms in run["warm_ms"]]
        idle = [run["idle_pct_per_stream"] for run in runs]
        summary[label] = {
            "idle_pct_per_stream": statistics.median(idle),
            "idle_rounds": idle,
            "warm_p50_ms": percentile(warm, 50),
            "warm_p99_ms": percentile(warm, 99),
            "warm_n": len(warm),
        }
    (OUT / "compare.json").write_text(json.dumps({"args": vars(args), **summary}, indent=2))
    print("| code | idle % of a core per stream (median of rounds) | warm p50 | warm p99 |")
    print("|---|---|---|---|")
    for label, s in summary.items():
        rounds = ", ".join(f"{v:.2f}" for v in s["idle_rounds"])
        name = f"old ({args.old})" if label == "old" else "new (work tree)"
        print(
            f"| {name} | {s['idle_pct_per_stream']:.2f} ({rounds}) | "
            f"{s['warm_p50_ms']:.1f} ms | {s['warm_p99_ms']:.1f} ms |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
