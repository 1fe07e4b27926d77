// streamsnap's console: every live stream (of every node in a cluster) with a live thumbnail,
// totals from the server's own /metrics, "add camera" through the pull API and terminate.
// Everything comes from this server's documented API; nothing is loaded from another host.

import {
  ApiError,
  errorOf,
  forgetToken,
  image,
  post,
  request,
  signIn,
  streamPath,
  token,
} from "./api.js";
import { by, parse, total } from "./prom.js";

const STREAMS_EVERY_MS = 1000; // the list: a stopped publisher's row goes within about a second
const TOTALS_EVERY_MS = 2000;
const THUMB_EVERY_MS = 1500; // each visible row's picture (the issue asks for 2 s at most)
const THUMB_WIDTH = 320; // twice the shown width: sharp on high-density screens
const THUMBS_AT_ONCE = 4; // requests in flight, so that many streams do not flood the server

const $ = (id) => document.getElementById(id);
const rows = new Map(); // key (node + name) -> Row

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

// a row per publish session: two names can read the same once their secrets are masked
function keyOf(s) {
  return (s.node || "") + "\u0000" + (s.mediaSessionId || s.name);
}

// find_all masks secrets in names (credentials, token= values): such a name addresses nothing
function addressable(name) {
  return !name.includes("***");
}

function age(ms) {
  if (ms == null || ms < 0) return "none yet";
  if (ms < 1000) return "<1 s";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  return Math.round(ms / 60000) + " min";
}

function bytes(n) {
  if (n == null) return "-";
  if (n >= 1 << 30) return (n / (1 << 30)).toFixed(2) + " GiB";
  return Math.round(n / (1 << 20)) + " MiB";
}

function duration(s) {
  if (s < 120) return Math.round(s) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  if (s < 172800) return (s / 3600).toFixed(1) + " h";
  return Math.round(s / 86400) + " d";
}

function faultsOf(s) {
  const faults = Object.entries(s.faults || {}).map(([k, v]) => k + ": " + v);
  if (s.info && !faults.some((f) => f.includes(s.info))) faults.push(s.info);
  return faults.join("; ");
}

// ----------------------------------------------------------------------------- stream rows
class Row {
  constructor(stream) {
    this.name = stream.name;
    this.thumbAt = 0; // when the newest thumbnail was asked for
    this.loading = false;
    this.visible = true;
    this.objectUrl = null;
    this.cells = {};
    const cell = (key, cls) => (this.cells[key] = el("td", { className: cls || key }));
    this.img = el("img", { alt: "" });
    this.ageBadge = el("span", { className: "age" });
    this.none = el("span", { className: "none", textContent: "waiting for a picture" });
    this.thumbButton = el("button", { type: "button", title: "the full-size current picture" });
    this.thumbButton.append(this.img, this.none, this.ageBadge);
    this.thumbButton.addEventListener("click", () => {
      if (addressable(this.name)) openViewer(this.name);
    });
    if (!addressable(this.name)) {
      this.none.textContent = "no picture here: the name holds a secret (masked)";
      this.thumbButton.disabled = true;
    }
    this.terminateButton = el("button", {
      type: "button",
      className: "terminate",
      textContent: "Terminate",
    });
    this.terminateButton.addEventListener("click", () => this.terminate());
    this.tr = el(
      "tr",
      {},
      el("td", { className: "thumb" }, this.thumbButton),
      cell("name"),
      cell("protocol"),
      cell("codec"),
      cell("size"),
      cell("fps"),
      cell("bitrate"),
      cell("decode"),
      cell("age"),
      cell("faults"),
      cell("node"),
      el("td", {}, this.terminateButton),
    );
    this.tr.dataset.stream = stream.name;
    this.update(stream);
    rowOf.set(this.tr, this);
    visibility.observe(this.tr);
  }

  update(s) {
    this.stream = s;
    const c = this.cells;
    c.name.textContent = s.name;
    c.protocol.textContent = s.protocol || (s.mediaProvider || "").toLowerCase();
    c.codec.textContent = s.videoCodec || "-";
    c.size.textContent = s.width ? s.width + "\u00d7" + s.height : "-";
    c.fps.textContent = s.fps ? Number(s.fps).toFixed(1) : "-";
    c.bitrate.textContent = s.bitrate ? Math.round(s.bitrate) : "-";
    c.decode.textContent = s.decode || "-";
    c.age.textContent = age(s.lastFrameAgeMs);
    c.faults.textContent = faultsOf(s);
    c.node.textContent = s.node || "-";
    this.tr.classList.toggle("stale", Boolean(s.stale));
  }

