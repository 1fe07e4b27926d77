"""Shared measuring helpers of the benchmark: where its output goes (``bench/out``), the test
clips and the FFmpeg publishers that loop them into a server, the REST snapshot timer, the CPU
(utime+stime) and memory (RSS, PSS) readings of a process and its children from /proc, the
server's /metrics summed, percentiles, and the description of the machine the run is on.
Every ``bench/part_*.py`` module and ``bench/run.py`` build on these."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers.media import FFMPEG
from tests.helpers.server import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


OUT = ROOT / "bench" / "out"


CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# bitrate by picture size, as cameras and encoders are set up: 720p 2.5 Mbit/s, 1080p 5 Mbit/s
BITRATES = {"426x240": 500, "640x360": 1000, "1280x720": 2500, "1920x1080": 5000}
GOP = 60  # frames: 2 s at 30 fps, what cameras and OBS send by default


def make_clip(size: str, seconds: int = 20, bframes: bool = True, audio: bool = True) -> Path:
    """A camera-like 30 fps H.264 clip: sensor noise that changes every frame (so that no two
    pictures are the same and every frame costs what a camera's does to decode and encode),
    x264 ``veryfast`` at the camera's bitrate (``BITRATES``), GOP 2 s, B-frames (3, x264's
    choice) or none (many IP cameras), AAC audio as encoders send it."""
    OUT.mkdir(parents=True, exist_ok=True)
    kbps = BITRATES.get(size, 2500)
    tag = f"{size}-{kbps}k-{'bf3' if bframes else 'bf0'}{'' if audio else '-an'}"
    path = OUT / f"camera-{tag}.flv"
    if not path.exists():
        log(f"encoding {path.name}")
        argv = [FFMPEG, "-v", "error", "-y"]
        argv += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30,noise=alls=14:allf=t+u"]
        if audio:
            argv += ["-f", "lavfi", "-i", "sine=frequency=440"]
        argv += ["-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast"]
        argv += ["-bf", "3" if bframes else "0", "-g", str(GOP), "-keyint_min", str(GOP)]
        argv += ["-b:v", f"{kbps}k", "-maxrate", f"{kbps}k", "-bufsize", f"{2 * kbps}k"]
        argv += ["-pix_fmt", "yuv420p"]
        argv += ["-c:a", "aac", "-b:a", "64k"] if audio else ["-an"]
        subprocess.run([*argv, "-f", "flv", str(path)], check=True)
    return path


def camera_h264(size: str = "1280x720", seconds: int = 10) -> Path:
    """What an IP camera sends, as a raw H.264 (Annex-B) clip for ``bench/camera_sim.py``:
    the camera-like picture of :func:`make_clip`, x264 ``veryfast`` main profile (CABAC,
    deblocking), no B-frames, GOP 2 s, at the camera's bitrate, SPS and PPS before every IDR
    as cameras repeat them."""
    OUT.mkdir(parents=True, exist_ok=True)
    kbps = BITRATES.get(size, 2500)
    path = OUT / f"camera-{size}-{kbps}k-main-bf0.h264"
    if not path.exists():
        log(f"encoding {path.name}")
        argv = [FFMPEG, "-v", "error", "-y"]
        argv += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30,noise=alls=14:allf=t+u"]
        argv += ["-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-profile:v"]
        argv += ["main", "-bf", "0", "-g", str(GOP), "-keyint_min", str(GOP)]
        argv += ["-b:v", f"{kbps}k", "-maxrate", f"{kbps}k", "-bufsize", f"{2 * kbps}k"]
        argv += ["-x264-params", "repeat-headers=1", "-pix_fmt", "yuv420p", "-an"]
        subprocess.run([*argv, "-f", "h264", str(path)], check=True)
    return path


class SimCameras:
    """``bench/camera_sim.py`` serving ``clip``: one process, any number of cameras, no
    encoder. ``url(i)`` is camera i; ``stats()`` its latest stats line; ``pid`` for CPU."""

    def __init__(self, clip: Path, groups: int = 12) -> None:
        import sys
        import threading

        argv = [sys.executable, str(ROOT / "bench" / "camera_sim.py"), "--clip", str(clip)]
        self.proc = subprocess.Popen(
            [*argv, "--groups", str(groups)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"camera simulator did not start: {line}")
        self.port = int(line.split()[1])
        self.pid = self.proc.pid
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def url(self, i: int | str) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam/{i}"

    def server(self, names: list[str], work: Path) -> ServerProcess:
        """A server started in ``work`` with these cameras in ``[[pull.cameras]]``."""
        from tests.helpers.server import write_config

        config = write_config(
            work / "cameras.toml",
            server={"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
            pull={"cameras": [{"name": name, "url": self.url(name)} for name in names]},
        )
        return ServerProcess(config, cwd=work).start()

    def stats(self) -> dict[str, float]:
        found = [line for line in self.lines if line.startswith("stats ")]
        if not found:
            return {}
        return {k: float(v) for k, v in (f.split("=") for f in found[-1].split()[1:])}

    def stop(self) -> None:
        stop(self.proc)


def publish_spread(clip: Path, urls: list[str], gop_s: float = GOP / 30) -> list:
    """A publisher per URL, started ``gop_s / len(urls)`` apart in random order, so that their
    keyframes fall at spread offsets within the GOP (as independent cameras do), not all at
    once."""
    import random

    pubs = []
    for url in random.sample(urls, len(urls)):
        pubs.append(publish(clip, url))
        time.sleep(gop_s / len(urls))
    return pubs


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


class LeanClient:
    """One kept-alive HTTP connection, as a polling client keeps it: the clock runs from
        sending the request to the last byte of the answer; decoding the answer comes after and
        is not timed. Each answer's ``Server-Timing`` is kept (``timing``: step -> ms), and its
    headers (``headers``)."""

    def __init__(self, base_url: str) -> None:
        url = urllib.parse.urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.conn: http.client.HTTPConnection | None = None
        self.timing: dict[str, float] = {}
        self.headers: http.client.HTTPMessage | dict[str, str] = {}  # of the last answer

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[float, int, bytes]:
        for attempt in (0, 1):  # the server may have closed an idle connection: once more
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                self.conn.connect()
            try:
                t0 = time.perf_counter()
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                raw = resp.read()
                ms = (time.perf_counter() - t0) * 1000
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt:
                    raise
                continue
            self.timing = parse_server_timing(resp.getheader("Server-Timing", ""))
            self.headers = resp.headers
            return ms, resp.status, raw
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def parse_server_timing(header: str) -> dict[str, float]:
    """``decode;dur=1.2;desc="...", shared;desc="..."`` -> {"decode": 1.2, "shared": 0.0}."""
    steps: dict[str, float] = {}
    for entry in filter(None, (e.strip() for e in header.split(","))):
        name, *params = (p.strip() for p in entry.split(";"))
        durations = [float(p[4:]) for p in params if p.startswith("dur=")]
        steps[name] = durations[0] if durations else 0.0
    return steps


_clients: dict[str, LeanClient] = {}


def lean_client(server: ServerProcess) -> LeanClient:
    """The kept-alive client of ``server`` (one per server, reused by every measurement)."""
    if server.http not in _clients:
        _clients[server.http] = LeanClient(server.http)
    return _clients[server.http]


def rest_snapshot(server: ServerProcess, name: str) -> tuple[float, dict[str, float]]:
    """One REST snapshot through the lean client: (ms to the last byte, Server-Timing)."""
    client = lean_client(server)
    body = json.dumps({"streamName": name}).encode()
    ms, status, raw = client.request(
        "POST", "/rest-api/stream/snapshot", body, {"Content-Type": "application/json"}
    )
    assert status == 200, raw[:300]
    assert json.loads(raw)["data"].startswith("iVBORw0KGgo")  # parsed after the clock stopped
    return ms, client.timing


def rest_snapshot_ms(server: ServerProcess, name: str) -> float:
    return rest_snapshot(server, name)[0]


def scheduled(
    ask: Callable[[str], Any], names: list[str], interval: float, window: float
) -> tuple[list[Any], int]:
    """``ask(name)`` once per name every ``interval`` s, staggered, for ``window`` s, from
    threads so that a slow answer never delays the schedule. Returns (answers, failures)."""
    step = interval / len(names)
    total = max(1, int(window / step))
    start = time.monotonic()
    import random

    order = random.sample(names, len(names))

    def one(name: str) -> dict | None:
        try:
            return ask(name)
        except Exception as exc:
            log(f"  snapshot of {name} failed: {exc!r}")
            return None

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = []
        for k in range(total):
            delay = start + k * step - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, order[k % len(order)]))
        results = [f.result() for f in futures]
    answers = [r for r in results if r is not None]
    return answers, len(results) - len(answers)


def threaded_rest_snapshot(server: ServerProcess) -> Callable[[str], dict[str, float | None]]:
    """A REST snapshot timer for :func:`scheduled`: a kept-alive client per thread (one
    connection must not be shared by threads). Returns ``ms`` to the last byte and
    ``fresh_ms``, how old the picture is when it has arrived (``X-Frame-Age-Ms`` plus the
    transfer; None without the header); raises on an error answer."""
    import threading

    local = threading.local()

    def ask(name: str) -> dict[str, float | None]:
        if not hasattr(local, "client"):
            local.client = LeanClient(server.http)
        body = json.dumps({"streamName": name}).encode()
        ms, status, raw = local.client.request(
            "POST", "/rest-api/stream/snapshot", body, {"Content-Type": "application/json"}
        )
        if status != 200:
            raise RuntimeError(f"{status}: {raw[:200]!r}")
        age = local.client.headers.get("X-Frame-Age-Ms")
        return {"ms": ms, "fresh_ms": float(age) + ms if age is not None else None}

    return ask


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
