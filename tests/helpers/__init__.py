"""Test helpers: the server as a subprocess, real publishers, counter pictures, an RTMP client."""