  due(now) {
    return (
      this.visible && !this.loading && addressable(this.name) && now - this.thumbAt >= THUMB_EVERY_MS
    );
  }

  async refreshThumb() {
    this.loading = true;
    this.thumbAt = performance.now();
    try {
      const path = streamPath(this.name, "snapshot.jpg", { width: THUMB_WIDTH, stale: "ok" });
      const { blob, headers } = await image(path);
      if (!this.tr.isConnected) return;
      const url = URL.createObjectURL(blob);
      await new Promise((resolve) => {
        this.img.onload = this.img.onerror = resolve;
        this.img.src = url;
      });
      if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
      this.objectUrl = url;
      if (!this.tr.isConnected) {
        URL.revokeObjectURL(url); // removed while it loaded
        this.objectUrl = null;
        return;
      }
      this.none.hidden = true;
      const frameAge = headers.get("X-Frame-Age-Ms");
      this.ageBadge.textContent = frameAge == null ? "" : age(Number(frameAge));
      this.img.dataset.frameTimestamp = headers.get("X-Frame-Timestamp") || "";
    } catch (err) {
      // no picture yet, stale, an unknown codec: the server's words, in place of the picture
      this.none.hidden = false;
      this.none.textContent = err instanceof ApiError ? err.message : String(err);
    } finally {
      this.loading = false;
    }
  }

  async terminate() {
    const button = this.terminateButton;
    const disarm = () => {
      clearTimeout(this.armed);
      this.armed = null;
      button.classList.remove("armed");
      button.textContent = "Terminate";
    };
    if (!this.armed) {
      // a second click within 3 s confirms: no modal dialog to dismiss
      button.classList.add("armed");
      button.textContent = "Confirm";
      this.armed = setTimeout(disarm, 3000);
      return;
    }
    disarm();
    button.disabled = true;
    button.textContent = "Stopping...";
    const s = this.stream;
    // by publish session: a masked name would match nothing, and a name may be live again
    const body = s.mediaSessionId ? { mediaSessionId: s.mediaSessionId } : { name: s.name };
    try {
      await post("/rest-api/stream/terminate", body);
      await refreshStreams(true);
    } catch (err) {
      button.textContent = "Terminate";
      setStatus(err.message, true);
    } finally {
      button.disabled = false;
    }
  }

  remove() {
    visibility.unobserve(this.tr);
    this.tr.remove();
    if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
  }
}

// only the rows on screen fetch pictures: a console over hundreds of cameras stays cheap
const rowOf = new WeakMap(); // tr -> Row
const visibility = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    const row = rowOf.get(entry.target);
    if (row) row.visible = entry.isIntersecting;
  }
});

function setStatus(text, bad = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", bad);
}

let listing = null;

async function listStreams() {
  try {
    return await post("/rest-api/stream/find_all", {});
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return []; // WCS: 404 when none
    throw err;
  }
}

// `fresh`: a listing that starts now (after a terminate), not one already under way
async function refreshStreams(fresh = false) {
  if (listing) {
    if (!fresh) return listing;
    await listing;
    if (listing) return listing;
  }
  listing = (async () => {
    try {
      const streams = await listStreams();
      const seen = new Set();
      const body = $("streams").tBodies[0];
      for (const s of streams) {
        const key = keyOf(s);
        seen.add(key);
        const row = rows.get(key);
        if (row) row.update(s);
        else {
          const added = new Row(s);
          rows.set(key, added);
          body.append(added.tr);
        }
      }
      for (const [key, row] of rows) {
        if (!seen.has(key)) {
          row.remove();
          rows.delete(key);
        }
      }
      // the node column is for clusters
      $("streams").classList.toggle("single-node", !streams.some((s) => s.node));
      $("empty").hidden = rows.size > 0;
      $("streams").hidden = rows.size === 0;
      setStatus("updated " + new Date().toLocaleTimeString());
    } catch (err) {
      setStatus("cannot list the streams: " + err.message, true);
    } finally {
      listing = null;
    }
  })();
  return listing;
}

