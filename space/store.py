"""Where the visitors' full-size arrays live between steps, and why: ZeroGPU pickles every GPU call.

ZeroGPU runs each ``spaces.GPU`` function in a forked worker and pickles its arguments and its result; it
forks the worker once and reuses it for later calls, so anything created after the fork (a photo uploaded
later) is not in the worker's memory. Photos, trimaps and prepared model inputs are therefore written here, as
``.npy`` files in one private folder of this process (mode 0700), one sub-folder per session, and a GPU call
receives only their keys; the worker memory-maps them. Nothing here outlives the session: its folder is
removed when the session ends (tab closed, time-to-live, or evicted), and the whole store at shutdown.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

_KEY = re.compile(r"^[A-Za-z0-9_-]+/[A-Za-z0-9_.-]+$")


class ArrayStore:
    """Arrays by key (``session/name``) in files under ``root``; memory-mapped when read."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="mematte-sessions-"))
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self._lock = threading.Lock()

    def put(self, session: str, name: str, array: np.ndarray) -> str:
        """Write ``array`` for ``session`` under ``name`` (replacing any older one) and return its key."""
        key = f"{session}/{name}"
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        partial = path.with_suffix(".partial")
        with open(partial, "wb") as file:
            np.save(file, np.ascontiguousarray(array), allow_pickle=False)
        os.replace(partial, path)  # a reader never sees half an array
        return key

    def get(self, key: str) -> np.ndarray:
        """The array, memory-mapped read-only (pages are read when used, and shared with other readers)."""
        path = self._path(key)
        if not path.exists():
            raise KeyError(f"{key} is no longer stored (the session ended)")
        return np.load(path, mmap_mode="r", allow_pickle=False)

    def remove(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def drop_session(self, session: str) -> None:
        """Delete every array of ``session``."""
        shutil.rmtree(self.root / session, ignore_errors=True)

    def sessions(self) -> list[str]:
        return sorted(path.name for path in self.root.iterdir() if path.is_dir()) if self.root.exists() else []

    def files(self) -> list[Path]:
        return sorted(path for path in self.root.rglob("*") if path.is_file()) if self.root.exists() else []

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def _path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise KeyError(f"not a store key: {key!r}")
        return self.root / f"{key}.npy"


_store: ArrayStore | None = None
_store_lock = threading.Lock()


def store() -> ArrayStore:
    """The process's store, created on first use and removed when the process exits.

    A forked GPU worker inherits this object (its folder), so keys resolve there too.
    """
    global _store
    if _store is None:
        with _store_lock:
            if _store is None:
                _store = ArrayStore()
                atexit.register(_store.close)
    return _store
