"""The latency part of ``rtmp``: REST snapshot latency and freshness (frames behind) of RTMP
streams at 720p and 1080p, idle for 10 s on a lazy and an adaptive server and warm on the
adaptive one, against the anchors measured on the same stream played from nginx-rtmp (the
FFmpeg command line, and keyframe-only snapshots as go2rtc and Wowza-style thumbnailers make
them); and bursts of 200 simultaneous JPEG requests for one stream (decoder runs, encodes,
latency, freshness)."""

from __future__ import annotations

import random
import statistics
import subprocess
import time
from pathlib import Path

from bench.common import (
    OUT,
    log,
    make_clip,
    metrics_of,
    percentile,
    publish,
    publish_spread,
    rest_snapshot_ms,
    stop,
)
from tests.helpers.media import FFMPEG
from tests.helpers.nginx import NginxRtmp
from tests.helpers.server import ServerProcess, find, wait_for


def ffmpeg_cli_ms(url: str, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [FFMPEG, "-v", "error", "-y", "-i", url, "-frames:v", "1", str(out)],
        check=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    return (time.perf_counter() - t0) * 1000


def wait_decoded(server: ServerProcess, name: str, timeout: float = 15) -> None:
    """Until the adaptive policy decodes ``name`` as its frames arrive (a warm stream)."""
    wait_for(
        lambda: (info := find(server, name)) and info.get("decode") == "continuous",
        timeout,
        f"{name} to be decoded as it arrives",
    )


def wait_live(server: ServerProcess, name: str) -> None:
    server.wait_stream(name, timeout=30, frames=60)


FRESH_METRIC = "streamsnap_snapshot_frames_behind_bucket"


def freshness_buckets(server: ServerProcess) -> dict[str, float]:
    """Cumulative counts of the server's freshness histogram (frames behind, by ``le``)."""
    out: dict[str, float] = {}
    text = server.request("GET", "/metrics")[1].decode()
    for line in text.splitlines():
        if line.startswith(FRESH_METRIC + "{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[le] = float(line.rsplit(" ", 1)[1])
    return out


def freshness_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {le: after[le] - before.get(le, 0.0) for le in after}


def idle_round_robin(
    servers: dict[str, ServerProcess], names: list[str], rounds: int, idle_s: float
) -> dict[str, list[float]]:
    """Each stream is asked for once every ``idle_s`` (a little more), one after another, so
    every request finds its stream untouched for ``idle_s``."""
    out: dict[str, list[float]] = {label: [] for label in servers}
    gap = (idle_s + 0.5) / len(names)
    for _ in range(rounds):
        for name in names:
            time.sleep(gap)
            for label, srv in servers.items():
                out[label].append(rest_snapshot_ms(srv, name))
    return out


def bench_latency(
    servers: dict[str, ServerProcess],
    nginx: NginxRtmp | None,
    sizes: list[str],
    n_rest: int,
    n_cli: int,
    idle_streams: int,
    idle_rounds: int,
) -> dict:
    """REST snapshot latency and freshness: streams idle for 10 s (on a lazy and an adaptive
    server), a warm stream (adaptive), and the FFmpeg CLI on nginx-rtmp."""
    results: dict = {}
    for size in sizes:
        clip = make_clip(size)
        names = [f"lat{size}-{i}" for i in range(idle_streams)]
        pubs = publish_spread(clip, [srv.rtmp_url(n) for srv in servers.values() for n in names])
        if nginx:
            pubs.append(publish(clip, nginx.url(names[0])))
        res: dict = results.setdefault(size, {})
        try:
            for srv in servers.values():
                for n in names:
                    wait_live(srv, n)
            # warm first, while the other streams are idle (lazy): one stream looked at
            srv = servers["adaptive"]
            log(f"{size}: {n_rest} REST snapshots 0.2-1.2 s apart (adaptive: warm)")
            rest_snapshot_ms(srv, names[0])  # asked for once: the policy warms it within ~1 s
            wait_decoded(srv, names[0])
            before_warm = freshness_buckets(srv)
            warm = []
            for _ in range(n_rest):
                time.sleep(random.uniform(0.2, 1.2))  # land anywhere in the GOP
                warm.append(rest_snapshot_ms(srv, names[0]))
            res["warm_adaptive_ms"] = warm
            res["warm_adaptive_fresh"] = freshness_delta(before_warm, freshness_buckets(srv))
            if size == sizes[0]:  # the stream just watched, still decoded as frames arrive
                res["concurrent_warm"] = bench_concurrent(srv, names[0], rounds=5)
            idle_names = names[1:]  # nobody has asked for these since they went live
            log(
                f"{size}: {len(idle_names)} streams per server, each asked for once every 10 s "
                f"({idle_rounds} rounds)"
            )
            before = {label: freshness_buckets(srv) for label, srv in servers.items()}
            idle = idle_round_robin(servers, idle_names, idle_rounds, 10.0)
            for label, srv in servers.items():
                res[f"idle10_{label}_ms"] = idle[label]
                res[f"idle10_{label}_fresh"] = freshness_delta(
                    before[label], freshness_buckets(srv)
                )
            if nginx:
                res["keyframe"] = bench_keyframe_anchor(nginx.url(names[0]), max(5, n_rest // 4))
                log(f"{size}: {n_cli} runs of ffmpeg -i rtmp://nginx/... -frames:v 1")
                res["ffmpeg_cli_ms"] = [
                    ffmpeg_cli_ms(nginx.url(names[0]), OUT / "cli.png") for _ in range(n_cli)
                ]
            if size == sizes[0]:
                res["concurrent"] = bench_concurrent(servers["lazy"], names[1], rounds=5)
        finally:
            for p in pubs:
                stop(p)
        for srv in servers.values():
            for n in names:
                srv.wait_gone(n)
    return results


class KeyframeSnapshotter:
    """The anchor for freshness: snapshots made from keyframes only, as go2rtc (waits for the
    next keyframe) and Wowza-style thumbnailers (decode the last keyframe) make them. Plays the
    stream from nginx-rtmp with PyAV in a thread and keeps the last keyframe packet."""

    def __init__(self, url: str) -> None:
        import threading

        import av

        self.container = av.open(url, options={"rtmp_live": "live"})
        self.stream = self.container.streams.video[0]
        self.cond = threading.Condition()
        self.frames = 0  # video packets received
        self.keyframes = 0
        self.last_key: tuple[object, int] | None = None  # (packet, frames count at it)
        self._stop = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for packet in self.container.demux(self.stream):
            if self._stop:
                break
            if packet.size == 0:
                continue
            with self.cond:
                self.frames += 1
                if packet.is_keyframe:
                    self.keyframes += 1
                    self.last_key = (packet, self.frames)
                self.cond.notify_all()

    def _decode(self, packet: object) -> None:
        import av

        ctx = av.CodecContext.create(self.stream.codec_context.name, "r")
        ctx.extradata = self.stream.codec_context.extradata
        frames = ctx.decode(packet) + ctx.decode(None)  # type: ignore[arg-type]
        frames[-1].to_image()  # RGB, as an encoder would need

    def last_keyframe(self) -> tuple[float, int]:
        """Wowza-style: decode the last keyframe. (ms, frames behind the newest)."""
        t0 = time.perf_counter()
        with self.cond:
            assert self.last_key is not None
            packet, at = self.last_key
            behind = self.frames - at
        self._decode(packet)
        return (time.perf_counter() - t0) * 1000, behind

    def next_keyframe(self) -> tuple[float, int]:
        """go2rtc-style: wait for the next keyframe, decode it. (ms, frames behind)."""
        t0 = time.perf_counter()
        with self.cond:
            seen = self.keyframes
            self.cond.wait_for(lambda: self.keyframes > seen, timeout=10)
            assert self.last_key is not None
            packet, _ = self.last_key
        self._decode(packet)
        return (time.perf_counter() - t0) * 1000, 0

    def close(self) -> None:
        self._stop = True
        self.thread.join(5)
        self.container.close()


def bench_keyframe_anchor(url: str, n: int) -> dict:
    log(f"anchor: {n} keyframe-only snapshots each way (last keyframe; wait for the next one)")
    snapper = KeyframeSnapshotter(url)
    try:
        deadline = time.monotonic() + 15
        while snapper.last_key is None and time.monotonic() < deadline:
            time.sleep(0.1)
        last, nxt = [], []
        for _ in range(n):
            time.sleep(random.uniform(0.2, 1.2))
            last.append(snapper.last_keyframe())
            time.sleep(random.uniform(0.2, 1.2))
            nxt.append(snapper.next_keyframe())
    finally:
        snapper.close()
    return {
        "last_ms": [ms for ms, _ in last],
        "last_behind": [b for _, b in last],
        "next_ms": [ms for ms, _ in nxt],
    }


class BurstClient:
    """``clients`` kept-alive HTTP/1.1 connections that send one request each at the same
    moment and time their answers: a lean load generator (plain sockets, one thread), so that
    on a 2-core machine the client's own Python does not eat the core the server needs; a
    real burst comes from many machines. The connections are opened and used once before."""

    def __init__(self, host: str, port: int, clients: int) -> None:
        import selectors
        import socket

        self.host = host
        self.selector = selectors.DefaultSelector()
        self.socks = [socket.create_connection((host, port), timeout=10) for _ in range(clients)]
        for sock in self.socks:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)
        self.run("/healthz")

    def close(self) -> None:
        self.selector.close()
        for sock in self.socks:
            sock.close()

    def run(self, path: str, timeout: float = 30) -> list[tuple[float, int, dict[str, str]]]:
        """Send ``GET path`` on every connection at once: per request its latency (ms), status
        and headers (lower-cased names)."""
        request = f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        sent: dict[int, float] = {}
        for sock in self.socks:
            sent[sock.fileno()] = time.perf_counter()
            sock.sendall(request)
        buffers = {sock.fileno(): b"" for sock in self.socks}
        answers: dict[int, tuple[float, int, dict[str, str]]] = {}
        deadline = time.monotonic() + timeout
        while len(answers) < len(self.socks):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.socks) - len(answers)} answers missing")
            for key, _ in self.selector.select(1):
                sock = key.fileobj
                fd = sock.fileno()
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("the server closed a connection mid-burst")
                buffers[fd] += chunk
                answer = self._parse(buffers[fd])
                if answer is not None:
                    answers[fd] = ((time.perf_counter() - sent[fd]) * 1000, *answer)
        return list(answers.values())

    @staticmethod
    def _parse(buf: bytes) -> tuple[int, dict[str, str]] | None:
        head, sep, body = buf.partition(b"\r\n\r\n")
        if not sep:
            return None
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if len(body) < int(headers["content-length"]):
            return None
        return int(lines[0].split()[1]), headers


def bench_concurrent(server: ServerProcess, name: str, rounds: int, clients: int = 200) -> dict:
    """``clients`` simultaneous requests for one stream: how many decoder runs and encodes
    they cost and how long their pictures took to decode (from /metrics, read just before and
    just after the burst), their latency and freshness."""
    keys = (
        "streamsnap_decode_passes_total",
        "streamsnap_snapshot_encodes_total",
        "streamsnap_stream_frames_total",
        "streamsnap_snapshot_decode_seconds_sum",
    )
    port = int(server.http.rsplit(":", 1)[1])
    log(f"{rounds} bursts of {clients} simultaneous JPEG snapshots of {name}")
    out: dict = {"clients": clients, "rounds": []}
    for _ in range(rounds):
        time.sleep(2)
        client = BurstClient("127.0.0.1", port, clients)
        try:
            time.sleep(1)
            before = metrics_of(server, name)
            answers = client.run(f"/streams/{name}/snapshot.jpg")
            after = metrics_of(server, name)
        finally:
            client.close()
        assert all(status == 200 for _, status, _ in answers), {s for _, s, _ in answers}
        lat = [ms for ms, _, _ in answers]
        passes, encodes, frames, decode_s = (after.get(k, 0) - before.get(k, 0) for k in keys)
        behind = max(int(h["x-frames-behind"]) for _, _, h in answers)
        shown = max(int(h["x-frame-index"]) for _, _, h in answers)
        out["rounds"].append(
            {
                "ms": lat,
                "decodes": passes,
                "encodes": encodes,
                "frames_in": frames,
                "decode_ms": decode_s * 1000,
                "frames_behind_max": behind,
                "frame_index": shown,
            }
        )
        log(
            f"  burst: p50 {statistics.median(lat):.0f} ms, p99 {percentile(lat, 99):.0f} ms, "
            f"{passes:.0f} decoder run(s) ({decode_s * 1000:.0f} ms), {encodes:.0f} encode(s), "
            f"{frames:.0f} frames in, <= {behind} frames behind, frame {shown}"
        )
    return out
