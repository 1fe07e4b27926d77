"""Start ``python -m streamsnap serve`` as a user would, on ports the OS picks; stop it by pid."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

READY = re.compile(r"streamsnap ready: (.*)")


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)  # strings, numbers and booleans are spelt the same


def write_config(path: Path, **sections: dict[str, Any]) -> Path:
    """Write a TOML config: ``write_config(p, server={"http_port": 0}, snapshot={...})``."""
    lines = []
    for section, table in sections.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            lines.append(f"{key} = {toml_value(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


class ServerProcess:
    def __init__(self, config: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen[str] | None = None
        self.ports: dict[str, int] = {}
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.launcher = [sys.executable, "-m", "streamsnap"]  # e.g. under cProfile in bench/

    def start(self, timeout: float = 20.0) -> ServerProcess:
        self.proc = subprocess.Popen(
            [*self.launcher, "serve", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=self.cwd,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError("server did not become ready:\n" + self.log)
        if not self.ports:
            self.stop()
            raise RuntimeError("server exited:\n" + self.log)
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            m = READY.search(line)
            if m:
                self.ports = {
                    k: int(v) for k, v in (item.split("=") for item in m.group(1).split(", "))
                }
                self._ready.set()
        self._ready.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_log(self, pattern: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if rx.search(line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r} within {timeout}s:\n{self.log}")

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    def rtmp_url(self, name: str, app: str = "live") -> str:
        return f"rtmp://127.0.0.1:{self.ports['rtmp']}/{app}/{name}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | dict | None = None,
        timeout: float = 15.0,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        """``content_type`` defaults to JSON for a dict body and for REST methods (what WCS
        clients send); "" sends none."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        if content_type is None and (isinstance(body, dict) or path.startswith("/rest-api/")):
            content_type = "application/json"
        headers = {**(headers or {}), **({"Content-Type": content_type} if content_type else {})}
        req = urllib.request.Request(self.http + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)
        except urllib.error.URLError:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {self.proc.returncode}:\n{self.log}"
                ) from None
            raise

    def snapshot(self, name: str, timeout: float = 15.0) -> tuple[int, Any]:
        status, raw, _ = self.request(
            "POST", "/rest-api/stream/snapshot", {"streamName": name}, timeout=timeout
        )
        return status, json.loads(raw)

    def wait_stream(self, name: str, timeout: float = 15.0, frames: int = 1) -> dict[str, Any]:
        """Wait until ``name`` is live and has received ``frames`` video frames."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, raw, _ = self.request("POST", "/rest-api/stream/find", {"name": name})
            if status == 200:
                info = json.loads(raw)[0]
                if info["framesIn"] >= frames:
                    return info
            time.sleep(0.1)
        raise AssertionError(f"stream {name!r} not live within {timeout}s:\n{self.log}")

    def wait_gone(self, name: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _, _ = self.request("POST", "/rest-api/stream/find", {"name": name})
            if status == 404:
                return
            time.sleep(0.1)
        raise AssertionError(f"stream {name!r} still live after {timeout}s")

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def find(server: ServerProcess, name: str) -> dict[str, Any] | None:
    """The stream's ``/rest-api/stream/find`` entry, or None when it is not live."""
    status, raw, _ = server.request("POST", "/rest-api/stream/find", {"name": name})
    return json.loads(raw)[0] if status == 200 else None


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
