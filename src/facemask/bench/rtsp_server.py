"""Serve video files over RTSP with GStreamer's RTSP server (Debian: gir1.2-gst-rtsp-server-1.0,
gstreamer1.0-plugins-good/-bad, python3-gi), for the camera tests and benchmarks. Run it with the
system Python (it needs gi): `python3 rtsp_server.py PORT NAME=FILE.mp4 ...` serves each file as
rtsp://127.0.0.1:PORT/NAME. MP4 files of H.264 (the shared clips) or MPEG-4 Part 2 (OpenCV's mp4v)
are sent as they are (no transcoding); each client gets the file from its start, paced in real
time, and the stream ends with the file. Prints "ready" once listening."""

import sys
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PAYLOADERS = {  # the codec's box in the MP4 file -> parser and RTP payloader
    b"avc1": "h264parse ! rtph264pay name=pay0 pt=96 config-interval=1",
    b"mp4v": "mpeg4videoparse ! rtpmp4vpay name=pay0 pt=96 config-interval=1",
}

Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(sys.argv[1])
mounts = server.get_mount_points()
for arg in sys.argv[2:]:
    name, path = arg.split("=", 1)
    data = Path(path).read_bytes()
    payload = next((p for box, p in PAYLOADERS.items() if box in data), None)
    if payload is None:
        sys.exit(f"{path}: neither H.264 nor MPEG-4 Part 2 video in an MP4 file")
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f'( filesrc location="{path}" ! qtdemux ! {payload} )')
    mounts.add_factory(f"/{name}", factory)
if server.attach(None) == 0:
    sys.exit(f"cannot listen on 127.0.0.1:{sys.argv[1]}")
print("ready", flush=True)
GLib.MainLoop().run()
