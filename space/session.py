"""One visitor's work in progress, and the steps between the UI and the models, free of any gradio code.

A :class:`Session` lives in a ``gr.State``: gradio keeps it in memory for the browser tab and drops it when the
tab closes (or after a time to live), and :func:`forget` then deletes the session's download files.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mematte_hf.errors import InputError
from mematte_hf.image_io import save_alpha_png, save_rgba_png
from mematte_hf.trimap import BACKGROUND, FOREGROUND, UNKNOWN, apply_brush

from . import render

FOREGROUND_POINT, BACKGROUND_POINT, BOX_CORNER = "foreground", "background", "box"
CLICK_KINDS = (FOREGROUND_POINT, BACKGROUND_POINT, BOX_CORNER)

#: Prefix of the per-request download folders, so that the sweep only ever removes our own folders.
DOWNLOAD_PREFIX = "mematte-downloads-"


@dataclass
class Click:
    """One click in photo pixels (x = column, y = row)."""

    x: float
    y: float
    kind: str


@dataclass
class Session:
    """The full-resolution photo and everything derived from it for one browser tab."""

    image: np.ndarray | None = None
    name: str = "photo"
    scale: float = 1.0  # preview pixels per photo pixel
    preview: np.ndarray | None = None
    clicks: list[Click] = field(default_factory=list)
    band_width: int | None = None  # None: default_band_width of the photo
    mask: np.ndarray | None = None
    score: float | None = None
    trimap: np.ndarray | None = None  # from the SAM mask, before brush corrections
    cutout_preview: tuple[np.ndarray, np.ndarray] | None = None  # (foreground uint8, alpha float) previews
    download_dirs: list[Path] = field(default_factory=list)

    # -- the photo ------------------------------------------------------------------------------------------

    def set_image(self, image: np.ndarray, name: str) -> None:
        """Start over on a new photo (clicks, mask, trimap and results are dropped)."""
        self.image = image
        self.name = safe_stem(name)
        self.scale = render.preview_scale(image.shape[0], image.shape[1])
        self.preview = render.downscale(image, self.scale)
        self.clear_clicks()

    def require_image(self) -> np.ndarray:
        if self.image is None:
            raise InputError("upload a photo first (or pick one of the examples)")
        return self.image

    # -- clicks ---------------------------------------------------------------------------------------------

    def add_click(self, x: float, y: float, kind: str) -> None:
        """Record a click in photo pixels; refuses clicks outside the photo."""
        image = self.require_image()
        if kind not in CLICK_KINDS:
            raise InputError(f"click type must be one of {', '.join(CLICK_KINDS)}, got {kind!r}")
        height, width = image.shape[:2]
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(f"the click ({x:g}, {y:g}) is outside the {width} x {height} photo")
        self.clicks.append(Click(float(x), float(y), kind))

    def add_preview_click(self, x: float, y: float, kind: str) -> None:
        """Record a click given in preview pixels (what the image's select event reports)."""
        image = self.require_image()
        height, width = image.shape[:2]
        # The centre of the preview pixel, mapped back; clamped because rounding can land on the far edge.
        photo_x = min(width - 1, max(0, int((x + 0.5) / self.scale)))
        photo_y = min(height - 1, max(0, int((y + 0.5) / self.scale)))
        self.add_click(photo_x, photo_y, kind)

    def undo(self) -> None:
        if self.clicks:
            self.clicks.pop()

    def clear_clicks(self) -> None:
        self.clicks.clear()
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
        self.require_image()
        if self.trimap is None:
            raise InputError(
                "click on the object first: a foreground click (or two box corners) makes the mask and the "
                "trimap that the matte is computed from"
            )
        return self.trimap

    # -- views ------------------------------------------------------------------------------------------------

    def prompt_view(self) -> np.ndarray | None:
        if self.preview is None:
            return None
        corners = self.corners[-1:] if self.pending_corner else []
        return render.prompt_view(self.preview, self.scale, self.mask, self.points, self.labels, corners, self.box)

    def trimap_view(self) -> np.ndarray | None:
        if self.preview is None or self.trimap is None:
            return None
        return render.trimap_view(self.preview, self.trimap)


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


_RGB_FUNCTION = re.compile(r"rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*(?:,\s*[\d.]+\s*)?\)")


def parse_colour(text: str | None) -> tuple[int, int, int]:
    """A colour picker's value ('#rrggbb', '#rgb', 'rgb(...)', 'rgba(...)' or a CSS name) as an RGB tuple."""
    from PIL import ImageColor

    text = (text or "").strip()
    match = _RGB_FUNCTION.fullmatch(text)
    if match:
        return tuple(min(255, round(float(value))) for value in match.groups())  # type: ignore[return-value]
    try:
        return tuple(ImageColor.getrgb(text)[:3])  # type: ignore[return-value]
    except ValueError:
        raise InputError(f"{text!r} is not a colour: pick one, or type it as #rrggbb") from None


# ----------------------------------------------------------------------------------------------------------
# downloads


def safe_stem(name: str | None) -> str:
    """A file-name stem safe on every OS, from the upload's name ("photo" when there is none)."""
    stem = Path(name or "photo").stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")
    return stem[:60] or "photo"


def write_downloads(
    root: str | Path, name: str, alpha: np.ndarray, rgba: np.ndarray, keep_seconds: int
) -> tuple[Path, list[Path]]:
    """Write the full-resolution alpha (8 and 16 bit) and RGBA PNGs into a new folder of their own.

    The folder sits in gradio's cache folder, which gradio serves from and clears; older folders of
    ours are swept away here too, so nothing outlives ``keep_seconds`` even if a session never ends.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sweep_downloads(root, keep_seconds)
    folder = Path(tempfile.mkdtemp(prefix=DOWNLOAD_PREFIX, dir=root))
    files = [
        save_alpha_png(folder / f"{name}_alpha.png", alpha, bits=8),
        save_alpha_png(folder / f"{name}_alpha_16bit.png", alpha, bits=16),
        save_rgba_png(folder / f"{name}_cutout_rgba.png", rgba),
    ]
    return folder, [Path(file) for file in files]


def sweep_downloads(root: str | Path, keep_seconds: int, now: float | None = None) -> int:
    """Delete our download folders in ``root`` older than ``keep_seconds``; returns how many went."""
    now = time.time() if now is None else now
    removed = 0
    for folder in Path(root).glob(DOWNLOAD_PREFIX + "*"):
        try:
            if folder.is_dir() and now - folder.stat().st_mtime > keep_seconds:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        except OSError:
            continue  # another worker removed it first
    return removed


def forget(session: Session | None) -> None:
    """Delete the download folders of a session (gradio calls this when the session's state expires)."""
    if session is None:
        return
    for folder in session.download_dirs:
        shutil.rmtree(folder, ignore_errors=True)
    session.download_dirs.clear()
