"""Keep the C allocator from handing every picture buffer back to the kernel.

A snapshot allocates a few buffers of picture size (the RGB conversion, the PNG writer's
output, the base64 text): 2.7 MB each at 720p. glibc's malloc serves blocks that large with
``mmap`` and returns them with ``munmap`` (or trims the heap's top) as soon as they are freed,
so every snapshot page-faults and zeroes its buffers afresh. Measured on the 2-core bench
machine: fpng takes 4-5 ms on a new 720p buffer instead of 1.4 ms, and the warm REST snapshot
was 11 ms at p50 instead of 6 ms. Raising the mmap and trim thresholds keeps freed buffers in
the heap for the next picture; the memory held stays bounded by the largest working set (a
few pictures per worker thread), which is what a server that snapshots all day uses anyway.

Only glibc has these knobs (musl and macOS are left alone), and ``MALLOC_*_`` environment
variables set by the operator win.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import platform
import time
from typing import Any

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
# Larger than a 4K RGB picture (3840 x 2160 x 3 = 24.9 MB), the largest buffer a snapshot makes.
THRESHOLD = 32 << 20
OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_picture_buffers(threshold: int = THRESHOLD) -> bool:
    """Raise glibc's mmap and trim thresholds to ``threshold`` bytes. True if applied."""
    if any(name in os.environ for name in OPERATOR_SETTINGS):
        log.info("malloc thresholds left as set in the environment")
        return False
    if _libc is None:
        return False
    mallopt = _libc.mallopt
    # mallopt returns 1 on success. Setting either turns glibc's own adjustment of both off
    # (which raises them only after a large block was freed), so both are set.
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1 and mallopt(M_TRIM_THRESHOLD, threshold) == 1


def release_free_memory() -> bool:
    """Give the heap's free pages back to the kernel (glibc ``malloc_trim``). Blocking for a
    moment: call it from a worker thread. True if memory was released."""
    if _libc is None:
        return False
    return bool(_libc.malloc_trim(0))


# Picture buffers freed after a burst (a stall that let requests and decodes pile up) raise
# the allocator's high-water mark, and with the thresholds above nothing hands it back: the
# endurance hour rose by +50 MiB in one such minute and never came down. Once a minute, when
# the heap holds more than this much free, its free pages go back to the kernel.
TRIM_EVERY_S = 60.0
TRIM_ABOVE = 48 << 20


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def heap_usage() -> tuple[int, int] | None:
    """(bytes in use, bytes free) in glibc's malloc (``mallinfo2``: glibc 2.33 on): in use
    counts the blocks it has handed out and not got back, its own mmapped ones included;
    free, what its arenas keep for reuse. None where that cannot be read. It walks the free
    lists under each arena's lock: for a scrape or a minute's check, not per request."""
    if _libc is None or not hasattr(_libc, "mallinfo2"):
        return None
    info = _libc.mallinfo2()
    return int(info.uordblks + info.hblkhd), int(info.fordblks)


def free_held() -> int | None:
    """Bytes free in all of glibc's arenas, kept for reuse; None where that cannot be read."""
    usage = heap_usage()
    return None if usage is None else usage[1]


@dataclasses.dataclass
class TrimTally:
    """Heap trims done and the time they took: ``malloc_trim`` holds each arena's lock while
    it walks the free space, so a thread allocating in that arena (the event loop) waits."""

    count: int = 0
    seconds: float = 0.0
    longest_s: float = 0.0


TRIMS = TrimTally()
SLOW_TRIM_S = 0.05


def trim_if_holding(above: int = TRIM_ABOVE) -> int:
    """Worker thread: give the free pages back when more than ``above`` bytes are held free
    (always when that cannot be read). Returns the bytes held free, -1 unknown.

    Pages given back stay counted as free (the chunks stay in the free lists), so once past
    ``above`` this trims every time: walking pages already given back costs little, and the
    picture buffers each snapshot thread keeps are faulted in again once a minute."""
    held = free_held()
    if held is None or held > above:
        started = time.perf_counter()
        release_free_memory()
        took = time.perf_counter() - started
        TRIMS.count += 1
        TRIMS.seconds += took
        if took > TRIMS.longest_s:
            TRIMS.longest_s = took
        if took > SLOW_TRIM_S:
            log.warning(
                "giving %d MiB of free heap back to the kernel took %.0f ms",
                (held or 0) >> 20,
                took * 1000,
            )
    return -1 if held is None else held


async def trim_periodically(
    executor: Any, every: float = TRIM_EVERY_S, above: int = TRIM_ABOVE
) -> None:
    """Run :func:`trim_if_holding` every ``every`` seconds, off the event loop."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every)
        await loop.run_in_executor(executor, trim_if_holding, above)


def _load_libc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        libc.malloc_trim.restype = ctypes.c_int
        if hasattr(libc, "mallinfo2"):
            libc.mallinfo2.argtypes = ()
            libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_libc()


class ReleaseSoon:
    """Give freed memory back to the system a second after streams end (once for streams
    ending together), off the event loop: the allocator keeps freed picture buffers for
    reuse, so a server whose streams come and go would otherwise hold the most it ever used."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        self.pending = False

    def __call__(self) -> None:
        if self.pending:
            return
        self.pending = True
        loop = asyncio.get_running_loop()

        def release() -> None:
            self.pending = False
            with contextlib.suppress(RuntimeError):  # shutting down: the pool is closed
                loop.run_in_executor(self.executor, release_free_memory)

        loop.call_later(1.0, release)
