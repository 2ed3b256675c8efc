"""A real RTSP server on loopback for the live-source tests: start, kill, restart, stall.

Two halves in one file:

* :class:`RtspServer`, imported by the tests (venv Python): a context manager that turns a video
  into looping JPEG frames, starts the server as a child process on 127.0.0.1 and a free port,
  and can ``kill()``, ``restart()`` and ``stall()`` it. Everything it starts ends on ``stop()``.
* ``main()``, run as ``/usr/bin/python3 tests/rtsp_server.py ...``: GStreamer's
  ``gst-rtsp-server`` through PyGObject. It lives in the system Python because Debian ships the
  GObject bindings there; it uses only the standard library and ``gi``, never vidqa or numpy.

The stream is RTP/JPEG (``rtpjpegpay``), so it needs only gstreamer1.0-plugins-base and -good;
every frame is a key frame, which makes a reconnect deliver a picture at once. Install with::

    apt-get install -y --no-install-recommends gir1.2-gst-rtsp-server-1.0 python3-gi \
        gstreamer1.0-plugins-base gstreamer1.0-plugins-good
"""

from __future__ import annotations

import argparse
import functools
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

# Debian installs the GObject bindings for its own Python, not for a venv or pyenv Python.
SYSTEM_PYTHON = os.environ.get("VIDQA_RTSP_PYTHON", "/usr/bin/python3")
MOUNT = "/live"
_READY = "RTSP-READY"