function pumpThumbs() {
  if (document.hidden) return;
  const now = performance.now();
  let inFlight = [...rows.values()].filter((r) => r.loading).length;
  const due = [...rows.values()].filter((r) => r.due(now)).sort((a, b) => a.thumbAt - b.thumbAt);
  for (const row of due) {
    if (inFlight >= THUMBS_AT_ONCE) break;
    inFlight += 1;
    row.refreshThumb();
  }
}

// ----------------------------------------------------------------------------- totals
let previous = null; // {at, cpu, children, snapshots, auto}

async function refreshTotals() {
  let samples;
  try {
    const response = await request("/metrics");
    if (!response.ok) throw await errorOf(response);
    samples = parse(await response.text());
  } catch (err) {
    $("cpu").textContent = "-";
    $("cpuChildren").textContent = "metrics: " + err.message;
    return;
  }
  const protocols = by(samples, "streamsnap_streams", "protocol");
  const live = Object.values(protocols).reduce((a, b) => a + b, 0);
  const shown = rows.size;
  $("totalStreams").textContent = shown > live ? shown + " (" + live + " here)" : String(live);
  $("byProtocol").textContent = Object.entries(protocols)
    .filter(([, n]) => n > 0)
    .map(([p, n]) => p + " " + n)
    .join(" \u00b7 ");
  const now = {
    at: performance.now() / 1000,
    cpu: total(samples, "process_cpu_seconds_total"),
    children: total(samples, "streamsnap_children_cpu_seconds"),
    snapshots: total(samples, "streamsnap_snapshot_requests_total"),
    auto: total(samples, "streamsnap_auto_snapshots_written_total"),
  };
  if (previous) {
    const dt = now.at - previous.at;
    const rate = (k) => (now[k] == null || previous[k] == null ? null : (now[k] - previous[k]) / dt);
    const cpu = rate("cpu");
    // children that ended take their CPU time with them: never below zero
    const children = Math.max(0, rate("children") || 0);
    $("cpu").textContent = cpu == null ? "-" : Math.round((cpu + children) * 100) + " %";
    $("cpuChildren").textContent =
      cpu == null ? "" : "server " + Math.round(cpu * 100) + " % \u00b7 FFmpeg " + Math.round(children * 100) + " %";
    const snaps = rate("snapshots");
    $("snapshotRate").textContent = snaps == null ? "-" : snaps.toFixed(1);
    const auto = rate("auto");
    $("autoRate").textContent = auto == null ? "" : "incl. thumbnails \u00b7 auto " + auto.toFixed(1) + "/s";
  }
  previous = now;
  const rss = total(samples, "process_resident_memory_bytes");
  const childRss = total(samples, "streamsnap_children_resident_memory_bytes");
  const children = total(samples, "streamsnap_children");
  $("memory").textContent = bytes((rss || 0) + (childRss || 0));
  $("memoryChildren").textContent =
    "server " + bytes(rss) + (children ? " \u00b7 " + children + " FFmpeg " + bytes(childRss) : "");
  const started = total(samples, "process_start_time_seconds");
  if (started) $("uptime").textContent = duration(Date.now() / 1000 - started);
}

async function about() {
  try {
    const response = await fetch("/healthz");
    const health = await response.json();
    $("version").textContent = "streamsnap " + health.version;
    const examples = $("sdkExamples");
    const sdk = await fetch(examples.getAttribute("href"), { method: "HEAD" });
    examples.hidden = !sdk.ok; // a pip install carries flashphoner.js, not the SDK's examples
    if (health.ports && health.ports.rtmp) {
      $("rtmpHint").textContent = "rtmp://" + location.hostname + ":" + health.ports.rtmp + "/live/NAME";
    }
  } catch {
    // the totals say what is wrong
  }
}

