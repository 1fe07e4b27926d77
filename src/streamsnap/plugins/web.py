"""Web pages on ``http_port``: streamsnap's "Stream Snapshot", "Two Way Streaming" and
"Gallery" pages, and the Flashphoner WebSDK (``@flashphoner/websdk`` from npm) with its own
example pages, unchanged, under ``/sdk/``.

The gallery shows every live stream with its newest snapshot and updates as files land: each
``on_snapshot_saved`` is pushed to the open pages as a server-sent event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ..core.app import APP_KEY, App
from ..core.errors import Unavailable
from ..core.http import Route, open_route
from ..core.state import StateKey
from ..core.streams import Stream
from ..hooks import hookimpl
from .auto_snapshot import AUTO_SNAPSHOT, snapshot_url
from .webrtc.settings import WebRtcSettings

log = logging.getLogger(__name__)

PAGES = Path(__file__).resolve().parent.parent / "web"
SDK_PACKAGE = Path("node_modules") / "@flashphoner" / "websdk"
# flashphoner.js alone (and its license), put into the wheel by the build backend
# (build_support/websdk_backend.py): the pages work after a pip install, the SDK's examples not
PACKAGED_SDK = PAGES / "sdk"


def find_sdk(configured: str) -> Path | None:
    """The WebSDK folder: configured, or node_modules in the working or project folder, or the
    flashphoner.js packaged with streamsnap."""
    candidates = (
        [Path(configured)]
        if configured
        else [
            Path.cwd() / SDK_PACKAGE,
            Path(__file__).resolve().parents[3] / SDK_PACKAGE,  # a source checkout (make install)
            PACKAGED_SDK,
        ]
    )
    for path in candidates:
        if (path / "flashphoner.js").is_file():
            return path.resolve()
    return None


async def client_config(request: web.Request) -> web.Response:
    """What the pages need to know: where the WebSocket API listens."""
    app = request.app[APP_KEY]
    ports: dict[str, Any] = {"wsPort": app.ports.get("ws"), "wssPort": app.ports.get("wss")}
    try:
        public = app.config.of(WebRtcSettings).public_ws_url
    except LookupError:  # the webrtc plugin is left out
        public = ""
    if public:
        ports["wsUrl"] = public  # behind a reverse proxy: where browsers reach the API
    body = "window.STREAMSNAP = " + json.dumps(ports) + ";\n"
    return web.Response(
        text=body, content_type="application/javascript", headers={"Cache-Control": "no-store"}
    )


# The console loads nothing from another host, and its pictures come as blobs of this one's
# answers; the policy makes the browser hold it to that.
CONSOLE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


async def index(request: web.Request) -> web.StreamResponse:
    """The console: every live stream with a live picture, totals, add camera, terminate."""
    return web.FileResponse(
        PAGES / "index.html",
        headers={"Content-Security-Policy": CONSOLE_POLICY, "Cache-Control": "no-cache"},
    )


async def no_sdk(request: web.Request) -> web.Response:
    return web.Response(
        status=404,
        text="The Flashphoner WebSDK is not installed: run "
        "`make install` (npm install) or set [webrtc] sdk_dir.\n",
    )


class SnapshotEvents:
    """Server-sent events of new snapshot files, for the gallery pages that are open."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[dict[str, Any]]] = set()

    def publish(self, event: dict[str, Any]) -> None:
        for queue in list(self.queues):
            if queue.qsize() < 100:  # a page that stopped reading is not waited for
                queue.put_nowait(event)


WEB_EVENTS: StateKey[SnapshotEvents] = StateKey("web_events", SnapshotEvents)


def _events(app: App) -> SnapshotEvents:
    return app.state.setdefault(WEB_EVENTS, SnapshotEvents())


def _newest_file(folder: Path) -> Path | None:
    try:
        files = [
            p
            for p in folder.iterdir()
            if not p.name.startswith(".") and p.suffix in (".png", ".jpg", ".webp")
        ]
    except OSError:
        return None
    return max(files, key=lambda p: p.name, default=None)


