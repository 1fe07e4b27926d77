"""Web pages on ``http_port``: streamsnap's "Stream Snapshot" and "Two Way Streaming" pages, and
the Flashphoner WebSDK (``@flashphoner/websdk`` from npm) with its own example pages, unchanged,
under ``/sdk/``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from aiohttp import web

from ..core.app import APP_KEY, App
from ..hooks import hookimpl

log = logging.getLogger(__name__)

PAGES = Path(__file__).resolve().parent.parent / "web"
SDK_PACKAGE = Path("node_modules") / "@flashphoner" / "websdk"


def find_sdk(configured: str) -> Path | None:
    """The WebSDK folder: configured, or node_modules in the working or project folder."""
    candidates = (
        [Path(configured)]
        if configured
        else [
            Path.cwd() / SDK_PACKAGE,
            Path(__file__).resolve().parents[3] / SDK_PACKAGE,  # a source checkout (make install)
        ]
    )
    for path in candidates:
        if (path / "flashphoner.js").is_file():
            return path.resolve()
    return None


async def client_config(request: web.Request) -> web.Response:
    """What the pages need to know: where the WebSocket API listens."""
    app = request.app[APP_KEY]
    ports = {"wsPort": app.ports.get("ws"), "wssPort": app.ports.get("wss")}
    body = "window.STREAMSNAP = " + json.dumps(ports) + ";\n"
    return web.Response(
        text=body, content_type="application/javascript", headers={"Cache-Control": "no-store"}
    )


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(PAGES / "index.html")


async def no_sdk(request: web.Request) -> web.Response:
    return web.Response(
        status=404,
        text="The Flashphoner WebSDK is not installed: run "
        "`make install` (npm install) or set [webrtc] sdk_dir.\n",
    )


@hookimpl
def register_routes(app: App) -> list[web.AbstractRouteDef]:
    routes: list[web.AbstractRouteDef] = [
        web.get("/", index),
        web.get("/config.js", client_config),
        web.static("/pages", PAGES),
    ]
    sdk = find_sdk(app.config.webrtc.sdk_dir)
    if sdk is None:
        log.warning(
            "Flashphoner WebSDK not found (npm install, or [webrtc] sdk_dir): the pages "
            "will not work"
        )
        routes.append(web.get("/sdk/{tail:.*}", no_sdk))
    else:
        routes.append(web.static("/sdk", sdk))
    return routes
