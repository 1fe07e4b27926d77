"""streamsnap-s3: upload every saved snapshot to an S3-compatible bucket (AWS, SeaweedFS, MinIO).

A third-party streamsnap plugin. It registers the storage backend ``s3`` through the
``register_storage_backends`` hook; streamsnap hands it each complete snapshot file (auto
snapshots, and files landing in watched folders). Enable it with ``[storage] backends = ["s3"]``;
settings come from ``[s3]`` (see README.md), credentials also from the usual AWS variables.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import mimetypes
import os
import random
import re
from collections import deque
from pathlib import Path
from typing import Any

from aiobotocore.session import get_session
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from streamsnap import hookimpl

__version__ = "0.1.0"
log = logging.getLogger("streamsnap_s3")

_SEQUENCE = re.compile(r"_(\d+)\.[A-Za-z0-9]+$")


def _read_no_follow(file: Path) -> bytes:
    """The bytes of ``file``; a symlink is refused (it could point to any file of the host)."""
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(f"{file} is a symlink: not uploaded") from None
        raise
    with open(fd, "rb") as f:
        return f.read()


class S3Storage:
    """The ``s3`` storage backend.

    Settings (``[s3]``): ``bucket`` (required), ``prefix`` (key prefix, default ""),
    ``endpoint_url``, ``region`` (default "us-east-1"), ``access_key``/``secret_key`` (default:
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``), ``create_bucket`` (default false),
    ``attempts`` (default 5) and ``backoff_s`` (first retry delay, default 0.5, doubling),
    ``mirror_retention`` (default false) with ``retention`` (default 20, WCS's default): keep
    only the newest ``retention`` objects of each folder, as the server keeps files.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.bucket = str(config.get("bucket") or os.environ.get("STREAMSNAP_S3_BUCKET", ""))
        if not self.bucket:
            raise ValueError("[s3] bucket is required")
        self.prefix = str(config.get("prefix", "")).strip("/")
        self.endpoint_url = config.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
        self.region = str(
            config.get("region") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        )
        self.access_key = config.get("access_key") or os.environ.get("AWS_ACCESS_KEY_ID")
        self.secret_key = config.get("secret_key") or os.environ.get("AWS_SECRET_ACCESS_KEY")
        self.create_bucket = bool(config.get("create_bucket", False))
        self.attempts = max(1, int(config.get("attempts", 5)))
        self.backoff_s = float(config.get("backoff_s", 0.5))
        self.mirror_retention = bool(config.get("mirror_retention", False))
        self.retention = max(1, int(config.get("retention", 20)))
        self.uploaded = 0
        self.failed = 0
        self._remote: dict[str, deque[str]] = {}  # folder -> keys uploaded, oldest first
        self._client: Any = None
        self._client_cm: Any = None
        self._lock = asyncio.Lock()

    def key_for(self, path: Path) -> str:
        parts = [self.prefix, path.parent.name, path.name]
        return "/".join(p for p in parts if p)

    async def _s3(self) -> Any:
        async with self._lock:
            if self._client is None:
                self._client_cm = get_session().create_client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    region_name=self.region,
                    aws_access_key_id=self.access_key,
                    aws_secret_access_key=self.secret_key,
                    config=BotoConfig(
                        retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30
                    ),
                )
                self._client = await self._client_cm.__aenter__()
                if self.create_bucket:
                    try:
                        await self._client.create_bucket(Bucket=self.bucket)
                    except ClientError as exc:
                        code = exc.response.get("Error", {}).get("Code", "")
                        if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                            raise
            return self._client

    async def store(self, stream: Any, path: str) -> str:
        """Upload ``path``; retries with exponential backoff and jitter, then reports."""
        file = Path(path)
        key = self.key_for(file)
        body = await asyncio.to_thread(_read_no_follow, file)
        seq = _SEQUENCE.search(file.name)
        metadata = {
            "stream-name": _ascii(stream.name) if stream is not None else "",
            "media-session-id": stream.media_session_id if stream is not None else "",
            "sequence": seq.group(1).lstrip("0") or "0" if seq else "",
            "timestamp": str(int(file.stat().st_mtime * 1000)),
        }
        content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                client = await self._s3()
                await client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ContentType=content_type,
                    Metadata=metadata,
                )
                break
            except (BotoCoreError, ClientError, OSError) as exc:
                if attempt == self.attempts:
                    self.failed += 1
                    log.error(
                        "s3: upload of %s to s3://%s/%s failed after %d attempts: %s",
                        path,
                        self.bucket,
                        key,
                        attempt,
                        exc,
                    )
                    raise
                log.warning(
                    "s3: upload of %s failed (attempt %d of %d, retrying in %.1f s): %s",
                    path,
                    attempt,
                    self.attempts,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay *= 2
        self.uploaded += 1
        if self.mirror_retention:
            await self._apply_retention(file.parent.name, key)
        return f"s3://{self.bucket}/{key}"

    async def _apply_retention(self, folder: str, key: str) -> None:
        keys = self._remote.setdefault(folder, deque())
        keys.append(key)
        client = await self._s3()
        while len(keys) > self.retention:
            old = keys.popleft()
            try:
                await client.delete_object(Bucket=self.bucket, Key=old)
            except (BotoCoreError, ClientError) as exc:
                log.warning("s3: could not delete %s (retention): %s", old, exc)

    async def close(self) -> None:
        if self._client_cm is not None:
            await self._client_cm.__aexit__(None, None, None)
            self._client = self._client_cm = None


def _ascii(text: str) -> str:
    """S3 metadata values must be ASCII: other characters are percent-encoded."""
    from urllib.parse import quote

    return quote(text, safe=" !#$&'()*+,-./:;=?@[]^_`{|}~")


@hookimpl
def register_storage_backends(register: Any) -> None:
    register("s3", S3Storage)


__all__ = ["S3Storage", "__version__"]
