"""One visitor's work in progress, the registry of sessions, and the steps between the UI and the models,
free of any gradio code.

A :class:`Session` belongs to one browser tab (gradio's ``session_hash``) and is held by :class:`Sessions`,
which drops it, and deletes every file it made, when the tab closes (gradio's unload event), when it has been
idle for ``keep_seconds``, when more than ``max_sessions`` are open (the least recently active one goes), and
at shutdown. What a session keeps: the photo in the :mod:`~space.store` (a file only its GPU calls read), its
preview, the SAM embedding and mask and the trimap in memory, and its previews and downloads in one folder of
gradio's cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mematte_hf.errors import InputError
from mematte_hf.image_io import save_alpha_png, save_rgba_png
from mematte_hf.trimap import BACKGROUND, FOREGROUND, UNKNOWN, apply_brush

from . import render
from .store import ArrayStore

FOREGROUND_POINT, BACKGROUND_POINT, BOX_CORNER = "foreground", "background", "box"
CLICK_KINDS = (FOREGROUND_POINT, BACKGROUND_POINT, BOX_CORNER)

#: Prefix of the per-session and per-request folders in gradio's cache, so that sweeps only remove our own.
DOWNLOAD_PREFIX = "mematte-downloads-"


@dataclass
class Click:
    """One click in photo pixels (x = column, y = row)."""

    x: float
    y: float
    kind: str


@dataclass
class Session:
    """The photo and everything derived from it for one browser tab."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    photo_key: str | None = None  # the full-size photo in the store
    size: tuple[int, int] | None = None  # (height, width) of the photo
    name: str = "photo"
    scale: float = 1.0  # preview pixels per photo pixel
    preview: np.ndarray | None = None
    embedding: Any | None = None  # SAM's image embedding of the photo, on the CPU: computed once per photo
    clicks: list[Click] = field(default_factory=list)
    text: str | None = None  # the text prompt the detections came from
    text_boxes: np.ndarray | None = None  # (N, 4) boxes a detector found for it, best first
    text_mask: np.ndarray | None = None  # the mask the text made (before clicks refine it)
    band_width: int | None = None  # None: default_band_width of the photo
    mask: np.ndarray | None = None
    score: float | None = None
    trimap: np.ndarray | None = None  # from the mask, before brush corrections
    cutout_preview: tuple[np.ndarray, np.ndarray] | None = None  # (foreground uint8, alpha uint8) previews
    folder: Path | None = None  # this session's previews and downloads, inside gradio's cache
    results: Path | None = None  # the last run's previews and downloads, inside ``folder``
    video_home: Path | None = None  # the Video tab's folder in gradio's cache: its clip, frames and results
    video: Path | None = None  # the last video matte's files, inside ``video_home``
    uploads: list[Path] = field(default_factory=list)  # the visitor's uploads in gradio's cache still read (a clip)
    backdrop: np.ndarray | None = None  # the background picture of the composite, at preview size
    last_active: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    in_flight: int = 0  # runs between their first and last step (the GPU call holds no lock meanwhile)
    ended: bool = False  # the session was ended; its files are gone (or go when the last run finishes)
    notice: str | None = None  # why an earlier session of this tab ended, told when the visitor acts again
    retired_keys: list[str] = field(default_factory=list)  # replaced photos that a run in flight may still read

    # -- the photo ------------------------------------------------------------------------------------------

    def set_photo(self, store: ArrayStore, image: np.ndarray, name: str) -> None:
        """Start over on a new photo (clicks, masks, trimap, embedding and results are dropped).

        Each photo is stored under a key of its own, so that a run still reading the previous photo keeps
        reading it, and notices afterwards that it was superseded; the previous photo is deleted at once when no
        run is in flight, else when the last one finishes.
        """
        self.check_open()
        previous = self.photo_key
        self.photo_key = store.put(self.id, unique_name("photo"), image)
        if previous is not None:
            self.retired_keys.append(previous)
            self._delete_retired(store)
        self.size = (int(image.shape[0]), int(image.shape[1]))
        self.name = safe_stem(name)
        self.scale = render.preview_scale(*self.size)
        self.preview = render.downscale(image, self.scale)
        self.embedding = None
        self.clear_prompts()

    def require_photo(self) -> str:
        """The photo's store key; an InputError when there is no photo yet (saying why, if it expired)."""
        if self.photo_key is None:
            raise InputError(self.notice or "upload a photo first (or pick one of the examples)")
        return self.photo_key

    # -- work in flight ---------------------------------------------------------------------------------------

    def check_open(self) -> None:
        """An InputError when this session was ended: nothing may be written into it any more."""
        if self.ended:
            raise InputError(self.notice or ENDED_NOTICE)

    def begin_work(self) -> None:
        """Count a run that goes on without the session's lock (call with the lock held)."""
        self.check_open()
        self.in_flight += 1

    def finish_work(self, store: ArrayStore) -> None:
        """The run is over: replaced photos are deleted, and an ended session's files with the last run."""
        with self.lock:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._delete_retired(store)
                if self.ended:
                    self.forget(store)

    def _delete_retired(self, store: ArrayStore) -> None:
        if self.in_flight == 0:
            for key in self.retired_keys:
                store.remove(key)
            self.retired_keys.clear()

    # -- clicks ---------------------------------------------------------------------------------------------

    def add_click(self, x: float, y: float, kind: str) -> None:
        """Record a click in photo pixels; refuses clicks outside the photo."""
        self.require_photo()
        if kind not in CLICK_KINDS:
            raise InputError(f"click type must be one of {', '.join(CLICK_KINDS)}, got {kind!r}")
        height, width = self.size
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(f"the click ({x:g}, {y:g}) is outside the {width} x {height} photo")
        self.clicks.append(Click(float(x), float(y), kind))

    def add_preview_click(self, x: float, y: float, kind: str) -> None:
        """Record a click given in preview pixels (what the image's select event reports)."""
        self.require_photo()
        height, width = self.size
        # The centre of the preview pixel, mapped back; clamped because rounding can land on the far edge.
        photo_x = min(width - 1, max(0, int((x + 0.5) / self.scale)))
        photo_y = min(height - 1, max(0, int((y + 0.5) / self.scale)))
        self.add_click(photo_x, photo_y, kind)

    def undo(self) -> None:
        if self.clicks:
            self.clicks.pop()

    def clear_prompts(self) -> None:
        """Forget clicks, the text prompt and everything made from them."""
        self.clicks.clear()
        self.text = self.text_boxes = self.text_mask = None
        self.mask, self.score, self.trimap, self.cutout_preview = None, None, None, None

    @property
    def points(self) -> list[tuple[float, float]]:
        return [(c.x, c.y) for c in self.clicks if c.kind != BOX_CORNER]

    @property
    def labels(self) -> list[int]:
        return [1 if c.kind == FOREGROUND_POINT else 0 for c in self.clicks if c.kind != BOX_CORNER]

    @property
    def corners(self) -> list[tuple[float, float]]:
        return [(c.x, c.y) for c in self.clicks if c.kind == BOX_CORNER]

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        """The box of the last complete pair of corner clicks, covering both corner pixels; None before."""
        corners = self.corners
        if len(corners) < 2:
            return None
        end = len(corners) // 2 * 2
        (xa, ya), (xb, yb) = corners[end - 2 : end]
        return min(xa, xb), min(ya, yb), max(xa, xb) + 1, max(ya, yb) + 1

    @property
    def pending_corner(self) -> bool:
        """Whether a box is waiting for its second corner."""
        return len(self.corners) % 2 == 1

    @property
    def has_prompt(self) -> bool:
        return bool(self.points) or self.box is not None

    def require_trimap(self) -> np.ndarray:
        self.require_photo()
        if self.trimap is None:
            raise InputError(
                "say what to cut out, or click on the object first: that makes the mask and the trimap the "
                "matte is computed from"
            )
        return self.trimap

    # -- views ------------------------------------------------------------------------------------------------

    def prompt_view(self) -> np.ndarray | None:
        if self.preview is None:
            return None
        corners = self.corners[-1:] if self.pending_corner else []
        boxes = [tuple(box) for box in self.text_boxes] if self.text_boxes is not None else []
        return render.prompt_view(
            self.preview, self.scale, self.mask, self.points, self.labels, corners, self.box, boxes
        )

    def trimap_view(self) -> np.ndarray | None:
        if self.preview is None or self.trimap is None:
            return None
        return render.trimap_view(self.preview, self.trimap)

    # -- files --------------------------------------------------------------------------------------------

    def new_folder(self, root: str | Path) -> Path:
        """A fresh folder for this session's previews and downloads; the previous one is deleted."""
        self.check_open()
        self.delete_folder()
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=DOWNLOAD_PREFIX, dir=root))
        return self.folder

    def new_results_folder(self, root: str | Path) -> Path:
        """A fresh folder, inside the session's, for one run's results; the previous run's is deleted. The
        photo's and the outline's previews stay: the page still shows them."""
        self.check_open()
        if self.folder is None:
            self.new_folder(root)
        if self.results is not None:
            shutil.rmtree(self.results, ignore_errors=True)
        self.results = Path(tempfile.mkdtemp(prefix="run-", dir=self.folder))
        return self.results

    def video_folder(self, root: str | Path) -> Path:
        """The Video tab's folder of this session (apart from the photo's, which a new photo empties)."""
        self.check_open()
        if self.video_home is None:
            Path(root).mkdir(parents=True, exist_ok=True)
            self.video_home = Path(tempfile.mkdtemp(prefix=DOWNLOAD_PREFIX, dir=root))
        return self.video_home

    def new_video_folder(self, root: str | Path) -> Path:
        """A fresh folder, inside :meth:`video_folder`, for one video matte; the previous one is deleted."""
        home = self.video_folder(root)
        if self.video is not None:
            shutil.rmtree(self.video, ignore_errors=True)
        self.video = Path(tempfile.mkdtemp(prefix="video-", dir=home))
        return self.video

    def adopt_upload(self, path: str | Path, root: str | Path) -> Path:
        """The session's own name for an upload (a clip): a hard link in the session's folder, so that gradio's
        cache sweep (which ages uploads from their arrival) never deletes it under a matte reading it. Both names
        go with the session; the previous clip with the next one, unless a run still reads it."""
        home = self.video_folder(root)
        if self.in_flight == 0:
            self.delete_uploads()
        upload = Path(path)
        own = home / f"{unique_name('clip')}{upload.suffix.lower()}"
        try:
            os.link(upload, own)
        except OSError:  # another file system: a copy
            shutil.copyfile(upload, own)
        self.uploads += [upload, own]
        return own

    def delete_uploads(self) -> None:
        for path in self.uploads:
            path.unlink(missing_ok=True)
            if path.parent != self.video_home:
                with contextlib.suppress(OSError):
                    path.parent.rmdir()  # gradio's per-upload folder, once empty
        self.uploads.clear()

    def delete_folder(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        self.results = None

    def forget(self, store: ArrayStore | None) -> None:
        """Delete everything this session made: its store files, its folder, its arrays in memory."""
        if store is not None:
            store.drop_session(self.id)
        self.delete_folder()
        self.delete_uploads()
        if self.video_home is not None:
            shutil.rmtree(self.video_home, ignore_errors=True)
            self.video_home = self.video = None
        self.photo_key = self.size = self.preview = self.embedding = self.backdrop = None
        self.retired_keys.clear()
        self.clear_prompts()

    def end(self, store: ArrayStore | None, notice: str | None = None) -> None:
        """End the session (call with its lock held): its files go now, or when its last run finishes."""
        self.ended = True
        self.notice = notice or self.notice
        if self.in_flight == 0:
            self.forget(store)


def unique_name(kind: str) -> str:
    """A store name no other photo or run of the session has (``photo-3f2a...``)."""
    return f"{kind}-{uuid.uuid4().hex[:12]}"


#: What a handler says when its session was ended under it (the tab was closed or the server made room).
ENDED_NOTICE = "this session has ended (the tab was closed or the server made room): reload the page and upload again"


def release_freed_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps large freed blocks otherwise).

    A session's arrays are tens of megabytes; without this, the server's resident memory only ever grows with
    the largest photos seen, though nothing is kept.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None  # not glibc (musl, macOS): nothing to trim


