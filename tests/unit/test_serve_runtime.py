"""``serve`` tunes the Python runtime for a server: checked in a child process, not timed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from streamsnap.core.runtime import GIL_SWITCH_INTERVAL_S

PROBE = textwrap.dedent(
    """
    import asyncio, gc, sys, time
    from streamsnap.core import config, runtime

    def collect_ms():
        t = time.perf_counter()
        gc.collect()
        return (time.perf_counter() - t) * 1000

    async def main():
        cfg = config.from_mapping({
            "server": {"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
            "snapshot": {"snapshot_auto_dir": sys.argv[1]},
        })
        stop = asyncio.Event()
        task = asyncio.create_task(runtime.serve(cfg, stop))
        deadline = time.monotonic() + 15
        while not gc.get_freeze_count() and not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        print(gc.get_freeze_count(), sys.getswitchinterval(), len(gc.get_objects()))
        stop.set()
        await task

    asyncio.run(main())
    """
)


def test_serve_freezes_start_up_objects_and_shortens_the_gil_switch(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "snaps")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=tmp_path,
    ).stdout.split()
    frozen, switch, tracked = int(out[0]), float(out[1]), int(out[2])
    # start-up's objects (modules, plugins, codecs) are out of the collector's reach: a full
    # collection walks what requests and streams make, not tens of thousands of objects
    assert frozen > 20_000 and tracked < frozen / 4
    assert switch == pytest.approx(GIL_SWITCH_INTERVAL_S)
