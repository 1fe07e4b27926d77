"""The deployment files against a running server: deploy/nginx.conf, as shipped but for its
ports and certificate, in front of a real server (REST snapshot, MJPEG, WHIP and the
WebSocket API over TLS), and every metric the Grafana dashboard queries served by /metrics."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from tests.helpers import dashboard
from tests.helpers.media import ffmpeg_testsrc, ffmpeg_whip
from tests.helpers.server import ServerProcess
from tests.helpers.tls import self_signed

pytestmark = pytest.mark.e2e

NGINX = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else shutil.which("nginx")
SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
PUBLIC_NAME = "snap.example.com"  # the server_name of deploy/nginx.conf
SIZE = (640, 360)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shipped_config(upstream: dict[str, int], listen: dict[int, int], cert: Path, key: Path) -> str:
    """deploy/nginx.conf with its upstream ports, its listen ports (public port -> a free
    loopback one; IPv6 listens dropped) and its certificate replaced; nothing else."""
    text = SHIPPED.read_text()
    subs = [
        (r"server 127\.0\.0\.1:8081;", f"server 127.0.0.1:{upstream['http']};"),
        (r"server 127\.0\.0\.1:8080;", f"server 127.0.0.1:{upstream['ws']};"),
        (r"(?m)^\s*listen \[::\]:\d+.*;\n", ""),
        (r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};"),
        (r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};"),
    ]
    subs += [(rf"listen {public}\b", f"listen 127.0.0.1:{port}") for public, port in listen.items()]
    for pattern, replacement in subs:
        text, n = re.subn(pattern, replacement, text)
        assert n, f"deploy/nginx.conf no longer has {pattern!r}"
    return text


class Nginx:
    """The real nginx, as this user, with a config of its own in ``folder``; stopped by pid."""

    def __init__(self, folder: Path, site: str, ports: list[int]) -> None:
        self.folder = folder
        (folder / "temp").mkdir()
        (folder / "streamsnap.conf").write_text(site)
        temp = " ".join(
            f"{kind}_temp_path {folder}/temp/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (folder / "nginx.conf").write_text(
            "events { worker_connections 256; }\n"
            f"http {{ access_log off; {temp}\n  include {folder}/streamsnap.conf;\n}}\n"
        )
        self.log = folder / "nginx.log"
        with self.log.open("wb") as log:
            # one process (no workers switching to another user): the pid is all of nginx
            self.proc = subprocess.Popen(
                [
                    NGINX,
                    *("-p", str(folder), "-c", str(folder / "nginx.conf")),
                    "-g",
                    f"daemon off; master_process off; error_log stderr; pid {folder}/nginx.pid;",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 10
        while not all(self._listening(p) for p in ports):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    @staticmethod
    def _listening(port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def proxied(
    make_server, tmp_path, monkeypatch
) -> Iterator[tuple[ServerProcess, dict[int, int], ssl.SSLContext]]:
    """A server configured as docs/deploy.md says, behind the shipped nginx.conf; yields the
    server, the public port -> test port map and a TLS context trusting the proxy."""
    if NGINX is None:
        pytest.skip("nginx is not installed")
    srv = make_server(
        server={"server_names": [PUBLIC_NAME], "trusted_proxies": ["127.0.0.1"]},
        webrtc={"ice_addresses": ["127.0.0.1"], "public_ws_url": f"wss://{PUBLIC_NAME}/ws/"},
        mjpeg={"max_viewers_per_ip": 1},
    )
    cert, key = self_signed(tmp_path)
    listen = {80: free_port(), 443: free_port(), 8443: free_port()}
    folder = tmp_path / "nginx"
    folder.mkdir()
    site = shipped_config(srv.ports, listen, cert, key)
    proxy = Nginx(folder, site, list(listen.values()))
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # FFmpeg's TLS (WHIP) checks the proxy's
    ctx = ssl.create_default_context(cafile=str(cert))  # for 127.0.0.1, the address asked
    try:
        yield srv, listen, ctx
    finally:
        proxy.stop()
    assert "[emerg]" not in proxy.log.read_text() and "[crit]" not in proxy.log.read_text()


def https(
    ctx: ssl.SSLContext,
    port: int,
    method: str,
    path: str,
    body: dict | None = None,
    host: str = PUBLIC_NAME,
    source: str = "127.0.0.2",
) -> tuple[int, bytes]:
    """One request to the proxy from client address ``source`` (a loopback address of its
    own, so that the server can tell clients from the proxy, 127.0.0.1)."""
    headers = {"Host": host, **({"Content-Type": "application/json"} if body else {})}
    data = json.dumps(body).encode() if body is not None else None
    conn = http.client.HTTPSConnection(
        "127.0.0.1", port, context=ctx, timeout=15, source_address=(source, 0)
    )
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def client(source: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0)))


async def mjpeg_parts(ctx: ssl.SSLContext, port: int, n: int) -> tuple[list[bytes], int, int]:
    """``n`` parts of the live MJPEG stream through the proxy for client 127.0.0.2, and the
    statuses another client (127.0.0.3) and a second viewer of the first client get."""
    url = f"https://127.0.0.1:{port}/streams/cam/stream.mjpeg?fps=5&width=160"
    headers = {"Host": PUBLIC_NAME}
    timeout = aiohttp.ClientTimeout(sock_read=10)
    async with (
        client("127.0.0.2") as one,
        client("127.0.0.3") as other,
        client("127.0.0.2") as again,
        one.get(url, ssl=ctx, headers=headers, timeout=timeout) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        reader = aiohttp.MultipartReader(resp.headers, resp.content)
        parts = []
        for _ in range(n):
            part = await asyncio.wait_for(reader.next(), 10)
            assert part is not None, "the MJPEG answer ended early"
            parts.append(bytes(await part.read()))
        async with other.get(url, ssl=ctx, headers=headers, timeout=timeout) as second:
            other_status = second.status
        async with again.get(url, ssl=ctx, headers=headers, timeout=timeout) as third:
            again_status = third.status
    return parts, other_status, again_status


async def websocket_answer(
    ctx: ssl.SSLContext, url: str, origin: str = f"https://{PUBLIC_NAME}"
) -> str:
    """The server's answer to a WCS ``connection`` message over wss through the proxy."""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, ssl=ctx, origin=origin, headers={"Host": PUBLIC_NAME}) as ws,
    ):
        await ws.send_str(json.dumps({"message": "connection", "data": [{"appKey": "x"}]}))
        msg = await ws.receive(timeout=10)
        return json.loads(msg.data)["message"]