_malloc_trim = _find_malloc_trim()


class Sessions:
    """The open sessions by gradio ``session_hash``: created on first use, ended on unload, expiry or eviction.

    Args:
        store: where the sessions' arrays live.
        keep_seconds: a session idle this long is ended; download folders older than this are deleted.
        max_sessions: sessions held at once; the least recently active is ended to make room for a new one.
        cache_root: gradio's cache folder, where the sessions' previews and downloads are written.
    """

    def __init__(self, store: ArrayStore, keep_seconds: float, max_sessions: int, cache_root: Callable[[], str]):
        self.store = store
        self.keep_seconds = keep_seconds
        self.max_sessions = max_sessions
        self.cache_root = cache_root
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._notices: OrderedDict[str, str] = OrderedDict()  # tab -> why its session ended (bounded)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_hash: str | None) -> Session:
        """This tab's session, created if new (ending the least recently active idle one when full); every call
        counts as activity. A tab whose earlier session expired or was evicted gets a new one that says so."""
        key = session_hash or "anonymous"
        evicted = []
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = Session(notice=self._notices.pop(key, None))
                self._sessions[key] = session
                evicted = self._make_room(keep=key)
            self._sessions.move_to_end(key)
            session.last_active = time.monotonic()
        for old_key, old in evicted:
            self._end(old_key, old, EVICTED_NOTICE)
        return session

    def touch(self, session_hash: str | None) -> None:
        """Count an event of the page as activity (painting in the editor, say), without creating a session."""
        with self._lock:
            session = self._sessions.get(session_hash or "anonymous")
            if session is not None:
                session.last_active = time.monotonic()
                self._sessions.move_to_end(session_hash or "anonymous")

    def _make_room(self, keep: str) -> list[tuple[str, Session]]:
        """Pop the least recently active sessions over ``max_sessions``, never one with work in flight (the
        registry may then hold more than the maximum until that work ends). Call with the registry's lock."""
        evicted = []
        for key in list(self._sessions):
            if len(self._sessions) <= self.max_sessions:
                break
            if key != keep and not _busy(self._sessions[key]):
                evicted.append((key, self._sessions.pop(key)))
        return evicted

    def end(self, session_hash: str | None) -> bool:
        """End this tab's session (the tab closed); returns whether there was one. A run still in flight
        finishes, and the session's files go with it."""
        key = session_hash or "anonymous"
        with self._lock:
            session = self._sessions.pop(key, None)
        if session is not None:
            self._end(None, session, None)
        # gradio also runs the unload event when a still-open tab's heartbeat reconnects: its next request then
        # starts a new session, which says why the photo is gone
        self._remember(key, CLOSED_NOTICE)
        return session is not None

    def sweep(self, now: float | None = None) -> int:
        """End sessions idle for ``keep_seconds`` (not those with work in flight) and delete download folders
        older than that; returns how many sessions ended."""
        now = time.monotonic() if now is None else now
        with self._lock:
            expired = [
                key
                for key, session in self._sessions.items()
                if now - session.last_active > self.keep_seconds and not _busy(session)
            ]
            sessions = [(key, self._sessions.pop(key)) for key in expired]
        for key, session in sessions:
            self._end(key, session, EXPIRED_NOTICE.format(idle=idle_time(self.keep_seconds)))
        sweep_downloads(self.cache_root(), self.keep_seconds, active=self.folders())
        return len(sessions)

    def folders(self) -> set[Path]:
        with self._lock:
            homes = [(session.folder, session.video_home) for session in self._sessions.values()]
            return {folder for pair in homes for folder in pair if folder is not None}

    def close(self) -> None:
        """End every session and delete every folder of ours in gradio's cache, /cutout results included
        (shutdown)."""
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            self._end(None, session, None)
        sweep_downloads(self.cache_root(), keep_seconds=-1)

    def _end(self, key: str | None, session: Session, notice: str | None) -> None:
        """End ``session``; with a ``key``, the tab's next request is told ``notice`` (why it ended)."""
        with session.lock:  # a step of this session still running finishes first
            session.end(self.store, notice)
        if key is not None and notice is not None:
            self._remember(key, notice)
        release_freed_memory()

    def _remember(self, key: str, notice: str) -> None:
        with self._lock:
            self._notices[key] = notice
            while len(self._notices) > _MAX_NOTICES:
                self._notices.popitem(last=False)


