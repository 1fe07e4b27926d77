"""A cluster of three nodes (separate server processes) on a real redis-server: any node
answers for any stream, a live name is refused on every node, dead nodes are forgotten, Redis
going away leaves each node serving its own streams, and forged or replayed forwards are
refused."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import redis as redis_py

from streamsnap.plugins.cluster.signing import sign
from tests.e2e.test_whip_and_ws_protocol import _ws_exchange, whip_post
from tests.helpers.media import ffmpeg_testsrc
from tests.helpers.redis import RedisServer, redis_available
from tests.helpers.server import ServerProcess, find, wait_for

pytestmark = pytest.mark.skipif(not redis_available(), reason="redis-server not installed")

SECRET = "a-shared-secret-of-the-test-cluster"
TTL = 2.0


@pytest.fixture
def redis():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def cluster(make_server, redis):
    def start(n: int = 3, **extra) -> list[ServerProcess]:
        return [
            make_server(
                cluster={
                    "redis_url": redis.url,
                    "secret": SECRET,
                    "node_id": f"node{i}",
                    "claim_ttl_s": TTL,
                },
                **extra,
            )
            for i in range(n)
        ]

    return start


def image(node: ServerProcess, name: str) -> tuple[int, bytes, dict[str, str]]:
    return node.request("GET", f"/streams/{name}/snapshot.jpg?width=160")


def test_any_node_answers_for_any_stream_with_the_live_picture(cluster):
    a, b, c = cluster()
    pub = ffmpeg_testsrc(a.rtmp_url("cam1"), size="320x240")
    try:
        a.wait_stream("cam1", frames=30)
        for node in (b, c):
            status, body = node.snapshot("cam1")  # REST POST, forwarded to node0
            assert status == 200, body
            assert body["data"].startswith("iVBORw0KGgo")  # a PNG, as if local
        status, first, headers = image(b, "cam1")
        assert status == 200 and first[:2] == b"\xff\xd8", headers
        index = int(headers["X-Frame-Index"])
        time.sleep(0.5)
        status, _, later = image(c, "cam1")
        assert status == 200 and int(later["X-Frame-Index"]) > index  # the live stream
        # find on another node finds it on its owner; find_all merges every node's
        assert find(b, "cam1")["name"] == "cam1"
        status, raw, _ = c.request("POST", "/rest-api/stream/find_all", {})
        streams = json.loads(raw)
        assert status == 200 and [(s["name"], s["node"]) for s in streams] == [("cam1", "node0")]
        # the WebSocket API's snapshot on another node: the owner's picture
        got = asyncio.run(
            _ws_exchange(
                f"ws://127.0.0.1:{c.ports['ws']}/",
                [
                    {"message": "connection", "data": [{"appKey": "defaultApp"}]},
                    {"message": "snapshot", "data": [{"name": "cam1", "mediaSessionId": "s1"}]},
                ],
                expect=2,
            )
        )
        assert got[1]["data"][0]["type"] == "snapshotCompleted", got
        assert got[1]["data"][0]["payload"]["snapshot"].startswith("iVBORw0KGgo")
        # the gallery of any node shows the stream, its live picture through that node
        status, raw, _ = c.request("GET", "/gallery.json")
        entry = next(s for s in json.loads(raw)["streams"] if s["name"] == "cam1")
        assert entry["node"] == "node0"
        status, jpeg, _ = c.request("GET", entry["live"])
        assert status == 200 and jpeg[:2] == b"\xff\xd8"
        # `streamsnap cluster` shows every node and what it holds
        out = subprocess.run(
            [sys.executable, "-m", "streamsnap", "cluster", "--config", str(a.config), "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        seen = {n["id"]: n for n in json.loads(out)["nodes"]}
        assert sorted(seen) == ["node0", "node1", "node2"]
        assert seen["node0"]["names"] == ["cam1"] and seen["node0"]["url"] == a.http
        # a stream no node holds: 404 as on one server
        status, body = b.snapshot("nobody-has-it")
        assert status == 404, body
        # terminate through another node ends it on its owner
        status, _, _ = c.request("POST", "/rest-api/stream/terminate", {"name": "cam1"})
        assert status == 200
        a.wait_gone("cam1")
    finally:
        pub.stop()


def test_a_live_name_is_refused_on_every_node(cluster):
    a, b, _ = cluster()
    first = ffmpeg_testsrc(a.rtmp_url("taken"), size="320x240")
    second = None
    try:
        a.wait_stream("taken", frames=10)
        second = ffmpeg_testsrc(b.rtmp_url("taken"), size="320x240")
        b.wait_log(r"'taken' refused: stream 'taken' is already published on node node0", 15)
        wait_for(lambda: not second.alive(), 15, "the second publisher to be refused")
        assert find(b, "taken")["name"] == "taken"  # still the first one, through node1
        # WHIP: 409 (refused before the offer is looked at)
        status, text, _ = whip_post(b, "taken", "v=0\r\n")
        assert status == 409 and "already published" in text
        # the WebSocket API: FAILED, "Stream name is already in use"
        url = f"ws://127.0.0.1:{b.ports['ws']}/"
        publish = {"name": "taken", "mediaSessionId": "ws-1", "sdp": "v=0\r\n"}
        got = asyncio.run(
            _ws_exchange(
                url,
                [
                    {"message": "connection", "data": [{"appKey": "defaultApp"}]},
                    {"message": "publishStream", "data": [publish]},
                ],
                expect=2,
            )
        )
        status_event = got[1]["data"][0]
        assert status_event["status"] == "FAILED", got
        assert status_event["info"] == "Stream name is already in use"
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_killed_node_is_forgotten_and_its_names_can_be_published_elsewhere(cluster):
    a, b, c = cluster()
    pub = ffmpeg_testsrc(a.rtmp_url("moving"), size="320x240")
    try:
        a.wait_stream("moving", frames=10)
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait()
        # its claim still stands for up to claim_ttl_s: a clear 503, never a hang
        started = time.monotonic()
        status, body = b.snapshot("moving")
        assert time.monotonic() - started < 2.5
        assert status in (503, 404), body
        if status == 503:
            assert "does not answer" in body["message"]
        wait_for(lambda: b.snapshot("moving")[0] == 404, TTL + 3, "node0's claim to expire")
    finally:
        pub.stop()
    again = ffmpeg_testsrc(c.rtmp_url("moving"), size="320x240")
    try:
        c.wait_stream("moving", frames=10)
        assert b.snapshot("moving")[0] == 200
    finally:
        again.stop()


def test_without_redis_each_node_serves_its_own_and_rejoins(cluster, redis):
    a, b = cluster(2)
    pub = ffmpeg_testsrc(a.rtmp_url("steady"), size="320x240")
    try:
        a.wait_stream("steady", frames=10)
        assert b.snapshot("steady")[0] == 200
        redis.kill()
        assert a.snapshot("steady")[0] == 200  # its own stream: served as before
        started = time.monotonic()
        status, body = b.snapshot("steady")
        assert status == 503 and "registry" in body["message"], body
        assert time.monotonic() - started < 2.0
        redis.restart()  # empty: the nodes put their claims back
        wait_for(lambda: b.snapshot("steady")[0] == 200, 10, "node0 to claim its stream again")
    finally:
        pub.stop()


def test_forged_and_replayed_forwards_are_refused(cluster):
    a, _ = cluster(2)
    pub = ffmpeg_testsrc(a.rtmp_url("guarded"), size="320x240")
    try:
        a.wait_stream("guarded", frames=10)
        target = "/streams/guarded/snapshot.png"

        def get(headers: dict[str, str]) -> int:
            req = urllib.request.Request(a.http + target, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status
            except urllib.error.HTTPError as exc:
                return exc.code

        good = sign(SECRET.encode(), "node1", "node0", "GET", target)
        assert get(good) == 200
        assert get(good) == 403  # the same request again: a replay
        forged = sign(b"not-the-secret-of-this-cluster", "node1", "node0", "GET", target)
        assert get(forged) == 403
        unsigned = {k: v for k, v in sign(SECRET.encode(), "node1", "node0", "GET", target).items()}
        unsigned["X-Streamsnap-Signature"] = "0" * 64
        assert get(unsigned) == 403
        other = sign(SECRET.encode(), "node0", "node1", "GET", target)  # signed for node1
        assert get(other) == 403
        a.wait_log(r"cluster: request GET /streams/guarded/snapshot.png from .* refused")
    finally:
        pub.stop()


def test_every_saved_snapshot_is_an_event_in_redis(make_server, redis, tmp_path):
    """One consumer group on ``streamsnap:events`` sees every node's snapshots."""
    nodes = [
        make_server(
            cluster={"redis_url": redis.url, "secret": SECRET, "node_id": f"node{i}"},
            snapshot={
                "snapshot_auto_enabled": True,
                "snapshot_auto_rate": 15,
                "snapshot_auto_naming": "streamName",
                "snapshot_auto_dir": str(tmp_path / f"snaps{i}"),
            },
        )
        for i in range(2)
    ]
    pubs = [ffmpeg_testsrc(n.rtmp_url(f"ev{i}"), size="320x240") for i, n in enumerate(nodes)]
    client = redis_py.Redis(port=redis.port, decode_responses=True)
    try:
        client.xgroup_create("streamsnap:events", "archivers", id="0", mkstream=True)

        def both_nodes() -> list:
            got = client.xreadgroup("archivers", "worker-1", {"streamsnap:events": ">"}, count=100)
            events.extend(fields for _, entries in got for _, fields in entries)
            return sorted({e["node"] for e in events}) == ["node0", "node1"]

        events: list[dict] = []
        wait_for(both_nodes, 20, "snapshot events of both nodes")
        first = next(e for e in events if e["node"] == "node0")
        assert first["event"] == "snapshot" and first["stream"] == "ev0" and first["mediaSessionId"]
        assert first["file"].endswith(".png") and int(first["timestamp"]) > 0
        assert first["url"].startswith(nodes[0].http + "/snapshots/ev0/")
        assert nodes[0].request("GET", first["url"][len(nodes[0].http) :])[1][:4] == b"\x89PNG"
    finally:
        client.close()
        for p in pubs:
            p.stop()


