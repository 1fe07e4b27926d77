// Shared by streamsnap's pages: the WebSocket URL of this server, and status display.
"use strict";
function streamsnapWsUrl() {
  var scheme = location.protocol === "https:" ? "wss://" : "ws://";
  var port = (window.STREAMSNAP && window.STREAMSNAP.wsPort) || 8080;
  return scheme + location.hostname + ":" + port;
}
function setText(id, text) { document.getElementById(id).textContent = text || ""; }
