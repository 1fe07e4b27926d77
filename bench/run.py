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
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.media import FFMPEG  # noqa: E402
from tests.helpers.nginx import NginxRtmp, nginx_available  # noqa: E402
from tests.helpers.server import ServerProcess, write_config  # noqa: E402

OUT = ROOT / "bench" / "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_clip(size: str, seconds: int = 20) -> Path:
    """A 30 fps H.264 clip, GOP 2 s, as a typical encoder (x264 veryfast, B-frames) makes it."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"clip-{size}.flv"
    if not path.exists():
        log(f"encoding {path.name}")
        subprocess.run(
            [
                FFMPEG,
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                f"testsrc2=size={size}:rate=30",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440",
                "-t",
                str(seconds),
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-g",
                "60",
                "-keyint_min",
                "60",
                "-pix_fmt",
                "yuv420p",
                "-c:a",
                "aac",
                "-b:a",
                "64k",
                "-f",
                "flv",
                str(path),
            ],
            check=True,
        )
    return path


def publish(clip: Path, url: str) -> subprocess.Popen[bytes]:
    """Loop a clip into an RTMP server in real time, without re-encoding (a cheap publisher)."""
    return subprocess.Popen(
        [
            FFMPEG,
            "-v",
            "error",
            "-re",
            "-stream_loop",
            "-1",
            "-i",
            str(clip),
            "-c",
            "copy",
            "-f",
            "flv",
            url,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def rest_snapshot_ms(server: ServerProcess, name: str) -> float:
    body = json.dumps({"streamName": name}).encode()
    t0 = time.perf_counter()
    req = urllib.request.Request(server.http + "/rest-api/stream/snapshot", data=body)
    with urllib.request.urlopen(req, timeout=30) as resp:
        data = json.loads(resp.read())["data"]
    elapsed = (time.perf_counter() - t0) * 1000
    assert data.startswith("iVBORw0KGgo")
    return elapsed


def ffmpeg_cli_ms(url: str, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [FFMPEG, "-v", "error", "-y", "-i", url, "-frames:v", "1", str(out)],
        check=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    return (time.perf_counter() - t0) * 1000


def wait_live(server: ServerProcess, name: str) -> None:
    server.wait_stream(name, timeout=30, frames=60)


def bench_latency(
    servers: dict[str, ServerProcess],
    nginx: NginxRtmp | None,
    sizes: list[str],
    n_rest: int,
    n_cli: int,
) -> dict:
    """REST snapshot latency on each server (decode modes), and the FFmpeg CLI on nginx-rtmp."""
    results: dict = {}
    for size in sizes:
        clip = make_clip(size)
        name = f"lat{size}"
        pubs = [publish(clip, srv.rtmp_url(name)) for srv in servers.values()]
        if nginx:
            pubs.append(publish(clip, nginx.url(name)))
        results[size] = {}
        try:
            for srv in servers.values():
                wait_live(srv, name)
            time.sleep(2)
            for label, srv in servers.items():
                log(f"{size}: {n_rest} REST snapshots at random moments ({label} decode)")
                rest = []
                for _ in range(n_rest):
                    time.sleep(random.uniform(0.2, 1.2))  # land anywhere in the GOP
                    rest.append(rest_snapshot_ms(srv, name))
                results[size][f"rest_{label}_ms"] = rest
            if nginx:
                log(f"{size}: {n_cli} runs of ffmpeg -i rtmp://nginx/... -frames:v 1")
                results[size]["ffmpeg_cli_ms"] = [
                    ffmpeg_cli_ms(nginx.url(name), OUT / "cli.png") for _ in range(n_cli)
                ]
        finally:
            for p in pubs:
                stop(p)
        for srv in servers.values():
            srv.wait_gone(name)
    return results


def bench_idle(server: ServerProcess, nginx: NginxRtmp | None, streams: int, window: float) -> dict:
    clip = make_clip("1280x720")
    out: dict = {"streams": streams, "window_s": window}
    for label, pid, url_of in (
        ("streamsnap", server.proc.pid, server.rtmp_url),
        *((("nginx-rtmp", nginx.proc.pid, nginx.url),) if nginx else ()),
    ):
        time.sleep(2)
        c0 = cpu_seconds(pid)
        time.sleep(window / 2)
        base = (cpu_seconds(pid) - c0) / (window / 2)
        pubs = [publish(clip, url_of(f"idle{i}")) for i in range(streams)]
        try:
            if label == "streamsnap":
                for i in range(streams):
                    server.wait_stream(f"idle{i}", timeout=30, frames=30)
            time.sleep(3)
            c0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(window)
            used = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
        finally:
            for p in pubs:
                stop(p)
        per_stream = (used - base) / streams * 100
        log(
            f"idle {label}: {used * 100:.1f} % of a core for {streams} streams "
            f"(baseline {base * 100:.2f} %) -> {per_stream:.2f} % per stream"
        )
        out[label] = {
            "total_pct": used * 100,
            "baseline_pct": base * 100,
            "per_stream_pct": per_stream,
        }
        if label == "streamsnap":
            for i in range(streams):
                server.wait_gone(f"idle{i}")
    return out


def child_pids(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                out.append(int(entry.name))
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its live children (the server and its FFmpeg pulls)."""
    total = cpu_seconds(pid)
    for child in child_pids(pid):
        with contextlib.suppress(OSError, IndexError):
            total += cpu_seconds(child)
    return total


