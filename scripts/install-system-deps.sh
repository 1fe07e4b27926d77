#!/usr/bin/env bash
# Install the system packages the tests (or benchmarks) need, only when missing and only as root.
# Usage: scripts/install-system-deps.sh test|bench
set -euo pipefail
what=${1:-test}

missing=()
need_cmd() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need_gst() { gst-inspect-1.0 "$1" >/dev/null 2>&1 || missing+=("$2"); }

need_cmd gst-launch-1.0 gstreamer1.0-tools
if command -v gst-inspect-1.0 >/dev/null 2>&1; then
  need_gst videotestsrc gstreamer1.0-plugins-base
  need_gst flvmux gstreamer1.0-plugins-good
  need_gst rtmp2sink gstreamer1.0-plugins-bad
  need_gst rtmpsink gstreamer1.0-plugins-bad
  need_gst x264enc gstreamer1.0-plugins-ugly
else
  missing+=(gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
            gstreamer1.0-plugins-ugly)
fi
# the RTSP camera the tests pull from: GStreamer's RTSP server, driven by the system Python
/usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); gi.require_version('GstRtsp', '1.0')" \
  >/dev/null 2>&1 || missing+=(python3-gi gir1.2-gst-rtsp-server-1.0 gir1.2-gst-plugins-base-1.0 gstreamer1.0-rtsp)
# a real browser for the WebRTC tests (driven by Playwright, never its own downloaded build)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# Redis: the registry the cluster tests' nodes share
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# nginx-rtmp: the RTMP origin the pull tests pull from, and the benchmark's anchor
[ -e /usr/lib/nginx/modules/ngx_rtmp_module.so ] || missing+=(nginx libnginx-mod-rtmp)

[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" != 0 ]; then
  echo "install-system-deps: missing ${missing[*]} (not root: tests needing them will be skipped)" >&2
  exit 0
fi
echo "install-system-deps: apt-get install ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
