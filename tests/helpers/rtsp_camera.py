#!/usr/bin/python3
"""A camera for tests: GStreamer's RTSP server serving H.264 at rtsp://127.0.0.1:PORT/cam
(or, with --codec, H.265 or MJPEG).

Runs with the system Python (python3-gi does not import inside a venv). Prints
``ready PORT`` once it listens. Options: --port (0 = any free one), --size WxH, --fps,
--user/--password (Basic auth, or Digest with --digest), --path, --stdin (frames come as raw
gray8 pictures on stdin instead of a test pattern, so a test can put a frame counter on them).
"""

import argparse
import contextlib
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
gi.require_version("GstRtsp", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


class QueryBlindFactory(GstRtspServer.RTSPMediaFactory):
    """A shared media is keyed by its URL, query included: ``/cam?a`` and ``/cam?b`` would each
    get a pipeline and an encoder. Keyed by the path alone, every session shares one."""

    def do_gen_key(self, url):
        return url.abspath

    def do_configure(self, media):
        GstRtspServer.RTSPMediaFactory.do_configure(self, media)
        media.set_reusable(True)  # prepared again when a session comes after all have left


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="/cam")
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--gop", type=int, default=0, help="frames between keyframes (0: fps)")
    parser.add_argument("--preset", default="ultrafast", help="x264enc speed-preset")
    parser.add_argument("--pattern", default="ball", help="videotestsrc pattern (snow: noise)")
    parser.add_argument("--bitrate", type=int, default=0, help="kbit/s (0: x264enc's default)")
    parser.add_argument("--profile", default="baseline", help="H.264 profile")
    parser.add_argument(
        "--one-encoder",
        action="store_true",
        help="URLs that differ only in their query share one pipeline (one encoder)",
    )
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--digest", action="store_true", help="Digest instead of Basic auth")
    parser.add_argument("--stdin", action="store_true")
    parser.add_argument("--codec", default="h264", choices=("h264", "h265", "mjpeg"))
    parser.add_argument("--quality", type=int, default=85, help="jpegenc quality (MJPEG)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    Gst.init(None)

    if args.stdin:
        source = (
            f"fdsrc fd=0 blocksize={width * height} do-timestamp=true ! "
            f"rawvideoparse format=gray8 width={width} height={height} "
            f"framerate={args.fps}/1 ! videoconvert ! video/x-raw,format=I420"
        )
    else:
        source = (
            f"videotestsrc is-live=true pattern={args.pattern} ! "
            f"video/x-raw,width={width},height={height},framerate={args.fps}/1"
        )
        if args.codec == "mjpeg":
            source += ",format=I420"  # RTP/JPEG carries 4:2:0 and 4:2:2 only (RFC 2435)
    gop = args.gop or args.fps
    bitrate = f"bitrate={args.bitrate} " if args.bitrate else ""
    encoders = {
        "h264": (
            f"x264enc tune=zerolatency speed-preset={args.preset} {bitrate}key-int-max={gop} ! "
            f"video/x-h264,profile={args.profile} ! rtph264pay name=pay0 pt=96 config-interval=1"
        ),
        "h265": (
            f"x265enc tune=zerolatency speed-preset={args.preset} {bitrate}key-int-max={gop} ! "
            "rtph265pay name=pay0 pt=96 config-interval=1"
        ),
        "mjpeg": f"jpegenc quality={args.quality} ! rtpjpegpay name=pay0 pt=26",
    }
    launch = f"( {source} ! {encoders[args.codec]} )"
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = QueryBlindFactory() if args.one_encoder else GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP | GstRtsp.RTSPLowerTrans.UDP)
    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", args.user)
        if args.digest:
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
            auth.add_digest(args.user, args.password or "", token)
        else:
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password or ""), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role(args.user, "media.factory.access", True)
        permissions.add_permission_for_role(args.user, "media.factory.construct", True)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print("failed to listen", file=sys.stderr, flush=True)
        return 1
    print(f"ready {server.get_bound_port()}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
