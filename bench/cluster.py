"""The cluster's cost and speed: a snapshot answered by the node that holds the stream
against the same snapshot asked of another node (forwarded), in one run, interleaved, on one
kept-alive connection per node; and how long a killed node's stream names stay taken.

    python bench/cluster.py --requests 300 --ttl 5 --nodes 5 --cameras 20

Media: a camera-like 720p30 clip (sensor noise, B-frames, 2.5 Mbit/s) published over RTMP to
node A; node B forwards to A. Both nodes and redis-server run on this machine. Then
``--nodes`` nodes share ``--cameras`` cameras (one GStreamer RTSP server, one encoder for all):
how they spread, and how long the cameras of a killed node take to be pulled again.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import OUT, log, percentile, publish, stop  # noqa: E402
from bench.compare import camera_clip  # noqa: E402
from tests.helpers.redis import RedisServer  # noqa: E402
from tests.helpers.rtsp import RtspCamera  # noqa: E402
from tests.helpers.server import ServerProcess, write_config  # noqa: E402

from streamsnap.plugins.cluster.placement import owner  # noqa: E402

SECRET = "bench-secret-of-the-cluster-run"


def node(tmp: Path, name: str, redis: RedisServer, ttl: float, **sections) -> ServerProcess:
    work = tmp / name
    work.mkdir()
    cfg = write_config(
        work / "c.toml",
        server={"host": "127.0.0.1", "http_port": 0, "ws_port": 0, "rtmp_port": 0},
        cluster={"redis_url": redis.url, "secret": SECRET, "node_id": name, "claim_ttl_s": ttl},
        **sections,
    )
    return ServerProcess(cfg, cwd=work).start()


def placement(srv: ServerProcess) -> dict[str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.ports["http"], timeout=10)
    conn.request("POST", "/rest-api/stream/find_all", b"{}", {"Content-Type": "application/json"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return {s["name"]: s["node"] for s in json.loads(body)} if resp.status == 200 else {}


def bench_cameras(redis: RedisServer, n_nodes: int, n_cams: int, ttl: float) -> dict:
    """``n_nodes`` nodes share ``n_cams`` cameras; one is killed."""
    camera = RtspCamera(size="640x360", fps=15, one_encoder=True)
    cams = [
        {"name": f"cam{i:02d}", "url": camera.url(query=f"?channel={i}")} for i in range(n_cams)
    ]
    nodes: dict[str, ServerProcess] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cameras-") as tmp:
            t0 = time.monotonic()
            for i in range(n_nodes):
                name = f"n{i}"
                nodes[name] = node(Path(tmp), name, redis, ttl, pull={"cameras": cams})
            started = time.monotonic() - t0

            def settled(ids: set[str]) -> dict[str, str] | None:
                """The placement once it is what rendezvous hashing gives over ``ids``."""
                want = {c["name"]: owner(c["name"], ids) for c in cams}
                held = placement(next(nodes[i] for i in ids))
                return held if held == want else None

            deadline = time.monotonic() + 60
            spread = None
            while time.monotonic() < deadline and spread is None:
                spread = settled(set(nodes))
                time.sleep(0.2)
            settle_s = time.monotonic() - t0
            counts = sorted(list(spread.values()).count(n) for n in nodes) if spread else []
            victim = max(nodes, key=lambda n: list((spread or {}).values()).count(n))
            lost = sorted(c for c, n in (spread or {}).items() if n == victim)
            nodes[victim].proc.kill()
            killed = time.monotonic()
            nodes[victim].proc.wait()
            survivors = set(nodes) - {victim}
            del nodes[victim]
            back = None
            while time.monotonic() - killed < ttl + 30 and back is None:
                back = settled(survivors)
                if back is None:
                    time.sleep(0.1)
            failover_s = time.monotonic() - killed
    finally:
        for srv in nodes.values():
            srv.stop()
        camera.stop()
    return {
        "nodes": n_nodes,
        "cameras": n_cams,
        "nodes_started_s": round(started, 1),
        "spread_after_s": round(settle_s, 1),
        "cameras_per_node": counts,
        "killed_node_cameras": len(lost),
        "failover_s": round(failover_s, 2) if back else None,
    }


def timed_get(conn: http.client.HTTPConnection, path: str) -> float:
    """One GET on a kept-alive connection: the clock stops at the last byte."""
    t0 = time.perf_counter()
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    elapsed = (time.perf_counter() - t0) * 1000
    assert resp.status == 200 and body[:2] == b"\xff\xd8", (resp.status, body[:200])
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300, help="per node")
    ap.add_argument("--ttl", type=float, default=5.0, help="[cluster] claim_ttl_s")
    ap.add_argument("--nodes", type=int, default=5, help="nodes sharing the cameras")
    ap.add_argument("--cameras", type=int, default=20)
    args = ap.parse_args()
    clip = camera_clip()
    redis = RedisServer()
    pub = None
    nodes: list[ServerProcess] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
            a = node(Path(tmp), "a", redis, args.ttl)
            b = node(Path(tmp), "b", redis, args.ttl)
            nodes = [a, b]
            pub = publish(clip, a.rtmp_url("cam"))
            a.wait_stream("cam", timeout=30, frames=60)
            path = "/streams/cam/snapshot.jpg?quality=80"
            conns = {
                label: http.client.HTTPConnection("127.0.0.1", srv.ports["http"], timeout=10)
                for label, srv in (("local", a), ("forwarded", b))
            }
            for conn in conns.values():  # warm: the stream decoded, the pool connected
                for _ in range(20):
                    timed_get(conn, path)
            times: dict[str, list[float]] = {"local": [], "forwarded": []}
            for _ in range(args.requests):
                order = list(conns)
                random.shuffle(order)
                for label in order:
                    times[label].append(timed_get(conns[label], path))
                time.sleep(random.uniform(0.02, 0.08))
            for conn in conns.values():
                conn.close()
            # a killed node: how long until its stream's name may be published elsewhere
            stop(pub)
            pub = publish(clip, a.rtmp_url("cam2"))
            a.wait_stream("cam2", timeout=30, frames=10)
            os.kill(a.proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            a.proc.wait()
            probe = http.client.HTTPConnection("127.0.0.1", b.ports["http"], timeout=10)
            answers: list[tuple[float, int]] = []
            while time.monotonic() - killed < args.ttl + 5:
                t0 = time.perf_counter()
                probe.request("GET", "/streams/cam2/snapshot.jpg")
                resp = probe.getresponse()
                resp.read()
                answers.append(((time.perf_counter() - t0) * 1000, resp.status))
                if resp.status == 404:
                    break
                time.sleep(0.05)
            forgotten_s = time.monotonic() - killed
            probe.close()
        for srv in nodes:
            srv.stop()
        nodes = []
        cams = bench_cameras(redis, args.nodes, args.cameras, args.ttl) if args.cameras else {}
    finally:
        if pub is not None:
            stop(pub)
        for srv in nodes:
            srv.stop()
        redis.stop()
    result = {
        "requests": args.requests,
        "claim_ttl_s": args.ttl,
        **{
            f"{label}_p{p}_ms": round(percentile(values, p), 2)
            for label, values in times.items()
            for p in (50, 90, 99)
        },
        "forgotten_after_s": round(forgotten_s, 2),
        "while_dead_max_ms": round(max(ms for ms, status in answers if status != 404), 1)
        if any(status != 404 for _, status in answers)
        else None,
        "while_dead_statuses": sorted({status for _, status in answers}),
        "cameras": cams,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cluster.json").write_text(json.dumps(result, indent=2))
    log(json.dumps(result))
    print("| asked of | p50 | p90 | p99 |")
    print("|---|---|---|---|")
    for label in ("local", "forwarded"):
        print(
            f"| {label} | {result[f'{label}_p50_ms']} ms | {result[f'{label}_p90_ms']} ms | "
            f"{result[f'{label}_p99_ms']} ms |"
        )
    extra = result["forwarded_p50_ms"] - result["local_p50_ms"]
    print(f"\nforwarding adds {extra:.2f} ms at p50")
    print(
        f"killed node: its stream's name free after {forgotten_s:.2f} s (claim_ttl_s "
        f"{args.ttl:g}); meanwhile answers {result['while_dead_statuses']}, the slowest in "
        f"{result['while_dead_max_ms']} ms"
    )
    if cams:
        print(
            f"{cams['cameras']} cameras on {cams['nodes']} nodes: spread {cams['cameras_per_node']} "
            f"{cams['spread_after_s']} s after the first node started; a killed node's "
            f"{cams['killed_node_cameras']} cameras pulled again after {cams['failover_s']} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
