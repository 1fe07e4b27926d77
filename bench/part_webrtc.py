"""The ``webrtc`` part: a headless Chromium publishing 720p through the Flashphoner WebSDK on
streamsnap's page; the time to PUBLISHING and to the first snapshot, snapshot latency over the
WCS WebSocket API, and the server's CPU and memory growth per WebRTC publisher."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from bench.common import cpu_seconds, log, rss_mib
from tests.helpers.server import ServerProcess

WEBRTC_JS = """async ([wsUrl, name, rounds]) => {
    const S = Flashphoner.constants.SESSION_STATUS, T = Flashphoner.constants.STREAM_STATUS;
    const session = await new Promise((ok, fail) => Flashphoner.createSession({urlServer: wsUrl})
        .on(S.ESTABLISHED, ok).on(S.FAILED, fail));
    const display = document.createElement('div');
    document.body.appendChild(display);
    const t0 = performance.now();
    await new Promise((ok, fail) => session.createStream({name, display, receiveVideo: false,
        receiveAudio: false, constraints: {audio: false, video: {width: 1280, height: 720}}})
        .on(T.PUBLISHING, ok).on(T.FAILED, fail).publish());
    const published = performance.now() - t0;
    const snap = () => new Promise((ok) => {
        const t = performance.now();
        session.createStream({name}).on('STREAM_EVENT', (e) => ok([e.type, performance.now() - t]))
            .snapshot();
    });
    let first = null;
    while (first === null && performance.now() - t0 < 20000) {
        const [type] = await snap();
        if (type === 'snapshotCompleted') first = performance.now() - t0;
    }
    const lat = [];
    for (let i = 0; i < rounds; i++) {
        await new Promise((r) => setTimeout(r, 100 + Math.random() * 400));
        const [type, ms] = await snap();
        if (type === 'snapshotCompleted') lat.push(ms);
    }
    window.benchSession = session;
    return {published, first, lat};
}"""


def bench_webrtc(server: ServerProcess, rounds: int, window: float) -> dict:
    """A browser publishing 720p through the WebSDK: time to PUBLISHING, to the first snapshot,
    WebSocket snapshot latency; server CPU and memory per WebRTC publisher."""
    from tests.helpers.browser import browser_available, chromium, make_y4m

    status = server.request("GET", "/sdk/flashphoner.js")[0]
    if not browser_available() or status != 200:
        log("chromium, playwright or the WebSDK missing: WebRTC benchmark skipped")
        return {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-webrtc-"))
    y4m = make_y4m(tmp / "cam.y4m", 1280, 720)
    out: dict = {}
    pid = server.proc.pid
    try:
        with chromium(tmp, y4m) as browser:
            page = browser.new_page()
            page.goto(server.http + "/pages/stream-snapshot.html")
            log(f"WebRTC: browser publishes 720p; {rounds} snapshots over the WebSocket API")
            ws = f"ws://127.0.0.1:{server.ports['ws']}"
            c_before = cpu_seconds(pid)
            time.sleep(2)
            base = (cpu_seconds(pid) - c_before) / 2
            result = page.evaluate(WEBRTC_JS, [ws, "benchrtc", rounds])
            out.update(
                publish_ms=result["published"],
                first_snapshot_ms=result["first"],
                ws_snapshot_ms=result["lat"],
            )
            info = server.wait_stream("benchrtc")
            out["size"] = f"{info['width']}x{info['height']}"
            out["codec"] = info["videoCodec"]
            time.sleep(3)
            rss0 = rss_mib(pid)
            c0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(window)
            used = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
            out["cpu_pct"] = (used - base) * 100
            out["rss_growth_mib"] = rss_mib(pid) - rss0
            out["window_s"] = window
            info = server.wait_stream("benchrtc")
            out["size_end"] = f"{info['width']}x{info['height']}"
            log(
                f"WebRTC: {out['cpu_pct']:.1f} % of a core for one {out['size_end']} "
                f"{out['codec']} publisher, RSS {out['rss_growth_mib']:+.1f} MiB in {window:.0f} s"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
