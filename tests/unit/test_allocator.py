"""The allocator keeps picture-sized buffers for reuse (counted in page faults, not timed)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import resource, sys
    import av
    import numpy as np
    from streamsnap.core import allocator, imaging
    applied = allocator.keep_picture_buffers() if sys.argv[1] == "tuned" else False
    noise = np.random.default_rng(1).integers(0, 255, (1080, 1280), np.uint8)
    frame = av.VideoFrame.from_ndarray(noise, format="yuv420p")  # a busy 720p picture

    def snapshot():
        return imaging.encode(imaging.to_rgb(frame), "png", 90, "fpng")

    snapshot()  # the first one faults its buffers in
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        snapshot()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def run(mode: str, env: dict[str, str] | None = None) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_picture_buffers_are_reused_not_faulted_in_again():
    applied, tuned = run("tuned")
    _, default = run("default")
    assert applied
    # glibc's defaults map and zero a good part of the buffers anew for every snapshot
    assert tuned * 3 < default, (tuned, default)


def test_operator_settings_win():
    applied, _ = run("tuned", env={**os.environ, "MALLOC_TRIM_THRESHOLD_": "131072"})
    assert not applied


TRIM_PROBE = textwrap.dedent(
    """
    import asyncio, concurrent.futures, ctypes, sys
    from streamsnap.core import allocator
    allocator.keep_picture_buffers()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)

    def rss_mib():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / (1 << 20)

    # a burst: 120 picture-sized buffers in use at once, then freed; one kept above them, so
    # the heap's top cannot shrink by itself
    blocks = [libc.malloc(1 << 20) for _ in range(120)]
    for block in blocks:
        ctypes.memset(block, 1, 1 << 20)
    keep = libc.malloc(1 << 20)
    for block in blocks:
        libc.free(block)
    held = rss_mib()
    assert allocator.free_held() >= 110 << 20, allocator.free_held()  # mallinfo2 is read right

    async def main():
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            task = asyncio.ensure_future(
                allocator.trim_periodically(
                    pool, every=float(sys.argv[1]), above=int(sys.argv[2]) << 20
                )
            )
            await asyncio.sleep(0.5)
            task.cancel()

    asyncio.run(main())
    print(allocator.TRIMS.count, allocator.TRIMS.seconds > 0, held - rss_mib())
    """
)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim")
def test_memory_freed_after_a_burst_goes_back_to_the_kernel():
    def given_back(every: str, above_mib: int = 16) -> tuple[float, int, bool]:
        out = subprocess.run(
            [sys.executable, "-c", TRIM_PROBE, every, str(above_mib)],
            capture_output=True,
            text=True,
            check=True,
        )
        trims, timed, mib = out.stdout.split()[-3:]
        return float(mib), int(trims), timed == "True"

    mib, trims, timed = given_back("0.1")
    assert mib > 90  # MiB: the burst's buffers, once the periodic trim ran
    assert trims >= 1 and timed  # counted and timed for /metrics
    mib, trims, _ = given_back("60")
    assert mib < 10 and trims == 0  # not yet due: the allocator keeps them
    mib, trims, _ = given_back("0.1", 1 << 20)
    assert mib < 10 and trims == 0  # less held free than the bound: kept for reuse