def _placement(node: ServerProcess) -> dict[str, list[str]]:
    status, raw, _ = node.request("POST", "/rest-api/stream/find_all", {})
    held: dict[str, list[str]] = {}
    for s in json.loads(raw) if status == 200 else []:
        held.setdefault(s["name"], []).append(s["node"])
    return held


def _ffmpeg_children(node: ServerProcess) -> int:
    count = 0
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, ValueError, IndexError):
            continue
        count += ppid == node.proc.pid and b"ffmpeg" in cmd
    return count


def _logged_at(node: ServerProcess, pattern: str) -> float:
    """When ``node`` last logged a line matching ``pattern`` (its log's clock, seconds)."""
    from datetime import datetime

    node.wait_log(pattern, 10)
    line = [line for line in list(node.lines) if re.search(pattern, line)][-1]
    stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})", line).group(1)
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _moved_here(node: ServerProcess) -> float:
    """Configured sources that moved to ``node`` after its start (its /metrics)."""
    text = node.request("GET", "/metrics")[1].decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("streamsnap_pull_taken_over_total")
    )


def test_cameras_are_shared_out_pulled_once_and_move_when_nodes_die_or_join(
    cluster, make_server, make_camera, redis
):
    from streamsnap.plugins.cluster.placement import owner

    camera = make_camera(size="320x240", fps=15, one_encoder=True)
    cams = [{"name": f"cam{i}", "url": camera.url(query=f"?channel={i}")} for i in range(6)]
    nodes = dict(zip(["node0", "node1", "node2"], cluster(3, pull={"cameras": cams}), strict=True))

    def settled(ids: list[str]) -> dict[str, str] | None:
        want = {c["name"]: owner(c["name"], ids) for c in cams}
        held = _placement(nodes[ids[0]])
        got = {name: where[0] for name, where in held.items() if len(where) == 1}
        dupes = {name for name, where in held.items() if len(where) > 1}
        assert not dupes, f"pulled twice: {held}"
        return got if got == want else None

    before = wait_for(lambda: settled(list(nodes)), 30, "the cameras spread over three nodes")
    assert len(set(before.values())) > 1  # really shared out
    wait_for(
        lambda: sum(_ffmpeg_children(n) for n in nodes.values()) == 6, 15, "one FFmpeg per camera"
    )
    # the node holding the most cameras dies: the others take its cameras
    victim = max(nodes, key=lambda n: list(before.values()).count(n))
    moved_before = sum(_moved_here(nodes[n]) for n in nodes if n != victim)
    os.kill(nodes[victim].proc.pid, signal.SIGKILL)
    nodes[victim].proc.wait()
    killed = time.monotonic()
    survivors = [n for n in nodes if n != victim]
    del nodes[victim]
    after = wait_for(lambda: settled(survivors), TTL + 10, "the cameras taken over")
    moved_here = sum(_moved_here(nodes[n]) for n in survivors) - moved_before
    assert moved_here == list(before.values()).count(victim)
    log_line = f"failover in {time.monotonic() - killed:.1f} s"
    assert all(after[n] == before[n] for n in after if before[n] != victim), log_line
    # a node joins: only the cameras that hash to it move, the new owner pulls before the old
    # one lets go
    nodes["node3"] = make_server(
        cluster={"redis_url": redis.url, "secret": SECRET, "node_id": "node3", "claim_ttl_s": TTL},
        pull={"cameras": cams},
    )
    joined = wait_for(lambda: settled([*survivors, "node3"]), 30, "the new node to get its share")
    moved = [n for n in joined if joined[n] != after[n]]
    assert moved and all(joined[n] == "node3" for n in moved), (after, joined)
    for name in moved:  # make-before-break: the new owner had pictures before the old let go
        has_pictures = _logged_at(nodes["node3"], rf"stream {name}: receiving video")
        let_go = _logged_at(nodes[after[name]], rf"stream {name}: unpublished \(moved")
        assert has_pictures < let_go, (name, has_pictures, let_go)
        assert _logged_at(nodes["node3"], rf"stream {name}: handed over") >= let_go
    # every camera answers through any node
    for name in joined:
        assert image(nodes[survivors[0]], name)[0] == 200


