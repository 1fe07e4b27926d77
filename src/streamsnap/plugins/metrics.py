"""``GET /metrics`` in the Prometheus text format: streams, frames, snapshots, auto snapshots,
supervised children. Read straight from the objects that count them; nothing on the hot path."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections import Counter
from typing import Any

from aiohttp import web

from ..core import allocator, procstat
from ..core.app import APP_KEY, App
from ..core.stats import Histogram
from ..hooks import hookimpl
from .auto_snapshot import AUTO_SNAPSHOT
from .pull import PULL

REFUSAL_KINDS = (
    "unauthorized",
    "publish_key",
    "bad_name",
    "plugin",
    "max_streams",
    "max_publishers_per_ip",
    "max_concurrent_snapshots",
    "max_connections_per_ip",
    "failed_logins",
    "origin",
    "host",
)


def _line(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        return f"{name}{{{inner}}} {value}"
    return f"{name} {value}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclasses.dataclass(frozen=True)
class ProcessFigures:
    """What ``/proc`` and the allocator say, read in one go off the event loop: the reads
    block on the kernel, and ``mallinfo2`` walks every arena's free lists under its lock."""

    own: procstat.ProcessSample | None
    heap: tuple[int, int] | None
    python_blocks: int
    fds: int | None
    children: list[procstat.ProcessSample]
    took_s: float

    @classmethod
    def read(cls, child_pids: list[int]) -> ProcessFigures:
        started = time.perf_counter()
        own, heap, blocks = procstat.sample(), allocator.heap_usage(), sys.getallocatedblocks()
        fds = procstat.open_fds()
        children = [c for c in map(procstat.sample, child_pids) if c is not None]
        return cls(own, heap, blocks, fds, children, time.perf_counter() - started)


def _process_metrics(metric: Any, figures: ProcessFigures) -> None:
    """This process's cost under the names Prometheus client libraries use, and the cost of
    the FFmpeg children running now (a gauge: children come and go)."""
    own = figures.own
    if own is not None:
        metric(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of the server process, in seconds.",
            [(round(own.cpu_s, 2), None)],
        )
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the server process.",
            [(own.rss_bytes, None)],
        )
        metric("process_threads", "gauge", "Threads of the server process.", [(own.threads, None)])
        metric(
            "process_start_time_seconds",
            "gauge",
            "When the server process started, in Unix seconds.",
            [(round(own.start_time_s, 2), None)],
        )
    heap = figures.heap
    if heap is not None:  # RSS told apart: memory in use, or free space the allocator keeps
        metric(
            "streamsnap_heap_in_use_bytes",
            "gauge",
            "Bytes glibc's malloc has handed out: pictures, codec buffers, large Python objects.",
            [(heap[0], None)],
        )
        metric(
            "streamsnap_heap_free_bytes",
            "gauge",
            "Bytes free in glibc's arenas, kept for reuse; pages given back to the kernel (once "
            f"a minute, above {allocator.TRIM_ABOVE >> 20} MiB) still count.",
            [(heap[1], None)],
        )
    metric(
        "streamsnap_python_allocated_blocks",
        "gauge",
        "Blocks Python's own allocator has handed out: Python objects alive.",
        [(figures.python_blocks, None)],
    )
    metric(
        "streamsnap_heap_trim_seconds_total",
        "counter",
        f"Time spent giving the heap's free pages back to the kernel (once a minute, above "
        f"{allocator.TRIM_ABOVE >> 20} MiB free), in a worker thread; holds each arena's lock.",
        [(round(allocator.TRIMS.seconds, 4), None)],
    )
    metric(
        "streamsnap_heap_trims_total",
        "counter",
        "Times the heap's free pages were given back to the kernel.",
        [(allocator.TRIMS.count, None)],
    )
    metric(
        "streamsnap_heap_trim_longest_seconds",
        "gauge",
        "The longest of those trims so far.",
        [(round(allocator.TRIMS.longest_s, 4), None)],
    )
    metric(
        "streamsnap_metrics_read_seconds",
        "gauge",
        "How long this scrape took to read /proc and the allocator's figures (off the loop).",
        [(round(figures.took_s, 6), None)],
    )
    fds = figures.fds
    if fds is not None:
        metric("process_open_fds", "gauge", "Open file descriptors.", [(fds, None)])
    metric(
        "process_max_fds",
        "gauge",
        "The limit of open file descriptors.",
        [(procstat.max_fds(), None)],
    )
    children = figures.children
    metric(
        "streamsnap_children",
        "gauge",
        "FFmpeg children running now.",
        [(len(children), None)],
    )
    metric(
        "streamsnap_children_cpu_seconds",
        "gauge",
        "CPU time of the FFmpeg children running now, in seconds (falls when one ends).",
        [(round(sum(c.cpu_s for c in children), 2), None)],
    )
    metric(
        "streamsnap_children_resident_memory_bytes",
        "gauge",
        "Resident memory of the FFmpeg children running now.",
        [(sum(c.rss_bytes for c in children), None)],
    )


