// Shared by streamsnap's pages: the WebSocket URL of this server, and status display.
"use strict";
function streamsnapWsUrl() {
  var cfg = window.STREAMSNAP || {};
  if (cfg.wsUrl) return cfg.wsUrl; // [webrtc] public_ws_url: the API behind a reverse proxy
  if (location.protocol === "https:") return "wss://" + location.hostname + ":" + (cfg.wssPort || 8443);
  return "ws://" + location.hostname + ":" + (cfg.wsPort || 8080);
}
function setText(id, text) { document.getElementById(id).textContent = text || ""; }
