"""Webhooks and saving on request, with a real RTMP publisher and real HTTP receivers: retries
with backoff, signatures a receiver checks, a bounded queue, refusals at start, and
``POST /rest-api/stream/snapshot/save``."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.helpers.media import ffmpeg_testsrc
from tests.helpers.server import wait_for

pytestmark = pytest.mark.e2e

SECRET = "a-webhook-secret-of-the-tests"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "webhook_receiver.py"


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("webhook_receiver", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


receiver = _example()


class Peer:
    """An aiohttp app served on a free 127.0.0.1 port from a thread of its own."""

    def __init__(self, app: web.Application, path: str = "/streamsnap") -> None:
        self.app = app
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        self.port = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Peer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    async def _stop(self) -> None:
        await self.runner.cleanup()
        # handlers still waiting (a receiver that never answers) end with the peer
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def webhook_server(make_server, tmp_path, urls, plugins=None, snapshot=None, **webhook):
    sections: dict[str, Any] = {
        "snapshot": {
            "snapshot_auto_dir": str(tmp_path / "snaps"),
            "snapshot_auto_naming": "streamName",
            "snapshot_auto_retention": 1000,
            **(snapshot or {}),
        },
        "webhook": {"urls": urls, "secret": SECRET, **webhook},
    }
    if plugins:
        sections["plugins"] = plugins
    return make_server(**sections)


def save(server, name: str) -> tuple[int, dict[str, Any]]:
    status, raw, _ = server.request(
        "POST", "/rest-api/stream/snapshot/save", {"streamName": name}, timeout=20
    )
    return status, json.loads(raw)


def number(path: str) -> int:
    m = re.search(r"_(\d+)\.(png|jpg|webp)$", path)
    assert m, path
    return int(m.group(1))


def numbered(folder: Path) -> list[int]:
    return sorted(number(p.name) for p in folder.iterdir() if not p.name.startswith("."))


def metric(server, name: str, **labels: str) -> float:
    """The value of the sample of ``name`` whose labels include ``labels`` (0 when none)."""
    status, raw, _ = server.request("GET", "/metrics")
    assert status == 200
    for line in raw.decode().splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def live(server, name: str) -> Any:
    pub = ffmpeg_testsrc(server.rtmp_url(name), size="320x240", audio=False)
    server.wait_stream(name, frames=5)
    return pub


def test_delivery_is_retried_signed_and_its_url_fetches_the_file(make_server, tmp_path):
    """A receiver that fails its first answer (500), then lets one attempt time out, gets the
    event on the third; one that refuses (400) is asked once; one that never answers delays
    neither."""
    bodies: list[tuple[float, bytes, dict[str, str]]] = []
    accepted: list[dict[str, Any]] = []

    @web.middleware
    async def flaky(request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        bodies.append((time.monotonic(), body, dict(request.headers)))
        if len(bodies) == 1:
            return web.Response(status=500)
        if len(bodies) == 2:
            await asyncio.sleep(5)  # longer than [webhook] timeout_s
        return await handler(request)

    async def refuse(request: web.Request) -> web.Response:
        refused.append(await request.read())
        return web.Response(status=400)

    async def hang(request: web.Request) -> web.Response:
        hung.append(time.monotonic())
        await asyncio.sleep(30)
        return web.Response(status=204)

    refused: list[bytes] = []
    hung: list[float] = []
    refuser, hanger = web.Application(), web.Application()
    refuser.router.add_post("/streamsnap", refuse)
    hanger.router.add_post("/streamsnap", hang)
    good_app = receiver.make_app(SECRET.encode(), accepted.append, middlewares=[flaky])
    with Peer(good_app) as good, Peer(refuser) as bad, Peer(hanger) as dead:
        srv = webhook_server(
            make_server,
            tmp_path,
            [good.url, bad.url, dead.url],
            timeout_s=1.0,
            retries=3,
            backoff_s=0.2,
            drain_s=0.5,
        )
        pub = live(srv, "hookcam")
        info = srv.wait_stream("hookcam")
        status, answer = save(srv, "hookcam")
        saved_at = time.monotonic()
        assert status == 200, answer
        wait_for(lambda: accepted, 15, "the receiver to accept the event")
        pub.stop()

        event = accepted[0]
        assert event["event"] == "snapshot"
        assert event["stream"] == "hookcam"
        assert event["mediaSessionId"] == info["mediaSessionId"]
        assert event["file"] == answer["file"]
        assert event["url"] == answer["url"]
        assert abs(event["timestamp"] - time.time() * 1000) < 30_000
        assert fetch(event["url"]) == Path(answer["file"]).read_bytes()

        # three attempts of the same signed body; the signature is of those exact bytes
        assert len(bodies) == 3 and len({b for _, b, _ in bodies}) == 1
        _, body, headers = bodies[2]
        signature = headers["X-Streamsnap-Signature"]
        assert receiver.signature_ok(SECRET.encode(), body, signature)
        assert not receiver.signature_ok(b"another-secret-of-16+", body, signature)
        assert not receiver.signature_ok(
            SECRET.encode(), body.replace(b"hookcam", b"hookcan"), signature
        )
        assert headers["X-Streamsnap-Delivery"] == event["id"]
        # the dead receiver's attempts (1 s each, 3 retries) did not hold the live one up
        assert bodies[2][0] - saved_at < 4.5, bodies[2][0] - saved_at
        assert len(refused) == 1  # a 400 is not asked again

        wait_for(lambda: len(hung) == 4, 15, "the silent receiver's four attempts")
        time.sleep(1.5)  # its last attempt times out
        assert (
            metric(srv, "streamsnap_webhook_deliveries_total", url=good.url, outcome="delivered")
            == 1
        )
        assert metric(srv, "streamsnap_webhook_retries_total", url=good.url) == 2
        assert (
            metric(srv, "streamsnap_webhook_deliveries_total", url=bad.url, outcome="failed") == 1
        )
        assert metric(srv, "streamsnap_webhook_retries_total", url=bad.url) == 0
        assert (
            metric(srv, "streamsnap_webhook_deliveries_total", url=dead.url, outcome="failed") == 1
        )
        assert metric(srv, "streamsnap_webhook_retries_total", url=dead.url) == 3
        assert len(accepted) == 1  # one file, one event
        srv.stop()


def test_a_full_queue_drops_and_counts_and_shutdown_drains_within_its_bound(make_server, tmp_path):
    stuck = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        await stuck.wait()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/streamsnap", never)
    with Peer(app) as peer:
        srv = webhook_server(
            make_server, tmp_path, [peer.url], max_queue=1, timeout_s=60.0, retries=0, drain_s=1.0
        )
        pub = live(srv, "burst")
        for _ in range(5):
            assert save(srv, "burst")[0] == 200
        pub.stop()
        # one in flight, one queued, the rest dropped
        assert metric(srv, "streamsnap_webhook_dropped_total", url=peer.url) == 3
        assert metric(srv, "streamsnap_webhook_queue_length", url=peer.url) == 1
        assert len(re.findall(r"webhook .*: queue full", srv.log)) == 1  # once per burst
        started = time.monotonic()
        assert srv.stop() == 0
        assert time.monotonic() - started < 8
        assert "left undelivered after [webhook] drain_s" in srv.log


def test_the_save_route_numbers_after_auto_snapshots_and_announces_each_file_once(
    make_server, tmp_path
):
    events: list[dict[str, Any]] = []
    with Peer(receiver.make_app(SECRET.encode(), events.append)) as peer:
        # auto snapshots on, the folder watcher on: it announces the auto files, not the saved
        srv = webhook_server(
            make_server,
            tmp_path,
            [peer.url],
            snapshot={"snapshot_auto_enabled": True, "snapshot_auto_rate": 15},
        )
        folder = tmp_path / "snaps" / "savecam"
        pub = live(srv, "savecam")
        wait_for(lambda: folder.is_dir() and len(numbered(folder)) >= 2, 20, "auto snapshots")
        before = numbered(folder)
        status, answer = save(srv, "savecam")
        assert status == 200, answer
        assert number(answer["file"]) > before[-1]
        assert Path(answer["file"]).parent == folder and Path(answer["file"]).is_file()
        assert fetch(answer["url"]) == Path(answer["file"]).read_bytes()
        time.sleep(0.5)
        pub.stop()
        srv.wait_gone("savecam")
        seqs = numbered(folder)
        assert seqs == list(range(1, seqs[-1] + 1))  # one counter: no gap, no file overwritten
        wait_for(lambda: len(events) >= len(seqs), 15, "an event per file")
        time.sleep(1.0)
        files = sorted(e["file"] for e in events)
        assert files == sorted(str(p) for p in folder.iterdir())  # each file, once
        srv.stop()

        # auto snapshots off and no folder watcher: the file goes where they would, announced
        events.clear()
        srv = webhook_server(
            make_server, tmp_path, [peer.url], plugins={"disabled": ["folder_watch"]}
        )
        pub = live(srv, "savecam")
        status, answer = save(srv, "savecam")
        pub.stop()
        assert status == 200, answer
        assert number(answer["file"]) == seqs[-1] + 1
        assert Path(answer["file"]).is_file()
        wait_for(lambda: events, 15, "the saved file's event")
        time.sleep(1.0)
        assert [e["file"] for e in events] == [answer["file"]]
        assert events[0]["stream"] == "savecam"


def test_save_errors_answer_in_the_wcs_shape(make_server, tmp_path):
    srv = make_server(
        snapshot={
            "snapshot_auto_dir": str(tmp_path / "snaps"),
            "snapshot_auto_naming": "streamName",
            "snapshot_auto_enabled": True,
            "snapshot_auto_rate": 100000,  # the folder is the stream's; no auto file is written
        }
    )
    wcs_keys = {"exception", "reason", "path", "error", "message", "timestamp", "status"}
    status, body = save(srv, "nobody")
    assert status == 404 and wcs_keys <= set(body) and body["message"] == "Stream not found"
    status, raw, _ = srv.request("POST", "/rest-api/stream/snapshot/save", b"{not json")
    assert status == 400 and wcs_keys <= set(json.loads(raw))
    status, raw, _ = srv.request("POST", "/rest-api/stream/snapshot/save", {"name": "x"})
    assert status == 400 and "streamName" in json.loads(raw)["message"]

    pub = live(srv, "fullcam")
    folder = tmp_path / "snaps" / "fullcam"
    folder.mkdir(parents=True, exist_ok=True)
    # the next file's temporary name leads to a device that is always full
    os.symlink("/dev/full", folder / ".fullcam_00000001.png.tmp")
    status, body = save(srv, "fullcam")
    assert status == 500 and wcs_keys <= set(body), body
    assert "No space left on device" in body["message"] and str(folder) in body["message"]
    status, answer = save(srv, "fullcam")  # the disk has room again: the number was not lost
    pub.stop()
    assert status == 200 and number(answer["file"]) == 1


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/x", "file:///tmp/x", "hooks.example.com"])
def test_a_webhook_url_that_is_not_http_refuses_to_start(make_server, tmp_path, url):
    with pytest.raises(RuntimeError, match=r"\[webhook\] urls: .* is not an http:// or https://"):
        make_server(webhook={"urls": ["http://127.0.0.1:9/ok", url], "secret": SECRET})


@pytest.mark.parametrize("secret", [None, "", "fifteen-chars!!"])
def test_webhook_urls_without_a_long_enough_secret_refuse_to_start(make_server, secret):
    webhook: dict[str, Any] = {"urls": ["http://127.0.0.1:9/ok"]}
    if secret is not None:
        webhook["secret"] = secret
    with pytest.raises(RuntimeError, match=r"\[webhook\] secret: required"):
        make_server(webhook=webhook)


def test_a_receiver_with_another_secret_refuses_every_delivery(make_server, tmp_path):
    """The receiver's check is real: with a secret that is not the server's, nothing passes."""
    events: list[dict[str, Any]] = []
    app = receiver.make_app(b"not-the-secret-of-this-server", events.append)
    with Peer(app) as peer:
        srv = webhook_server(make_server, tmp_path, [peer.url], backoff_s=0.1)
        pub = live(srv, "wrongkey")
        assert save(srv, "wrongkey")[0] == 200
        pub.stop()
        wait_for(
            lambda: metric(
                srv, "streamsnap_webhook_deliveries_total", url=peer.url, outcome="failed"
            ),
            15,
            "the delivery to be refused",
        )
        assert events == []
        assert metric(srv, "streamsnap_webhook_retries_total", url=peer.url) == 0  # 401: final
        srv.wait_log(r"webhook .*: delivery \w+ failed \(attempts: 1\): answered 401")
