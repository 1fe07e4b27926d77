"""Fuzzing the WCS WebSocket message handler: whatever arrives, the handler neither raises nor
hangs, and every answer keeps the envelope the WebSDK needs (``data`` is a list)."""

from __future__ import annotations

import asyncio
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamsnap.core.app import App
from streamsnap.core.config import Config
from streamsnap.core.plugins import PluginsConfig, make_plugin_manager
from streamsnap.plugins.webrtc import WEBRTC, WebRtcEngine
from streamsnap.plugins.webrtc.wcs_session import WcsSession
from streamsnap.plugins.webrtc.wcs_websocket import WcsApi

MESSAGES = [
    "connection",
    "publishStream",
    "playStream",
    "unPublishStream",
    "stopStream",
    "snapshot",
    "availableStream",
    "sendStreamEvent",
    "ping",
    "pong",
    "pushLogs",
    "sendData",
    "noSuchThing",
]

scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=12)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
payloads = st.fixed_dictionaries(
    {},
    optional={
        "mediaSessionId": st.text(max_size=8) | scalars,
        "name": st.text(max_size=8) | scalars,
        "sdp": st.text(max_size=40) | scalars,
        "type": scalars,
        "payload": values,
        "authToken": scalars,
        "appKey": scalars,
    },
)
envelopes = st.fixed_dictionaries(
    {"message": st.sampled_from(MESSAGES) | scalars},
    optional={"data": st.lists(payloads | values, max_size=2) | values},
)


class FakeSocket:
    closed = False

    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def send_str(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self, **kwargs) -> None:
        self.closed = True


def make_session() -> tuple[WcsSession, FakeSocket]:
    cfg = Config()
    cfg.snapshot.snapshot_taking_interval_ms = 50
    app = App(cfg, make_plugin_manager(PluginsConfig(), load_entry_points=False))
    app.state[WEBRTC] = WebRtcEngine(app)  # what the webrtc plugin's lifespan sets up
    ws = FakeSocket()
    return WcsSession(WcsApi(app), ws, "fuzz", "/"), ws  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(envelopes | st.text(max_size=30), min_size=1, max_size=6))
def test_any_sequence_of_messages_is_answered_or_ignored(messages):
    async def run() -> list[dict]:
        session, ws = make_session()
        await session.handle(json.dumps({"message": "connection", "data": [{}]}))
        for message in messages:
            text = message if isinstance(message, str) else json.dumps(message)
            await asyncio.wait_for(session.handle(text), 10)
        await session.close()
        session.app.executor.shutdown(wait=False)
        session.app.io_executor.shutdown(wait=False)
        return ws.sent

    sent = asyncio.run(run())
    assert sent[0]["message"] == "getUserData"  # the session really was handling messages
    for answer in sent:
        assert isinstance(answer["message"], str) and isinstance(answer["data"], list)
        # random offers carry no video: nothing may be reported as published or playing
        if answer["message"] == "notifyStreamStatusEvent":
            assert answer["data"][0]["status"] not in ("PUBLISHING", "PLAYING"), answer