async def gallery_state(request: web.Request) -> web.Response:
    """Every live stream and its newest snapshot file (if auto snapshots write one)."""
    app = request.app[APP_KEY]
    auto = app.state.get(AUTO_SNAPSHOT)
    streams = []
    for stream in app.streams:
        folder = auto.folder_of(stream) if auto is not None else None
        newest = await asyncio.to_thread(_newest_file, folder) if folder is not None else None
        streams.append(
            {
                "name": stream.name,
                "mediaSessionId": stream.media_session_id,
                "protocol": stream.protocol,
                "width": stream.width,
                "height": stream.height,
                "snapshot": snapshot_url(app, str(newest)) if newest else None,
                "live": "/streams/" + quote(stream.name, safe="") + "/snapshot.jpg?width=480",
            }
        )
    try:  # other servers' streams (a cluster): their live picture, through this server
        others = await app.pm.afirstresult("streams_elsewhere", app=app) or []
    except Unavailable:
        others = []
    for other in others:
        name = str(other.get("name", ""))
        streams.append(
            {
                "name": name,
                "mediaSessionId": other.get("mediaSessionId", ""),
                "protocol": other.get("protocol", ""),
                "width": other.get("width", 0),
                "height": other.get("height", 0),
                "node": other.get("node", ""),
                "snapshot": None,
                "live": "/streams/" + quote(name, safe="") + "/snapshot.jpg?width=480",
            }
        )
    return web.json_response({"streams": streams})


async def snapshot_events(request: web.Request) -> web.StreamResponse:
    """``text/event-stream``: one ``snapshot`` event per new snapshot file."""
    app = request.app[APP_KEY]
    events = _events(app)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    events.queues.add(queue)
    try:
        await response.write(b": streamsnap snapshot events\n\n")
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), 15)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            await response.write(f"event: snapshot\ndata: {json.dumps(event)}\n\n".encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        events.queues.discard(queue)
    return response


@hookimpl
def on_snapshot_saved(stream: Stream | None, path: str, app: App) -> None:
    url = snapshot_url(app, path)
    if url is None and stream is None:
        return
    _events(app).publish(
        {
            "stream": stream.name if stream is not None else None,
            "mediaSessionId": stream.media_session_id if stream is not None else None,
            "url": url,
            "file": os.path.basename(path),
        }
    )


@hookimpl
async def lifespan(app: App) -> AsyncIterator[None]:
    yield
    events = app.state.get(WEB_EVENTS)
    if events is not None:
        for queue in list(events.queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait({"closing": True})


@hookimpl
def register_routes(app: App) -> list[web.AbstractRouteDef | Route]:
    """The pages and the SDK are open (they hold no data); the gallery, its events and the
    snapshot files need API credentials when [auth] is on."""
    snapshots = Path(app.config.snapshot.snapshot_auto_dir)
    snapshots.mkdir(parents=True, exist_ok=True)
    routes: list[web.AbstractRouteDef | Route] = [
        open_route(web.get("/", index)),
        open_route(web.get("/config.js", client_config)),
        web.get("/gallery.json", gallery_state),
        web.get("/events/snapshots", snapshot_events),
        web.static("/snapshots", snapshots),
        open_route(web.static("/pages", PAGES)),
    ]
    try:
        sdk_dir = app.config.of(WebRtcSettings).sdk_dir
    except LookupError:  # the webrtc plugin is left out: the pages cannot publish or play
        sdk_dir = ""
    sdk = find_sdk(sdk_dir)
    if sdk is None:
        log.warning(
            "Flashphoner WebSDK not found (npm install, or [webrtc] sdk_dir): the pages "
            "will not work"
        )
        routes.append(open_route(web.get("/sdk/{tail:.*}", no_sdk)))
    else:
        if sdk == PACKAGED_SDK.resolve():
            log.info(
                "Flashphoner WebSDK: the flashphoner.js packaged with streamsnap serves the "
                "pages; the SDK's own examples (/sdk/examples/) need `npm install "
                "@flashphoner/websdk` in the working folder, or [webrtc] sdk_dir"
            )
        routes.append(open_route(web.static("/sdk", sdk)))
    return routes