def render(app: App, figures: ProcessFigures) -> str:
    out: list[str] = []

    def metric(
        name: str, kind: str, help_text: str, samples: list[tuple[Any, dict | None]]
    ) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(_line(name, value, labels) for value, labels in samples)

    def histogram(name: str, help_text: str, hist: Histogram) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} histogram")
        out.extend(_line(f"{name}_bucket", n, {"le": le}) for le, n in hist.cumulative())
        out.append(_line(f"{name}_sum", hist.sum))
        out.append(_line(f"{name}_count", hist.count))

    streams = list(app.streams)
    by_protocol = Counter(s.protocol for s in streams)
    metric(
        "streamsnap_streams",
        "gauge",
        "Live streams by source protocol.",
        [
            (by_protocol.get(p, 0), {"protocol": p})
            for p in sorted({"rtmp", "rtsp", "webrtc", "whip", *by_protocol})
        ],
    )
    metric(
        "streamsnap_stream_frames_total",
        "counter",
        "Video frames received per live stream.",
        [(s.frames.frames_in, {"stream": s.name, "protocol": s.protocol}) for s in streams],
    )
    metric(
        "streamsnap_stream_decode_errors_total",
        "counter",
        "Packets the decoder rejected.",
        [(s.frames.decode_errors, {"stream": s.name}) for s in streams],
    )
    now = time.monotonic()
    metric(
        "streamsnap_stream_last_frame_age_seconds",
        "gauge",
        "Seconds since the newest video frame of each live stream that has sent one.",
        [
            (round(now - s.frames.last_arrival, 3), {"stream": s.name})
            for s in streams
            if s.frames.last_arrival
        ],
    )
    metric(
        "streamsnap_stream_stale",
        "gauge",
        "1 for a live stream sending no video for [streams] stale_after_s, else 0.",
        [(1 if s.stale_for(now) else 0, {"stream": s.name}) for s in streams],
    )
    metric(
        "streamsnap_streams_stale",
        "gauge",
        "Live streams sending no video for [streams] stale_after_s.",
        [(sum(1 for s in streams if s.stale_for(now)), None)],
    )
    metric(
        "streamsnap_stream_history_bytes",
        "gauge",
        "Bytes of past keyframe groups kept for ?at= ([streams] history_s).",
        [(s.frames.history.bytes, {"stream": s.name}) for s in streams if s.frames.history.seconds],
    )
    snaps = app.snapshots
    metric(
        "streamsnap_snapshot_requests_total",
        "counter",
        "Snapshots asked of the service.",
        [(snaps.requests, None)],
    )
    metric(
        "streamsnap_snapshot_outcomes_total",
        "counter",
        "Snapshots asked of the service, by outcome.",
        [
            (snaps.outcomes.get(o, 0), {"outcome": o})
            for o in sorted({"ok", "timeout", "ended", "failed", "cancelled", *snaps.outcomes})
        ],
    )
    metric(
        "streamsnap_snapshot_encodes_total",
        "counter",
        "Pictures encoded (requests for the same frame share one).",
        [(snaps.encodes, None)],
    )
    metric(
        "streamsnap_snapshot_shared_total",
        "counter",
        "Requests answered by a snapshot made just before (within coalesce_ms: at most one "
        "frame since, or while their burst was still arriving).",
        [(snaps.shared, None)],
    )
    for name, help_text, hist in (
        (
            "streamsnap_snapshot_decode_seconds",
            "Time a snapshot spent bringing the stream's picture up to date (decoding).",
            snaps.decode_seconds,
        ),
        (
            "streamsnap_snapshot_encode_seconds",
            "Time a snapshot spent scaling, converting and encoding the picture.",
            snaps.encode_seconds,
        ),
        (
            "streamsnap_snapshot_frames_behind",
            "Freshness: frames received before the request newer than the one shown.",
            snaps.frames_behind,
        ),
    ):
        histogram(name, help_text, hist)
    metric(
        "streamsnap_decode_passes_total",
        "counter",
        "Decoder runs per live stream (a snapshot, or a continuous decode step).",
        [(s.frames.decode_passes, {"stream": s.name}) for s in streams],
    )
    metric(
        "streamsnap_frames_decoded_total",
        "counter",
        "Video frames decoded per live stream (lazy streams decode only when asked).",
        [(s.frames.frames_decoded, {"stream": s.name}) for s in streams],
    )
    metric(
        "streamsnap_snapshots_in_progress",
        "gauge",
        "REST and WebSocket snapshot requests being served ([limits] max_concurrent_snapshots).",
        [(app.admission.snapshots_in_flight, None)],
    )
    metric(
        "streamsnap_refused_total",
        "counter",
        "Clients turned away, by rule: unauthorized, publish_key, plugin, and the [limits].",
        [
            (app.refused.get(kind, 0), {"reason": kind})
            for kind in sorted({*REFUSAL_KINDS, *app.refused})
        ],
    )
    auto = app.state.get(AUTO_SNAPSHOT)
    if auto is not None:
        metric(
            "streamsnap_auto_snapshots_written_total",
            "counter",
            "Auto-snapshot files.",
            [(auto.stats.written, None)],
        )
        metric(
            "streamsnap_auto_snapshots_skipped_total",
            "counter",
            "Auto-snapshot turns skipped: the previous file was still being written.",
            [(auto.stats.skipped, None)],
        )
        metric(
            "streamsnap_auto_snapshot_write_errors_total",
            "counter",
            "Auto-snapshot files that could not be written (disk full, read-only...).",
            [(auto.stats.errors, None)],
        )
        metric(
            "streamsnap_auto_snapshot_stream_write_errors_total",
            "counter",
            "Auto-snapshot files that could not be written, per live stream.",
            [(n, {"stream": name}) for name, n in auto.write_errors()],
        )
    pulls = app.state.get(PULL)
    if pulls is not None:
        metric(
            "streamsnap_child_starts_total",
            "counter",
            "FFmpeg children started per pull.",
            [(starts, {"stream": name}) for name, starts, _ in pulls.children()],
        )
        metric(
            "streamsnap_child_exits_total",
            "counter",
            "FFmpeg children that ended per pull, by why (exited, stall, timeout, auth...).",
            [
                (n, {"stream": name, "kind": kind})
                for name, _, exits in pulls.children()
                for kind, n in sorted(exits.items())
            ],
        )
    _process_metrics(metric, figures)
    metric(
        "streamsnap_streams_ended_total",
        "counter",
        "Publish sessions ended, by source protocol and reason.",
        [(n, {"protocol": p, "reason": r}) for (p, r), n in sorted(app.ended.items())],
    )
    guard = app.pm.guard
    for plugin, families in app.pm.broadcast("collect_metrics", app=app):
        for family in families or ():
            try:
                name, kind, help_text, samples = family
                metric(name, kind, help_text, list(samples))
            except (TypeError, ValueError) as exc:
                guard.failed(plugin, "collect_metrics", exc, None)
    metric(
        "streamsnap_plugin_errors_total",
        "counter",
        "Hook calls that raised, by plugin and hook.",
        [(n, {"plugin": p, "hook": h}) for (p, h), n in sorted(guard.errors.items())],
    )
    metric(
        "streamsnap_plugin_slow_calls_total",
        "counter",
        "Synchronous hook calls that held the event loop longer than [plugins] slow_hook_s.",
        [(n, {"plugin": p, "hook": h}) for (p, h), n in sorted(guard.slow.items())],
    )
    metric(
        "streamsnap_plugin_offloaded",
        "gauge",
        "1 for a plugin whose on_frame/on_snapshot_saved calls run on a thread of its own.",
        [(1, {"plugin": p}) for p in sorted(guard.workers)],
    )
    metric(
        "streamsnap_plugin_calls_dropped_total",
        "counter",
        "Calls of an offloaded plugin dropped because its backlog was full.",
        [(n, {"plugin": p}) for p, n in sorted(guard.dropped.items())],
    )
    return "\n".join(out) + "\n"


def child_pids(app: App) -> list[int]:
    pulls = app.state.get(PULL)
    return pulls.child_pids() if pulls is not None else []


async def metrics(request: web.Request) -> web.Response:
    app = request.app[APP_KEY]
    loop = asyncio.get_running_loop()
    figures = await loop.run_in_executor(app.io_executor, ProcessFigures.read, child_pids(app))
    return web.Response(
        text=render(app, figures),
        content_type="text/plain",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )


@hookimpl
def register_routes(app: App) -> list[web.RouteDef]:
    return [web.get("/metrics", metrics)]
