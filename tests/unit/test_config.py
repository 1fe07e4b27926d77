from __future__ import annotations

import logging
from pathlib import Path

import pytest

from streamsnap.core import config
from streamsnap.core.app import App
from streamsnap.core.errors import ConfigError
from streamsnap.core.plugins import make_plugin_manager
from streamsnap.plugins.rtmp import RtmpSettings


def test_defaults_are_the_wcs_defaults():
    cfg = config.load(None, environ={})
    assert cfg.server.http_port == 8081 and cfg.server.ws_port == 8080
    assert cfg.server.rtmp_port == 1935
    s = cfg.snapshot
    assert (s.snapshot_taking_interval_ms, s.snapshot_taking_attempts) == (3000, 30)
    assert (s.snapshot_auto_enabled, s.snapshot_auto_dir) == (False, "snapshots")
    assert (s.snapshot_auto_naming, s.snapshot_auto_rate, s.snapshot_auto_retention) == (
        "mediaSessionId",
        30,
        20,
    )


def test_example_configs_load_cleanly(caplog):
    root = Path(__file__).resolve().parents[2] / "conf"
    with caplog.at_level(logging.WARNING):
        toml = config.load(root / "streamsnap.toml", environ={})
        props = config.load(root / "flashphoner.properties", environ={})
    assert not caplog.records, caplog.text
    assert toml.server.http_port == 8081
    assert props.snapshot.snapshot_auto_naming == "streamName"
    with caplog.at_level(logging.WARNING):  # the plugins' sections, checked as the app is built
        for cfg in (toml, props):
            App(cfg, make_plugin_manager(cfg.plugins, load_entry_points=False)).auth.close()
    assert not caplog.records, caplog.text


def test_toml_values_and_env_override(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(
        "[server]\nhttp_port = 9000\n[snapshot]\nsnapshot_auto_enabled = true\n"
        '[plugins]\ndisabled = ["rtmp"]\n'
    )
    cfg = config.load(
        p,
        environ={
            "STREAMSNAP_SERVER_HTTP_PORT": "9100",
            "STREAMSNAP_SNAPSHOT_SNAPSHOT_AUTO_RATE": "5",
            "STREAMSNAP_PLUGINS_ENABLED": "rest, rtmp",
            "OTHER": "x",
        },
    )
    assert cfg.server.http_port == 9100
    assert cfg.snapshot.snapshot_auto_enabled is True
    assert cfg.snapshot.snapshot_auto_rate == 5
    assert cfg.plugins.enabled == ["rest", "rtmp"]
    assert cfg.plugins.disabled == ["rtmp"]


def test_properties_file_with_wcs_keys(tmp_path, caplog):
    p = tmp_path / "flashphoner.properties"
    p.write_text(
        "# WCS\nsnapshot_auto_enabled=true\nsnapshot_auto_rate = 15\n"
        "snapshot_auto_naming: streamName\nws.port=9080\nice_tcp_transport=true\n"
    )
    with caplog.at_level(logging.WARNING):
        cfg = config.load(p, environ={})
    assert cfg.snapshot.snapshot_auto_enabled and cfg.snapshot.snapshot_auto_rate == 15
    assert cfg.snapshot.snapshot_auto_naming == "streamName"
    assert cfg.server.ws_port == 9080
    assert "ice_tcp_transport" in caplog.text  # unknown WCS keys are named


def test_unknown_keys_warn_by_name(tmp_path, caplog):
    p = tmp_path / "c.toml"
    p.write_text("[server]\nhttp_prot = 1\n[snapshot]\nsnapshot_rate = 2\n")
    with caplog.at_level(logging.WARNING):
        cfg = config.load(p, environ={})
    assert "[server] http_prot" in caplog.text and "[snapshot] snapshot_rate" in caplog.text
    assert cfg.server.http_port == 8081


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[server]\nhttp_port = 'x'\n", "[server] http_port = 'x'"),
        ("[server]\nhttp_port = 70000\n", "[server] http_port = 70000"),
        ("[snapshot]\nsnapshot_auto_naming = 'id'\n", "snapshot_auto_naming = 'id'"),
        ("[snapshot]\nsnapshot_auto_enabled = 'yes'\n", "snapshot_auto_enabled = 'yes'"),
        ("[snapshot]\nsnapshot_taking_interval_ms = 0\n", "snapshot_taking_interval_ms = 0"),
        ("[plugins]\nenabled = 'rest'\n", "enabled = 'rest'"),
        ("[server]\nhttp_port = true\n", "http_port = True"),
        ("server = 3\n", "[server] must be a table"),
        ("[server\n", "not valid TOML"),
        ("[limits]\nmax_streams = -1\n", "[limits] max_streams = -1"),
        ("[auth]\nusers = [{ name = 'ops' }]\n", "'password' must be a non-empty string"),
        ("[auth]\npublish_keys = [{ stream = 'cam1', key = '' }]\n", "'key' must be"),
        (
            "[auth]\npublish_keys = [{ stream = 'a', key = 'x' }, { stream = 'a', key = 'y' }]\n",
            "stream 'a' listed twice",
        ),
    ],
)
def test_bad_values_refuse_to_start_naming_key_and_value(tmp_path, text, needle):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load(p, environ={})
    assert needle in str(info.value)


def test_bad_env_value_names_variable(tmp_path):
    cfg = config.load(None, environ={"STREAMSNAP_RTMP_CHUNK_SIZE": "big"})
    with pytest.raises(ConfigError, match=r"\[rtmp\] chunk_size = 'big'"):
        cfg.declare("rtmp", RtmpSettings)  # the rtmp plugin's section, checked as it loads


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        config.load(tmp_path / "nope.toml", environ={})


def test_properties_parser():
    assert config.parse_properties("a=1\n! c\n# d\nb : two words\nflag\n") == {
        "a": "1",
        "b": "two words",
        "flag": "",
    }


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ("{ history_s = 5 }", r"per_stream\[0\] needs a name"),
        ('{ name = "a", history = 5 }', r"per_stream\[0\]: unknown key 'history'"),
        ('{ name = "a", history_s = "long" }', r"history_s = 'long' must be a number"),
        ('{ name = "a", history_s = 7200 }', r"history_s = 7200 is out of range"),
        ('{ name = "a", stale_after_s = -1 }', r"stale_after_s = -1 is out of range"),
        ('{ name = "a", history_max_bytes = 10 }', r"history_max_bytes = 10 is out of range"),
    ],
)
def test_per_stream_settings_are_checked_naming_the_entry(tmp_path, entry, needle):
    path = tmp_path / "s.toml"
    path.write_text(f"[streams]\nper_stream = [{entry}]\n")
    with pytest.raises(ConfigError, match=needle):
        config.load(path, environ={})


def test_per_stream_settings_match_by_glob_first_entry_wins(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        "[streams]\nstale_after_s = 10\nhistory_s = 0\n"
        'per_stream = [{ name = "door*", history_s = 30 }, '
        '{ name = "door-back", stale_after_s = 2, history_s = 5 }]\n'
    )
    streams = config.load(path, environ={}).streams
    assert streams.for_stream("door-front") == (10.0, 30.0, 32 * 1024 * 1024)
    assert streams.for_stream("door-back") == (10.0, 30.0, 32 * 1024 * 1024)  # first match
    assert streams.for_stream("gate") == (10.0, 0.0, 32 * 1024 * 1024)
