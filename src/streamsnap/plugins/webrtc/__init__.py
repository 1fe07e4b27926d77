"""WebRTC: the engine (:mod:`.engine`, plugin ``webrtc``) and the two doors that run on it,
the WCS WebSocket API (:mod:`.wcs_websocket`, plugin ``wcs_websocket``) and WHIP
(:mod:`.whip`, plugin ``whip``). The doors refuse to start without the engine, so that
``[webrtc]`` settings are never silently ignored. Each is a plugin of its own name, so
``[plugins] disabled = ["whip"]`` leaves only WHIP out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ...core.app import App
from ...hooks import hookimpl
from .engine import WEBRTC, WebRtcEngine, configure_ice, engine_of, require
from .settings import WebRtcSettings

__all__ = ["WEBRTC", "WebRtcEngine", "WebRtcSettings", "engine_of", "require"]


@hookimpl
def settings_sections() -> dict[str, type]:
    return {"webrtc": WebRtcSettings}


@hookimpl
async def lifespan(app: App) -> AsyncIterator[None]:
    configure_ice(app.config.of(WebRtcSettings))
    eng = app.state[WEBRTC] = WebRtcEngine(app)
    yield
    app.state.pop(WEBRTC)
    await eng.close_all()
