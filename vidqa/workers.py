"""What every worker process of a run shares: whether a process is still there, and errors
that survive the trip between processes."""

from __future__ import annotations

import pickle

import psutil


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def picklable(error: BaseException) -> Exception:
    """``error`` itself when it pickles, else a RuntimeError that names it."""
    try:
        pickle.dumps(error)
        return error  # type: ignore[return-value]
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