def _busy(session: Session) -> bool:
    """Whether a step of the session runs now (its lock is held) or a run of it is in flight."""
    return session.in_flight > 0 or session.lock.locked()


EXPIRED_NOTICE = "your session expired after {idle} idle and its files were deleted: upload again"


def idle_time(seconds: float) -> str:
    """'10 minutes', '90 seconds': how long a session may stay idle, as the visitor reads it."""
    return f"{round(seconds / 60)} minutes" if seconds >= 120 else f"{round(seconds)} seconds"


CLOSED_NOTICE = (
    "this tab's session was closed (the tab was closed or lost its connection) and its files were deleted: upload again"
)
EVICTED_NOTICE = (
    "your session was closed to make room for other visitors (the server holds a limited number) and its files "
    "were deleted: upload again"
)
_MAX_NOTICES = 1000  # tabs whose ended session is remembered, so that memory stays bounded


# ----------------------------------------------------------------------------------------------------------
# brush corrections

#: Brush colours of the trimap editor, by the trimap value they paint: the trimap's own grey levels.
BRUSH_COLOURS = {FOREGROUND: "#ffffff", UNKNOWN: "#808080", BACKGROUND: "#000000"}
_VALUES = np.array([BACKGROUND, UNKNOWN, FOREGROUND], dtype=np.float32)


