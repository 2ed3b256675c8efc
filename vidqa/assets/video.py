"""The sample video: OpenCV's pedestrian clip vtest.avi, from GitHub or Debian's opencv-doc."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from loguru import logger

from vidqa.assets.fetch import (
    GITHUB_URL,
    cache_dir,
    download,
    extract_from_deb,
    reachable,
    run_command,
)
from vidqa.errors import SourceError

# OpenCV's pedestrian sample clip, online and as packaged by Debian.
VIDEO_NAME = "vtest.avi"
VIDEO_URL = "https://raw.githubusercontent.com/opencv/opencv/4.x/samples/data/vtest.avi"
VIDEO_DEB = "opencv-doc"
VIDEO_DEB_MEMBER = "usr/share/doc/opencv-doc/examples/data/vtest.avi"
VIDEO_SHAPE = (768, 576, 795, 10.0)  # width, height, frames, fps


def _check_video(path: Path) -> None:
    """Raise SourceError unless ``path`` is OpenCV's vtest.avi (size, frame count, fps)."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        shape = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                 int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                 int(capture.get(cv2.CAP_PROP_FRAME_COUNT)),
                 round(capture.get(cv2.CAP_PROP_FPS), 2))
        readable = capture.isOpened() and capture.read()[0]
    finally:
        capture.release()
    if not readable or shape != VIDEO_SHAPE:
        raise SourceError(f"{path} is not OpenCV's {VIDEO_NAME}: expected (w, h, frames, fps) "
                          f"{VIDEO_SHAPE}, got {shape}, readable={readable} — delete it and "
                          f"run `vidqa assets` again")


def _video_from_deb(dest: Path) -> Path:
    """``apt-get download opencv-doc`` and stream vtest.avi out of the package."""
    fix = (f"run `apt-get update` (as root) and retry, or download {VIDEO_URL} yourself and "
           f"set source.path to it")
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise SourceError(f"cannot fetch the sample video: apt-get/dpkg-deb not found (not a "
                          f"Debian system) — download {VIDEO_URL} yourself and set source.path")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".opencv-doc.") as work:
        run_command(["apt-get", "download", VIDEO_DEB], Path(work),
             f"cannot download the Debian package {VIDEO_DEB}", fix, SourceError)
        deb = next(Path(work).glob(f"{VIDEO_DEB}_*.deb"))
        return extract_from_deb(deb, VIDEO_DEB_MEMBER, dest, _check_video,
                                f"download {VIDEO_URL} yourself and set source.path to it")




def sample_video() -> Path:
    """OpenCV's pedestrian clip vtest.avi (768x576, 795 frames, 10 fps), cached."""
    dest = cache_dir() / "video" / VIDEO_NAME
    if dest.is_file():
        try:
            _check_video(dest)
            return dest
        except SourceError as err:
            logger.warning("{}: fetching it again", err)
    if reachable(GITHUB_URL):
        try:
            return download(VIDEO_URL, dest, _check_video)
        except (OSError, SourceError) as err:
            logger.warning("download of {} failed ({}): trying Debian's {}", VIDEO_URL, err,
                           VIDEO_DEB)
    logger.info("fetching {} from the Debian package {}", VIDEO_NAME, VIDEO_DEB)
    return _video_from_deb(dest)


