"""An hour without drift: 40 streams (RTMP, RTSP cameras, WHIP publishers that reconnect),
auto snapshots on, 20 REST snapshots a second; the server's RSS, CPU, fds, threads and the
snapshot p99 sampled over time.

    make bench-endurance            # = .venv/bin/python bench/endurance.py --minutes 60
    .venv/bin/python bench/endurance.py --minutes 3     # a smoke run

Media is camera-like (bench/common.py ``make_clip``: sensor noise, the camera's bitrate) at
426x240 so that 40 streams, their decoding and 20 snapshots a second fit two cores with room
(at 640x360 the machine was saturated: load 3.6, p99 over 300 ms from contention alone): RTMP
publishers loop a clip with ``-c copy``; WHIP publishers loop a baseline, B-frame-free clip
with Opus (what WebRTC carries) with ``-c copy`` and end their session every
``--whip-session-s`` to start a new one (session churn); RTSP cameras, listed in
``[[pull.cameras]]``, are served by ``bench/camera_sim.py`` (a pre-encoded camera clip, no
encoder). The checks: RSS after the warm-up grows at most
20 MiB (the median of the last ten minutes over that of the first ten after the warm-up; the
peak is reported beside it), fds and threads stay flat (the most of the last ten minutes
within 2 of the most of the first ten; the range is reported), the p99 of the first and the last ten minutes (after the
warm-up) are within 20 % of each other. Results: bench/out/endurance.json and a plot,
bench/endurance.png.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    BITRATES,
    OUT,
    LeanClient,
    SimCameras,
    camera_h264,
    cpu_seconds,
    log,
    make_clip,
    percentile,
    publish_spread,
    stop,
)
from tests.helpers.media import FFMPEG  # noqa: E402
from tests.helpers.server import ServerProcess, write_config  # noqa: E402

SIZE = (
    "426x240"  # --size: 40 streams, their decoding and 20 snapshots a second, with room on 2 cores
)
SAMPLE_S = 10.0


def whip_clip(size: str, seconds: int = 20) -> Path:
    """What a WebRTC publisher sends, camera-like: H.264 baseline without B-frames, Opus."""
    path = OUT / f"camera-{size}-whip.mkv"
    if not path.exists():
        log(f"encoding {path.name}")
        argv = [FFMPEG, "-v", "error", "-y"]
        argv += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30,noise=alls=14:allf=t+u"]
        argv += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
        argv += ["-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast"]
        kbps = BITRATES.get(size, 1000)
        argv += ["-profile:v", "baseline", "-bf", "0", "-g", "60", "-b:v", f"{kbps}k"]
        argv += ["-pix_fmt", "yuv420p", "-c:a", "libopus", "-ac", "2", str(path)]
        subprocess.run(argv, check=True)
    return path


class WhipPublisher(threading.Thread):
    """A WHIP publisher that ends its session every ``session_s`` and starts a new one."""

    def __init__(self, url: str, clip: Path, session_s: float) -> None:
        super().__init__(daemon=True)
        self.url, self.clip, self.session_s = url, clip, session_s
        self.sessions = 0
        self.proc: subprocess.Popen | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        time.sleep(random.uniform(0, self.session_s))  # sessions end at spread times
        while not self.stopping.is_set():
            argv = [FFMPEG, "-v", "error", "-re", "-stream_loop", "-1", "-i", str(self.clip)]
            argv += ["-t", f"{self.session_s:.0f}", "-c", "copy", "-f", "whip", self.url]
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            self.proc.communicate()
            self.sessions += 1
            self.stopping.wait(1.0)

    def stop(self) -> None:
        self.stopping.set()
        if self.proc is not None and self.proc.poll() is None:
            stop(self.proc)


class Load(threading.Thread):
    """``rate`` REST PNG snapshots a second over ``names``, from ``workers`` kept-alive
    clients; each (time, ms, ok) is kept."""

    def __init__(self, server: ServerProcess, names: list[str], rate: float, workers: int = 4):
        super().__init__(daemon=True)
        self.server, self.names, self.rate, self.workers = server, names, rate, workers
        self.results: list[tuple[float, float, bool]] = []
        self.stopping = threading.Event()

    def worker(self, i: int) -> None:
        client = LeanClient(self.server.http)
        interval = self.workers / max(self.rate, 1e-9)
        next_at = time.monotonic() + i * interval / self.workers
        while not self.stopping.is_set():
            next_at += interval
            name = random.choice(self.names)
            body = json.dumps({"streamName": name}).encode()
            try:
                ms, status, _ = client.request(
                    "POST", "/rest-api/stream/snapshot", body, {"Content-Type": "application/json"}
                )
                self.results.append((time.monotonic(), ms, status == 200))
            except OSError:
                self.results.append((time.monotonic(), 0.0, False))
            self.stopping.wait(max(0.0, next_at - time.monotonic()))

    def run(self) -> None:
        threads = [
            threading.Thread(target=self.worker, args=(i,), daemon=True)
            for i in range(self.workers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def rss_level(samples: list[dict], start: float, end: float) -> float:
    """The median RSS (MiB) of the samples taken from ``start`` to ``end`` seconds."""
    return level(samples, "rss_kib", start, end) / 1024


def level(samples: list[dict], key: str, start: float, end: float) -> float:
    """The median ``key`` of the samples taken from ``start`` to ``end`` seconds."""
    window = [s[key] for s in samples if start <= s["t"] <= end and key in s]
    return statistics.median(window) if window else 0.0


def peak(samples: list[dict], key: str, start: float, end: float) -> int:
    """The most ``key`` of the samples taken from ``start`` to ``end`` seconds."""
    return max((s[key] for s in samples if start <= s["t"] <= end), default=0)


def live_types(server: ServerProcess, look: Path) -> collections.Counter[str]:
    """The server's live objects by type, after a full collection (bench/_traced_server.py)."""
    types = Path(str(look) + ".types")
    look.unlink(missing_ok=True)
    os.kill(server.proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while not look.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return collections.Counter(json.loads(types.read_text()))


def machine_ticks() -> tuple[int, int, int]:
    """The whole machine's CPU ticks since boot (``/proc/stat``): busy, stolen by the
    hypervisor, and all, so the server's p99 can be read against what else ran."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle - fields[7], fields[7], sum(fields)


def machine_share(before: tuple[int, int, int], after: tuple[int, int, int]) -> dict:
    busy, steal, total = (b - a for a, b in zip(before, after, strict=True))
    cores = os.cpu_count() or 1
    return {
        "machine_busy_pct": round(busy / max(total, 1) * 100 * cores, 1),  # of one core
        "steal_pct": round(steal / max(total, 1) * 100 * cores, 1),
    }


def proc_status(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()[0] if value.split() else "0"
    return {
        "rss_kib": int(fields["VmRSS"]),
        "threads": int(fields["Threads"]),
        "fds": len(list(Path(f"/proc/{pid}/fd").iterdir())),
    }


HEAP_METRICS = {  # /metrics gauge -> sample key (MiB or count)
    "streamsnap_heap_in_use_bytes": "heap_in_use_mib",
    "streamsnap_heap_free_bytes": "heap_free_mib",
    "streamsnap_python_allocated_blocks": "python_blocks",
}
TRIM_METRICS = {  # counters of the once-a-minute heap trim, and the scrape's own reads
    "streamsnap_heap_trims_total": "trims",
    "streamsnap_heap_trim_seconds_total": "trim_s",
    "streamsnap_heap_trim_longest_seconds": "trim_longest_s",
    "streamsnap_metrics_read_seconds": "metrics_read_s",
}


def heap_figures(client: LeanClient) -> dict[str, float]:
    """What the server's allocators hold (its /metrics): the C heap in use and free, and
    Python's allocated blocks, so that RSS growth can be told apart as live memory or
    free space the allocator keeps."""
    try:
        _, status, body = client.request("GET", "/metrics")
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in body.decode().splitlines() if status == 200 else ():
        name, _, value = line.partition(" ")
        if name in HEAP_METRICS:
            figure = float(value)
            out[HEAP_METRICS[name]] = (
                round(figure / 2**20, 1) if name.endswith("_bytes") else figure
            )
        elif name in TRIM_METRICS:
            out[TRIM_METRICS[name]] = float(value)
    return out


def trim_summary(samples: list[dict]) -> dict[str, float]:
    last = next((s for s in reversed(samples) if "trims" in s), None)
    if last is None:
        return {}
    return {
        "trims": int(last["trims"]),
        "trim_ms_mean": round(last["trim_s"] / last["trims"] * 1000, 2) if last["trims"] else 0.0,
        "trim_longest_ms": round(last["trim_longest_s"] * 1000, 1),
        "metrics_read_ms_max": round(max(s.get("metrics_read_s", 0.0) for s in samples) * 1000, 2),
    }


def plot(samples: list[dict], warmup_s: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    axes[0].plot(t, [s["rss_kib"] / 1024 for s in samples], label="RSS")
    for key, label in (("heap_in_use_mib", "C heap in use"), ("heap_free_mib", "C heap free")):
        if all(key in s for s in samples):
            axes[0].plot(t, [s[key] for s in samples], label=label, linewidth=1)
    axes[0].set_ylabel("MiB")
    axes[0].legend(fontsize=7, loc="upper left")
    axes[1].plot(t, [s["cpu_pct"] for s in samples])
    axes[1].set_ylabel("CPU, % of a core")
    axes[2].plot(t, [s["p99_ms"] for s in samples])
    axes[2].set_ylabel("snapshot p99, ms")
    axes[2].set_xlabel("minutes")
    for ax in axes:
        ax.axvline(warmup_s / 60, color="gray", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument(
        "--warmup-minutes", type=float, default=None, help="default: 10 %% of the run, 1-5 min"
    )
    ap.add_argument("--rtmp", type=int, default=30)
    ap.add_argument("--rtsp", type=int, default=5)
    ap.add_argument("--whip", type=int, default=5)
    ap.add_argument("--rate", type=float, default=20.0, help="REST snapshots a second (0: none)")
    ap.add_argument("--auto-rate", type=int, default=150, help="frames per auto snapshot (0: off)")
    ap.add_argument("--whip-session-s", type=float, default=60.0)
    ap.add_argument("--size", default=SIZE, help="picture size of every stream")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    ap.add_argument(
        "--types",
        action="store_true",
        help="count the server's live objects by type after the warm-up and at the end "
        "(bench/_traced_server.py, no tracemalloc) and print what grew",
    )
    args = ap.parse_args()
    duration = args.minutes * 60
    warmup = 60 * (
        args.warmup_minutes
        if args.warmup_minutes is not None
        else min(5, max(1, args.minutes / 10))
    )
    window = min(600.0, (duration - warmup) / 2)  # "the first and the last ten minutes"
    clip, wclip = make_clip(args.size), whip_clip(args.size)
    cameras = SimCameras(camera_h264(args.size))  # one process, no encoder: bench/camera_sim.py
    with tempfile.TemporaryDirectory(prefix="endurance-") as tmp:
        cfg = write_config(
            Path(tmp) / "c.toml",
            server={"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
            snapshot={
                "snapshot_auto_enabled": args.auto_rate > 0,
                "snapshot_auto_rate": max(1, args.auto_rate),  # 150: every 5 s at 30 fps
                "snapshot_auto_retention": 5,
                "snapshot_auto_dir": str(Path(tmp) / "snapshots"),
            },
            pull={
                "cameras": [{"name": f"rtsp{i}", "url": cameras.url(i)} for i in range(args.rtsp)]
            },
            webrtc={"ice_addresses": ["127.0.0.1"]},
        )
        env = dict(e.split("=", 1) for e in args.env)
        look = Path(tmp) / "look"
        if args.types:
            env.update(STREAMSNAP_TRACE_MALLOC="0", STREAMSNAP_TRACE_DUMP=str(look))
            env.update(STREAMSNAP_TRACE_TRIM="1")
        server = ServerProcess(cfg, env=env, cwd=Path(tmp))
        if args.types:
            server.launcher = [sys.executable, str(ROOT / "bench" / "_traced_server.py")]
        server.start(timeout=120)
        types: list[collections.Counter[str]] = []
        rtmp = [f"rtmp{i}" for i in range(args.rtmp)]
        pubs, whips, load = [], [], None
        samples: list[dict] = []
        try:
            pubs = publish_spread(clip, [server.rtmp_url(n) for n in rtmp])
            whips = [
                WhipPublisher(f"{server.http}/whip/whip{i}", wclip, args.whip_session_s)
                for i in range(args.whip)
            ]
            for w in whips:
                w.start()
            for n in rtmp:
                server.wait_stream(n, timeout=60, frames=30)
            for i in range(args.rtsp):
                server.wait_stream(f"rtsp{i}", timeout=60, frames=30)
            names = rtmp + [f"rtsp{i}" for i in range(args.rtsp)]  # WHIP sessions come and go
            load = Load(server, names, args.rate)
            if args.rate > 0:
                load.start()
            log(f"{len(names) + args.whip} streams up; running {args.minutes:g} min")
            t0 = time.monotonic()
            cpu0, last = cpu_seconds(server.proc.pid), t0
            ticks0 = machine_ticks()
            metrics = LeanClient(server.http)
            seen = 0
            while (now := time.monotonic()) - t0 < duration:
                try:
                    time.sleep(SAMPLE_S)
                except KeyboardInterrupt:  # ended early: report what was measured
                    log("interrupted: reporting the samples so far")
                    duration = now - t0
                    break
                now = time.monotonic()
                cpu = cpu_seconds(server.proc.pid)
                ticks = machine_ticks()
                fresh = load.results[seen:]
                seen += len(fresh)
                ok = [ms for _, ms, good in fresh if good]
                sample = {
                    "t": round(now - t0, 1),
                    **proc_status(server.proc.pid),
                    "cpu_pct": round((cpu - cpu0) / (now - last) * 100, 1),
                    **machine_share(ticks0, ticks),
                    "requests": len(fresh),
                    "errors": len(fresh) - len(ok),
                    "p50_ms": round(percentile(ok, 50), 1) if ok else 0.0,
                    "p99_ms": round(percentile(ok, 99), 1) if ok else 0.0,
                    "whip_sessions": sum(w.sessions for w in whips),
                    **heap_figures(metrics),
                }
                samples.append(sample)
                cpu0, last, ticks0 = cpu, now, ticks
                if args.types and not types and sample["t"] >= warmup:
                    types.append(live_types(server, look))
                if len(samples) % 6 == 0:
                    log(f"{sample['t'] / 60:.1f} min: {json.dumps(sample)}")
            if server.proc.poll() is not None:
                raise RuntimeError(f"the server exited:\n{server.log[-3000:]}")
            if args.types and types:
                grew = (live_types(server, look) - types[0]).most_common(20)
                log("live objects that grew: " + ", ".join(f"{t} +{c}" for t, c in grew))
                for suffix in (".refs", ".repr"):  # STREAMSNAP_TRACE_REFERRERS / _REPR
                    extra = Path(str(look) + suffix)
                    if extra.exists():
                        log(f"{suffix[1:]}:\n" + extra.read_text())
        finally:  # every step on its own: one that fails must not leave the others running
            steps = [load.stopping.set] if load is not None else []
            if load is not None and load.is_alive():
                steps.append(lambda: load.join(10))
            steps += [w.stop for w in whips] + [lambda p=p: stop(p) for p in pubs]
            steps += [server.stop, cameras.stop]
            for step in steps:
                try:
                    step()
                except Exception as exc:
                    log(f"cleanup step failed: {exc!r}")
    after = [s for s in samples if s["t"] >= warmup]
    base = after[0]
    times = [(t, ms) for t, ms, good in load.results if good]
    start = times[0][0] if times else 0.0
    first = [ms for t, ms in times if warmup <= t - start < warmup + window]
    last_ = [ms for t, ms in times if t - start >= duration - window]
    result = {
        "args": vars(args),
        "warmup_s": warmup,
        "window_s": window,
        # growth: the level of the last window over that of the first (medians: the allocator
        # swings RSS by tens of MiB from minute to minute under this load); the peak beside it
        "rss_growth_mib": round(
            rss_level(after, duration - window, duration)
            - rss_level(after, warmup, warmup + window),
            1,
        ),
        "rss_peak_over_start_mib": round(
            (max(s["rss_kib"] for s in after) - base["rss_kib"]) / 1024, 1
        ),
        "rss_end_growth_mib": round((after[-1]["rss_kib"] - base["rss_kib"]) / 1024, 1),
        # the same medians for the allocators' own figures: live memory or kept free space
        **{
            f"{key}_growth": round(
                level(after, key, duration - window, duration)
                - level(after, key, warmup, warmup + window),
                1,
            )
            for key in HEAP_METRICS.values()
            if any(key in s for s in after)
        },
        "fds_range": [min(s["fds"] for s in after), max(s["fds"] for s in after)],
        "threads_range": [min(s["threads"] for s in after), max(s["threads"] for s in after)],
        # growth: the most of the last window over the most of the first (reconnecting WHIP
        # publishers take their decoder thread with them for a second: dips are not growth)
        "fds_growth": peak(after, "fds", duration - window, duration)
        - peak(after, "fds", warmup, warmup + window),
        "threads_growth": peak(after, "threads", duration - window, duration)
        - peak(after, "threads", warmup, warmup + window),
        # the heap trims over the run: how many, their mean and longest (each holds the arena
        # locks), and the slowest read a scrape made
        **trim_summary(after),
        "p99_by_window_ms": [
            round(percentile(part, 99), 1)
            for k in range(int(duration // window))
            if (part := [ms for t, ms in times if k * window <= t - start < (k + 1) * window])
        ],
        "p99_first_ms": round(percentile(first, 99), 1) if first else 0.0,
        "p99_last_ms": round(percentile(last_, 99), 1) if last_ else 0.0,
        "requests": len(load.results),
        "errors": sum(1 for _, _, good in load.results if not good),
        "whip_sessions": sum(w.sessions for w in whips),
        "cpu_pct_mean": round(sum(s["cpu_pct"] for s in after) / len(after), 1),
        # the machine's load and the hypervisor's steal, per window, beside the p99s
        **{
            f"{key}_by_window": [
                round(level(after, key, k * window, (k + 1) * window), 1)
                for k in range(int(duration // window))
                if any(k * window <= s["t"] < (k + 1) * window for s in after)
            ]
            for key in ("machine_busy_pct", "steal_pct", "cpu_pct")
            if any(key in s for s in after)
        },
        "samples": samples,
    }
    p99_first = result["p99_first_ms"] or 1.0
    result["p99_change_pct"] = round((result["p99_last_ms"] / p99_first - 1) * 100, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "endurance.json").write_text(json.dumps(result, indent=2))
    streams = args.rtmp + args.rtsp + args.whip
    title = (
        f"streamsnap, {args.minutes:g} min: {streams} streams ({args.rtmp} RTMP, {args.rtsp} RTSP, "
        f"{args.whip} WHIP), auto snapshots, {args.rate:g} REST snapshots/s"
    )
    plot(samples, warmup, ROOT / "bench" / "endurance.png", title)
    checks = {
        "RSS after warm-up grows at most 20 MiB (last window's median over the first's)": result[
            "rss_growth_mib"
        ]
        <= 20,
        "fds flat (the last window's most within 2 of the first's)": abs(result["fds_growth"]) <= 2,
        "threads flat (the last window's most within 2 of the first's)": abs(
            result["threads_growth"]
        )
        <= 2,
        "p99 first and last window within 20 %": abs(result["p99_change_pct"]) <= 20,
        "no failed snapshot": result["errors"] == 0,
    }
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    for check, passed in checks.items():
        print(f"{'ok  ' if passed else 'FAIL'} {check}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
