"""Pulled streams: IP cameras (RTSP) and streams on other servers (RTMP, RTMPS, SRT, HLS),
each through a supervised FFmpeg child.

A stream whose name is a URL with a scheme from ``[pull] allowed_schemes`` is pulled when first
asked for (snapshot, play, find) and dropped after ``[pull] idle_timeout_s`` without use.
Sources listed in ``[[pull.cameras]]`` or ``[[pull.sources]]``, or started over REST
(``/rest-api/pull/startup``), are pulled under a friendly name until terminated. FFmpeg
remuxes without decoding (``-c copy``) into FLV on a pipe; the server reads the FLV tags into
the stream's frame store, so a stuck source or a crashing demuxer never takes the server down.
Only allowed schemes ever reach FFmpeg, and FFmpeg's protocol whitelist, set per scheme, keeps
it from opening anything else (``file``, ``concat``, ``subfile``, ``data``, ...).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ...core.app import App
from ...hooks import hookimpl
from .pulls import PULL, PullPlugin
from .routes import rest_find_all, rest_startup, rest_terminate
from .settings import PullSettings

__all__ = ["PULL", "PullPlugin", "PullSettings"]


@hookimpl
def settings_sections() -> dict[str, type]:
    return {"pull": PullSettings}


@hookimpl
def collect_metrics(app: App) -> list[Any]:
    plugin = app.state.get(PULL)
    if plugin is None:
        return []
    return [
        (
            "streamsnap_pull_standby",
            "gauge",
            "Configured sources pulled on standby, waiting for another server to hand them over.",
            [(len(plugin.standby), None)],
        ),
        (
            "streamsnap_pull_taken_over_total",
            "counter",
            "Configured sources that moved here from another server after start-up (a node "
            "died, or joined and handed them over).",
            [(plugin.taken_over, None)],
        ),
    ]


@hookimpl
def register_routes(app: App) -> list[web.RouteDef]:
    return [
        web.post("/rest-api/pull/startup", rest_startup),
        web.post("/rest-api/pull/find_all", rest_find_all),
        web.post("/rest-api/pull/terminate", rest_terminate),
    ]


@hookimpl
async def lifespan(app: App) -> AsyncIterator[None]:
    plugin = PullPlugin(app)
    app.state[PULL] = plugin
    try:
        await plugin.start()
    except BaseException:
        await plugin.stop()  # the cameras started before the one that failed
        app.state.pop(PULL)
        raise
    yield
    app.state.pop(PULL)
    await plugin.stop()


@hookimpl
async def resolve_stream(app: App, name: str, remote: str | None) -> Any:
    plugin = app.state.get(PULL)
    return None if plugin is None else await plugin.resolve(name, remote)
