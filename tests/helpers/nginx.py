"""nginx with the RTMP module (Debian's libnginx-mod-rtmp): a real RTMP server that is not
streamsnap, as the origin streamsnap pulls from and as the benchmark's anchor."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

NGINX_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")


def nginx_available() -> bool:
    return NGINX_MODULE.exists() and shutil.which("nginx") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NginxRtmp:
    """``rtmp://127.0.0.1:PORT/live/NAME``; :meth:`restart` keeps the port."""

    def __init__(self, port: int = 0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="nginx-rtmp-"))
        self.port = port or free_port()
        (self.dir / "logs").mkdir()
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(
            f"load_module {NGINX_MODULE};\ndaemon off;\nmaster_process off;\n"
            f"pid {self.dir}/nginx.pid;\nerror_log {self.dir}/logs/error.log warn;\n"
            "events { worker_connections 256; }\n"
            f"rtmp {{ server {{ listen 127.0.0.1:{self.port}; chunk_size 4096;\n"
            "  application live { live on; } } }\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> NginxRtmp:
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(self.dir), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx-rtmp did not start")

    def url(self, name: str) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{name}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