def bench_rtsp(
    server: ServerProcess, n_cold: int, n_warm: int, cameras: int, window: float
) -> dict:
    """Cold and warm snapshots of an RTSP camera, and the cost of keeping cameras pulled."""
    from tests.helpers.rtsp import RtspCamera, camera_available

    if not camera_available():
        log("GStreamer RTSP server not installed: RTSP benchmark skipped")
        return {}
    cam = RtspCamera(size="1280x720")
    out: dict = {"camera": "GStreamer RTSP server, x264 720p30, keyframe every 30 frames"}
    try:
        log(f"RTSP: {n_cold} cold snapshots (camera not yet pulled) vs the ffmpeg CLI")
        cold, cli = [], []
        for i in range(n_cold):
            cold.append(rest_snapshot_ms(server, cam.url(query=f"?cold={i}")))
            t0 = time.perf_counter()
            subprocess.run(
                [
                    FFMPEG,
                    "-v",
                    "error",
                    "-y",
                    "-rtsp_transport",
                    "tcp",
                    "-i",
                    cam.url(query=f"?cli={i}"),
                    "-frames:v",
                    "1",
                    str(OUT / "rtsp.png"),
                ],
                check=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
            cli.append((time.perf_counter() - t0) * 1000)
        out["cold_ms"], out["ffmpeg_cli_ms"] = cold, cli
        log(f"RTSP: {n_warm} warm snapshots")
        warm_url = cam.url(query="?warm")
        rest_snapshot_ms(server, warm_url)
        warm = []
        for _ in range(n_warm):
            time.sleep(random.uniform(0.2, 1.2))
            warm.append(rest_snapshot_ms(server, warm_url))
        out["warm_ms"] = warm
        deadline = time.monotonic() + 90  # let the idle pulls go before the baseline
        while server.request("POST", "/rest-api/stream/find_all")[0] != 404:
            if time.monotonic() > deadline:
                raise RuntimeError("RTSP pulls were not dropped after their idle timeout")
            time.sleep(1)
        time.sleep(2)
        pid = server.proc.pid
        c0 = tree_cpu_seconds(pid)
        time.sleep(window / 2)
        base = (tree_cpu_seconds(pid) - c0) / (window / 2)
        urls = [cam.url(query=f"?idle={i}") for i in range(cameras)]
        for url in urls:  # find starts the pull without asking for a picture: truly idle
            server.request("POST", "/rest-api/stream/find", {"name": url})
        for url in urls:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                status, raw, _ = server.request("POST", "/rest-api/stream/find", {"name": url})
                if status == 200 and json.loads(raw)[0]["framesIn"] > 0:
                    break
                time.sleep(0.2)
        time.sleep(3)
        c0, t0 = tree_cpu_seconds(pid), time.monotonic()
        # keep them in use (find, not snapshot: no decode) so the idle timeout does not drop them
        for _ in range(int(window)):
            for url in urls:
                server.request("POST", "/rest-api/stream/find", {"name": url})
            time.sleep(1)
        used = (tree_cpu_seconds(pid) - c0) / (time.monotonic() - t0)
        per = (used - base) / cameras * 100
        log(
            f"RTSP idle: {used * 100:.1f} % of a core for {cameras} cameras "
            f"(server + FFmpeg children) -> {per:.2f} % per camera"
        )
        out["idle"] = {
            "cameras": cameras,
            "total_pct": used * 100,
            "baseline_pct": base * 100,
            "per_camera_pct": per,
        }
    finally:
        cam.stop()
    return out


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


WEBRTC_JS = """async ([wsUrl, name, rounds]) => {
    const S = Flashphoner.constants.SESSION_STATUS, T = Flashphoner.constants.STREAM_STATUS;
    const session = await new Promise((ok, fail) => Flashphoner.createSession({urlServer: wsUrl})
        .on(S.ESTABLISHED, ok).on(S.FAILED, fail));
    const display = document.createElement('div');
    document.body.appendChild(display);
    const t0 = performance.now();
    await new Promise((ok, fail) => session.createStream({name, display, receiveVideo: false,
        receiveAudio: false, constraints: {audio: false, video: {width: 1280, height: 720}}})
        .on(T.PUBLISHING, ok).on(T.FAILED, fail).publish());
    const published = performance.now() - t0;
    const snap = () => new Promise((ok) => {
        const t = performance.now();
        session.createStream({name}).on('STREAM_EVENT', (e) => ok([e.type, performance.now() - t]))
            .snapshot();
    });
    let first = null;
    while (first === null && performance.now() - t0 < 20000) {
        const [type] = await snap();
        if (type === 'snapshotCompleted') first = performance.now() - t0;
    }
    const lat = [];
    for (let i = 0; i < rounds; i++) {
        await new Promise((r) => setTimeout(r, 100 + Math.random() * 400));
        const [type, ms] = await snap();
        if (type === 'snapshotCompleted') lat.push(ms);
    }
    window.benchSession = session;
    return {published, first, lat};
}"""


def bench_webrtc(server: ServerProcess, rounds: int, window: float) -> dict:
    """A browser publishing 720p through the WebSDK: time to PUBLISHING, to the first snapshot,
    WebSocket snapshot latency; server CPU and memory per WebRTC publisher."""
    from tests.helpers.browser import browser_available, chromium, make_y4m

    status = server.request("GET", "/sdk/flashphoner.js")[0]
    if not browser_available() or status != 200:
        log("chromium, playwright or the WebSDK missing: WebRTC benchmark skipped")
        return {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-webrtc-"))
    y4m = make_y4m(tmp / "cam.y4m", 1280, 720)
    out: dict = {}
    pid = server.proc.pid
    try:
        with chromium(tmp, y4m) as browser:
            page = browser.new_page()
            page.goto(server.http + "/pages/stream-snapshot.html")
            log(f"WebRTC: browser publishes 720p; {rounds} snapshots over the WebSocket API")
            ws = f"ws://127.0.0.1:{server.ports['ws']}"
            c_before = cpu_seconds(pid)
            time.sleep(2)
            base = (cpu_seconds(pid) - c_before) / 2
            result = page.evaluate(WEBRTC_JS, [ws, "benchrtc", rounds])
            out.update(
                publish_ms=result["published"],
                first_snapshot_ms=result["first"],
                ws_snapshot_ms=result["lat"],
            )
            info = server.wait_stream("benchrtc")
            out["size"] = f"{info['width']}x{info['height']}"
            out["codec"] = info["videoCodec"]
            time.sleep(3)
            rss0 = rss_mib(pid)
            c0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(window)
            used = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
            out["cpu_pct"] = (used - base) * 100
            out["rss_growth_mib"] = rss_mib(pid) - rss0
            out["window_s"] = window
            info = server.wait_stream("benchrtc")
            out["size_end"] = f"{info['width']}x{info['height']}"
            log(
                f"WebRTC: {out['cpu_pct']:.1f} % of a core for one {out['size_end']} "
                f"{out['codec']} publisher, RSS {out['rss_growth_mib']:+.1f} MiB in {window:.0f} s"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def webrtc_section(w: dict) -> str:
    if not w:
        return "## WebRTC\nSkipped: Chromium, Playwright or the WebSDK not installed.\n"
    lat = w["ws_snapshot_ms"]
    return f"""## WebRTC (browser through the WCS WebSocket API)
Headless Chromium with a fake 1280x720 camera, the real WebSDK (`flashphoner.js`) on
streamsnap's page, everything on 127.0.0.1. The browser encodes {w["codec"]} and adapts its
resolution to its bandwidth estimate (it sent {w["size"]} at first, {w["size_end"]} later).

| measure | value |
|---|---|
| `publishStream` → PUBLISHING | {w["publish_ms"]:.0f} ms |
| `publishStream` → first snapshot available | {w["first_snapshot_ms"]:.0f} ms |
| snapshot over the WebSocket (`stream.snapshot()` → `snapshotCompleted`), p50 / p99, n={len(lat)} | {statistics.median(lat):.0f} / {percentile(lat, 99):.0f} ms |
| server CPU per WebRTC publisher (aiortc: SRTP, depacketizing, decoding every frame) | {w["cpu_pct"]:.1f} % of a core |
| server memory growth over {w["window_s"]:.0f} s of publishing | {w["rss_growth_mib"]:+.1f} MiB |
"""


def metrics_of(server: ServerProcess) -> dict[str, float]:
    """Sum every sample of each metric in /metrics (labels ignored)."""
    out: dict[str, float] = {}
    text = server.request("GET", "/metrics")[1].decode()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            name = name.split("{", 1)[0]
            out[name] = out.get(name, 0.0) + float(value)
    return out


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
            pubs = [publish(clip, server.rtmp_url(f"auto{i}")) for i in range(n)]
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


def auto_section(auto: dict) -> str:
    if not auto:
        return ""
    runs = auto["runs"]
    rows = "\n".join(
        f"| {r['streams']} | {r['cpu_pct']:.0f} | {r['cpu_pct'] / r['streams']:.1f} | "
        f"{r['written']:.0f} / {r['expected']:.0f} | {r['skipped']:.0f} | "
        f"{'yes' if r['kept_up'] else '**no**'} |"
        for r in runs
    )
    good = [r for r in runs if r["kept_up"]]
    best = max((r["streams"] for r in good), default=0)
    return f"""## Auto snapshots (rate 30 on 720p30 streams)
Every 30th frame of every stream written as PNG (`snapshot_auto_rate = 30`, retention 5), RTMP
publishers looping a 720p30 clip (`-c copy`), {auto["window_s"]:.0f} s per step. "Kept up": no
turn skipped and every expected file written. CPU is the server's, in % of one core (this
machine has {os.cpu_count()}).

| streams | CPU % | CPU % per stream | files written / expected | skipped | kept up |
|---|---|---|---|---|---|
{rows}

Largest number of streams kept up with: **{best}** ({best / (os.cpu_count() or 1):.1f} per core).
"""


def machine() -> dict:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    import av

    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "python": platform.python_version(),
        "pyav_ffmpeg": ".".join(map(str, av.library_versions["libavcodec"])),
        "ffmpeg_cli": subprocess.run(
            [FFMPEG, "-version"], capture_output=True, text=True
        ).stdout.split("\n")[0],
        "kernel": platform.release(),
    }


def rtsp_section(rtsp: dict) -> str:
    if not rtsp:
        return "## RTSP cameras\nSkipped: GStreamer RTSP server not installed.\n"
    cold, cli, warm = rtsp["cold_ms"], rtsp["ffmpeg_cli_ms"], rtsp["warm_ms"]
    idle = rtsp["idle"]
    return f"""## RTSP cameras
Camera: {rtsp["camera"]} (one shared encoder; every pull below is a separate RTSP session and
FFmpeg child). Cold: a snapshot of a camera URL not yet pulled (FFmpeg starts, connects, waits
for a keyframe). Anchor: `ffmpeg -rtsp_transport tcp -i URL -frames:v 1 out.png` against the
same camera, alternating with the cold snapshots. Warm: snapshots of a camera already pulled,
0.2-1.2 s apart.

| measure | p50 ms | p99 ms | n |
|---|---|---|---|
| streamsnap cold snapshot | {statistics.median(cold):.0f} | {percentile(cold, 99):.0f} | {len(cold)} |
| ffmpeg CLI, one frame | {statistics.median(cli):.0f} | {percentile(cli, 99):.0f} | {len(cli)} |
| streamsnap warm snapshot | {statistics.median(warm):.0f} | {percentile(warm, 99):.0f} | {len(warm)} |

Cost of keeping 720p30 cameras pulled with no snapshots: {idle["cameras"]} cameras,
{idle["total_pct"]:.1f} % of a core for the server and its FFmpeg children together (baseline
{idle["baseline_pct"]:.2f} %), **{idle["per_camera_pct"]:.2f} % of a core per camera**.
"""


PARTS = ["rtmp", "rtsp", "webrtc", "auto"]
RESULT_KEYS = ["latency", "idle", "rtsp", "webrtc", "auto"]


def summarize(results: dict, argv: list[str]) -> str:
    runs_text = (
        "\n".join(
            f"- {part}: `{r['command']}` at {r['time']}"
            for part, r in sorted(results.get("runs", {}).items())
        )
        or f"- `{' '.join(argv)}`"
    )
    lat, idle, rtsp = results["latency"], results["idle"], results["rtsp"]
    webrtc, auto, info = results["webrtc"], results["auto"], results["machine"]
    rows = []
    for size, r in lat.items():
        cells = [size]
        for key in ("rest_lazy_ms", "rest_adaptive_ms", "ffmpeg_cli_ms"):
            values = r.get(key)
            cells += (
                [f"{statistics.median(values):.0f}", f"{percentile(values, 99):.0f}"]
                if values
                else ["-", "-"]
            )
        lazy, cli = r.get("rest_lazy_ms"), r.get("ffmpeg_cli_ms")
        cells.append(
            f"{statistics.median(cli) / statistics.median(lazy):.0f}x" if lazy and cli else "-"
        )
        rows.append("| " + " | ".join(cells) + " |")
    idle_rows = []
    for label in ("streamsnap", "nginx-rtmp"):
        if label in idle:
            d = idle[label]
            idle_rows.append(
                f"| {label} | {idle['streams']} | {d['total_pct']:.1f} | "
                f"{d['baseline_pct']:.2f} | {d['per_stream_pct']:.2f} |"
            )
    return f"""# Benchmarks

Command: `make bench` (= `python bench/run.py`: every part, each against its anchor in the same
run, on the same streams; `--only PART` re-runs one part and keeps the others' last numbers).
Raw numbers: `bench/out/results.json` (not committed). The parts below come from:
{runs_text}

Machine: {info["cpu"]}, {info["cores"]} cores, {info["memory_gib"]} GiB, Linux {info["kernel"]},
Python {info["python"]}, PyAV's libavcodec {info["pyav_ffmpeg"]}, {info["ffmpeg_cli"]}.

Streams: 30 fps H.264 (x264 `veryfast`, B-frames, GOP 60 = 2 s) + AAC, looped in real time by
`ffmpeg -re -stream_loop -1 -c copy` into streamsnap's RTMP port and into nginx-rtmp.

## Snapshot latency (REST)
Client-side wall time of `POST /rest-api/stream/snapshot` (base64 PNG of the full frame), 100
requests 0.2-1.2 s apart so that they land anywhere in the GOP, on two servers fed the same
stream: one with `decode = "lazy"` (packets only; each request decodes what arrived since the
last one, up to a GOP) and one with the default `decode = "adaptive"` (at ~1.4 requests a
second the stream is soon decoded as it arrives, so a request only encodes). Anchor: the FFmpeg
command line users run without server support, `ffmpeg -i rtmp://127.0.0.1/live/NAME -frames:v
1 out.png`, against nginx-rtmp carrying the same stream (15 runs).

| stream | lazy p50 ms | lazy p99 ms | adaptive p50 ms | adaptive p99 ms | ffmpeg CLI p50 ms | CLI p99 ms | lazy speed-up at p50 |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

## Idle cost per stream (nobody asks for a picture)
Server CPU time (utime+stime from /proc) over {idle.get("window_s", 0):.0f} s with 720p30
publishers connected, minus the server's own idle baseline, per stream, in % of one core.
nginx-rtmp, a C server that only relays packets, is the floor for "keeping packets".

| server | streams | total % of a core | baseline % | per stream % |
|---|---|---|---|---|
{chr(10).join(idle_rows)}

{rtsp_section(rtsp)}
{webrtc_section(webrtc)}
{auto_section(auto)}
## What limits
- Lazy decode: a snapshot decodes every frame since the last keyframe the stream's decoder has
  not seen yet (at most one GOP: 60 frames here), then converts to RGB and writes PNG (fpng,
  ~5 ms at 720p). p99 is set by requests that land late in a GOP after a quiet spell (a full GOP
  decode, 2-5 ms a frame at 720p-1080p on this CPU); requests close together decode only the
  frames in between. The adaptive policy decodes a stream asked for often as its frames arrive,
  leaving the RGB conversion and the PNG encode (plus HTTP and base64) on the request path.
- B-frame streams show the newest picture the decoder has released: its reorder delay is 2
  frames with x264 defaults.
- The FFmpeg command line pays a process start, the RTMP handshake and play, stream probing,
  and the wait for the next keyframe (up to one GOP): seconds, whatever the machine.
- A cold RTSP snapshot is bounded by the camera: the RTSP handshake and the wait for its next
  keyframe (up to 1 s here), the same wait the FFmpeg command line has; after that, snapshots
  are warm. An RTSP camera costs its FFmpeg remux (`-c copy`) plus reading FLV tags.
- Idle cost is Python work per RTMP message (chunk parsing, FLV tag parsing, the on_frame
  hook) for ~30 video + ~47 audio messages a second per stream.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    parser.add_argument("--idle-streams", type=int, default=10)
    parser.add_argument("--max-auto-streams", type=int, default=40)
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
    results_file = OUT / "results.json"
    previous = json.loads(results_file.read_text()) if results_file.exists() else {}
    results = {
        "machine": machine(),
        "runs": previous.get("runs", {}),
        **{k: previous.get(k, {}) for k in RESULT_KEYS},
    }
    if args.report:
        (ROOT / "BENCHMARKS.md").write_text(summarize(results, []))
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
        webrtc={"ice_addresses": ["127.0.0.1"]},
    )
    server = ServerProcess(config, cwd=work).start()
    try:
        if run("rtmp"):
            sizes = ["1280x720", "1920x1080"]
            lazy_config = write_config(
                work / "lazy.toml",
                server={"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
                streams={"decode": "lazy"},
            )
            lazy = ServerProcess(lazy_config, cwd=work).start()
            try:
                results["latency"] = bench_latency(
                    {"lazy": lazy, "adaptive": server}, nginx, sizes, n_rest, n_cli
                )
            finally:
                lazy.stop()
            results["idle"] = bench_idle(server, nginx, args.idle_streams, window)
        if run("rtsp"):
            results["rtsp"] = bench_rtsp(server, n_cli, n_rest, args.idle_streams, window)
        if run("webrtc"):
            results["webrtc"] = bench_webrtc(server, n_rest, window)
    finally:
        server.stop()
        if nginx:
            nginx.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    if run("auto"):
        results["auto"] = bench_auto(window / 2, args.max_auto_streams)
    command = " ".join(["python", "bench/run.py", *sys.argv[1:]])
    runs = results.setdefault("runs", {})
    for part in PARTS:
        if run(part):
            runs[part] = {"command": command, "time": time.strftime("%Y-%m-%d %H:%M")}
    OUT.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(results, indent=1))
    argv = ["python", "bench/run.py", *sys.argv[1:]]
    report = summarize(results, argv)
    (ROOT / "BENCHMARKS.md").write_text(report)
    log("wrote BENCHMARKS.md")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