def test_nginx_in_front_serves_rest_mjpeg_whip_and_the_websocket_api(proxied):
    srv, port, ctx = proxied
    pub = ffmpeg_testsrc(srv.rtmp_url("cam"), size="x".join(map(str, SIZE)), audio=False)
    try:
        srv.wait_stream("cam", frames=5)

        # REST snapshot over https, through the proxy, under the public name
        status, raw = https(
            ctx, port[443], "POST", "/rest-api/stream/snapshot", {"streamName": "cam"}
        )
        assert status == 200, raw[:300]
        picture = Image.open(io.BytesIO(base64.b64decode(json.loads(raw)["data"])))
        assert (picture.format, picture.size) == ("PNG", SIZE)

        # a saved snapshot's URL is built from the request the client made: the public name
        # (Host is passed on) and https (X-Forwarded-Proto, believed from a trusted proxy)
        status, raw = https(
            ctx, port[443], "POST", "/rest-api/stream/snapshot/save", {"streamName": "cam"}
        )
        assert status == 200, raw[:300]
        assert json.loads(raw)["url"].startswith(f"https://{PUBLIC_NAME}/snapshots/"), raw

        # a Host the config does not name is refused, and the log names the client behind
        # the proxy ([server] trusted_proxies), not the proxy
        status, raw = https(ctx, port[443], "GET", "/healthz", host="evil.example")
        assert status == 421, raw
        line = srv.wait_log(r"Host 'evil\.example' is not a name of this server")
        assert "from 127.0.0.2:" in line or "from 127.0.0.2 " in line, line

        # live MJPEG, unbuffered; viewers count by their own address behind the proxy
        parts, other, again = asyncio.run(mjpeg_parts(ctx, port[443], 2))
        for part in parts:
            assert Image.open(io.BytesIO(part)).format == "JPEG"
        assert other == 200  # another client: its own share of [mjpeg] max_viewers_per_ip
        assert again == 429  # the same client's second viewer: max_viewers_per_ip = 1

        # the pages learn where the WebSocket API is reached through the proxy
        status, raw = https(ctx, port[443], "GET", "/config.js")
        assert status == 200
        ports = json.loads(raw.decode().partition("=")[2].strip().rstrip(";"))
        # the pages connect where [webrtc] public_ws_url says, not to a port of the server's
        assert ports["wsUrl"] == f"wss://{PUBLIC_NAME}/ws/" and ports.get("wssPort") is None

        # the WebSocket API: on its own port (8443) and under /ws/ on 443
        own_port = f"wss://127.0.0.1:{port[8443]}/cam"
        for url in (own_port, f"wss://127.0.0.1:{port[443]}/ws/cam"):
            assert asyncio.run(websocket_answer(ctx, url)) == "getUserData", url
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            asyncio.run(websocket_answer(ctx, own_port, origin="https://evil.example"))
        assert refused.value.status == 403

        # WHIP over https through the proxy (the media itself goes to the server directly)
        whip = ffmpeg_whip(f"https://127.0.0.1:{port[443]}/whip/whipcam", seconds=20)
        try:
            srv.wait_stream("whipcam", frames=5, timeout=15)
        finally:
            whip.stop()
    finally:
        pub.stop()

    # plain http on 80 is sent to https
    conn = http.client.HTTPConnection("127.0.0.1", port[80], timeout=5)
    conn.request("GET", "/streams/cam/snapshot.jpg", headers={"Host": PUBLIC_NAME})
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("Location")) == (
        301,
        f"https://{PUBLIC_NAME}/streams/cam/snapshot.jpg",
    )
    conn.close()


