"""Shared measuring helpers of the benchmark: where its output goes (``bench/out``), the test
clips and the FFmpeg publishers that loop them into a server, the REST snapshot timer, the CPU
(utime+stime) and memory (RSS, PSS) readings of a process and its children from /proc, the
server's /metrics summed, percentiles, and the description of the machine the run is on.
Every ``bench/part_*.py`` module and ``bench/run.py`` build on these."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.helpers.media import FFMPEG
from tests.helpers.server import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


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


def idle_cpu(pid: int, window: float, start: Callable[[], object]) -> tuple[float, float]:
    """The CPU of ``pid`` as a share of one core: its own baseline over ``window / 2``
    seconds, then, once ``start()`` has brought the streams up and 3 s have passed, over
    ``window`` seconds with them."""
    c0 = cpu_seconds(pid)
    time.sleep(window / 2)
    base = (cpu_seconds(pid) - c0) / (window / 2)
    start()
    time.sleep(3)
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    return base, (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def rest_snapshot_ms(server: ServerProcess, name: str) -> float:
    body = json.dumps({"streamName": name}).encode()
    t0 = time.perf_counter()
    req = urllib.request.Request(
        server.http + "/rest-api/stream/snapshot",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        data = json.loads(resp.read())["data"]
    elapsed = (time.perf_counter() - t0) * 1000
    assert data.startswith("iVBORw0KGgo")
    return elapsed


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


def keep_camera_open(cam: object) -> subprocess.Popen[bytes]:
    """One session held open for the camera's lifetime (FFmpeg reading to null): GStreamer's
    shared media, once every session has left, does not always serve a new one."""
    return subprocess.Popen(
        [
            *(FFMPEG, "-v", "quiet", "-rtsp_transport", "tcp"),
            *("-i", cam.url(query="?keeper"), "-c", "copy", "-f", "null", "-"),  # type: ignore[attr-defined]
        ],
        stdin=subprocess.DEVNULL,
    )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pss_mib(pid: int) -> float:
    """Proportional set size: private memory plus a fair share of shared pages (libraries)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tree_pss_mib(pid: int) -> float:
    return pss_mib(pid) + sum(pss_mib(child) for child in child_pids(pid))


def metrics_of(server: ServerProcess, stream: str | None = None) -> dict[str, float]:
    """Sum every sample of each metric in /metrics (labels ignored); with ``stream``, of the
    per-stream metrics only that stream's samples."""
    out: dict[str, float] = {}
    text = server.request("GET", "/metrics")[1].decode()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            name, _, labels = name.partition("{")
            if stream is not None and "stream=" in labels and f'stream="{stream}"' not in labels:
                continue
            out[name] = out.get(name, 0.0) + float(value)
    return out


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
