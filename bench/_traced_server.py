"""``streamsnap`` under tracemalloc, for bench/whip_leak.py: SIGUSR1 collects garbage and writes
a snapshot to the file named by STREAMSNAP_TRACE_DUMP (after malloc_trim(0) with
STREAMSNAP_TRACE_TRIM=1). Arguments as for ``streamsnap``."""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
import threading
import tracemalloc


def _dump(signum: int, frame: object) -> None:
    def write() -> None:  # off the signal handler: collecting can take a while
        gc.collect()
        if os.environ.get("STREAMSNAP_TRACE_TRIM"):  # give freed heap back: RSS = what is held
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        path = os.environ["STREAMSNAP_TRACE_DUMP"]
        sys._debugmallocstats()  # pymalloc's arenas, to stderr: read by whip_leak.py
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(path + ".tmp")
        else:  # RSS only: an empty snapshot says "looked"
            open(path + ".tmp", "wb").close()
        os.replace(path + ".tmp", path)

    threading.Thread(target=write, daemon=True).start()


if __name__ == "__main__":
    if os.environ.get("STREAMSNAP_TRACE_MALLOC", "1") == "1":
        tracemalloc.start(25)
    signal.signal(signal.SIGUSR1, _dump)
    from streamsnap.cli import main

    sys.exit(main(sys.argv[1:]))