def test_a_camera_asked_for_by_url_is_pulled_by_one_node_only(cluster, make_camera):
    camera = make_camera(size="320x240", fps=15)
    a, b = cluster(2, pull={"allowed_hosts": ["127.0.0.1"]})
    url = camera.url()
    assert a.snapshot(url)[0] == 200  # node0 pulls it
    status, body = b.snapshot(url)  # node1 asks node0 instead of pulling it again
    assert status == 200 and body["data"].startswith("iVBORw0KGgo"), body
    assert _ffmpeg_children(a) == 1 and _ffmpeg_children(b) == 0
    assert _placement(b) == {url: ["node0"]}


def test_nodes_find_redis_through_sentinel(make_server, redis):
    from tests.helpers.redis import RedisSentinel

    sentinel = RedisSentinel(redis)
    try:
        a, b = (
            make_server(
                cluster={"redis_url": sentinel.url, "secret": SECRET, "node_id": f"node{i}"}
            )
            for i in range(2)
        )
        pub = ffmpeg_testsrc(a.rtmp_url("via-sentinel"), size="320x240")
        try:
            a.wait_stream("via-sentinel", frames=10)
            status, body = b.snapshot("via-sentinel")
            assert status == 200 and body["data"].startswith("iVBORw0KGgo"), body
        finally:
            pub.stop()
    finally:
        sentinel.stop()


