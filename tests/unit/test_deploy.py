"""The files in deploy/: the systemd unit passes ``systemd-analyze verify``, the Grafana
dashboard imports (inputs, ids, data sources) and the Prometheus job scrapes /metrics.
(Whether the dashboard's metrics are served, and nginx in front of a real server:
tests/e2e/test_deploy.py.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streamsnap.core.config import ServerConfig
from tests.helpers import dashboard

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "streamsnap.service"
SHIPPED_EXEC = "/opt/streamsnap/bin/streamsnap"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def unit_settings(text: str) -> dict[str, str]:
    """``Key=value`` lines of a unit (the last one of a key wins, as in systemd)."""
    out = {}
    for line in text.splitlines():
        if re.match(r"^[A-Za-z]+=", line):
            key, _, value = line.partition("=")
            out[key] = value.strip()
    return out


def runnable_unit(text: str) -> str:
    """The shipped unit with only ExecStart's binary changed to one that exists here (verify
    refuses a unit whose binary is missing)."""
    script = Path(sys.executable).with_name("streamsnap")
    if not script.exists():
        pytest.skip(f"no streamsnap script beside {sys.executable}")
    lines = text.splitlines(keepends=True)
    changed = [i for i, line in enumerate(lines) if line.startswith(f"ExecStart={SHIPPED_EXEC} ")]
    assert len(changed) == 1, "the unit must start /opt/streamsnap/bin/streamsnap once"
    lines[changed[0]] = lines[changed[0]].replace(SHIPPED_EXEC, str(script), 1)
    return "".join(lines)


def verify(text: str, folder: Path) -> list[str]:
    """What ``systemd-analyze verify`` says about the unit (lines about the host's own units
    left out)."""
    path = folder / "streamsnap.service"
    path.write_text(text)
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    return [line for line in (done.stdout + done.stderr).splitlines() if path.name in line]


needs_systemd = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="no systemd-analyze here")


@needs_systemd
def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    assert verify(runnable_unit(UNIT.read_text()), tmp_path) == []


@needs_systemd
def test_verify_catches_a_misspelled_directive(tmp_path):
    """The check above would see a mistake: a misspelled key and a bad value are reported."""
    text = runnable_unit(UNIT.read_text())
    text = text.replace("\nProtectHome=", "\nProtectHomee=").replace(
        "KillMode=mixed", "KillMode=mixd"
    )
    said = "\n".join(verify(text, tmp_path))
    assert "Unknown key 'ProtectHomee'" in said, said
    assert "mixd" in said, said


def test_the_unit_runs_the_server_hardened_and_stops_within_its_drain():
    unit = unit_settings(UNIT.read_text())
    assert unit["ExecStart"] == (f"{SHIPPED_EXEC} serve --config /etc/streamsnap/streamsnap.toml")
    assert unit["User"] == "streamsnap"
    assert unit["WorkingDirectory"] == "/var/lib/streamsnap"
    assert unit["StateDirectory"] == "streamsnap"
    assert unit["Restart"] == "on-failure"
    # SIGTERM to the server alone: it stops its FFmpeg children itself, then exits within
    # [server] shutdown_timeout_s; systemd waits a little longer than that
    assert (unit["KillSignal"], unit["KillMode"]) == ("SIGTERM", "mixed")
    drain = ServerConfig().shutdown_timeout_s
    assert drain < float(unit["TimeoutStopSec"]) <= drain + 10
    assert int(unit["LimitNOFILE"]) >= 65536
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "ReadWritePaths": "/var/lib/streamsnap",
    }.items():
        assert unit[key] == value, key


def test_the_dashboard_imports_with_one_prometheus_input():
    board = dashboard.load()
    assert 36 <= board["schemaVersion"] <= 41
    inputs = board["__inputs"]
    assert [(i["name"], i["type"], i["pluginId"]) for i in inputs] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]
    assert board["uid"] and board["title"] and board["id"] is None
    panels = list(dashboard.panels(board))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    want = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for panel in panels:
        assert panel["datasource"] == want, panel["title"]
        for target in panel.get("targets", ()):
            assert target["datasource"] == want, (panel["title"], target["refId"])
            assert target["expr"].strip(), (panel["title"], target["refId"])
    for variable in board["templating"]["list"]:
        assert variable["datasource"] == want, variable["name"]
    titles = " | ".join(p["title"] for p in panels)
    for wanted in (
        "Live streams by protocol",
        "Snapshot requests/s",
        "Snapshot outcomes",
        "Snapshot decode latency",
        "Snapshot encode latency",
        "Frames/s per stream",
        "Stale streams",
        "Last frame age",
        "Auto snapshots written/s",
        "Auto snapshot write errors",
        "Refusals by kind",
        "Child starts and exits",
        "Process CPU",
        "Process memory",
        "Children CPU and memory",
        "Plugin errors",
    ):
        assert wanted in titles


def test_the_latency_panels_are_quantiles_of_the_histograms():
    board = dashboard.load()
    exprs = [expr for _, expr in dashboard.queries(board)]
    for family in ("decode", "encode"):
        for q in ("0.5", "0.99"):
            assert any(
                f"histogram_quantile({q}," in e
                and f"streamsnap_snapshot_{family}_seconds_bucket" in e
                and "by (le)" in e
                for e in exprs
            ), (family, q)


def test_metric_names_are_read_from_promql():
    names = dashboard.metric_names
    assert names(
        'histogram_quantile(0.99, sum by (le, stream) (rate(a_seconds_bucket{job=~"$job", '
        'le!="+Inf"}[$__rate_interval])))'
    ) == {"a_seconds_bucket"}
    assert names("sum without (instance) (increase(x_total[5m] offset 1h)) > 0") == {"x_total"}
    assert names("time() - max(process_start_time_seconds)") == {"process_start_time_seconds"}
    assert names('a / on (job) group_left (instance) b{x="rate(c)"} or d * 1e3') == {
        "a",
        "b",
        "d",
    }
    assert names("clamp_min(deriv(g[${__rate_interval}]), 0)") == {"g"}


def test_the_prometheus_job_scrapes_metrics_with_the_token():
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "streamsnap"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"]
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"127.0.0.1:{ServerConfig().http_port}"]


def location_blocks(text: str) -> dict[str, str]:
    """``{location match: its body}`` of an nginx config whose locations hold no blocks."""
    return {
        m.group(1).strip(): m.group(2)
        for m in re.finditer(r"^\s*location\s+([^{]+)\{([^}]*)\}", text, re.M)
    }


def test_the_nginx_site_streams_unbuffered_and_upgrades_websockets():
    """What the e2e test cannot tell apart on loopback: nginx spools a buffered endless
    answer to disk, so the server never sees a slow MJPEG viewer; and a location that sets
    one header inherits none, so each sets all it needs."""
    text = (DEPLOY / "nginx.conf").read_text()
    servers = re.split(r"(?m)^server\s*\{", text)[1:]
    [ws_server] = [s for s in servers if re.search(r"listen 8443 ssl", s)]
    locations = location_blocks(text)
    for streaming in (r"~ /stream\.mjpeg$", "= /events/snapshots"):
        assert "proxy_buffering off;" in locations[streaming], streaming
    websocket = [locations["/ws/"], location_blocks(ws_server)["/"]]
    for body in websocket:
        assert "proxy_pass http://streamsnap_ws;" in body
        for header in ("Upgrade $http_upgrade", "Connection $streamsnap_connection"):
            assert f"proxy_set_header {header};" in body
    for body in locations.values():
        if "proxy_set_header" in body:
            assert "proxy_set_header Host $host;" in body, body
