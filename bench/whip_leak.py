"""What a WHIP session leaves behind in the server: RSS and Python allocations (tracemalloc)
after N publish sessions of FFmpeg's WHIP muxer, compared with after a warm-up.

    .venv/bin/python bench/whip_leak.py --sessions 100 --parallel 4

The server runs under tracemalloc (bench/_traced_server.py: SIGUSR1 writes a snapshot); the
report lists the allocation sites that grew the most, by traceback.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import itertools
import json
import os
import re
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.media import FFMPEG, Publisher  # noqa: E402
from tests.helpers.server import ServerProcess, write_config  # noqa: E402


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def pymalloc_arenas(server: ServerProcess) -> int:
    """The arenas pymalloc holds now, from the newest _debugmallocstats the server printed."""
    found = [line for line in server.lines if "# arenas allocated current" in line]
    return int(found[-1].split("=")[-1].strip().replace(",", "")) if found else -1


def live_types(path: Path) -> collections.Counter[str]:
    """The server's live objects by type at its last look (bench/_traced_server.py)."""
    return collections.Counter(json.loads(Path(str(path) + ".types").read_text()))


def snapshot(server: ServerProcess, path: Path) -> tracemalloc.Snapshot | None:
    path.unlink(missing_ok=True)
    os.kill(server.proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    if path.stat().st_size == 0:
        return None  # the server does not trace (--no-trace)
    return tracemalloc.Snapshot.load(str(path))


def whip(url: str, audio: bool, seconds: float) -> Publisher:
    """FFmpeg's WHIP muxer: ``seconds`` of a 320x240 test picture (and sound), then DELETE."""
    argv = [FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-t", f"{seconds:g}"]
    argv += ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30"]
    if audio:
        argv += ["-f", "lavfi", "-i", "sine=sample_rate=48000", "-c:a", "libopus", "-ac", "2"]
    argv += ["-c:v", "libx264", "-profile:v", "baseline", "-tune", "zerolatency", "-bf", "0"]
    argv += ["-g", "30", "-pix_fmt", "yuv420p", "-t", f"{seconds:g}"]
    return Publisher([*argv, "-f", "whip", url])


def sessions(
    server: ServerProcess, n: int, parallel: int, prefix: str, audio: bool, seconds: float
) -> None:
    def one(i: int) -> None:
        pub = whip(f"{server.http}/whip/{prefix}{i}", audio, seconds)
        try:
            pub.proc.wait(seconds + 30)
        finally:
            pub.stop()

    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, range(n)))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # every session ended on the server
        status, _, _ = server.request("POST", "/rest-api/stream/find_all", {})
        if status == 404:
            return
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--same-name", action="store_true", help="every session publishes 'w'")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=1, help="looks at RSS, --sessions apart")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each session")
    parser.add_argument("--no-audio", action="store_true", help="publish video only")
    parser.add_argument("--no-trace", action="store_true", help="RSS only, no tracemalloc")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument(
        "--trim", action="store_true", help="malloc_trim(0) before each look: RSS without free heap"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dump = folder / "tracemalloc.snap"
        config = write_config(
            folder / "streamsnap.toml",
            server={"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
            webrtc={"ice_addresses": ["127.0.0.1"]},
        )
        env = {
            "STREAMSNAP_TRACE_DUMP": str(dump),
            "STREAMSNAP_TRACE_TRIM": "1" if args.trim else "",
        }
        env["STREAMSNAP_TRACE_MALLOC"] = "0" if args.no_trace else "1"
        env.update(e.split("=", 1) for e in args.env)
        server = ServerProcess(config, env=env, cwd=folder)
        server.launcher = [sys.executable, str(ROOT / "bench" / "_traced_server.py")]
        server.start(timeout=180)  # imports are slow under tracemalloc
        try:
            name = (lambda p: "w") if args.same_name else (lambda p: p)
            audio = not args.no_audio
            sessions(server, args.warmup, args.parallel, name("warm"), audio, args.seconds)
            before = snapshot(server, dump)
            types0 = live_types(dump)
            rss0 = rss_kib(server.proc.pid)
            arenas = [pymalloc_arenas(server)]
            t0 = time.monotonic()
            looks = [rss0]
            for r in range(args.rounds):
                sessions(server, args.sessions, args.parallel, name(f"s{r}-"), audio, args.seconds)
                after = snapshot(server, dump)
                types1 = live_types(dump)
                looks.append(rss_kib(server.proc.pid))
                arenas.append(pymalloc_arenas(server))
            took = time.monotonic() - t0
            rss1 = looks[-1]
        finally:
            server.stop()
    n = args.sessions * args.rounds
    print(f"{n} WHIP sessions in {took:.0f} s ({args.parallel} at once)")
    print(
        f"RSS: {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB: {(rss1 - rss0) / n:.1f} KiB per session"
    )
    steps = [f"{(b - a) / args.sessions:.1f}" for a, b in itertools.pairwise(looks)]
    print(f"KiB per session, round by round: {', '.join(steps)}")
    print(f"pymalloc arenas in use, look by look: {arenas}")
    grew = (types1 - types0).most_common(args.top)
    print("live objects that grew:", ", ".join(f"{t} +{c}" for t, c in grew) or "none")
    if before is None or after is None:
        return
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    print(
        f"Python allocations: {grown / 1024:+.0f} KiB: {grown / 1024 / args.sessions:+.1f} KiB per session"
    )
    for stat in after.compare_to(before, "traceback")[: args.top]:
        print(f"\n{stat.size_diff / 1024:+.1f} KiB, {stat.count_diff:+d} blocks")
        for line in stat.traceback.format()[-12:]:
            print("   ", line)


if __name__ == "__main__":
    main()
