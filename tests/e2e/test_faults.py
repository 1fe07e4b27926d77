"""Fault injection: one stream (or plugin) is hurt while a witness stream must keep working.

The witness is a real FFmpeg RTMP publisher of frame-counter pictures, auto-snapshotted into its
own folder: after every fault its REST snapshot still shows a newer frame, its folder still
grows, and every file in every snapshot folder is a whole picture. Each fault must also show in
the logs (with the stream's or plugin's name), in ``find``/``pull/find_all`` and in ``/metrics``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from streamsnap.plugins.rtmp.chunks import encode_message
from tests.helpers.media import ffmpeg_counter, ffmpeg_testsrc, ffmpeg_whip, read_counter
from tests.helpers.rtmp_client import RtmpClient, make_flv
from tests.helpers.server import find, wait_for

pytestmark = pytest.mark.e2e

SEQ = re.compile(r"_(\d+)\.(png|jpg|webp)$")


# ---------------------------------------------------------------- helpers
def fault_server(make_server, tmp_path: Path, env: dict | None = None, **sections):
    snapshot = {
        "snapshot_taking_interval_ms": 6000,
        "snapshot_auto_enabled": True,
        "snapshot_auto_dir": str(tmp_path / "snaps"),
        "snapshot_auto_naming": "streamName",
        "snapshot_auto_rate": 10,
        "snapshot_auto_retention": 1000,
        **sections.pop("snapshot", {}),
    }
    sections.setdefault("webrtc", {"ice_addresses": ["127.0.0.1"], "idle_timeout_s": 3})
    sections.setdefault(
        "rtsp", {"stall_timeout_s": 2.0, "connect_timeout_s": 3.0, "backoff_max_s": 1.0}
    )
    return make_server(env=env, snapshot=snapshot, **sections)


def whole_files(folder: Path) -> list[int]:
    """Sequence numbers of the finished files in ``folder``; each must decode completely."""
    seqs = []
    if not folder.is_dir():
        return seqs
    for path in folder.iterdir():
        m = SEQ.search(path.name)
        if path.name.startswith(".") or not m:
            continue  # a temp file being written right now, or a filler
        with Image.open(path) as img:
            img.load()  # raises on a truncated file
        seqs.append(int(m.group(1)))
    return sorted(seqs)


def no_temp_files(root: Path) -> None:
    left = [p for p in root.rglob(".*")]
    assert not left, f"half-written files left: {left}"


def metric(srv, name: str, **labels: str) -> float:
    """The value of one sample of ``/metrics`` (0 when absent)."""
    status, raw, _ = srv.request("GET", "/metrics")
    assert status == 200
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in raw.decode().splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        if sample == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return 0.0


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(p) for p in (task / "children").read_text().split()]
    return out


class Witness:
    """A healthy stream next to the faulty one: it must keep being snapshotted."""

    def __init__(self, srv, root: Path, name: str = "witness") -> None:
        self.srv, self.name = srv, name
        self.folder = root / name
        self.pub = ffmpeg_counter(srv.rtmp_url(name), width=640, height=360)
        srv.wait_stream(name, frames=10, timeout=20)
        self.frame = -1
        self.files = 0

    def check(self) -> None:
        """REST snapshots answer, and within 10 s show a newer frame (a request right after
        the last one may share its picture: coalesce_ms); the folder has grown since the last
        check, and every file in it is whole."""

        def newer() -> tuple[int] | None:
            status, body = self.srv.snapshot(self.name, timeout=10)
            assert status == 200, body
            frame = read_counter(base64.b64decode(body["data"]))
            assert frame >= self.frame, (frame, self.frame)
            return (frame,) if frame > self.frame else None

        (self.frame,) = wait_for(newer, 10, f"a newer picture of {self.name}")
        count = wait_for(
            lambda: (n := len(whole_files(self.folder))) > self.files and n,
            10,
            f"new auto-snapshot files of {self.name}",
        )
        self.files = count

    def stop(self) -> None:
        self.pub.stop()


@pytest.fixture
def witness_of():
    made: list[Witness] = []

    def make(srv, root: Path) -> Witness:
        w = Witness(srv, root)
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop()


@pytest.fixture(scope="module")
def tags(tmp_path_factory):
    return make_flv(tmp_path_factory.mktemp("flv") / "f.flv", size="320x240", seconds=3, gop=15)


@pytest.fixture(scope="session")
def faulty_plugin(tmp_path_factory) -> Path:
    """tests/fixtures/streamsnap-faulty installed with pip into a folder (PYTHONPATH it)."""
    from tests.helpers.packages import ROOT, pip_install_target

    return pip_install_target(
        ROOT / "tests" / "fixtures" / "streamsnap-faulty", tmp_path_factory.mktemp("faulty-site")
    )


# ---------------------------------------------------------------- FFmpeg pull child
def test_pull_child_killed_then_hung_other_streams_unaffected(
    make_server, make_camera, tmp_path, witness_of
):
    cam = make_camera(size="320x240")
    srv = fault_server(
        make_server,
        tmp_path,
        rtsp={
            "stall_timeout_s": 2.0,
            "connect_timeout_s": 3.0,
            "backoff_max_s": 1.0,
            "cameras": [{"name": "gate", "url": cam.url()}],
        },
    )
    witness = witness_of(srv, tmp_path / "snaps")
    wait_for(lambda: srv.snapshot("gate")[0] == 200, 15, "the camera's first picture")

    def ffmpeg_pid(after: int = 0) -> int:
        pids = [int(p) for p in re.findall(r"pull gate: started pid (\d+)", srv.log)]
        return pids[-1] if pids and pids[-1] != after else 0

    first = ffmpeg_pid()
    assert first in children(srv.proc.pid)
    os.kill(first, signal.SIGKILL)  # FFmpeg crashes
    srv.wait_log(rf"pull gate: pid {first} exited with -9")
    witness.check()
    second = wait_for(lambda: ffmpeg_pid(after=first), 15, "a new FFmpeg child")
    wait_for(lambda: srv.snapshot("gate")[0] == 200, 20, "recovery after the kill")
    assert metric(srv, "streamsnap_child_exits_total", stream="gate", kind="exited") == 1

    os.kill(second, signal.SIGSTOP)  # FFmpeg hangs: alive, silent
    try:
        srv.wait_log(rf"pull gate: pid {second} made no progress for", timeout=15)
        witness.check()
        srv.wait_log(rf"pull gate: pid {second} exited with", timeout=15)  # INT, TERM, KILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(second, signal.SIGCONT)
    assert not alive(second)
    wait_for(lambda: ffmpeg_pid(after=second), 15, "a third FFmpeg child")
    wait_for(lambda: srv.snapshot("gate")[0] == 200, 20, "recovery after the hang")
    assert metric(srv, "streamsnap_child_exits_total", stream="gate", kind="stall") == 1
    assert metric(srv, "streamsnap_child_starts_total", stream="gate") == 3
    _status, raw, _ = srv.request("POST", "/rest-api/pull/find_all")
    pull = json.loads(raw)[0]
    assert pull["restarts"] == 2 and pull["status"] == "PUBLISHING"
    witness.check()
    assert find(srv, "gate")["faults"] == {}  # cleared once the pictures came back
    assert len(children(srv.proc.pid)) == 1  # the killed children were all reaped


# ---------------------------------------------------------------- RTMP publisher reset
def test_publisher_tcp_reset_mid_chunk(make_server, tmp_path, witness_of, tags):
    srv = fault_server(make_server, tmp_path)
    witness = witness_of(srv, tmp_path / "snaps")
    client = RtmpClient("127.0.0.1", srv.ports["rtmp"])
    try:
        assert "Publish.Start" in repr(client.publish("reset"))
        for tag in tags[:80]:
            client.send_tag(tag)
        srv.wait_stream("reset", frames=20)
        wait_for(lambda: whole_files(tmp_path / "snaps" / "reset"), 10, "a file of 'reset'")
        video = next(t for t in tags[80:] if t.type_id == 9 and len(t.data) > 1000)
        wire = encode_message(6, 9, client.stream_id, video.timestamp, video.data, 128)
        client.sock.sendall(wire[: len(wire) // 2])  # half a message, cut inside a chunk
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        client.close()  # linger 0: the kernel sends RST, not FIN
    srv.wait_gone("reset", timeout=10)
    srv.wait_log(r"stream reset: unpublished \(connection reset; \d+ frames\)")
    assert metric(srv, "streamsnap_streams_ended_total", protocol="rtmp", reason="connection reset")
    witness.check()
    files = whole_files(tmp_path / "snaps" / "reset")
    assert files == list(range(1, len(files) + 1))  # nothing lost, nothing half-written
    again = RtmpClient("127.0.0.1", srv.ports["rtmp"])  # the name is free at once
    try:
        assert "Publish.Start" in repr(again.publish("reset"))
    finally:
        again.close()
    witness.check()


# ---------------------------------------------------------------- WHIP client vanishes
def test_whip_publisher_killed_without_delete_is_unpublished(make_server, tmp_path, witness_of):
    srv = fault_server(make_server, tmp_path)
    witness = witness_of(srv, tmp_path / "snaps")
    pub = ffmpeg_whip(srv.http + "/whip/vanish", size="320x240")
    try:
        srv.wait_stream("vanish", frames=30, timeout=20)
        assert find(srv, "vanish")["protocol"] == "whip"
        pub.stop(signal.SIGKILL)  # the tab is killed: no DELETE, no DTLS close
        t0 = time.monotonic()
        srv.wait_gone("vanish", timeout=15)
        gone_after = time.monotonic() - t0
    finally:
        pub.stop()
    line = srv.wait_log(r"stream vanish: unpublished \(")
    assert "no video for 3 s" in line or "WebRTC failed" in line, line
    ended = metric(
        srv, "streamsnap_streams_ended_total", protocol="whip", reason="no video for 3 s"
    )
    ended += metric(srv, "streamsnap_streams_ended_total", protocol="whip", reason="WebRTC failed")
    assert ended == 1
    assert whole_files(tmp_path / "snaps" / "vanish")
    witness.check()
    print(f"WHIP publisher killed: unpublished after {gone_after:.1f} s")


# ---------------------------------------------------------------- slow REST clients
def test_slow_and_silent_rest_clients_do_not_stall_others(make_server, tmp_path, witness_of):
    # 300 connections from one address: beyond [limits] max_connections_per_ip, on purpose
    srv = fault_server(make_server, tmp_path, limits={"max_connections_per_ip": 0})
    witness = witness_of(srv, tmp_path / "snaps")
    port = srv.ports["http"]
    fds_before = len(os.listdir(f"/proc/{srv.proc.pid}/fd"))
    sockets: list[socket.socket] = []
    try:
        # a client that asks for a snapshot and then reads it at one byte a second
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", port))
        sockets.append(slow)
        body = json.dumps({"streamName": "witness"}).encode()
        slow.sendall(
            b"POST /rest-api/stream/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        # many that send half a request and wait, and many that ask and never read
        for i in range(300):
            s = socket.create_connection(("127.0.0.1", port))
            if i % 2:
                s.sendall(b"GET /streams/witness/snapshot.png HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            else:
                s.sendall(b"GET /streams/witness/snapshot.png HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            sockets.append(s)
        for _ in range(5):
            assert slow.recv(1)  # one byte a second
            witness.check()  # others' snapshots still come (each within 10 s)
            assert srv.request("GET", "/healthz", timeout=10)[0] == 200
            time.sleep(1)
    finally:
        for s in sockets:
            s.close()
    # the server lets go of them all
    wait_for(
        lambda: len(os.listdir(f"/proc/{srv.proc.pid}/fd")) <= fds_before + 10,
        20,
        "the slow clients' sockets to be closed",
    )
    witness.check()


# ---------------------------------------------------------------- disk full
@pytest.fixture
def tiny_disk(tmp_path):
    """A 4 MiB tmpfs mounted as one stream's snapshot folder (needs root; skipped otherwise)."""
    folder = tmp_path / "snaps" / "full"
    folder.mkdir(parents=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tiny tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "streamsnap-test", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_disk_full_for_one_stream(make_server, tmp_path, witness_of, tiny_disk):
    srv = fault_server(make_server, tmp_path)
    witness = witness_of(srv, tmp_path / "snaps")
    pub = ffmpeg_testsrc(srv.rtmp_url("full"), size="320x240", audio=False)
    try:
        srv.wait_stream("full", frames=10, timeout=20)
        wait_for(lambda: len(whole_files(tiny_disk)) >= 3, 15, "files on the tiny disk")
        filler = tiny_disk / "filler.bin"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:  # take every byte that is left
                f.write(b"\0" * 65536)
                f.flush()
        before = whole_files(tiny_disk)
        srv.wait_log(r"stream full: cannot write snapshots to .*: No space left on device")
        wait_for(
            lambda: (
                metric(srv, "streamsnap_auto_snapshot_stream_write_errors_total", stream="full")
                >= 3
            ),
            10,
            "write errors counted",
        )
        assert "No space left on device" in find(srv, "full")["faults"]["auto_snapshot"]
        assert srv.snapshot("full")[0] == 200  # REST snapshots do not need the disk
        witness.check()
        assert whole_files(tiny_disk)[: len(before)] == before  # older files intact
        filler.unlink()  # space comes back
        srv.wait_log(r"stream full: writing snapshots to .* again")
        wait_for(lambda: len(whole_files(tiny_disk)) > len(before) + 2, 10, "writing again")
        assert find(srv, "full")["faults"] == {}
        witness.check()
    finally:
        pub.stop()
    srv.wait_gone("full")
    assert srv.log.count("stream full: cannot write snapshots") == 1  # logged once
    seqs = whole_files(tiny_disk)
    assert seqs[: len(before)] == before and seqs == sorted(set(seqs))
    no_temp_files(tiny_disk)


# ---------------------------------------------------------------- misbehaving plugins
def test_plugin_that_raises_and_plugin_that_blocks(
    make_server, tmp_path, witness_of, faulty_plugin
):
    env = {
        "PYTHONPATH": str(faulty_plugin),
        "FAULTY_RAISE_STREAM": "raising",
        "FAULTY_BLOCK_STREAM": "blocking",
        "FAULTY_BLOCK_S": "2",
        "FAULTY_SHUTDOWN_BLOCK_S": "60",
    }
    srv = fault_server(make_server, tmp_path, env=env, server={"shutdown_timeout_s": 3.0})
    witness = witness_of(srv, tmp_path / "snaps")
    raising = ffmpeg_testsrc(srv.rtmp_url("raising"), size="320x240", audio=False)
    srv.wait_stream("raising", frames=30, timeout=20)
    blocking = ffmpeg_testsrc(srv.rtmp_url("blocking"), size="320x240", audio=False)
    try:
        srv.wait_log(
            r"plugin faulty blocked the event loop for 2\.\d s in on_frame "
            r"\(stream blocking\): its on_frame and on_snapshot_saved calls run on a "
            r"thread of their own",
            timeout=20,
        )
        srv.wait_stream("blocking", frames=60, timeout=20)  # the loop is free again
        for _ in range(3):
            witness.check()
            assert srv.snapshot("blocking")[0] == 200
            assert srv.snapshot("raising")[0] == 200
            time.sleep(1)
        errors = metric(srv, "streamsnap_plugin_errors_total", plugin="faulty", hook="on_frame")
        assert errors >= 25  # counted while raising was sent to the plugin alone
        assert metric(srv, "streamsnap_plugin_offloaded", plugin="faulty") == 1
        assert metric(srv, "streamsnap_plugin_slow_calls_total", plugin="faulty", hook="on_frame")
        assert metric(srv, "streamsnap_plugin_calls_dropped_total", plugin="faulty") > 0
        # the other plugins are not held back: files of every stream keep coming
        for name in ("raising", "blocking"):
            assert len(whole_files(tmp_path / "snaps" / name)) >= 5, name
    finally:
        raising.stop()
        blocking.stop()
    failures = re.findall(r"plugin faulty failed in on_frame \(stream raising\)", srv.log)
    assert len(failures) == 1, "a failing plugin is logged once, then counted"
    assert srv.log.count("plugin faulty blocked the event loop") == 1
    # shutdown with a plugin that blocks the loop in on_shutdown: bounded by shutdown_timeout_s
    t0 = time.monotonic()
    code = srv.stop(timeout=20)
    took = time.monotonic() - t0
    assert code == 1 and took < 3.0 + 5, (code, took)
    assert "shutdown did not finish within 3.0 s" in srv.log
    no_temp_files(tmp_path / "snaps")
    for folder in (tmp_path / "snaps").iterdir():
        whole_files(folder)


# ---------------------------------------------------------------- SIGTERM
def test_sigterm_tells_publishers_stops_children_and_finishes_files(
    make_server, make_camera, tmp_path, tags
):
    cam = make_camera(size="320x240")
    srv = fault_server(
        make_server,
        tmp_path,
        server={"shutdown_timeout_s": 5.0},
        snapshot={"snapshot_auto_rate": 2},
        rtsp={"cameras": [{"name": "yard", "url": cam.url()}], "stall_timeout_s": 2.0},
    )
    encoder = ffmpeg_testsrc(srv.rtmp_url("encoder"), size="640x360")
    whip = ffmpeg_whip(srv.http + "/whip/browser", size="320x240")
    client = RtmpClient("127.0.0.1", srv.ports["rtmp"])
    try:
        assert "Publish.Start" in repr(client.publish("client"))
        for tag in tags[:40]:
            client.send_tag(tag)
        for name in ("encoder", "browser", "client", "yard"):
            srv.wait_stream(name, frames=10, timeout=20)
        wait_for(lambda: whole_files(tmp_path / "snaps" / "yard"), 10, "a file of the camera")
        kids = children(srv.proc.pid)
        assert kids and all(alive(pid) for pid in kids)
        t0 = time.monotonic()
        assert srv.stop(timeout=20) == 0
        took = time.monotonic() - t0
        assert took < 5.0 + 1, took
        # the python client was told why, then the connection closed
        client.sock.settimeout(5)
        told = client.read_commands("NetStream.Unpublish.Success")
        assert "server shutting down" in repr(told[-1])
        with contextlib.suppress(ConnectionResetError):
            assert client.sock.recv(65536) == b""
        encoder.proc.wait(10)  # FFmpeg saw its connection end and exited by itself
        assert not [pid for pid in kids if alive(pid)], "FFmpeg children outlived the server"
    finally:
        client.close()
        encoder.stop()
        whip.stop()
    assert re.search(r"stopped in \d+\.\d s", srv.log)
    root = tmp_path / "snaps"
    no_temp_files(root)
    for name in ("encoder", "browser", "client", "yard"):
        assert whole_files(root / name), name
