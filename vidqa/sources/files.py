"""Recorded sources: a video file, or a MOT16/17 sequence folder. Neither ever drops a frame."""

from __future__ import annotations

import configparser
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from loguru import logger

from vidqa.errors import SourceError
from vidqa.messages import VideoFrame
from vidqa.sources.base import DEFAULT_FPS, READ_AHEAD, Source, read_ahead, timed, usable_fps


class FileSource(Source):
    """Any video OpenCV reads. Never drops; a truncated or corrupt file ends at the last good
    frame with a warning and ``end_reason`` saying so, never with a traceback. Decodes on a
    thread of its own, ``READ_AHEAD`` frames ahead of the consumer."""

    def __init__(self, path: Path) -> None:
        super().__init__(source_id=path.name, kind="file", is_live=False)
        self.path = path
        self._capture: cv2.VideoCapture | None = None
        self._first: np.ndarray | None = None

    def open(self) -> None:
        _check_video_path(self.path)
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"OpenCV cannot open {self.path} as a video: it is not a video "
                              f"or uses a codec this OpenCV build lacks. Convert it, e.g. "
                              f"`ffmpeg -i {self.path} -c:v libx264 out.mp4`")
        self._capture = capture
        ok, first = self._read()
        if not ok:
            self.close()
            raise SourceError(f"{self.path} opens but has no decodable frame: the file is "
                              f"corrupt or truncated before its first frame. Re-export it")
        fps = capture.get(cv2.CAP_PROP_FPS)
        if not usable_fps(fps):
            logger.warning("{} reports frame rate {!r}: timestamps assume {} fps", self.path,
                           fps, DEFAULT_FPS)
            fps = DEFAULT_FPS
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self._first = self._bgr(first)
        self._stats.fps, self._stats.size = fps, (first.shape[1], first.shape[0])
        self._stats.frame_count = count if count > 0 else None

    def _read(self) -> tuple[bool, np.ndarray | None]:
        assert self._capture is not None
        try:
            return self._capture.read()
        except cv2.error as err:  # some demuxers raise instead of returning False
            logger.debug("{}: read raised {}", self.path, err)
            return False, None

    def _frames(self) -> Iterator[VideoFrame]:
        return read_ahead(self._decoded(), READ_AHEAD, f"decode-{self.source_id}")

    def _decoded(self) -> Iterator[VideoFrame]:
        index, image = 0, self._first
        self._first = None
        while image is not None:
            self._stats.frames_read += 1
            self._stats.last_good_frame = index
            yield VideoFrame(image=image, frame_index=index, timestamp=index / self._stats.fps,
                             source_id=self.source_id, fps=self._stats.fps)
            ok, raw = timed(self._stats, self._read)
            image = self._bgr(raw) if ok and raw is not None else None
            index += 1
        self._stats.end_reason = self._end_reason(index)

    def _end_reason(self, frames: int) -> str:
        expected = self._stats.frame_count
        # Containers round their frame count; a shortfall of one frame is not damage.
        if expected is None or frames >= expected - 1:
            return "end of file"
        logger.warning("{} ends at frame {} of the {} it announces: the file is truncated or "
                       "corrupt; stopping at the last good frame {}", self.path, frames,
                       expected, frames - 1)
        return f"truncated or corrupt: last good frame {frames - 1} of {expected}"

    def _release(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
        self._first = None


def _check_video_path(path: Path) -> None:
    if not path.exists():
        raise SourceError(f"video file {path} not found: check source.path (relative paths "
                          f"start at the current directory {Path.cwd()})")
    if path.is_dir():
        hint = (" It looks like a MOT sequence: set source.kind: mot"
                if (path / "seqinfo.ini").exists() or (path / "img1").is_dir() else "")
        raise SourceError(f"{path} is a folder, but source.kind is 'file': set source.path to "
                          f"a video file.{hint}")
    if not os.access(path, os.R_OK):
        raise SourceError(f"{path} is not readable: check its permissions")
    if path.stat().st_size == 0:
        raise SourceError(f"{path} is empty (0 bytes): the download or copy did not finish; "
                          f"copy the video again")


# ---- MOT16/17 sequences ------------------------------------------------------------------------

@dataclass(frozen=True)
class SeqInfo:
    """The ``[Sequence]`` section of a MOT ``seqinfo.ini``."""

    name: str
    fps: float
    im_dir: str = "img1"
    im_ext: str = ".jpg"
    length: int | None = None
    size: tuple[int, int] | None = None  # (imWidth, imHeight)


class MotSource(Source):
    """A MOT16/MOT17 sequence folder: ``img1/*.jpg`` in frame order, rate and size from
    ``seqinfo.ini``.

    Frame indices come from the file names (``000001.jpg`` is index 0), so a missing image
    leaves a gap in indices and timestamps that still line up with ``gt.txt``. If seqLength
    disagrees with the images on disk, a warning says so and the images present are read.
    A size that disagrees with seqinfo.ini is an error; an unreadable image ends the sequence
    at the last good frame with a warning. Decodes ``READ_AHEAD`` images ahead, on a thread.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(source_id=path.name, kind="mot", is_live=False)
        self.path = path
        self._images: list[Path] = []
        self._info: SeqInfo | None = None
        self._first: np.ndarray | None = None  # decoded in open() to check the size early

    def open(self) -> None:
        self._info = read_seqinfo(self.path)
        self._images = _list_images(self.path, self._info)
        if self._info.length is not None and self._info.length != len(self._images):
            logger.warning("{}: seqinfo.ini says seqLength={} but {} has {} images: reading the "
                           "{} images present (indices follow the file names)", self.path,
                           self._info.length, self._info.im_dir, len(self._images),
                           len(self._images))
        self._stats.fps = self._info.fps
        self._stats.frame_count = len(self._images)
        self._stats.size = self._info.size
        self._first = cv2.imread(str(self._images[0]), cv2.IMREAD_COLOR)
        if self._first is None:
            raise SourceError(f"{self._images[0]} cannot be decoded: the first image of the "
                              f"sequence is corrupt; extract the sequence again")
        self._check_size(self._images[0], self._first)

    def _frames(self) -> Iterator[VideoFrame]:
        return read_ahead(self._decoded(), READ_AHEAD, f"decode-{self.source_id}")

    def _decoded(self) -> Iterator[VideoFrame]:
        assert self._info is not None
        for position, image_path in enumerate(self._images):
            image = self._first if position == 0 else timed(
                self._stats, lambda path=image_path: cv2.imread(str(path), cv2.IMREAD_COLOR))
            self._first = None
            if image is None:
                logger.warning("{} cannot be decoded: stopping the sequence at the last good "
                               "frame {}", image_path, self._stats.last_good_frame)
                self._stats.end_reason = (f"unreadable image {image_path.name}: last good "
                                          f"frame {self._stats.last_good_frame}")
                return
            self._check_size(image_path, image)
            index = _frame_number(image_path, position)
            self._stats.frames_read += 1
            self._stats.last_good_frame = index
            yield VideoFrame(image=image, frame_index=index, timestamp=index / self._info.fps,
                             source_id=self.source_id, fps=self._info.fps)
        self._stats.end_reason = "end of sequence"

    def _check_size(self, image_path: Path, image: np.ndarray) -> None:
        size = (image.shape[1], image.shape[0])
        if self._stats.size is None:
            self._stats.size = size
        elif size != self._stats.size:
            raise SourceError(f"{image_path} is {size[0]}x{size[1]} but seqinfo.ini (or the "
                              f"first image) says {self._stats.size[0]}x{self._stats.size[1]}: "
                              f"fix imWidth/imHeight in {self.path / 'seqinfo.ini'} or the "
                              f"images")

    def _release(self) -> None:
        self._images, self._first = [], None


def read_seqinfo(path: Path) -> SeqInfo:
    """Parse ``path/seqinfo.ini``; raise :class:`SourceError` saying what is wrong and how to
    fix it when ``path`` is not a sequence (including a folder of sequences)."""
    if not path.exists():
        raise SourceError(f"MOT sequence folder {path} not found: check source.path")
    if not path.is_dir():
        raise SourceError(f"{path} is a file, but source.kind is 'mot': set source.path to a "
                          f"sequence folder (with seqinfo.ini and img1/), or source.kind: file")
    ini = path / "seqinfo.ini"
    if not ini.is_file():
        raise SourceError(_not_a_sequence(path))
    parser = configparser.ConfigParser()
    try:
        parser.read(ini)
        section = parser["Sequence"]
        fps = float(section["frameRate"])
        length = section.getint("seqLength")
        width, height = section.getint("imWidth"), section.getint("imHeight")
    except (configparser.Error, KeyError, ValueError) as err:
        raise SourceError(f"{ini} is malformed ({type(err).__name__}: {err}): it needs a "
                          f"[Sequence] section with frameRate, and integer seqLength, imWidth, "
                          f"imHeight if present") from None
    if not usable_fps(fps):
        raise SourceError(f"{ini}: frameRate={fps} is not a usable frame rate (0.5 to 1000)")
    return SeqInfo(name=section.get("name", path.name), fps=fps,
                   im_dir=section.get("imDir", "img1"), im_ext=section.get("imExt", ".jpg"),
                   length=length, size=(width, height) if width and height else None)


def _not_a_sequence(path: Path) -> str:
    found = sorted(str(ini.parent.relative_to(path)) for pattern in ("*/seqinfo.ini",
                                                                      "*/*/seqinfo.ini")
                   for ini in path.glob(pattern))
    if found:
        shown = ", ".join(found[:12]) + (f" and {len(found) - 12} more" if len(found) > 12 else "")
        return (f"{path} holds MOT sequences but is not one: found {shown}. Set source.path to "
                f"one of them, e.g. {path / found[0]}")
    if (path / "img1").is_dir():
        return (f"{path} has img1/ but no seqinfo.ini: add one with a [Sequence] section "
                f"(frameRate=30, seqLength, imWidth, imHeight, imExt=.jpg), as MOT16 ships it")
    return (f"{path} is not a MOT sequence: expected {path / 'seqinfo.ini'} and "
            f"{path / 'img1'}/000001.jpg ...; for a video file set source.kind: file")


def _list_images(path: Path, info: SeqInfo) -> list[Path]:
    image_dir = path / info.im_dir
    if not image_dir.is_dir():
        raise SourceError(f"{image_dir} not found: seqinfo.ini says imDir={info.im_dir}; "
                          f"extract the sequence's images there")
    images = [p for p in image_dir.iterdir() if p.suffix.lower() == info.im_ext.lower()]
    if not images:
        raise SourceError(f"{image_dir} has no *{info.im_ext} images: extract the sequence "
                          f"again, or fix imExt in {path / 'seqinfo.ini'}")
    numeric = all(p.stem.isdigit() for p in images)
    return sorted(images, key=lambda p: int(p.stem) if numeric else p.name)


def _frame_number(image_path: Path, position: int) -> int:
    """0-based index: MOT's 1-based file number, or the position for non-numeric names."""
    return int(image_path.stem) - 1 if image_path.stem.isdigit() else position


