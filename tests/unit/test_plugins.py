"""The plugin core: manager factory order, enable/disable, isolation, and one test per hook."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from pathlib import Path

import pluggy
import pytest

from streamsnap import Snapshot, hookimpl
from streamsnap.core.app import App
from streamsnap.core.config import Config, PluginsConfig
from streamsnap.core.errors import StartupError, StreamNotFound
from streamsnap.core.plugins import make_plugin_manager
from streamsnap.core.snapshot import SnapshotRequest
from streamsnap.hooks import specs
from streamsnap.plugins.storage import STORAGE, BackendRegistry
from tests.helpers.media import FFMPEG
from tests.helpers.rtmp_client import make_flv

HOOKS = sorted(
    name
    for name, fn in inspect.getmembers(specs, inspect.isfunction)
    if hasattr(fn, "streamsnap_spec")
)


def test_every_hook_has_a_test_and_a_docstring():
    source = Path(__file__).read_text()
    for name in HOOKS:
        assert re.search(rf"^(async )?def test_hook_{name}\b", source, re.M), name
        assert getattr(specs, name).__doc__, name
    assert {
        "on_publish",
        "on_unpublish",
        "on_frame",
        "on_snapshot_request",
        "on_snapshot_saved",
        "register_storage_backends",
    } <= set(HOOKS)


def test_snapshot_request_is_firstresult():
    assert specs.on_snapshot_request.streamsnap_spec["firstresult"] is True


def test_builtins_are_registered_by_name():
    pm = make_plugin_manager(PluginsConfig(), load_entry_points=False)
    names = {p.name for p in pm.describe()}
    assert {"rest", "rtmp", "storage_local"} <= names
    info = {p.name: p for p in pm.describe()}["rtmp"]
    assert info.source == "built-in" and "lifespan" in info.hooks


def test_disable_and_enable_by_name():
    pm = make_plugin_manager(PluginsConfig(disabled=["rtmp"]), load_entry_points=False)
    assert not pm.has_plugin("rtmp") and pm.has_plugin("rest") and pm.is_blocked("rtmp")
    pm = make_plugin_manager(PluginsConfig(enabled=["rest"]), load_entry_points=False)
    assert [p.name for p in pm.describe()] == ["rest"]


def test_unknown_plugin_name_refuses_to_start():
    with pytest.raises(StartupError, match="'rmtp'"):
        make_plugin_manager(PluginsConfig(enabled=["rmtp"]), load_entry_points=False)


def test_misspelt_hook_is_caught_by_check_pending():
    class Typo:
        @hookimpl
        def on_publsih(self, stream):
            pass

    with pytest.raises(StartupError, match=r"typo.*on_publsih"):
        make_plugin_manager(PluginsConfig(), load_entry_points=False, extra=[("typo", Typo())])


def test_backend_registry_refuses_duplicates():
    reg = BackendRegistry()
    reg.add("s3", dict, "a")
    with pytest.raises(StartupError, match="'s3' registered twice: by 'a' and by 'b'"):
        reg.add("s3", dict, "b")


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []


def _config() -> Config:
    cfg = Config()
    cfg.server.host = "127.0.0.1"
    cfg.server.http_port = cfg.server.ws_port = cfg.server.rtmp_port = 0
    cfg.snapshot.snapshot_taking_interval_ms = 3000
    return cfg


async def _app_with(*plugins: tuple[str, object]) -> App:
    pm = make_plugin_manager(PluginsConfig(), load_entry_points=False, extra=plugins)
    app = App(_config(), pm)
    await app.start()
    return app


async def _publish_file(app: App, name: str, flv: Path) -> asyncio.subprocess.Process:
    url = f"rtmp://127.0.0.1:{app.ports['rtmp']}/live/{name}"
    return await asyncio.create_subprocess_exec(
        FFMPEG, "-v", "error", "-re", "-i", str(flv), "-c", "copy", "-f", "flv", url
    )


async def _wait(predicate, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met")


@pytest.fixture(scope="module")
def flv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("media") / "clip.flv"
    make_flv(path, size="320x240", seconds=3, gop=15)
    return path


async def test_hook_on_publish(flv):
    """on_publish, on_frame and on_unpublish fire for a real RTMP publisher, in order."""
    rec = Recorder()

    class Probe:
        @hookimpl
        def on_publish(self, stream):
            rec.events.append(("publish", stream.name, stream.frames.frames_in))

        @hookimpl
        def on_unpublish(self, stream):
            rec.events.append(("unpublish", stream.name))

    app = await _app_with(("probe", Probe()))
    try:
        proc = await _publish_file(app, "hooked", flv)
        await proc.wait()
        await _wait(lambda: ("unpublish", "hooked") in rec.events)
    finally:
        await app.stop()
    assert rec.events == [("publish", "hooked", 0), ("unpublish", "hooked")]


async def test_hook_on_unpublish(flv):
    """on_unpublish fires when a stream is terminated, after it left the registry."""
    seen = []

    class Probe:
        @hookimpl
        async def on_unpublish(self, stream):
            seen.append((stream.name, app.streams.lookup(stream.name) is None, stream.status))

    app = await _app_with(("probe", Probe()))
    try:
        proc = await _publish_file(app, "ending", flv)
        await _wait(lambda: app.streams.lookup("ending") is not None)
        await app.terminate(app.streams.get("ending"))
        await proc.wait()
    finally:
        await app.stop()
    assert seen == [("ending", True, "UNPUBLISHED")]


async def test_hook_on_frame(flv):
    frames = []

    class Probe:
        @hookimpl
        def on_frame(self, stream, frame):
            frames.append(frame)

    app = await _app_with(("probe", Probe()))
    try:
        proc = await _publish_file(app, "framed", flv)
        await proc.wait()
        await _wait(lambda: app.streams.lookup("framed") is None)
    finally:
        await app.stop()
    assert [f.index for f in frames] == list(range(90))
    assert [f.index for f in frames if f.keyframe] == [0, 15, 30, 45, 60, 75]
    assert all(f.size > 0 for f in frames)


async def test_hook_on_snapshot_request(flv):
    """A plugin may answer a snapshot first; one that declines (None) lets the next answer."""
    calls = []

    class Decline:
        @hookimpl
        def on_snapshot_request(self, stream, request):
            calls.append("decline")
            return None

    class Answer:
        @hookimpl(tryfirst=True)
        async def on_snapshot_request(self, stream, request):
            calls.append("answer")
            if request.format != "jpeg":
                return None
            return Snapshot(b"custom", "jpeg", 1, 1, stream.name)

    app = await _app_with(("decline", Decline()), ("answer", Answer()))
    try:
        proc = await _publish_file(app, "snap", flv)
        await _wait(lambda: app.streams.lookup("snap") is not None)
        custom = await app.snapshot("snap", SnapshotRequest(format="jpeg"))
        assert custom.data == b"custom"
        real = await app.snapshot("snap")
        assert real.data[:4] == b"\x89PNG" and (real.width, real.height) == (320, 240)
        proc.kill()
        await proc.wait()
        with pytest.raises(StreamNotFound):
            await app.snapshot("nobody")
    finally:
        await app.stop()
    assert calls[:3] == ["answer", "answer", "decline"]


async def test_hook_on_snapshot_saved(tmp_path):
    saved = []

    class Probe:
        @hookimpl
        async def on_snapshot_saved(self, stream, path):
            saved.append(path)

    class Broken:
        @hookimpl
        def on_snapshot_saved(self, stream, path):
            raise RuntimeError("boom")

    app = await _app_with(("probe", Probe()), ("broken", Broken()))
    try:
        await app.snapshot_saved(None, str(tmp_path / "a.png"))
    finally:
        await app.stop()
    assert saved == [str(tmp_path / "a.png")]


async def test_hook_register_storage_backends():
    class Store:
        def __init__(self, config):
            self.config = config

    class Probe:
        @hookimpl
        def register_storage_backends(self, register):
            register("memory", Store)

    app = await _app_with(("probe", Probe()))
    try:
        registry = app.state[STORAGE].registry
        assert registry.owners["memory"] == "probe"
        assert registry.owners["local"] == "storage_local"
        assert isinstance(registry.factories["memory"]({}), Store)
    finally:
        await app.stop()


async def test_hook_register_routes():
    from aiohttp import ClientSession, web

    async def ping(request):
        return web.Response(text="pong")

    class Probe:
        @hookimpl
        def register_routes(self, app):
            return [web.get("/probe/ping", ping)]

    app = await _app_with(("probe", Probe()))
    try:
        async with (
            ClientSession() as session,
            session.get(f"http://127.0.0.1:{app.ports['http']}/probe/ping") as resp,
        ):
            assert await resp.text() == "pong"
    finally:
        await app.stop()


async def test_hook_on_startup():
    seen = []

    class Probe:
        @hookimpl
        async def on_startup(self, app):
            seen.append(dict(app.ports))

    app = await _app_with(("probe", Probe()))
    await app.stop()
    assert seen and seen[0]["http"] > 0


async def test_hook_lifespan():
    """Setups in order with state under typed keys, cleanups in reverse, and only for the
    setups that finished; a StartupError in a setup stops the start and cleans up the others."""
    from streamsnap import StartupError, StateKey

    seen = []
    first_key = StateKey("first", list)

    class First:
        @hookimpl
        async def lifespan(self, app):
            app.state[first_key] = seen
            seen.append("first up")
            yield
            seen.append("first down")

    class Second:
        @hookimpl
        async def lifespan(self, app):
            assert app.state[first_key] is seen  # set up before, by the other plugin
            seen.append("second up")
            yield
            seen.append("second down")

    app = await _app_with(("first", First()), ("second", Second()))
    assert seen == ["first up", "second up"]  # registration order
    await app.stop()
    assert seen == ["first up", "second up", "second down", "first down"]

    seen.clear()

    class Broken:
        @hookimpl
        async def lifespan(self, app):
            raise StartupError("broken plugin cannot start")
            yield  # pragma: no cover

    class Fine:
        @hookimpl
        async def lifespan(self, app):
            seen.append("fine up")
            yield
            seen.append("fine down")

    with pytest.raises(StartupError, match="broken plugin"):
        await _app_with(("broken", Broken()), ("fine", Fine()))
    assert seen == []  # set up after the broken one: never
    with pytest.raises(StartupError, match="broken plugin"):
        await _app_with(("fine", Fine()), ("broken", Broken()))
    assert seen == ["fine up", "fine down"]  # set up before it: cleaned up


async def test_a_plain_on_startup_raising_startup_error_stops_the_start():
    from streamsnap import StartupError

    class Probe:
        @hookimpl
        def on_startup(self, app):
            raise StartupError("no licence for this plugin")

    with pytest.raises(StartupError, match="no licence"):
        await _app_with(("probe", Probe()))


async def test_hook_make_stream_registry():
    """A plugin's registry is the one the app uses: its claim decides, its local view serves."""
    from streamsnap.core.errors import StreamNameInUse
    from streamsnap.core.streams import MemoryRegistry

    claims = []

    class Shared(MemoryRegistry):
        async def claim(self, stream):
            if stream.name == "held-elsewhere":  # as another node would hold it
                raise StreamNameInUse("held by node b")
            claims.append(stream.name)
            await super().claim(stream)

    class Probe:
        @hookimpl
        def make_stream_registry(self, app):
            return Shared()

    app = await _app_with(("probe", Probe()))
    try:
        assert isinstance(app.streams, Shared)
        await app.admission.admit(app.new_stream("cam1", "rtmp"), {})
        assert claims == ["cam1"] and app.streams.lookup("cam1") is not None
        with pytest.raises(StreamNameInUse, match="node b"):
            await app.admission.admit(app.new_stream("held-elsewhere", "rtmp"), {})
        assert app.streams.lookup("held-elsewhere") is None
    finally:
        await app.stop()