// ----------------------------------------------------------------------------- add camera
async function addCamera(event) {
  event.preventDefault();
  const output = $("addCameraStatus");
  const uri = $("cameraUrl").value.trim();
  const name = $("cameraName").value.trim();
  const body = name ? { uri, localStreamName: name } : { uri };
  output.classList.remove("error");
  output.textContent = "starting...";
  $("addCameraBtn").disabled = true;
  try {
    const pull = await post("/rest-api/pull/startup", body);
    output.textContent = "added " + ((pull && (pull.localStreamName || pull.name)) || name || uri);
    $("cameraUrl").value = "";
    $("cameraName").value = "";
    await refreshStreams();
  } catch (err) {
    output.classList.add("error");
    output.textContent = err.message; // as the API gave it
  } finally {
    $("addCameraBtn").disabled = false;
  }
}

// ----------------------------------------------------------------------------- full picture
const viewer = { name: null, png: null, jpeg: null };

function fileName(name, ext) {
  const safe = name.replace(/[^A-Za-z0-9._-]+/g, "_").slice(0, 80) || "stream";
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  return safe + "-" + stamp + "." + ext;
}

async function showFullPicture() {
  const name = viewer.name;
  $("viewerError").textContent = "";
  try {
    const { blob, headers } = await image(streamPath(name, "snapshot.png", { stale: "ok" }));
    if (viewer.name !== name) return;
    if (viewer.png) URL.revokeObjectURL(viewer.png);
    viewer.png = URL.createObjectURL(blob);
    const img = $("viewerImage");
    await new Promise((resolve) => {
      img.onload = img.onerror = resolve;
      img.src = viewer.png;
    });
    const link = $("downloadPng");
    link.href = viewer.png;
    link.download = fileName(name, "png");
    const frameAge = headers.get("X-Frame-Age-Ms");
    $("viewerInfo").textContent =
      img.naturalWidth + "\u00d7" + img.naturalHeight + (frameAge == null ? "" : " \u00b7 frame " + age(Number(frameAge)) + " old");
  } catch (err) {
    $("downloadPng").removeAttribute("href");
    $("viewerError").textContent = err.message;
  }
}

function openViewer(name) {
  viewer.name = name;
  $("viewerName").textContent = name;
  $("viewerInfo").textContent = "";
  $("viewerImage").removeAttribute("src");
  $("downloadPng").removeAttribute("href"); // never the picture of the stream viewed before
  $("viewer").showModal();
  showFullPicture();
}

async function downloadJpeg(event) {
  event.preventDefault();
  try {
    const { blob } = await image(streamPath(viewer.name, "snapshot.jpg", { stale: "ok" }));
    if (viewer.jpeg) URL.revokeObjectURL(viewer.jpeg);
    viewer.jpeg = URL.createObjectURL(blob);
    const a = el("a", { href: viewer.jpeg, download: fileName(viewer.name, "jpg") });
    document.body.append(a);
    a.click();
    a.remove();
  } catch (err) {
    $("viewerError").textContent = err.message;
  }
}

// ----------------------------------------------------------------------------- start
// ``fn`` every ``ms`` while the tab is shown; a hidden tab asks the server for nothing
function every(ms, fn) {
  const run = async () => {
    try {
      if (!document.hidden) await fn();
    } finally {
      setTimeout(run, ms);
    }
  };
  run();
}

function start() {
  $("addCamera").addEventListener("submit", addCamera);
  $("viewerRefresh").addEventListener("click", showFullPicture);
  $("downloadJpeg").addEventListener("click", downloadJpeg);
  $("viewer").addEventListener("close", () => {
    viewer.name = null;
    for (const key of ["png", "jpeg"]) {
      if (viewer[key]) URL.revokeObjectURL(viewer[key]); // a full-size PNG can be megabytes
      viewer[key] = null;
    }
    $("viewerImage").removeAttribute("src");
    $("downloadPng").removeAttribute("href");
  });
  const signOut = $("signOut");
  signOut.addEventListener("click", () => {
    forgetToken();
    location.reload();
  });
  const signInButton = $("signIn");
  signInButton.addEventListener("click", async () => {
    if (await signIn()) await Promise.all([refreshStreams(true), refreshTotals()]);
  });
  document.addEventListener("streamsnap-auth", (event) => {
    signInButton.hidden = !event.detail.dismissed;
  });
  about();
  every(STREAMS_EVERY_MS, async () => {
    await refreshStreams();
    signOut.hidden = !token();
  });
  every(TOTALS_EVERY_MS, refreshTotals);
  setInterval(pumpThumbs, 200);
}

start();
