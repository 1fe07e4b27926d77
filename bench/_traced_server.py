"""``streamsnap`` under tracemalloc, for bench/whip_leak.py: SIGUSR1 collects garbage and writes
a snapshot to the file named by STREAMSNAP_TRACE_DUMP (after malloc_trim(0) with
STREAMSNAP_TRACE_TRIM=1), and the count of live objects by type beside it (``.types``). Arguments as for ``streamsnap``."""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import os
import signal
import sys
import threading
import time
import tracemalloc


def _is_root(obj: object, types: object) -> bool:
    """Where a search for what keeps an object stops: a module, a class, a running frame, or
    an object of the server's own or of asyncio (a task, a future, a handle); the module
    prefixes can be set in STREAMSNAP_TRACE_ROOTS."""
    module = type(obj).__module__ or ""
    prefixes = os.environ.get("STREAMSNAP_TRACE_ROOTS", "streamsnap,asyncio,_asyncio,threading")
    return isinstance(obj, (types.ModuleType, type, types.FrameType)) or module.startswith(
        tuple(filter(None, prefixes.split(",")))
    )


def referrer_chains(type_name: str, limit: int = 3, depth: int = 12) -> str:
    """What keeps objects of ``type_name`` (module.qualname) alive: for up to ``limit`` of
    them, the shortest path of referrers found from the object out to a module, a class or a
    running frame (breadth first)."""
    import types

    found = [
        o for o in gc.get_objects() if f"{type(o).__module__}.{type(o).__qualname__}" == type_name
    ]
    lines = [f"{len(found)} live {type_name}"]
    for target in found[:limit]:
        seen = {id(found), id(target), id(sys._getframe())}
        paths = [[target]]
        ours = {id(paths[0])}  # the lists of this search refer to what they hold
        for _ in range(depth):
            nxt: list[list] = []
            ours.update((id(paths), id(nxt)))
            for path in paths:
                for ref in gc.get_referrers(path[-1]):
                    if id(ref) in seen or id(ref) in ours:
                        continue
                    seen.add(id(ref))
                    longer = [*path, ref]
                    ours.add(id(longer))
                    nxt.append(longer)
            roots = [p for p in nxt if _is_root(p[-1], types)]
            if roots or not nxt:
                break
            paths = nxt[:2000]
        for path in (roots or paths)[:3]:
            lines.append("  <- ".join(f"{type(o).__qualname__}:{repr(o)[:80]}" for o in path))
        lines.append("")
    return "\n".join(lines)


def _dump(signum: int, frame: object) -> None:
    def write() -> None:  # off the signal handler: collecting can take a while
        gc.unfreeze()  # objects frozen at start-up are invisible to gc.get_referrers
        gc.collect()
        if os.environ.get("STREAMSNAP_TRACE_TRIM"):  # give freed heap back: RSS = what is held
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        path = os.environ["STREAMSNAP_TRACE_DUMP"]
        sys._debugmallocstats()  # pymalloc's arenas, to stderr: read by whip_leak.py
        counts = collections.Counter(
            f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects()
        )
        with open(path + ".types", "w") as f:  # live objects by type: what outlives a session
            json.dump(counts, f)
        shown = os.environ.get("STREAMSNAP_TRACE_REPR")  # module.Type: every instance's repr
        if shown:
            with open(path + ".repr", "w") as f:
                f.write(f"monotonic {time.monotonic():.1f}\n")
                for o in gc.get_objects():
                    if f"{type(o).__module__}.{type(o).__qualname__}" == shown:
                        f.write(repr(o)[:400] + "\n")
        wanted = os.environ.get("STREAMSNAP_TRACE_REFERRERS")
        if wanted:
            with open(path + ".refs", "w") as f:
                f.write(referrer_chains(wanted))
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