async def test_hook_on_shutdown():
    seen = []

    class Probe:
        @hookimpl
        def on_shutdown(self, app):
            seen.append("down")

    app = await _app_with(("probe", Probe()))
    await app.stop()
    assert seen == ["down"]


async def test_a_raising_plugin_is_logged_by_name_and_others_still_run(flv, caplog):
    got = []

    class Bad:
        @hookimpl
        def on_publish(self, stream):
            raise ValueError("bad plugin")

        @hookimpl
        def on_frame(self, stream, frame):
            raise ValueError("bad frame plugin")

    class Good:
        @hookimpl
        def on_publish(self, stream):
            got.append("publish")

        @hookimpl
        def on_frame(self, stream, frame):
            got.append("frame")

    app = await _app_with(("good", Good()), ("bad", Bad()))
    try:
        with caplog.at_level(logging.ERROR):
            proc = await _publish_file(app, "isolated", flv)
            await _wait(lambda: got.count("frame") >= 5)
            snap = await app.snapshot("isolated")
            proc.kill()
            await proc.wait()
    finally:
        await app.stop()
    assert got[0] == "publish" and snap.width == 320
    assert "plugin bad failed in on_publish" in caplog.text
    assert "plugin bad failed in on_frame" in caplog.text


def test_pluggy_is_the_engine():
    pm = make_plugin_manager(PluginsConfig(), load_entry_points=False)
    assert isinstance(pm, pluggy.PluginManager) and pm.project_name == "streamsnap"