def painted_values(layers: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """Decode brush layers into one (h, w) int16 map: -1 where nothing is painted, else the painted trimap value.

    Each layer is an (h, w, 4) RGBA array from the editor. A pixel counts as painted where the stroke is at
    least half opaque, and paints the trimap value whose grey is nearest to the stroke's colour (anti-aliased
    stroke edges blend towards the background colour, so an exact colour match would miss them). Later
    layers paint over earlier ones. None when there is no layer.
    """
    painted: np.ndarray | None = None
    for layer in layers:
        if layer is None:
            continue
        array = np.asarray(layer)
        if array.ndim != 3 or array.shape[2] != 4:
            continue  # the editor's layers are RGBA; anything else carries no strokes we can read
        if painted is None:
            painted = np.full(array.shape[:2], -1, dtype=np.int16)
        elif painted.shape != array.shape[:2]:
            raise InputError("the brush layers have different sizes; clear the corrections and paint again")
        opaque = array[..., 3] >= 128
        grey = array[..., :3].astype(np.float32).mean(axis=2)
        nearest = _VALUES[np.abs(grey[..., None] - _VALUES).argmin(axis=2)].astype(np.int16)
        painted[opaque] = nearest[opaque]
    return painted


def apply_corrections(trimap: np.ndarray, layers: Sequence[np.ndarray | None]) -> tuple[np.ndarray, int]:
    """The trimap with the brush strokes painted in at full resolution, and the number of pixels changed.

    Strokes are drawn on the preview; each stroke pixel stands for the photo pixels under it, so the
    decoded map is scaled to the trimap's size with nearest-neighbour sampling.
    """
    painted = painted_values(layers)
    if painted is None or not (painted >= 0).any():
        return trimap, 0
    codes = np.zeros(painted.shape, dtype=np.uint8)  # 0: not painted, then 1 + index into _VALUES
    for index, value in enumerate(_VALUES):
        codes[painted == value] = index + 1
    codes = render.resize(codes, trimap.shape, nearest=True)
    corrected = trimap
    for index, value in enumerate(_VALUES):
        stroke = codes == index + 1
        if stroke.any():
            corrected = apply_brush(corrected, stroke, int(value))
    return corrected, int(np.count_nonzero(corrected != trimap))


# ----------------------------------------------------------------------------------------------------------
# option parsing


CAP_AUTO, CAP_FIXED, CAP_NONE = "auto", "fixed", "none"


def global_token_cap(mode: str, k: float | None) -> int | str:
    """The ``max_global_tokens`` for the predictor: "auto", a fixed k >= 1, or 0 (no cap)."""
    if mode == CAP_AUTO:
        return "auto"
    if mode == CAP_NONE:
        return 0
    if mode != CAP_FIXED:
        raise InputError(f"the cap must be one of {CAP_AUTO}, {CAP_FIXED}, {CAP_NONE}; got {mode!r}")
    if k is None or k != k or k < 1 or int(k) != k:
        raise InputError(f"the fixed cap k must be a whole number of tokens of at least 1, got {k!r}")
    return int(k)


# ----------------------------------------------------------------------------------------------------------
# downloads


def safe_stem(name: str | None) -> str:
    """A file-name stem safe on every OS, from the upload's name ("photo" when there is none)."""
    stem = Path(name or "photo").stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")
    return stem[:60] or "photo"


def write_downloads(
    folder: str | Path, name: str, alpha: np.ndarray, rgba: np.ndarray, eight_bit: bool = True
) -> list[Path]:
    """Write the full-resolution alpha (8 bit unless not ``eight_bit``, and 16 bit) and RGBA PNGs into
    ``folder``."""
    folder = Path(folder)
    files = [Path(save_alpha_png(folder / f"{name}_alpha.png", alpha, bits=8))] if eight_bit else []
    return files + [
        Path(save_alpha_png(folder / f"{name}_alpha_16bit.png", alpha, bits=16)),
        Path(save_rgba_png(folder / f"{name}_cutout_rgba.png", rgba)),
    ]


def sweep_downloads(
    root: str | Path, keep_seconds: float, now: float | None = None, active: set[Path] | None = None
) -> int:
    """Delete our folders in ``root`` older than ``keep_seconds`` (but not ``active`` ones); returns how many."""
    now = time.time() if now is None else now
    active = active or set()
    removed = 0
    for folder in Path(root).glob(DOWNLOAD_PREFIX + "*"):
        try:
            if folder not in active and folder.is_dir() and now - folder.stat().st_mtime > keep_seconds:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        except OSError:
            continue  # another worker removed it first
    return removed
