"""Cameras (issue #18): how many 720p RTSP cameras one server holds, fed by a camera simulator
that does not encode, and what users run instead on the same cameras, in one run.

    python bench/cameras.py [--steps 10,50,100,150] [--window 30] [--interval 10]
                            [--anchor-cameras 10] [--settle SECONDS]

The cameras: ``bench/camera_sim.py`` replaying one pre-encoded camera-like clip (720p30 x264
``veryfast`` main profile, no B-frames, GOP 60, sensor noise, 2.5 Mbit/s) to every RTSP
session, starting points spread over the GOP, so the simulator costs sending, not encoding.

1. **Floors**, in this process on the clip's own frames: decoding from a keyframe to a frame
   at a random place in its GOP (what a snapshot of a camera nobody watches must decode),
   decoding every frame (what keeping a picture always ready costs), and fpng on the frame.
2. **streamsnap**, for each step: a server with N cameras in ``[[pull.cameras]]``, each
   snapshotted over REST once every ``interval`` s (staggered, a kept-alive client per
   thread), after a first pass of ``--settle`` s (one interval: each camera's first snapshot
   makes its decoder; reported in a column of its own); latency to the last byte, freshness
   (``X-Frame-Age-Ms``: how old the picture is when it is answered), the CPU and memory (PSS)
   of the server and its FFmpeg children, what is left of the machine, and the simulator's
   CPU and dropped frames beside them.
3. **Anchors** on ``--anchor-cameras`` of the same cameras: the FFmpeg command line (one
   ``ffmpeg -rtsp_transport tcp -i URL -frames:v 1`` per snapshot) and OpenCV
   (``bench/anchor_opencv.py``: a reader thread per ``cv2.VideoCapture``, ``cv2.imencode``).

Writes ``bench/out/cameras.json`` and ``bench/out/cameras.md`` (the section for
BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
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
    OUT,
    SimCameras,
    camera_h264,
    cpu_seconds,
    log,
    machine,
    percentile,
    scheduled,
    threaded_rest_snapshot,
    tree_cpu_seconds,
    tree_pss_mib,
)
from bench.part_capacity import machine_jiffies  # noqa: E402
from tests.helpers.media import FFMPEG  # noqa: E402
from tests.helpers.server import ServerProcess, write_config  # noqa: E402

CORES = os.cpu_count() or 1


def floors(clip: Path, samples: int = 200) -> dict:
    """What decoding and encoding alone cost on the clip's frames, one thread, as the server
    decodes (``thread_count = 1``)."""
    import av
    import fpng
    import numpy as np

    costs, keys, pictures = [], [], []
    with av.open(str(clip), format="h264") as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for packet in container.demux(stream):
            t0 = time.perf_counter()
            frames = packet.decode()
            costs.append((time.perf_counter() - t0) * 1000)
            keys.append(packet.is_keyframe)
            if frames and len(pictures) < 5:
                pictures.append(frames[0].to_ndarray(format="rgb24"))
    # cost of decoding from the GOP's keyframe up to frame i, for every i
    from_key, run = [], 0.0
    for cost, key in zip(costs, keys, strict=True):
        run = cost if key else run + cost
        from_key.append(run)
    sample = random.Random(1).choices(from_key, k=samples)
    png = []
    for _ in range(20):
        for rgb in pictures:
            t0 = time.perf_counter()
            fpng.from_ndarray(np.ascontiguousarray(rgb))
            png.append((time.perf_counter() - t0) * 1000)
    return {
        "frames": len(costs),
        "decode_frame_ms": statistics.mean(costs),
        "decode_from_key_p50_ms": statistics.median(sample),
        "decode_from_key_mean_ms": statistics.mean(from_key),
        "decode_from_key_max_ms": max(from_key),
        "decode_every_frame_pct": statistics.mean(costs) * 30 / 10,  # % of a core at 30 fps
        "png_p50_ms": statistics.median(png),
    }


def summary(answers: list[dict], failed: int) -> dict:
    lat = [a["ms"] for a in answers]
    fresh = [a["fresh_ms"] for a in answers if a.get("fresh_ms") is not None]
    return {
        "n": len(lat),
        "failed": failed,
        "p50_ms": statistics.median(lat) if lat else None,
        "p99_ms": percentile(lat, 99) if lat else None,
        "max_ms": max(lat) if lat else None,
        "fresh_p50_ms": statistics.median(fresh) if fresh else None,
        "fresh_p99_ms": percentile(fresh, 99) if fresh else None,
    }


def bare_server() -> dict:
    """A server with no camera: the CPU and memory that per-camera figures leave out."""
    work = Path(tempfile.mkdtemp(prefix="bench-cameras-0-"))
    config = write_config(
        work / "bare.toml",
        server={"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
    )
    server = ServerProcess(config, cwd=work).start()
    try:
        time.sleep(3)
        c0, t0 = cpu_seconds(server.proc.pid), time.monotonic()
        time.sleep(10)
        cpu = (cpu_seconds(server.proc.pid) - c0) / (time.monotonic() - t0) * 100
        return {"cpu_pct": cpu, "mem_mib": tree_pss_mib(server.proc.pid)}
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def streamsnap_step(
    sim: SimCameras, n: int, interval: float, window: float, bare: dict, settle: float
) -> dict:
    """A server with ``n`` configured cameras, each snapshotted every ``interval`` s; per
    camera figures are over the ``bare`` server's. A first pass of ``settle`` s (each camera
    asked once when it is ``interval``) comes before the clock starts: a camera's first
    snapshot makes its decoder, and the window measures a server holding its cameras."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-cameras-{n}-"))
    names = [f"cam{i}" for i in range(n)]
    server = sim.server(names, work)
    pid = server.proc.pid
    try:
        deadline = time.monotonic() + 120
        late = []
        for name in names:  # every camera delivering before the clock starts
            try:
                server.wait_stream(name, timeout=max(1.0, deadline - time.monotonic()), frames=30)
            except Exception:  # its snapshots will fail and be counted
                late.append(name)
        if late:
            log(f"  {len(late)} of {n} cameras delivered no picture within 120 s: {late[:5]}")
        time.sleep(5)
        idle_c0, idle_t0 = tree_cpu_seconds(pid), time.monotonic()
        time.sleep(min(10.0, window / 3))
        idle = (tree_cpu_seconds(pid) - idle_c0) / (time.monotonic() - idle_t0) * 100
        first: dict = {}
        if settle > 0:
            f0, ft0 = tree_cpu_seconds(pid), time.monotonic()
            first = summary(*scheduled(threaded_rest_snapshot(server), names, interval, settle))
            first["cpu_pct"] = (tree_cpu_seconds(pid) - f0) / (time.monotonic() - ft0) * 100
        c0, (b0, t0), s0 = tree_cpu_seconds(pid), machine_jiffies(), cpu_seconds(sim.pid)
        dropped0 = sim.stats().get("dropped", 0.0)
        w0 = time.monotonic()
        answers, failed = scheduled(threaded_rest_snapshot(server), names, interval, window)
        wall = time.monotonic() - w0
        c1, (b1, t1), s1 = tree_cpu_seconds(pid), machine_jiffies(), cpu_seconds(sim.pid)
        cpu = (c1 - c0) / wall * 100
        run = {
            "cameras": n,
            **summary(answers, failed),
            "idle_pct": idle,
            "idle_pct_per_camera": (idle - bare["cpu_pct"]) / n,
            "cpu_pct": cpu,
            "cpu_pct_per_camera": (cpu - bare["cpu_pct"]) / n,
            "cpu_left_pct": 100 - cpu / CORES,
            "machine_busy_pct": (b1 - b0) / (t1 - t0) * 100,
            "mem_mib": tree_pss_mib(pid),
            "sim_cpu_pct": (s1 - s0) / wall * 100,
            "sim_dropped": sim.stats().get("dropped", 0.0) - dropped0,  # frames, this window
            "first_pass": first,
        }
        run["mem_mib_per_camera"] = (run["mem_mib"] - bare["mem_mib"]) / n
        run["held"] = bool(
            run["n"] and not failed and run["p99_ms"] <= 250 and run["cpu_left_pct"] >= 30
        )
        if first:
            log(
                f"streamsnap x{n}, first pass: p50 {first['p50_ms'] or 0:.0f} / p99 "
                f"{first['p99_ms'] or 0:.0f} ms, {first['failed']} failed, "
                f"{first['cpu_pct']:.0f} % of a core"
            )
        log(
            f"streamsnap x{n}: p50 {run['p50_ms']:.0f} / p99 {run['p99_ms']:.0f} ms, "
            f"{failed} failed, fresh p50 {run['fresh_p50_ms'] or 0:.0f} ms, idle {idle:.0f} %, "
            f"with snapshots {cpu:.0f} % of a core ({run['cpu_left_pct']:.0f} % of the machine "
            f"left), {run['mem_mib']:.0f} MiB; simulator {run['sim_cpu_pct']:.0f} %, "
            f"dropped {run['sim_dropped']:.0f} -> {'held' if run['held'] else 'MISSED'}"
        )
        return run
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def ffmpeg_cli(sim: SimCameras, n: int, interval: float, window: float) -> dict:
    """One ``ffmpeg -frames:v 1`` per snapshot: latency, and its CPU and peak memory from the
    kernel's accounting of each finished process."""
    names = [f"cam{i}" for i in range(n)]
    used: list[tuple[float, int]] = []  # (CPU s, max RSS KiB) of each run
    lock = threading.Lock()

    def ask(name: str) -> dict:
        argv = [FFMPEG, "-v", "error", "-rtsp_transport", "tcp", "-i", sim.url(name)]
        argv += ["-frames:v", "1", "-f", "image2pipe", "-c:v", "png", "-"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        out = proc.stdout.read() if proc.stdout else b""
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        ms = (time.perf_counter() - t0) * 1000
        if proc.returncode != 0 or not out.startswith(b"\x89PNG"):
            raise RuntimeError(f"ffmpeg exited {proc.returncode}")
        with lock:
            used.append((usage.ru_utime + usage.ru_stime, usage.ru_maxrss))
        # the picture is the first keyframe after the request: newer than the request, and
        # as old as the time since that keyframe came when the PNG is out (not measurable
        # from outside; reported as none)
        return {"ms": ms, "fresh_ms": None}

    w0 = time.monotonic()
    answers, failed = scheduled(ask, names, interval, window)
    wall = time.monotonic() - w0
    cpu = sum(c for c, _ in used) / wall * 100
    run = {
        "cameras": n,
        **summary(answers, failed),
        "cpu_pct": cpu,
        "cpu_pct_per_camera": cpu / n,
        "cpu_s_per_snapshot": sum(c for c, _ in used) / max(1, len(used)),
        "peak_rss_mib_per_run": statistics.median(m for _, m in used) / 1024 if used else None,
    }
    log(
        f"ffmpeg CLI x{n}: p50 {run['p50_ms'] or 0:.0f} / p99 {run['p99_ms'] or 0:.0f} ms, "
        f"{failed} failed, {cpu:.1f} % of a core"
    )
    return run


def opencv(sim: SimCameras, n: int, interval: float, window: float) -> dict:
    names = [f"cam{i}" for i in range(n)]
    argv = [sys.executable, str(ROOT / "bench" / "anchor_opencv.py")]
    argv += ["--interval", str(interval), "--window", str(window)]
    raw = subprocess.run(
        [*argv, *(sim.url(name) for name in names)],
        capture_output=True,
        text=True,
        timeout=window + 180,
        check=True,
    ).stdout
    out = json.loads(raw.strip().splitlines()[-1])
    answers = [
        {"ms": ms, "fresh_ms": fresh}
        for ms, fresh in zip(out["latency_ms"], out["freshness_ms"], strict=True)
    ]
    run = {
        "cameras": n,
        **summary(answers, out["failed"]),
        "cpu_pct": out["cpu_pct"],
        "cpu_pct_per_camera": out["cpu_pct_per_camera"],
        "mem_mib_per_camera": out["rss_mib_per_camera"],
        "fps_read": out["fps_read"],
    }
    log(
        f"OpenCV x{n}: p50 {run['p50_ms']:.0f} / p99 {run['p99_ms']:.0f} ms, fresh p50 "
        f"{run['fresh_p50_ms']:.0f} ms, {run['cpu_pct']:.0f} % of a core, "
        f"{run['mem_mib_per_camera']:.0f} MiB per camera, read {run['fps_read']:.1f} fps"
    )
    return run


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def report(res: dict) -> str:
    f = res["floors"]
    steps = "\n".join(
        f"| {r['cameras']} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {r['n']} | {r['failed']} "
        f"| {fmt(r['fresh_p50_ms'])} | {r['idle_pct_per_camera']:.2f} | {r['cpu_pct']:.0f} "
        f"| {r['cpu_pct_per_camera']:.2f} | {r['cpu_left_pct']:.0f} | {r['machine_busy_pct']:.0f} "
        f"| {r['mem_mib_per_camera']:.1f} | {r['sim_cpu_pct']:.0f} / "
        f"{r['sim_dropped']:.0f} | {first_pass(r)} | {'**held**' if r['held'] else 'missed'} |"
        for r in res["steps"]
    )
    held = max((r["cameras"] for r in res["steps"] if r["held"]), default=0)
    a = res["anchors"]
    s = next((r for r in res["steps"] if r["cameras"] == a["cameras"]), None)
    rows = []
    for label, r, mem in (
        ("streamsnap (REST, PNG)", s, s and f"{s['mem_mib_per_camera']:.1f}"),
        (
            "FFmpeg CLI, `-frames:v 1` per snapshot (PNG)",
            a.get("ffmpeg"),
            a.get("ffmpeg") and f"0 idle, {a['ffmpeg']['peak_rss_mib_per_run']:.0f} per run",
        ),
        (
            "OpenCV: reader thread per camera, `imencode(.png)`",
            a.get("opencv"),
            a.get("opencv") and f"{a['opencv']['mem_mib_per_camera']:.1f}",
        ),
    ):
        if r:
            rows.append(
                f"| {label} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {r['failed']} | "
                f"{fmt(r['fresh_p50_ms'])} / {fmt(r['fresh_p99_ms'])} | "
                f"{r['cpu_pct_per_camera']:.2f} | {mem} |"
            )
    budget = 0.7 * CORES * 100  # what 30 % left allows, % of a core
    per_snapshot = f["decode_from_key_mean_ms"] + f["png_p50_ms"]
    floor_cams = budget / (per_snapshot / res["interval_s"] / 10)
    return f"""## Cameras on a simulator that does not encode (issue #18)
`{res["command"]}` at {res["time"]}. Cameras: `bench/camera_sim.py`, one process replaying
a pre-encoded clip ({res["camera"]}) to every RTSP session (RTP over TCP), starting points
spread over the GOP; its own CPU and the frames it had to drop are in the table. Each camera
is in `[[pull.cameras]]` and is snapshotted over REST once every {res["interval_s"]:.0f} s
(staggered; a kept-alive client per thread, the clock stops at the last byte); {res["window_s"]:.0f} s
per step, after a first pass of {res.get("settle_s", 0):.0f} s that is not in the figures but
in its own column (each camera's first snapshot makes its decoder: the window measures a
server holding its cameras). Freshness: `X-Frame-Age-Ms` plus the transfer, how old the picture is when it
arrives. CPU: the server and its FFmpeg children, % of one core ({CORES} cores); "idle" is
before the snapshots start; per camera figures leave out a server with no camera
({res["bare_server"]["cpu_pct"]:.1f} % of a core, {res["bare_server"]["mem_mib"]:.0f} MiB PSS). Held: every snapshot answered, p99 <= 250 ms, >= 30 % of the
machine left.

| cameras | p50 ms | p99 ms | n | failed | fresh p50 ms | idle % per camera | CPU % | CPU % per camera | left % | machine busy % | PSS MiB per camera | simulator CPU % / dropped | first pass p50 / p99 ms, CPU % | |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
{steps}

Held: **{held} cameras**.

Floors, in one process on the clip's own frames, one thread: a frame decodes in
{f["decode_frame_ms"]:.2f} ms on average; a snapshot of a camera nobody watches decodes from the
GOP's keyframe to the newest frame: {f["decode_from_key_mean_ms"]:.0f} ms on average (p50
{f["decode_from_key_p50_ms"]:.0f}, at most {f["decode_from_key_max_ms"]:.0f}); fpng
{f["png_p50_ms"]:.1f} ms. So a snapshot of every camera every {res["interval_s"]:.0f} s costs at
least {per_snapshot / res["interval_s"] / 10:.2f} % of a core per camera in decoding and
encoding alone, before any RTSP, and 70 % of this machine ({budget:.0f} % of a core) holds at
most **{floor_cams:.0f} cameras** on that floor; decoding every frame instead costs
{f["decode_every_frame_pct"]:.0f} % of a core per camera.

Against what users run instead, on {a["cameras"]} of the same cameras, each asked every
{res["interval_s"]:.0f} s:

| | p50 ms | p99 ms | failed | fresh p50 / p99 ms | CPU % of a core per camera | memory MiB per camera |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

The FFmpeg command line connects, waits for a keyframe and exits for every picture: its
picture is newer than the request, and its cost is the latency. OpenCV decodes every frame of
every camera to keep the newest ready (read at {a.get("opencv", {}).get("fps_read", 0):.1f} fps
per camera).
"""


def first_pass(run: dict) -> str:
    first = run.get("first_pass") or {}
    if not first.get("n"):
        return "-"
    return f"{fmt(first['p50_ms'])} / {fmt(first['p99_ms'])}, {first['cpu_pct']:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="10,50,100,125,150")
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--anchor-cameras", type=int, default=10)
    parser.add_argument("--no-anchors", action="store_true")
    parser.add_argument(
        "--settle",
        type=float,
        default=None,
        help="seconds of a first pass before each step's window (default: one interval; 0: none)",
    )
    args = parser.parse_args()
    steps = [int(v) for v in args.steps.split(",")]
    if args.anchor_cameras not in steps:
        steps = sorted({*steps, args.anchor_cameras})
    clip = camera_h264()
    res: dict = {
        "command": " ".join(["python", "bench/cameras.py", *sys.argv[1:]]),
        "time": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "camera": "720p30 x264 veryfast main profile, no B-frames, GOP 60, sensor noise, "
        "2.5 Mbit/s",
        "interval_s": args.interval,
        "window_s": args.window,
        "settle_s": args.interval if args.settle is None else args.settle,
        "steps": [],
        "anchors": {"cameras": args.anchor_cameras},
    }
    log("floors: decoding and encoding the clip's frames in process")
    res["floors"] = floors(clip)
    log(json.dumps(res["floors"]))
    res["bare_server"] = bare = bare_server()
    sim = SimCameras(clip)
    try:
        for n in steps:
            run = streamsnap_step(sim, n, args.interval, args.window, bare, res["settle_s"])
            res["steps"].append(run)
            if run["failed"] > run["n"]:  # most snapshots failing: larger steps tell nothing
                break
        if not args.no_anchors:
            n = args.anchor_cameras
            res["anchors"]["ffmpeg"] = ffmpeg_cli(sim, n, args.interval, args.window)
            res["anchors"]["opencv"] = opencv(sim, n, args.interval, args.window)
    finally:
        sim.stop()
    res["bench_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cameras.json").write_text(json.dumps(res, indent=1))
    text = report(res)
    (OUT / "cameras.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
