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
