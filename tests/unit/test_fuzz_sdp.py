"""Fuzzing the SDP offers WebRTC and WHIP publishers send: aiortc parses them, the engine must
answer or refuse, never hang, and never keep a peer connection for an offer it refused."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiortc import RTCPeerConnection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamsnap.core.config import Config
from streamsnap.core.frames import FrameStore
from streamsnap.core.streams import Stream
from streamsnap.plugins.webrtc.engine import WebRtcEngine, configure_ice
from streamsnap.plugins.webrtc.settings import WebRtcSettings


async def _offer() -> str:
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="sendonly")
    pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def fake_app() -> SimpleNamespace:
    """What the engine uses of the app: the config, and spawn (its ingest tasks not run here)."""
    cfg = Config()
    cfg.declare("webrtc", WebRtcSettings)
    return SimpleNamespace(config=cfg, spawn=lambda coro, **_: coro.close())


@pytest.fixture(scope="module")
def offer() -> str:
    settings = Config().declare("webrtc", WebRtcSettings)
    settings.ice_addresses = ["127.0.0.1"]
    configure_ice(settings)
    return asyncio.run(_offer())


def mutations(lines: list[str]):
    """Offers a broken or hostile client could send: lines dropped, repeated, cut, garbled."""
    index = st.integers(0, len(lines) - 1)
    junk = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
    edit = st.one_of(
        st.tuples(st.just("drop"), index, junk),
        st.tuples(st.just("repeat"), index, junk),
        st.tuples(st.just("cut"), index, junk),
        st.tuples(st.just("replace"), index, junk),
        st.tuples(st.just("insert"), index, junk),
    )
    return st.lists(edit, min_size=1, max_size=4)


def apply(lines: list[str], edits) -> str:
    out = list(lines)
    for kind, i, text in edits:
        i %= max(1, len(out))
        if not out:
            out.append(text)
        elif kind == "drop":
            del out[i]
        elif kind == "repeat":
            out.insert(i, out[i])
        elif kind == "cut":
            out[i] = out[i][: len(text)]
        elif kind == "replace":
            head, _, _ = out[i].partition("=")
            out[i] = f"{head}={text}"
        else:
            out.insert(i, text)
    return "\r\n".join(out) + "\r\n"


def test_the_unmutated_offer_is_answered(offer):
    async def run() -> None:
        engine = WebRtcEngine(fake_app())
        stream = Stream("fuzz", "whip", FrameStore("fuzz"))
        _, answer = await engine.publish(stream, offer)
        assert answer.startswith("v=0") and "m=video" in answer
        await engine.close_all()
        assert not engine.peers

    asyncio.run(run())


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_mutated_offers_are_answered_or_refused(offer, data):
    lines = offer.rstrip("\r\n").split("\r\n")
    sdp = apply(lines, data.draw(mutations(lines)))

    async def run() -> None:
        engine = WebRtcEngine(fake_app())
        stream = Stream("fuzz", "whip", FrameStore("fuzz"))
        try:
            await asyncio.wait_for(engine.publish(stream, sdp), timeout=10)
        except TimeoutError:
            pytest.fail(f"publish hung on:\n{sdp}")
        except Exception:
            assert not engine.peers  # a refused offer leaves no peer connection behind
        await engine.close_all()
        assert not engine.peers

    asyncio.run(run())