def test_every_metric_the_dashboard_queries_is_served(make_server, make_camera):
    """A server with RTMP, a pulled RTSP camera, a snapshot and auto snapshots: each metric
    name in the dashboard's queries is one /metrics serves (a family from its # TYPE line,
    or a histogram's _bucket/_sum/_count)."""
    srv = make_server(
        snapshot={"snapshot_auto_enabled": True, "snapshot_auto_rate": 15},
        pull={"allowed_hosts": ["127.0.0.1"]},
    )
    camera = make_camera()
    pub = ffmpeg_testsrc(srv.rtmp_url("cam"), size="320x240", audio=False)
    try:
        srv.wait_stream("cam", frames=5)
        assert srv.snapshot("cam")[0] == 200
        status, body = srv.snapshot(camera.url(), timeout=20)
        assert status == 200, body
        _, raw, _ = srv.request("GET", "/metrics")
        text = raw.decode()
    finally:
        pub.stop()
    served = dashboard.served_families(text)
    used = dashboard.used_metric_names(dashboard.load())
    assert len(used) > 30
    missing = {name: where for name, where in used.items() if not dashboard.is_served(name, served)}
    assert not missing, f"queried by the dashboard, not served by /metrics: {missing}"
    # the pull's FFmpeg child and the process figures the panels read have samples
    assert re.search(r"^streamsnap_children [1-9]", text, re.M), text
    assert re.search(r"^streamsnap_child_starts_total\{", text, re.M)
    assert re.search(r"^process_cpu_seconds_total [0-9.]+$", text, re.M)
