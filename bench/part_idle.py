"""The idle-cost part of ``rtmp``: the CPU (% of one core, over the server's own idle
baseline) and memory (PSS growth) per RTMP stream that publishers keep sending and nobody asks
a picture of, for streamsnap and for nginx-rtmp (a C server that only relays packets: the
floor for "keeping packets")."""

from __future__ import annotations

import time

from bench.common import cpu_seconds, log, make_clip, publish, stop, tree_pss_mib
from tests.helpers.nginx import NginxRtmp
from tests.helpers.server import ServerProcess


def bench_idle(
    server: ServerProcess,
    nginx: NginxRtmp | None,
    streams: int,
    window: float,
    size: str = "1280x720",
) -> dict:
    clip = make_clip(size)
    out: dict = {"streams": streams, "window_s": window, "size": size}
    for label, pid, url_of in (
        ("streamsnap", server.proc.pid, server.rtmp_url),
        *((("nginx-rtmp", nginx.proc.pid, nginx.url),) if nginx else ()),
    ):
        time.sleep(2)
        mem0 = tree_pss_mib(pid)
        c0 = cpu_seconds(pid)
        time.sleep(window / 2)
        base = (cpu_seconds(pid) - c0) / (window / 2)
        pubs = [publish(clip, url_of(f"idle{i}")) for i in range(streams)]
        try:
            if label == "streamsnap":
                for i in range(streams):
                    server.wait_stream(f"idle{i}", timeout=30, frames=30)
            time.sleep(3)
            c0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(window)
            used = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
            mem1 = tree_pss_mib(pid)
        finally:
            for p in pubs:
                stop(p)
        per_stream = (used - base) / streams * 100
        log(
            f"idle {label}: {used * 100:.1f} % of a core for {streams} streams "
            f"(baseline {base * 100:.2f} %) -> {per_stream:.2f} % per stream"
        )
        out[label] = {
            "total_pct": used * 100,
            "baseline_pct": base * 100,
            "per_stream_pct": per_stream,
            "mem_per_stream_mib": (mem1 - mem0) / streams,
        }
        if label == "streamsnap":
            for i in range(streams):
                server.wait_gone(f"idle{i}")
    return out
