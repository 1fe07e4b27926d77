"""The server process: ``serve`` tunes the Python runtime for a long-lived media server (GIL
switch interval, start-up objects out of the collector's reach, the allocator, signals), runs
one :class:`~streamsnap.core.app.App` and makes sure shutdown ends, killing children if it must.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time

from . import allocator
from .app import App
from .config import Config

log = logging.getLogger(__name__)


def child_pids() -> list[int]:
    """Pids of this process's children (FFmpeg pulls), from /proc; empty where there is none."""
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir("/proc/self/task"):  # a child belongs to the thread that forked it
            with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
    return pids


def _last_resort_exit(timeout: float) -> None:
    """Shutdown thread: the loop did not finish stopping in time (a plugin or a write that never
    returns): kill the children so none outlives the server, and exit."""
    pids = child_pids()
    log.error(
        "shutdown did not finish within %.1f s ([server] shutdown_timeout_s): killing children "
        "%s and exiting",
        timeout,
        pids or "-",
    )
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    logging.shutdown()
    os._exit(1)


GIL_SWITCH_INTERVAL_S = 0.0002


async def serve(config: Config, stop: asyncio.Event | None = None) -> None:
    """Run a server until SIGINT/SIGTERM (or ``stop`` is set)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    # Over a file size limit (ulimit -f), a write must fail with EFBIG and be handled like a
    # full disk, not kill the server.
    with contextlib.suppress(AttributeError, ValueError):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # Decoding threads hand the GIL back after every FFmpeg call; a short switch interval
    # keeps a busy event loop from making each hand-back wait (figures: BENCHMARKS.md).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    allocator.keep_picture_buffers()
    app = App(config)
    await app.start()
    # What start-up loaded lives as long as the server: out of the collector's reach, a full
    # collection no longer walks it on the event loop (figures: BENCHMARKS.md).
    gc.freeze()
    try:
        await stop.wait()
    finally:
        timeout = config.server.shutdown_timeout_s
        log.info("shutting down (at most %.1f s)", timeout)
        # A timer thread, not the loop: it fires even when something blocks the loop.
        guard = threading.Timer(timeout, _last_resort_exit, (timeout,))
        guard.daemon = True
        guard.start()
        started = time.monotonic()
        await app.stop()
        guard.cancel()
        log.info("stopped in %.1f s", time.monotonic() - started)
