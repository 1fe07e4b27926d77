"""What a process costs, read from Linux's ``/proc``: CPU seconds, resident memory, threads
and open files. For ``/metrics`` (the ``process_*`` names Prometheus client libraries use) and
the console's totals; ``None`` where ``/proc`` cannot say (another OS, a process gone)."""

from __future__ import annotations

import dataclasses
import os
import resource
import time

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = resource.getpagesize()


@dataclasses.dataclass(frozen=True)
class ProcessSample:
    cpu_s: float  # user + system, this process only (not its children)
    rss_bytes: int
    threads: int
    start_time_s: float  # Unix time it started


def _boot_time() -> float:
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return time.time() - time.monotonic()


_BOOT = _boot_time()


def sample(pid: int | str = "self") -> ProcessSample | None:
    """One look at process ``pid`` (default: this one)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # the command name is in parentheses and may hold spaces: fields start after the last ")"
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        utime, stime = int(fields[11]), int(fields[12])
        threads, start_ticks, rss_pages = int(fields[17]), int(fields[19]), int(fields[21])
    except (IndexError, ValueError):
        return None
    return ProcessSample(
        cpu_s=(utime + stime) / _TICKS,
        rss_bytes=rss_pages * _PAGE,
        threads=threads,
        start_time_s=_BOOT + start_ticks / _TICKS,
    )


def open_fds(pid: int | str = "self") -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def max_fds() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
