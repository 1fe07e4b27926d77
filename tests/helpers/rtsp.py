"""A real RTSP camera for tests: GStreamer's RTSP server in a child process (system Python)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

SCRIPT = Path(__file__).with_name("rtsp_camera.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def camera_available() -> bool:
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    probe = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-c",
            "import gi; gi.require_version('GstRtspServer', '1.0'); "
            "from gi.repository import GstRtspServer",
        ],
        capture_output=True,
    )
    return probe.returncode == 0


class RtspCamera:
    """``rtsp://127.0.0.1:PORT/cam``; start again on the same port after :meth:`kill`."""

    def __init__(
        self,
        port: int = 0,
        size: str = "640x360",
        user: str | None = None,
        password: str | None = None,
        fps: int = 30,
        digest: bool = False,
        gop: int = 0,
        one_encoder: bool = False,
        preset: str = "ultrafast",
        profile: str = "baseline",
        pattern: str = "ball",
        bitrate: int = 0,
        codec: str = "h264",
        quality: int = 85,
    ) -> None:
        self.codec, self.quality = codec, quality  # --codec, and jpegenc's quality for MJPEG
        self.preset, self.profile = preset, profile  # x264enc speed-preset, H.264 profile
        self.pattern, self.bitrate = pattern, bitrate  # videotestsrc pattern, kbit/s
        self.size, self.user, self.password, self.fps = size, user, password, fps
        self.gop = gop or fps  # frames between keyframes
        self.one_encoder = one_encoder  # sessions of URLs differing by query share an encoder
        self.digest = digest
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> RtspCamera:
        argv = [
            SYSTEM_PYTHON,
            str(SCRIPT),
            "--port",
            str(self.port),
            "--size",
            self.size,
            "--fps",
            str(self.fps),
            "--gop",
            str(self.gop),
        ]
        if self.one_encoder:
            argv.append("--one-encoder")
        argv += ["--preset", self.preset, "--profile", self.profile, "--pattern", self.pattern]
        argv += ["--bitrate", str(self.bitrate)]
        argv += ["--codec", self.codec, "--quality", str(self.quality)]
        if self.user:
            argv += ["--user", self.user, "--password", self.password or ""]
            if self.digest:
                argv.append("--digest")
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"RTSP camera did not start: {line!r} {err}")
        self.port = int(line.split()[1])
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        return self

    def url(
        self,
        path: str = "/cam",
        user: str | None = None,
        password: str | None = None,
        query: str = "",
    ) -> str:
        cred = f"{user}:{password}@" if user is not None else ""
        return f"rtsp://{cred}127.0.0.1:{self.port}{path}{query}"

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