@functools.cache
def server_available() -> str | None:
    """None when the server can run here, else why not (for ``pytest.skip``)."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = ("import gi; gi.require_version('Gst', '1.0'); "
             "gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "missing = [e for e in ('multifilesrc', 'jpegdec', 'jpegenc', 'rtpjpegpay') "
             "if Gst.ElementFactory.find(e) is None]; "
             "assert not missing, missing")
    result = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True,
                            timeout=30, check=False)
    if result.returncode != 0:
        return ("gst-rtsp-server is not installed: apt-get install -y --no-install-recommends "
                "gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base "
                f"gstreamer1.0-plugins-good ({result.stderr.strip().splitlines()[-1:]})")
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def video_to_jpegs(video: Path, directory: Path, max_frames: int = 300) -> int:
    """Decode ``video`` into ``directory/000000.jpg ...``; returns the frame count.

    rtpjpegpay needs width and height in multiples of 8, so frames are cropped to that.
    """
    import cv2  # the venv side only: the server process never imports this

    capture = cv2.VideoCapture(str(video))
    count = 0
    try:
        while count < max_frames:
            ok, image = capture.read()
            if not ok:
                break
            height, width = (image.shape[0] // 8) * 8, (image.shape[1] // 8) * 8
            cv2.imwrite(str(directory / f"{count:06d}.jpg"), image[:height, :width])
            count += 1
    finally:
        capture.release()
    if count == 0:
        raise RuntimeError(f"{video} has no readable frames to serve")
    return count


class RtspServer:
    """gst-rtsp-server on 127.0.0.1 serving ``video`` in a loop at ``fps``.

    Use as a context manager; ``url`` is valid across ``kill()``/``restart()`` because the port
    is kept. ``stall()`` freezes the server process (SIGSTOP): its sockets stay open but no
    frame and no RTSP reply leaves it, which is what a hung camera looks like.
    """

    def __init__(self, video: Path, fps: float = 25.0, port: int | None = None,
                 start_timeout_s: float = 15.0) -> None:
        self.video = Path(video)
        self.fps = fps
        self.port = port or free_port()
        self.start_timeout_s = start_timeout_s
        self.url = f"rtsp://127.0.0.1:{self.port}{MOUNT}"
        self.starts = 0
        self._frames_dir: Path | None = None
        self._process: subprocess.Popen[str] | None = None
        self._stalled: str | None = None
        self._guard: subprocess.Popen[bytes] | None = None  # resumes a frozen server
        self._log: TextIO | None = None

    def __enter__(self) -> RtspServer:
        self._frames_dir = Path(tempfile.mkdtemp(prefix="vidqa-rtsp-"))
        video_to_jpegs(self.video, self._frames_dir)
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        """Start the server process and wait until it listens."""
        assert self._frames_dir is not None, "use RtspServer as a context manager"
        assert self._process is None, "server already running"
        command = [SYSTEM_PYTHON, str(Path(__file__).resolve()), "--port", str(self.port),
                   "--frames", str(self._frames_dir), "--fps", str(self.fps)]
        # The system Python must not see the venv's PYTHON* settings. stderr goes to a file: a
        # pipe nobody reads would fill up with GStreamer warnings and block the server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        self._log = open(self._frames_dir / f"server-{self.starts}.log", "w")  # noqa: SIM115
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._log,
                                         text=True, env=env, start_new_session=True)
        self._wait_ready()
        self.starts += 1

    def _wait_ready(self) -> None:
        """Wait for the server's READY line, at most ``start_timeout_s``."""
        assert self._process is not None and self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], self.start_timeout_s)
        line = self._process.stdout.readline() if ready else ""
        if line.startswith(_READY):
            return
        self.kill()
        log = Path(self._log.name).read_text()[-2000:] if self._log else ""
        raise RuntimeError(f"RTSP server did not start on port {self.port}: {log}")

    def kill(self) -> None:
        """End the server abruptly (SIGKILL), as a crashed camera or encoder would."""
        if self._process is None:
            return
        if self._stalled:
            self.resume()
        self._process.kill()
        self._process.wait(timeout=10)
        if self._process.stdout:
            self._process.stdout.close()
        if self._log:
            self._log.close()
        self._process = None

    def restart(self, down_s: float = 0.0) -> None:
        """Kill, stay down for ``down_s`` seconds, start again on the same port."""
        self.kill()
        time.sleep(down_s)
        self.start()

    def stall(self, mode: str = "freeze", max_s: float = 60.0) -> None:
        """Stop the frames while the server stays up.

        ``freeze`` SIGSTOPs the process: sockets stay open, but neither frames nor RTSP replies
        leave it (a hung camera). ``drop`` keeps the server answering RTSP but drops every
        frame (a camera whose sensor died). A detached guard resumes a frozen server after
        ``max_s`` so a test that dies mid-stall cannot leave it stopped for good.
        """
        assert self._process is not None, "server not running"
        assert mode in ("freeze", "drop"), mode
        if mode == "drop":
            os.kill(self._process.pid, signal.SIGUSR1)
        else:
            os.kill(self._process.pid, signal.SIGSTOP)
            self._guard = subprocess.Popen(
                ["sh", "-c", f"sleep {max_s}; kill -CONT {self._process.pid} 2>/dev/null"],
                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._stalled = mode

    def resume(self) -> None:
        assert self._process is not None, "server not running"
        if self._stalled == "drop":
            os.kill(self._process.pid, signal.SIGUSR2)
        elif self._stalled == "freeze":
            os.kill(self._process.pid, signal.SIGCONT)
        self._stalled = None
        self._end_guard()

    def _end_guard(self) -> None:
        if self._guard is not None:
            os.killpg(self._guard.pid, signal.SIGKILL)  # its own session: sh and its sleep
            self._guard.wait(timeout=5)
            self._guard = None

    @contextmanager
    def stalled(self, mode: str = "freeze") -> Iterator[None]:
        self.stall(mode)
        try:
            yield
        finally:
            if self._process is not None and self._stalled:
                self.resume()

    def stop(self) -> None:
        """Kill the server and delete the frames; safe to call twice."""
        self.kill()
        if self._frames_dir is not None:
            shutil.rmtree(self._frames_dir, ignore_errors=True)
            self._frames_dir = None


# ---- the server process (system Python, GStreamer) -------------------------------------------

def _launch_line(frames: Path, fps: float) -> str:
    # multifilesrc stamps buffers from the framerate in its caps, and the RTSP media's sink
    # plays them against the clock, so the stream runs in real time and loops forever.
    # jpegdec ! jpegenc normalises any JPEG into the baseline 4:2:0 that rtpjpegpay accepts.
    num, den = round(fps * 1000), 1000
    return (f"( multifilesrc location={frames}/%06d.jpg index=0 loop=true "
            f"caps=image/jpeg,framerate={num}/{den} ! jpegdec ! jpegenc quality=85 "
            f"! rtpjpegpay name=pay0 pt=26 )")


def main(port: int, frames: Path, fps: float) -> None:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")  # loopback only
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(_launch_line(frames, fps))
    factory.set_shared(True)  # one pipeline for all clients, like a camera
    dropping = [False]  # toggled by SIGUSR1 (stall) and SIGUSR2 (resume)
    factory.connect("media-configure", lambda _factory, media: _drop_when_asked(
        Gst, media.get_element().get_by_name("pay0"), dropping))
    server.get_mount_points().add_factory(MOUNT, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{port}")
    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGUSR1, _setter(dropping, True))
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGUSR2, _setter(dropping, False))
    _exit_with_parent(GLib, os.getppid())
    print(f"{_READY} rtsp://127.0.0.1:{port}{MOUNT}", flush=True)
    loop.run()


def _drop_when_asked(gst: Any, payloader: Any, dropping: list[bool]) -> None:
    """Drop the payloader's output while ``dropping[0]``: the session lives, no frame leaves."""
    def probe(_pad: Any, _info: Any) -> Any:
        return gst.PadProbeReturn.DROP if dropping[0] else gst.PadProbeReturn.OK

    payloader.get_static_pad("src").add_probe(gst.PadProbeType.BUFFER
                                              | gst.PadProbeType.BUFFER_LIST, probe)


def _setter(flag: list[bool], value: bool) -> Callable[[], bool]:
    def set_flag() -> bool:
        flag[0] = value
        return True  # keep the signal handler installed

    return set_flag


def _exit_with_parent(glib: object, parent: int) -> None:
    """Quit when the test process dies, so a crashed test run leaves no server behind."""
    def check() -> bool:
        if os.getppid() != parent:
            os._exit(0)
        return True

    glib.timeout_add(500, check)  # type: ignore[attr-defined]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--frames", type=Path, required=True, help="folder of 000000.jpg ...")
    parser.add_argument("--fps", type=float, default=25.0)
    args = parser.parse_args()
    main(args.port, args.frames, args.fps)