async def test_hook_resolve_stream(flv):
    """A plugin can serve a name that is not live (an alias here), or refuse it outright."""
    from streamsnap.core.errors import InvalidStreamName

    class Alias:
        @hookimpl
        def resolve_stream(self, app, name):
            if name == "forbidden":
                raise InvalidStreamName("not this one")
            if name == "front-door":
                return app.streams.lookup("cam7")
            return None

    app = await _app_with(("alias", Alias()))
    try:
        proc = await _publish_file(app, "cam7", flv)
        await _wait(lambda: app.streams.lookup("cam7") is not None)
        snap = await app.snapshot("front-door")
        assert snap.stream_name == "cam7" and snap.width == 320
        with pytest.raises(InvalidStreamName):
            await app.snapshot("forbidden")
        with pytest.raises(StreamNotFound):
            await app.snapshot("nothing-here")
        proc.kill()
        await proc.wait()
    finally:
        await app.stop()


def test_every_hook_is_in_the_plugin_guide_with_its_signature():
    guide = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    for name in HOOKS:
        params = ", ".join(inspect.signature(getattr(specs, name)).parameters)
        assert f"### `{name}({params})`" in guide, f"{name}({params}) missing from docs/plugins.md"


async def test_hook_authorize_publish(flv):
    """A plugin allows, refuses or has no opinion on every publisher (RTMP, WHIP, WebSocket);
    its answer comes before the publish key; one that raises refuses (fail closed)."""

    from aiohttp import ClientSession

    calls = []

    class Gate:
        @hookimpl
        async def authorize_publish(self, app, stream_name, protocol, remote, params):
            calls.append((stream_name, protocol, remote, params.get("key")))
            if stream_name == "forbidden":
                return "not on the list"
            if stream_name == "boom":
                raise RuntimeError("gate is broken")
            return True if stream_name == "vip" else None

    pm = make_plugin_manager(PluginsConfig(), load_entry_points=False, extra=[("gate", Gate())])
    cfg = _config()
    cfg.auth.publish_keys = [{"stream": "*", "key": "k1"}]
    app = App(cfg, pm)
    await app.start()

    async def rtmp(name: str) -> tuple[bool, str]:
        """Publish the clip as ``name``: (was it live, FFmpeg's stderr)."""
        url = f"rtmp://127.0.0.1:{app.ports['rtmp']}/live/{name}"
        proc = await asyncio.create_subprocess_exec(
            FFMPEG, "-v", "error", "-re", "-i", str(flv), "-c", "copy", "-f", "flv", url,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stream_name = name.split("?")[0]
        live = False
        while proc.returncode is None and not live:
            live = app.streams.lookup(stream_name) is not None
            await asyncio.sleep(0.05)
        if proc.returncode is None:
            proc.kill()
        _, err = await proc.communicate()
        for _ in range(100):  # its end is read at the session's next turn (paced reads)
            if app.streams.lookup(stream_name) is None:
                break
            await asyncio.sleep(0.02)
        return live, err.decode(errors="replace")

    try:
        assert (await rtmp("vip"))[0]  # no key needed: the plugin allowed it
        assert (await rtmp("plain?key=k1"))[0]  # no opinion: the key decides
        live, err = await rtmp("plain")
        assert not live and "publish key required" in err
        live, err = await rtmp("forbidden?key=k1")
        assert not live and "not on the list" in err
        live, err = await rtmp("boom?key=k1")
        assert not live and "publish check failed" in err
        async with ClientSession() as http:
            async with http.post(
                f"http://127.0.0.1:{app.ports['http']}/whip/forbidden",
                data="v=0\r\n",
                headers={"Content-Type": "application/sdp", "Authorization": "Bearer k1"},
            ) as resp:
                assert resp.status == 403 and "not on the list" in await resp.text()
            async with http.ws_connect(f"ws://127.0.0.1:{app.ports['ws']}/") as ws:
                await ws.send_json({"message": "connection", "data": [{}]})
                assert (await ws.receive_json())["message"] == "getUserData"
                publish = {"mediaSessionId": "m1", "name": "forbidden", "sdp": "v=0"}
                await ws.send_json({"message": "publishStream", "data": [publish]})
                status = (await ws.receive_json())["data"][0]
                assert status["status"] == "FAILED" and status["info"] == "not on the list"
    finally:
        await app.stop()
    assert [c[:2] for c in calls] == [
        ("vip", "rtmp"),
        ("plain", "rtmp"),
        ("plain", "rtmp"),
        ("forbidden", "rtmp"),
        ("boom", "rtmp"),
        ("forbidden", "whip"),
        ("forbidden", "webrtc"),
    ]
    assert calls[1][2:] == ("127.0.0.1", "k1") and calls[2][3] is None
    assert calls[5][3] == "k1"  # the WHIP bearer token is the key
    assert app.refused == {"publish_key": 1, "plugin": 4}


async def test_webrtc_left_out_stops_whip_and_the_websocket_api_naming_it():
    """WHIP and the WebSocket API run on the webrtc plugin's engine: without it they would
    run with its settings ([webrtc] ice_addresses) silently ignored."""
    from streamsnap import StartupError

    for config in (PluginsConfig(disabled=["webrtc"]), PluginsConfig(enabled=["rest", "whip"])):
        pm = make_plugin_manager(config, load_entry_points=False)
        with pytest.raises(StartupError, match=r"needs the 'webrtc' plugin.*enable webrtc"):
            await App(_config(), pm).start()
    pm = make_plugin_manager(
        PluginsConfig(disabled=["webrtc", "whip", "wcs_websocket"]), load_entry_points=False
    )
    app = App(_config(), pm)
    await app.start()
    await app.stop()


async def test_hook_settings_sections(tmp_path, caplog):
    """A third-party plugin's section is read into its dataclass the way the core's are: the
    file, then the environment; an unknown key warned by name; a wrong type, a value out of
    its declared range, or one its check() refuses stops the start naming key and value."""
    from dataclasses import dataclass, field

    from streamsnap.core import config as config_mod
    from streamsnap.core.config import setting
    from streamsnap.core.errors import ConfigError

    @dataclass
    class HelloSettings:
        greeting: str = "hello"
        repeat: int = setting(1, minimum=1, maximum=10)
        names: list[str] = field(default_factory=list)

        def check(self) -> None:
            if "world" in self.names and self.repeat > 5:
                raise ConfigError("[hello] repeat: at most 5 for the world")

    seen = []

    class Hello:
        @hookimpl
        def settings_sections(self):
            return {"hello": HelloSettings}

        @hookimpl
        async def lifespan(self, app):
            seen.append(app.config.of(HelloSettings))
            yield

    def app_for(text: str, environ: dict[str, str] | None = None) -> App:
        p = tmp_path / "c.toml"
        p.write_text(
            "[server]\nhost = '127.0.0.1'\nhttp_port = 0\nws_port = 0\nrtmp_port = 0\n" + text
        )
        cfg = config_mod.load(p, environ=environ or {})
        pm = make_plugin_manager(
            PluginsConfig(), load_entry_points=False, extra=[("hello", Hello())]
        )
        return App(cfg, pm)

    with caplog.at_level(logging.WARNING):
        app = app_for(
            "[hello]\ngreeting = 'hi'\nrepaet = 3\nnames = ['a']\n",
            {"STREAMSNAP_HELLO_REPEAT": "4"},
        )
        await app.start()
    try:
        assert seen == [HelloSettings(greeting="hi", repeat=4, names=["a"])]
        assert "unknown key [hello] repaet" in caplog.text
        assert "section [hello] is not used" not in caplog.text
    finally:
        await app.stop()
    for text, needle in [
        ("[hello]\nrepeat = 'three'\n", "[hello] repeat = 'three': must be an integer"),
        ("[hello]\nrepeat = 11\n", "[hello] repeat = 11: must be at most 10"),
        ("[hello]\nrepeat = 0\n", "[hello] repeat = 0: must be at least 1"),
        ("[hello]\nnames = 'a'\n", "[hello] names = 'a': must be a list of strings"),
        ("[hello]\nnames = ['world']\nrepeat = 6\n", "at most 5 for the world"),
    ]:
        with pytest.raises(ConfigError) as info:
            app_for(text)
        assert needle in str(info.value)
    with pytest.raises(ConfigError, match=r"\[hello\] repeat = 'x'"):
        app_for("", {"STREAMSNAP_HELLO_REPEAT": "x"})


def test_a_section_that_moved_is_read_with_a_warning(tmp_path, caplog):
    """``[rtsp]`` of older configs is read as ``[pull]``: its keys apply, lists given in both
    add up, and the log says to rename it; a section of a plugin left out is named too."""
    from streamsnap.core import config as config_mod
    from streamsnap.plugins.pull.settings import PullSettings

    p = tmp_path / "old.toml"
    p.write_text(
        "[rtsp]\ntransport = 'udp'\nallowed_hosts = ['10.0.0.0/24']\nidle_timeout_s = 9.0\n"
        "[pull]\nallowed_hosts = ['cam.lan']\n[rtmp]\nchunk_size = 8192\n"
    )
    cfg = config_mod.load(p, environ={"STREAMSNAP_RTSP_STALL_TIMEOUT_S": "2.5"})
    with caplog.at_level(logging.WARNING):
        App(cfg, make_plugin_manager(PluginsConfig(disabled=["rtmp"]), load_entry_points=False))
    pull = cfg.of(PullSettings)
    assert pull.transport == "udp" and pull.idle_timeout_s == 9.0 and pull.stall_timeout_s == 2.5
    assert pull.allowed_hosts == ["10.0.0.0/24", "cam.lan"]
    assert "[rtsp] is read as [pull]" in caplog.text
    assert cfg.undeclared() == ["rtmp"]  # the rtmp plugin is left out: its section unread


def test_the_error_rules_are_written_once():
    """The rules every hook call follows live in the hook specs' docstring; the plugin guide
    quotes them word for word."""
    rules = specs.__doc__.split("Error rules", 1)[1].strip().replace("``", "`")
    guide = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    assert " ".join(rules.split()) in " ".join(guide.split())


async def test_hook_snapshot_elsewhere():
    """A name not held here is asked of the plugins first; their picture is the answer, over
    REST too, and None leaves the usual resolution (404)."""
    from aiohttp import ClientSession

    asked = []

    class Elsewhere:
        @hookimpl
        async def snapshot_elsewhere(self, app, name, request):
            asked.append((name, request.format))
            if name != "far":
                return None
            return Snapshot(b"\x89PNG-from-afar", "png", 2, 2, name, media_session_id="m1")

    app = await _app_with(("elsewhere", Elsewhere()))
    try:
        snap = await app.snapshot("far")
        assert snap.data == b"\x89PNG-from-afar" and snap.media_session_id == "m1"
        with pytest.raises(StreamNotFound):
            await app.snapshot("nowhere")
        url = f"http://127.0.0.1:{app.ports['http']}/rest-api/stream/snapshot"
        async with ClientSession() as http, http.post(url, json={"streamName": "far"}) as resp:
            assert resp.status == 200 and (await resp.json())["data"]
        assert asked == [("far", "png"), ("nowhere", "png"), ("far", "png")]
    finally:
        await app.stop()


async def test_hook_forward_request():
    """find and terminate that match nothing here, and every find_all, may be answered by a
    plugin (a cluster asks the other nodes); None answers from here alone."""
    from aiohttp import ClientSession, web

    seen = []

    class Forward:
        @hookimpl
        async def forward_request(self, app, request, body):
            seen.append((request.path, body))
            if body.get("name") == "remote" or request.path.endswith("/find_all"):
                return web.json_response([{"name": "remote", "node": "b"}])
            return None

    app = await _app_with(("forward", Forward()))
    base = f"http://127.0.0.1:{app.ports['http']}/rest-api/stream"
    try:
        async with ClientSession() as http:
            async with http.post(base + "/find", json={"name": "remote"}) as resp:
                assert resp.status == 200 and (await resp.json())[0]["node"] == "b"
            async with http.post(base + "/find", json={"name": "absent"}) as resp:
                assert resp.status == 404
            async with http.post(base + "/find_all", json={}) as resp:
                assert (await resp.json()) == [{"name": "remote", "node": "b"}]
            async with http.post(base + "/terminate", json={"name": "remote"}) as resp:
                assert resp.status == 200
        assert [p.rsplit("/", 1)[1] for p, _ in seen] == ["find", "find", "find_all", "terminate"]
    finally:
        await app.stop()


async def test_hook_authenticate_request():
    """A plugin may prove who sent a request (it then passes [auth] like API credentials) or
    refuse it (403); open routes are not asked about."""
    from aiohttp import ClientSession

    from streamsnap.core.errors import NotAllowed

    class Proof:
        @hookimpl
        def authenticate_request(self, app, request):
            if request.headers.get("X-Proof") == "good":
                return "prover"
            if "X-Proof" in request.headers:
                raise NotAllowed("that proof is forged")
            return None

    pm = make_plugin_manager(PluginsConfig(), load_entry_points=False, extra=[("proof", Proof())])
    cfg = _config()
    cfg.auth.token = "t0ken-of-the-test"
    app = App(cfg, pm)
    await app.start()
    url = f"http://127.0.0.1:{app.ports['http']}"
    try:
        async with ClientSession() as http:
            async with http.get(url + "/plugins") as resp:
                assert resp.status == 401  # no credentials, no proof
            async with http.get(url + "/plugins", headers={"X-Proof": "good"}) as resp:
                assert resp.status == 200
            async with http.get(url + "/plugins", headers={"X-Proof": "bad"}) as resp:
                assert resp.status == 403 and "forged" in (await resp.json())["message"]
            async with http.get(url + "/healthz", headers={"X-Proof": "bad"}) as resp:
                assert resp.status == 200  # open: nobody asked
    finally:
        await app.stop()


async def test_hook_collect_metrics():
    """A plugin's own metrics are served at /metrics beside the built-in ones; a malformed
    family is left out and counted as the plugin's error."""
    from aiohttp import ClientSession

    class Counts:
        @hookimpl
        def collect_metrics(self, app):
            return [
                ("streamsnap_counts_things_total", "counter", "Things.", [(7, {"kind": "a"})]),
                ("broken",),
            ]

    app = await _app_with(("counts", Counts()))
    try:
        url = f"http://127.0.0.1:{app.ports['http']}/metrics"
        async with ClientSession() as http, http.get(url) as resp:
            text = await resp.text()
        assert "# TYPE streamsnap_counts_things_total counter" in text
        assert 'streamsnap_counts_things_total{kind="a"} 7' in text
        assert 'streamsnap_plugin_errors_total{plugin="counts",hook="collect_metrics"} 1' in text
    finally:
        await app.stop()


async def test_hook_assign_sources():
    """The configured sources a plugin assigns here are pulled, the ones it drops are not,
    and a changed plan is followed: a moved source stops, a new one starts."""
    from streamsnap.plugins.pull import PULL

    plan = {"a": "pull", "b": "drop"}

    class Placer:
        @hookimpl
        def assign_sources(self, app, names):
            assert sorted(names) == ["a", "b"]
            return plan

    pm = make_plugin_manager(PluginsConfig(), load_entry_points=False, extra=[("placer", Placer())])
    cfg = _config()
    cfg.extra["pull"] = {
        "sources": [
            {"name": "a", "url": "rtmp://127.0.0.1:9/live/a"},  # the discard port: no answer
            {"name": "b", "url": "rtmp://127.0.0.1:9/live/b"},
        ]
    }
    app = App(cfg, pm)
    await app.start()
    try:
        pulls = app.state[PULL]
        assert set(pulls.cameras) == {"a"}
        plan.update(a="drop", b="pull")
        await _wait(lambda: set(pulls.cameras) == {"b"}, 5)
        assert app.streams.lookup("a") is None and app.streams.lookup("b") is not None
    finally:
        await app.stop()


def test_rendezvous_placement_moves_only_what_it_must():
    from streamsnap.plugins.cluster.placement import owner

    names = [f"cam{i}" for i in range(200)]
    three = {n: owner(n, ["a", "b", "c"]) for n in names}
    assert {three[n] for n in names} == {"a", "b", "c"}
    assert all(owner(n, ["c", "a", "b"]) == three[n] for n in names)  # order does not matter
    four = {n: owner(n, ["a", "b", "c", "d"]) for n in names}
    assert all(four[n] in (three[n], "d") for n in names)  # a join takes only its share
    assert 25 < sum(four[n] == "d" for n in names) < 75
    two = {n: owner(n, ["a", "b"]) for n in names}
    assert all(two[n] == three[n] for n in names if three[n] != "c")  # a leave moves only its own


async def test_hook_streams_elsewhere():
    """Streams another server holds appear in the gallery, with their node and a live
    picture URL on this server."""
    from aiohttp import ClientSession

    class Others:
        @hookimpl
        async def streams_elsewhere(self, app):
            return [{"name": "far cam", "mediaSessionId": "m9", "protocol": "rtmp", "node": "b"}]

    app = await _app_with(("others", Others()))
    try:
        url = f"http://127.0.0.1:{app.ports['http']}/gallery.json"
        async with ClientSession() as http, http.get(url) as resp:
            streams = (await resp.json())["streams"]
        assert streams == [
            {
                "name": "far cam",
                "mediaSessionId": "m9",
                "protocol": "rtmp",
                "width": 0,
                "height": 0,
                "node": "b",
                "snapshot": None,
                "live": "/streams/far%20cam/snapshot.jpg?width=480",
            }
        ]
    finally:
        await app.stop()