def test_a_name_taken_twice_while_redis_was_away_ends_up_with_one_owner(cluster, redis):
    a, b = cluster(2)
    first = ffmpeg_testsrc(a.rtmp_url("dup"), size="320x240")
    second = None
    try:
        a.wait_stream("dup", frames=10)
        redis.kill()
        second = ffmpeg_testsrc(b.rtmp_url("dup"), size="320x240")  # b cannot ask: let in
        b.wait_stream("dup", frames=10)
        redis.restart()
        line = r"stream dup: node node[01] took the name while the registry was unreachable"

        def held_here(node: ServerProcess) -> int:  # this node's own streams
            return json.loads(node.request("GET", "/healthz")[1])["streams"]

        def one_owner() -> bool:
            return held_here(a) + held_here(b) == 1

        wait_for(one_owner, 15, "one owner of dup")
        assert re.search(line, a.log + b.log), a.log + b.log
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_configured_camera_asked_for_by_its_url_is_not_pulled_again(cluster, make_camera):
    camera = make_camera(size="320x240", fps=15)
    nodes = cluster(
        2, pull={"allowed_hosts": ["127.0.0.1"], "cameras": [{"name": "gate", "url": camera.url()}]}
    )
    from streamsnap.plugins.cluster.placement import owner

    # settled where the hash puts it (the first node may pull it before the second joins)
    holder = owner("gate", ["node0", "node1"])
    puller, other = (nodes[0], nodes[1]) if holder == "node0" else (nodes[1], nodes[0])

    def settled() -> bool:
        placed = _placement(nodes[0]).get("gate") == [holder]
        return placed and (_ffmpeg_children(puller), _ffmpeg_children(other)) == (1, 0)

    wait_for(settled, 30, "gate pulled once, by the node the hash gives")
    status, body = other.snapshot(camera.url())  # by URL, on the node that does not pull it
    assert status == 200 and body["data"].startswith("iVBORw0KGgo"), body
    assert sum(_ffmpeg_children(n) for n in nodes) == 1


