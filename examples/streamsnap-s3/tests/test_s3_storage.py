"""The S3 backend against a real S3-compatible server (SeaweedFS)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiobotocore.session import get_session
from streamsnap_s3 import S3Storage, register_storage_backends


def test_registers_the_s3_backend():
    got = {}
    register_storage_backends(lambda name, factory: got.__setitem__(name, factory))
    assert got == {"s3": S3Storage}


def test_bucket_is_required():
    with pytest.raises(ValueError, match="bucket"):
        S3Storage({})


def test_keys_follow_the_folder_layout():
    s3 = S3Storage({"bucket": "b", "prefix": "/site-a/"})
    key = s3.key_for(Path("/x/snapshots/cam1/cam1_00000042.png"))
    assert key == "site-a/cam1/cam1_00000042.png"


def snapshot_file(folder: Path, name: str, seq: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_{seq:08d}.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    return path


async def head(seaweed, bucket: str, key: str) -> dict:
    async with get_session().create_client(
        "s3",
        endpoint_url=seaweed.endpoint,
        region_name="us-east-1",
        aws_access_key_id="streamsnap",
        aws_secret_access_key="streamsnap-secret",
    ) as c:
        return await c.head_object(Bucket=bucket, Key=key)


async def keys(seaweed, bucket: str) -> list[str]:
    async with get_session().create_client(
        "s3",
        endpoint_url=seaweed.endpoint,
        region_name="us-east-1",
        aws_access_key_id="streamsnap",
        aws_secret_access_key="streamsnap-secret",
    ) as c:
        listing = await c.list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in listing.get("Contents", []))


async def test_upload_with_content_type_and_metadata(seaweed, tmp_path):
    s3 = S3Storage(seaweed.settings("meta"))
    stream = SimpleNamespace(name="cam ü", media_session_id="abc-123")
    path = snapshot_file(tmp_path / "cam1", "cam1", 42)
    try:
        url = await s3.store(stream, str(path))
    finally:
        await s3.close()
    assert url == "s3://meta/cam1/cam1_00000042.png"
    h = await head(seaweed, "meta", "cam1/cam1_00000042.png")
    assert h["ContentType"] == "image/png" and h["ContentLength"] == path.stat().st_size
    meta = h["Metadata"]
    assert meta["stream-name"] == "cam %C3%BC" and meta["media-session-id"] == "abc-123"
    assert meta["sequence"] == "42" and int(meta["timestamp"]) > 1_600_000_000_000


async def test_mirror_retention(seaweed, tmp_path):
    s3 = S3Storage(seaweed.settings("retained", mirror_retention=True, retention=3))
    try:
        for seq in range(1, 7):
            await s3.store(None, str(snapshot_file(tmp_path / "door", "door", seq)))
    finally:
        await s3.close()
    assert await keys(seaweed, "retained") == [f"door/door_{n:08d}.png" for n in (4, 5, 6)]


async def test_outage_retries_with_backoff_then_reports(tmp_path, caplog):
    s3 = S3Storage(
        {
            "bucket": "x",
            "endpoint_url": "http://127.0.0.1:9",
            "access_key": "a",
            "secret_key": "b",
            "attempts": 3,
            "backoff_s": 0.1,
        }
    )
    path = snapshot_file(tmp_path / "cam", "cam", 1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with caplog.at_level(logging.WARNING), pytest.raises(Exception):  # noqa: B017
        await s3.store(None, str(path))
    await s3.close()
    assert loop.time() - t0 >= 0.24  # 0.1 + 0.2 s of backoff (±20 % jitter)
    assert caplog.text.count("retrying in") == 2
    assert "failed after 3 attempts" in caplog.text and s3.failed == 1


async def test_a_symlink_is_not_uploaded(tmp_path):
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0")
    link = tmp_path / "cam1" / "cam1_00000001.png"
    link.parent.mkdir()
    link.symlink_to(secret)
    s3 = S3Storage({"bucket": "b", "endpoint_url": "http://127.0.0.1:9"})  # never reached
    with pytest.raises(OSError, match=r"cam1_00000001\.png is a symlink: not uploaded"):
        await s3.store(None, str(link))
