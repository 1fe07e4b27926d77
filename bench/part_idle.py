"""The idle-cost part of ``rtmp``: the CPU (% of one core, over the server's own idle
baseline) and memory (PSS growth) per RTMP stream that publishers keep sending and nobody asks
a picture of, for streamsnap and for nginx-rtmp (a C server that only relays packets: the
floor for "keeping packets")."""

from __future__ import annotations

import time

from bench.common import idle_cpu, log, make_clip, publish_spread, stop, tree_pss_mib
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
        pubs: list = []

        def start(url_of=url_of, label=label, pubs=pubs) -> None:
            pubs.extend(publish_spread(clip, [url_of(f"idle{i}") for i in range(streams)]))
            if label == "streamsnap":
                for i in range(streams):
                    server.wait_stream(f"idle{i}", timeout=30, frames=30)

        try:
            base, used = idle_cpu(pid, window, start)
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