async def test_mjpeg_history_staleness_and_save_answered_by_any_node(cluster, tmp_path):
    """What #16 added is answered by a node that does not hold the stream, as by its holder."""
    import aiohttp

    from tests.e2e.test_mjpeg import Viewer
    from tests.helpers.media import ffmpeg_counter, read_counter

    holder, other = cluster(
        2, streams={"history_s": 10, "stale_after_s": 1.5}, mjpeg={"max_viewers_per_ip": 1}
    )
    pub = ffmpeg_counter(holder.rtmp_url("far"), 640, 360, gop=30)
    try:
        holder.wait_stream("far", frames=30)
        wait_for(lambda: find(other, "far"), 10, "far seen from the other node")
        # MJPEG passed on from the holder as it comes: the counter advances
        url = f"{other.http}/streams/far/stream.mjpeg?fps=10"

        def client(source: str) -> aiohttp.ClientSession:
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0)))

        async with (
            client("127.0.0.2") as session,
            session.get(url) as resp,
            client("127.0.0.3") as session3,
            session3.get(url) as resp3,
        ):
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            parts = await Viewer(resp).parts(4)
            # each viewer is counted as itself ([mjpeg] max_viewers_per_ip = 1), on the node
            # it came to and on the holder, not as the node that passed it on
            assert resp3.status == 200 and len(await Viewer(resp3).parts(2)) == 2
            async with client("127.0.0.2") as again, again.get(url) as refused:
                assert refused.status == 429
                assert "max_viewers_per_ip" in (await refused.json())["message"]
        shown = [read_counter(data) for _, data in parts]
        assert shown == sorted(set(shown)) and pub.sent - shown[-1] <= 15, (shown, pub.sent)
        assert all(int(h["X-Frame-Timestamp"]) > 0 for h, _ in parts)
        # a picture of the past, asked of the other node
        status, raw, headers = other.request("GET", "/streams/far/snapshot.png")
        assert status == 200
        stamp, then = int(headers["X-Frame-Timestamp"]), read_counter(raw)
        time.sleep(1.2)
        status, raw, headers = other.request("GET", f"/streams/far/snapshot.png?at={stamp}")
        assert status == 200 and read_counter(raw) == then
        assert headers["X-Frame-Timestamp"] == str(stamp)
        status, raw, _ = other.request("GET", f"/streams/far/snapshot.png?at={stamp - 60_000}")
        assert status == 410 and "oldest instant held" in json.loads(raw)["message"]
        # saved on the holder, asked of the other node
        status, raw, _ = other.request(
            "POST", "/rest-api/stream/snapshot/save", {"streamName": "far"}
        )
        assert status == 200, raw
        saved = json.loads(raw)
        assert saved["url"].startswith(holder.http) and os.path.exists(saved["file"])
        # stale on the holder: the other node says so too
        os.kill(pub.proc.pid, signal.SIGSTOP)
        time.sleep(2.5)
        status, raw, headers = other.request("GET", "/streams/far/snapshot.png")
        assert status == 503 and headers["Retry-After"] == "2", raw
        assert "is stale" in json.loads(raw)["message"]
        status, body = other.snapshot("far")
        assert status == 500 and "is stale" in body["message"], body
        assert other.request("GET", "/streams/far/snapshot.png?stale=ok")[0] == 200
    finally:
        os.kill(pub.proc.pid, signal.SIGCONT)
        pub.stop()
