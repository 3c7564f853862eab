"""DIM-style matting training data: foregrounds composited over random backgrounds on the fly.

Each item takes one foreground/alpha pair and one random background and applies the usual
Deep-Image-Matting recipe (as in ViTMatte/MEMatte training):

1. random affine on fg + alpha together (rotation +-30 deg, scale 0.8-1.25, shear +-10 deg, flip),
   HSV colour jitter on the fg, random horizontal flip;
2. upscaling so the shorter side is at least ``crop_size``;
3. a ``crop_size`` square crop centred on a random transition pixel of the alpha (random crop when
   the alpha has none);
4. a trimap from the alpha: ``unknown = dilate(alpha > 0, k1) - erode(alpha == 1, k2)`` with random
   radii ``k1, k2`` in [1, 30] (Euclidean discs via ``scipy.ndimage.distance_transform_edt``);
5. ``image = fg * alpha + bg * (1 - alpha)``, the background stretched to the fg's size (as upstream)
   and cut with the same crop window.

Items are dicts of tensors laid out exactly like ``transformers.VitMatteImageProcessor`` output
(normalised RGB + trimap/255 as a 4th channel), so the model sees the same inputs in training and
inference. Everything is seedable: item ``i`` of epoch ``e`` draws from ``np.random.default_rng([seed,
e, i])``, independent of DataLoader workers.

Only numpy, scipy.ndimage, PIL and torch are used (no OpenCV, no torchvision).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError
from scipy import ndimage
from torch.utils.data import Dataset

from mematte_hf.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# The normalisation MEMatte/ViTMatte were trained with (detectron2 pixel_mean/std divided by 255).
# Note: a bare ``VitMatteImageProcessor()`` defaults to 0.5/0.5; pass these to it (or the matching
# values to this dataset) so training and inference agree.
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
TRIMAP_UNKNOWN = 128
# Alpha values within this of 0 or 1 are snapped to it: bilinear resampling turns a solid 1.0 into
# 0.99999994, which would otherwise count as a (tiny) transition pixel.
ALPHA_SNAP = 1e-3

ImageLike = Any  # path, PIL image, numpy array, or a datasets undecoded {"bytes": ..., "path": ...} dict


@dataclass
class CompositeSample:
    """One composited training crop before conversion to tensors.

    Attributes:
        image: ``(S, S, 3)`` uint8 RGB composite.
        alpha: ``(S, S)`` float32 ground-truth alpha in [0, 1].
        trimap: ``(S, S)`` uint8 with values in {0, 128, 255}.
        center: ``(row, col)`` inside the crop of the transition pixel the crop was centred on, or None
            when the alpha had none and the crop was random.
        fg_index, bg_index: which foreground / background were used.
    """

    image: np.ndarray
    alpha: np.ndarray
    trimap: np.ndarray
    center: tuple[int, int] | None
    fg_index: int
    bg_index: int


# ---------------------------------------------------------------- loading


def _open(obj: ImageLike) -> Image.Image:
    """Open a path, an undecoded ``datasets`` image dict or a PIL image as a PIL image."""
    if isinstance(obj, Image.Image):
        return obj
    try:
        if isinstance(obj, Mapping):
            if obj.get("bytes") is not None:
                return Image.open(io.BytesIO(obj["bytes"]))
            obj = obj.get("path")
        if isinstance(obj, str | Path):
            return Image.open(obj)
    except (OSError, UnidentifiedImageError) as err:
        raise InputError(f"Cannot read image {obj!r}: {err}") from err
    raise InputError(f"Expected an image (path, PIL image or numpy array), got {type(obj).__name__}.")


@contextmanager
def _opened(obj: ImageLike) -> Iterator[Image.Image]:
    """``_open(obj)``, closing the file afterwards when this call opened it."""
    img = _open(obj)
    try:
        yield img
    except OSError as err:  # truncated or corrupt files fail only when decoded
        raise InputError(f"Cannot decode image {obj!r}: {err}") from err
    finally:
        if img is not obj:
            img.close()


def load_rgb(obj: ImageLike) -> np.ndarray:
    """Load any image-like as ``(H, W, 3)`` uint8 RGB (alpha channels dropped, grey expanded)."""
    if isinstance(obj, np.ndarray):
        arr = obj
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise InputError(f"Expected an (H, W, 3) RGB array, got shape {arr.shape}.")
        arr = arr[..., :3]
        if arr.dtype != np.uint8:
            # Float images are taken to be in [0, 1].
            arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(arr)
    with _opened(obj) as img:
        return np.asarray(img.convert("RGB"))


def load_alpha(obj: ImageLike) -> np.ndarray:
    """Load any image-like alpha matte as ``(H, W)`` float32 in [0, 1].

    8-bit images are divided by 255, 16-bit ones by 65535; colour images are converted to grey
    (DIM ships some mattes as 3-channel files); float arrays are taken as already in [0, 1].
    """
    if isinstance(obj, np.ndarray):
        arr = obj[..., 0] if obj.ndim == 3 else obj
        if arr.ndim != 2:
            raise InputError(f"Expected an (H, W) alpha array, got shape {obj.shape}.")
        if arr.dtype == np.uint8:
            return arr.astype(np.float32) / 255.0
        if arr.dtype == np.uint16:
            return arr.astype(np.float32) / 65535.0
        return np.clip(arr.astype(np.float32), 0.0, 1.0)
    with _opened(obj) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float32) / 65535.0
        elif img.mode == "F":
            arr = np.asarray(img, dtype=np.float32)
        else:
            arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    return np.clip(arr, 0.0, 1.0)


def _image_size(obj: ImageLike) -> tuple[int, int]:
    """``(H, W)`` of an image-like without decoding the pixels when it is a file."""
    if isinstance(obj, np.ndarray):
        return int(obj.shape[0]), int(obj.shape[1])
    with _opened(obj) as img:
        width, height = img.size
    return height, width


def _list_images(folder: Path, what: str) -> dict[str, Path]:
    """Map file stem -> path for the images directly inside ``folder``."""
    if not folder.is_dir():
        raise InputError(f"The {what} folder {folder} does not exist.")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        if path.stem in found:
            raise InputError(
                f"Two {what} images share the name {path.stem!r} ({found[path.stem].name}, {path.name}); "
                "fg and alpha are paired by file name, so names must be unique."
            )
        found[path.stem] = path
    if not found:
        raise InputError(f"The {what} folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return found


def _pair_folders(fg_dir: Path, alpha_dir: Path) -> list[tuple[Path, Path]]:
    """Pair ``fg_dir`` and ``alpha_dir`` images by stem, checking that each pair has one size."""
    fgs, alphas = _list_images(fg_dir, "foreground"), _list_images(alpha_dir, "alpha")
    orphans = sorted(set(fgs) - set(alphas))
    if orphans:
        listed = ", ".join(orphans[:5]) + (" ..." if len(orphans) > 5 else "")
        raise InputError(f"{len(orphans)} foreground image(s) have no alpha of the same name in {alpha_dir}: {listed}")
    pairs = [(fgs[stem], alphas[stem]) for stem in fgs]
    for fg, alpha in pairs:
        _check_same_size(fg, alpha, _image_size(fg), _image_size(alpha))
    return pairs


def _check_same_size(fg: Any, alpha: Any, fg_hw: tuple[int, ...], alpha_hw: tuple[int, ...]) -> None:
    """Raise InputError when a foreground and its alpha differ in size."""
    if tuple(fg_hw) != tuple(alpha_hw):
        raise InputError(
            f"Foreground {fg} is {fg_hw[1]}x{fg_hw[0]} but its alpha {alpha} is {alpha_hw[1]}x{alpha_hw[0]} "
            "(width x height); they must match pixel for pixel."
        )


class _HFPairs:
    """Rows of a ``datasets.Dataset`` seen as a sequence of ``(fg, alpha)`` image-likes."""

    def __init__(self, ds: Any, fg_column: str, alpha_column: str) -> None:
        self._ds = ds.select_columns([fg_column, alpha_column])
        self._fg, self._alpha = fg_column, alpha_column

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> tuple[ImageLike, ImageLike]:
        row = self._ds[int(index)]
        return row[self._fg], row[self._alpha]


class _HFColumn:
    """One image column of a ``datasets.Dataset`` seen as a sequence of image-likes."""

    def __init__(self, ds: Any, column: str) -> None:
        self._ds = ds.select_columns([column])
        self._column = column

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> ImageLike:
        return self._ds[int(index)][self._column]


def _require_columns(ds: Any, columns: Sequence[str], what: str) -> None:
    """Raise InputError naming the missing columns of a ``datasets.Dataset``."""
    names = getattr(ds, "column_names", None)
    if names is None:
        raise InputError(f"The {what} must be a datasets.Dataset, got {type(ds).__name__}.")
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputError(f"The {what} has no column(s) {missing}; its columns are {names}.")


# ---------------------------------------------------------------- augmentation


def affine_matrix(angle_deg: float, scale: float, shear_deg: float, flip: bool) -> np.ndarray:
    """Forward 2x2 matrix (x, y offsets from the image centre) = rotation @ shear @ diag(+-scale, scale)."""
    t = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    shear = np.array([[1.0, np.tan(np.deg2rad(shear_deg))], [0.0, 1.0]])
    return rotation @ shear @ np.diag([-scale if flip else scale, scale])


def warp_affine(fg: np.ndarray, alpha: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``matrix`` about the image centre to ``(H, W, 3)`` uint8 fg and ``(H, W)`` float alpha.

    Bilinear resampling; the output keeps the input size and is 0 (transparent) where nothing maps.
    """
    h, w = alpha.shape
    inv = np.linalg.inv(matrix)
    cx, cy = w / 2.0, h / 2.0
    # PIL wants the inverse map, output (x, y) -> input, in continuous coordinates (pixel centres at
    # +0.5), so the centre (w/2, h/2) is exact for both even and odd sizes.
    data = (
        inv[0, 0], inv[0, 1], cx - inv[0, 0] * cx - inv[0, 1] * cy,
        inv[1, 0], inv[1, 1], cy - inv[1, 0] * cx - inv[1, 1] * cy,
    )  # fmt: skip
    method, resample = Image.Transform.AFFINE, Image.Resampling.BILINEAR
    fg_out = Image.fromarray(fg).transform((w, h), method, data, resample=resample)
    alpha_out = Image.fromarray(alpha.astype(np.float32)).transform((w, h), method, data, resample=resample)
    return np.asarray(fg_out), np.asarray(alpha_out, dtype=np.float32)


def random_affine(fg: np.ndarray, alpha: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation (+-30 deg), scale (0.8-1.25), shear (+-10 deg) and flip (p=0.5) of fg + alpha."""
    matrix = affine_matrix(
        angle_deg=rng.uniform(-30.0, 30.0),
        scale=rng.uniform(0.8, 1.25),
        shear_deg=rng.uniform(-10.0, 10.0),
        flip=bool(rng.random() < 0.5),
    )
    return warp_affine(fg, alpha, matrix)


def color_jitter(fg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Modest HSV jitter of ``(H, W, 3)`` uint8: hue +-5% of the wheel, saturation/value x0.7-1.3."""
    hsv = np.asarray(Image.fromarray(fg).convert("HSV"), dtype=np.float32).copy()
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-0.05, 0.05) * 256.0) % 256.0  # PIL's hue wheel is 0..255
    hsv[..., 1] *= rng.uniform(0.7, 1.3)
    hsv[..., 2] *= rng.uniform(0.7, 1.3)
    hsv = np.clip(np.rint(hsv), 0, 255).astype(np.uint8)
    channels = [Image.fromarray(np.ascontiguousarray(hsv[..., c])) for c in range(3)]
    return np.asarray(Image.merge("HSV", channels).convert("RGB"))


def _resize_to_cover(fg: np.ndarray, alpha: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Upscale fg ``(H, W, 3)`` and alpha ``(H, W)`` so that both sides are >= ``size``."""
    h, w = alpha.shape
    if min(h, w) >= size:
        return fg, alpha
    factor = size / min(h, w)
    new = (max(size, round(w * factor)), max(size, round(h * factor)))  # PIL order: (W, H)
    fg = np.asarray(Image.fromarray(fg).resize(new, Image.Resampling.BILINEAR))
    alpha = np.asarray(Image.fromarray(alpha).resize(new, Image.Resampling.BILINEAR), dtype=np.float32)
    return fg, alpha


def _snap_alpha(alpha: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and snap values within ``ALPHA_SNAP`` of 0 or 1 onto them."""
    alpha = np.clip(alpha, 0.0, 1.0)
    return np.where(alpha < ALPHA_SNAP, 0.0, np.where(alpha > 1.0 - ALPHA_SNAP, 1.0, alpha)).astype(np.float32)


# ---------------------------------------------------------------- trimap and crop


def _distance_to(region: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest True pixel of ``region`` (inf if none)."""
    if not region.any():
        return np.full(region.shape, np.inf)
    return ndimage.distance_transform_edt(~region)


def make_trimap(alpha: np.ndarray, k_dilate: int, k_erode: int) -> np.ndarray:
    """Trimap from an alpha matte: ``unknown = dilate(alpha > 0, k_dilate) - erode(alpha == 1, k_erode)``.

    Dilation / erosion use Euclidean discs of the given radii (via distance transforms), so every
    pixel with ``0 < alpha < 1`` is always unknown.

    Args:
        alpha: ``(H, W)`` float in [0, 1].
        k_dilate, k_erode: radii in pixels (>= 1).

    Returns:
        ``(H, W)`` uint8: 0 background, 128 unknown, 255 foreground.
    """
    background = _distance_to(alpha > 0) > k_dilate  # outside the dilated object
    foreground = _distance_to(alpha < 1) > k_erode  # inside the eroded solid core
    trimap = np.full(alpha.shape, TRIMAP_UNKNOWN, dtype=np.uint8)
    trimap[background] = 0
    trimap[foreground] = 255
    return trimap


def _transition_pixels(alpha: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: soft pixels plus solid pixels touching a non-solid 4-neighbour.

    Both kinds are unknown in ``make_trimap`` for any radii >= 1 (a solid pixel next to a non-solid
    one is at distance 1 <= k_erode from it), so a crop centred on one always shows unknown pixels.
    """
    solid = alpha >= 1.0
    edge = solid & ~ndimage.binary_erosion(solid, border_value=1)
    return ((alpha > 0) & ~solid) | edge


def choose_crop(candidates: np.ndarray, size: int, rng: np.random.Generator) -> tuple[int, int, tuple[int, int] | None]:
    """Top-left corner of a ``size`` square crop centred on a random True pixel of ``candidates``.

    The window is shifted back inside the image when the pixel is near a border (so it is then not
    exactly central, but always inside the crop); with no candidates the crop is uniform at random.

    Args:
        candidates: ``(H, W)`` bool with ``H, W >= size``.

    Returns:
        ``(top, left, center)``, ``center`` being the chosen pixel's ``(row, col)`` inside the crop,
        or None for a random crop.
    """
    h, w = candidates.shape
    flat = np.flatnonzero(candidates)
    if flat.size == 0:
        return int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1)), None
    row, col = divmod(int(flat[rng.integers(flat.size)]), w)
    top = min(max(row - size // 2, 0), h - size)
    left = min(max(col - size // 2, 0), w - size)
    return top, left, (row - top, col - left)


def _trimap_crop(alpha: np.ndarray, top: int, left: int, size: int, k_dilate: int, k_erode: int) -> np.ndarray:
    """``make_trimap(alpha, ...)`` restricted to the crop, computed on the crop plus a margin only.

    Distances above the radii do not matter, and any pixel within ``max(k) + 1`` of the crop lies in
    the margin, so the result equals cropping the full-image trimap at a fraction of the cost.
    """
    margin = max(k_dilate, k_erode) + 1
    h, w = alpha.shape
    y0, x0 = max(top - margin, 0), max(left - margin, 0)
    y1, x1 = min(top + size + margin, h), min(left + size + margin, w)
    window = make_trimap(alpha[y0:y1, x0:x1], k_dilate, k_erode)
    return window[top - y0 : top - y0 + size, left - x0 : left - x0 + size]


def _background_crop(bg: np.ndarray, full_hw: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
    """The ``size`` crop at (top, left) of ``bg`` stretched to ``full_hw``, resampling only that window.

    Args:
        bg: ``(h, w, 3)`` uint8 of any size.
        full_hw: ``(H, W)`` of the (augmented, resized) foreground.

    Returns:
        ``(size, size, 3)`` uint8.
    """
    sy, sx = bg.shape[0] / full_hw[0], bg.shape[1] / full_hw[1]
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return np.asarray(Image.fromarray(bg).resize((size, size), Image.Resampling.BILINEAR, box=box))


def alpha_blend(fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``round(fg * alpha + bg * (1 - alpha))``: ``(H, W, 3)`` uint8 fg/bg, ``(H, W)`` alpha -> uint8."""
    a = alpha[..., None].astype(np.float32)
    mixed = fg.astype(np.float32) * a + bg.astype(np.float32) * (1.0 - a)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def to_model_inputs(
    image: np.ndarray,
    alpha: np.ndarray,
    trimap: np.ndarray,
    image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> dict[str, torch.Tensor]:
    """Model inputs made by the image processor used at inference (`MEMatteImageProcessor`), unpadded: training
    crops are multiples of 32, which upstream's rule leaves as they are.

    Args:
        image: ``(S, S, 3)`` uint8 RGB; alpha: ``(S, S)`` float in [0, 1]; trimap: ``(S, S)`` uint8.

    Returns:
        ``pixel_values`` ``(4, S, S)`` float32 = ((RGB/255 - mean) / std, trimap/255);
        ``labels`` ``(1, S, S)`` float32 alpha; ``trimap`` ``(1, S, S)`` float32 trimap/255.
    """
    processor = _image_processor(tuple(image_mean), tuple(image_std))
    pixel_values = processor(images=image, trimaps=trimap, do_pad=False, return_tensors="pt")["pixel_values"][0]
    return {
        "pixel_values": pixel_values,
        "labels": torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32)).unsqueeze(0),
        "trimap": pixel_values[3:].clone(),
    }


@functools.lru_cache(maxsize=4)
def _image_processor(image_mean: tuple[float, ...], image_std: tuple[float, ...]):
    from .image_processing_mematte import MEMatteImageProcessor

    return MEMatteImageProcessor(image_mean=list(image_mean), image_std=list(image_std))


# ---------------------------------------------------------------- dataset


class MattingTrainDataset(Dataset):
    """On-the-fly DIM-style composites; see the module docstring for the recipe.

    Build it from folders (``root/fg``, ``root/alpha`` paired by file stem, ``root/bg`` any images;
    each folder can also be given on its own) or with ``MattingTrainDataset.from_hf_dataset``.
    Items are dicts with ``pixel_values`` ``(4, S, S)``, ``labels`` ``(1, S, S)`` and ``trimap``
    ``(1, S, S)``; batch them with ``collate_matting``.

    Call ``set_epoch(e)`` at every epoch so the augmentation changes between epochs; item ``i`` of
    epoch ``e`` is a pure function of ``(seed, e, i)``. With DataLoader workers, set the epoch before
    the loader is iterated (non-persistent workers copy the dataset at each epoch start).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        fg_dir: str | Path | None = None,
        alpha_dir: str | Path | None = None,
        bg_dir: str | Path | None = None,
        crop_size: int = 512,
        seed: int = 0,
        augment: bool = True,
        samples_per_epoch: int | None = None,
        trimap_kernel_range: tuple[int, int] = (1, 30),
        image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        """
        Args:
            root: folder holding ``fg/``, ``alpha/`` and ``bg/``; any of them may be overridden by
                ``fg_dir`` / ``alpha_dir`` / ``bg_dir`` (e.g. COCO backgrounds elsewhere).
            crop_size: side ``S`` of the square training crop (a multiple of 32 suits the model).
            seed: base of every item's random stream.
            augment: False turns off the affine, colour jitter and flip (crop, trimap and background
                stay random).
            samples_per_epoch: dataset length; item ``i`` uses foreground ``i % num_foregrounds``
                (DIM composes each foreground with many backgrounds). Default: one per foreground.
            trimap_kernel_range: inclusive range of the dilation / erosion radii, in pixels.
            image_mean, image_std: RGB normalisation; must match the processor used at inference.
        """
        dirs = {"fg": fg_dir, "alpha": alpha_dir, "bg": bg_dir}
        for name, given in dirs.items():
            if given is None:
                if root is None:
                    raise InputError(f"Give `root` (holding fg/, alpha/, bg/) or `{name}_dir`.")
                dirs[name] = Path(root) / name
        pairs = _pair_folders(Path(dirs["fg"]), Path(dirs["alpha"]))
        backgrounds = list(_list_images(Path(dirs["bg"]), "background").values())
        self._configure(
            pairs,
            backgrounds,
            crop_size=crop_size,
            seed=seed,
            augment=augment,
            samples_per_epoch=samples_per_epoch,
            trimap_kernel_range=trimap_kernel_range,
            image_mean=image_mean,
            image_std=image_std,
        )

    @classmethod
    def from_hf_dataset(
        cls,
        ds: Any,
        fg_column: str = "foreground",
        alpha_column: str = "alpha",
        backgrounds: Any = None,
        background_column: str = "image",
        **options: Any,
    ) -> MattingTrainDataset:
        """Build from a ``datasets.Dataset`` of foreground/alpha pairs.

        Args:
            ds: dataset with image columns ``fg_column`` and ``alpha_column`` (decoded PIL images,
                undecoded dicts, paths or arrays all work).
            backgrounds: a ``datasets.Dataset`` (its ``background_column`` is used), a list of
                image-likes, or a folder of images. None: use ``ds[background_column]`` when ``ds``
                has that column, i.e. backgrounds stored alongside the foregrounds (every row's
                background is in the shared random pool).
            background_column: column holding background images (see ``backgrounds``).
            **options: the keyword options of ``__init__`` (``crop_size``, ``seed``, ...).
        """
        _require_columns(ds, [fg_column, alpha_column], "foreground dataset")
        if len(ds) == 0:
            raise InputError("The foreground dataset is empty.")
        pool: Sequence[ImageLike]
        if backgrounds is None:
            if background_column not in ds.column_names:
                raise InputError(
                    f"No backgrounds: pass `backgrounds` (a datasets.Dataset, a list of images or a folder) "
                    f"or give the foreground dataset a {background_column!r} column."
                )
            pool = _HFColumn(ds, background_column)
        elif isinstance(backgrounds, str | Path):
            pool = list(_list_images(Path(backgrounds), "background").values())
        elif hasattr(backgrounds, "column_names"):
            _require_columns(backgrounds, [background_column], "background dataset")
            pool = _HFColumn(backgrounds, background_column)
        else:
            pool = list(backgrounds)
        obj = cls.__new__(cls)
        obj._configure(_HFPairs(ds, fg_column, alpha_column), pool, **options)
        return obj

    def _configure(
        self,
        pairs: Sequence[tuple[ImageLike, ImageLike]],
        backgrounds: Sequence[ImageLike],
        *,
        crop_size: int = 512,
        seed: int = 0,
        augment: bool = True,
        samples_per_epoch: int | None = None,
        trimap_kernel_range: tuple[int, int] = (1, 30),
        image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        """Validate the options and store the sources (shared by both constructors)."""
        if len(backgrounds) == 0:
            raise InputError("No background images were given.")
        if int(crop_size) < 1:
            raise InputError(f"crop_size must be a positive number of pixels, got {crop_size}.")
        if int(seed) < 0:
            raise InputError(f"seed must be >= 0, got {seed}.")
        lo, hi = (int(k) for k in trimap_kernel_range)
        if not 1 <= lo <= hi:
            raise InputError(f"trimap_kernel_range must satisfy 1 <= low <= high, got {trimap_kernel_range}.")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise InputError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}.")
        if len(image_mean) != 3 or len(image_std) != 3:
            raise InputError("image_mean and image_std need one value per RGB channel.")
        self._pairs, self._backgrounds = pairs, backgrounds
        self.crop_size, self.seed, self.augment = int(crop_size), int(seed), bool(augment)
        self.samples_per_epoch = samples_per_epoch
        self.trimap_kernel_range = (lo, hi)
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.epoch = 0

    @property
    def num_foregrounds(self) -> int:
        return len(self._pairs)

    @property
    def num_backgrounds(self) -> int:
        return len(self._backgrounds)

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of ``epoch`` (items are a function of seed, epoch, index)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch or len(self._pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.composite(index)
        return to_model_inputs(sample.image, sample.alpha, sample.trimap, self.image_mean, self.image_std)

    def _load_pair(self, fg_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Foreground ``(H, W, 3)`` uint8 and alpha ``(H, W)`` float32 of pair ``fg_index``."""
        fg_obj, alpha_obj = self._pairs[fg_index]
        fg, alpha = load_rgb(fg_obj), load_alpha(alpha_obj)
        _check_same_size(f"#{fg_index}", f"#{fg_index}", fg.shape[:2], alpha.shape)
        return fg, alpha

    def composite(self, index: int, epoch: int | None = None) -> CompositeSample:
        """The composited crop behind item ``index`` (of ``epoch``, default the current one)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else int(epoch), int(index)])
        fg_index = index % len(self._pairs)
        fg, alpha = self._load_pair(fg_index)
        if self.augment:
            fg, alpha = random_affine(fg, alpha, rng)
            fg = color_jitter(fg, rng)
            if rng.random() < 0.5:
                fg, alpha = fg[:, ::-1], alpha[:, ::-1]
        fg, alpha = _resize_to_cover(np.ascontiguousarray(fg), np.ascontiguousarray(alpha), self.crop_size)
        alpha = _snap_alpha(alpha)
        size = self.crop_size
        top, left, center = choose_crop(_transition_pixels(alpha), size, rng)
        k_dilate, k_erode = (
            int(k) for k in rng.integers(self.trimap_kernel_range[0], self.trimap_kernel_range[1] + 1, 2)
        )
        trimap = _trimap_crop(alpha, top, left, size, k_dilate, k_erode)
        bg_index = int(rng.integers(len(self._backgrounds)))
        bg = _background_crop(load_rgb(self._backgrounds[bg_index]), alpha.shape, top, left, size)
        fg, alpha = fg[top : top + size, left : left + size], alpha[top : top + size, left : left + size]
        return CompositeSample(alpha_blend(fg, bg, alpha), alpha, trimap, center, fg_index, bg_index)


def collate_matting(batch: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a list of dataset items into a batch (usable as a ``transformers.Trainer`` data_collator).

    Args:
        batch: items with the same keys, e.g. ``pixel_values`` ``(4, S, S)``, ``labels`` ``(1, S, S)``.

    Returns:
        Dict of ``(B, ...)`` tensors.
    """
    if not batch:
        raise InputError("collate_matting got an empty batch.")
    keys = list(batch[0])
    for item in batch[1:]:
        if list(item) != keys:
            raise InputError(f"collate_matting: items have different keys ({keys} vs {list(item)}).")
    out = {}
    for key in keys:
        shapes = {tuple(item[key].shape) for item in batch}
        if len(shapes) > 1:
            raise InputError(
                f"collate_matting: {key!r} has different shapes in one batch {sorted(shapes)}; "
                "use one crop_size for the whole dataset."
            )
        out[key] = torch.stack([item[key] for item in batch])
    return out


# ---------------------------------------------------------------- synthetic data


def _smooth_noise(rng: np.random.Generator, hw: tuple[int, int], sigma: float) -> np.ndarray:
    """``(H, W, 3)`` float in [0, 1]: Gaussian-blurred noise plus a random colour gradient."""
    noise = ndimage.gaussian_filter(rng.random((*hw, 3)), sigma=(sigma, sigma, 0))
    noise = (noise - noise.min()) / max(float(noise.max() - noise.min()), 1e-6)
    y, x = np.mgrid[: hw[0], : hw[1]] / np.array(hw).reshape(2, 1, 1)
    gradient = rng.random(3) * y[..., None] + rng.random(3) * x[..., None]
    return np.clip(0.5 * noise + 0.5 * gradient / 2.0 + 0.25 * rng.random(3), 0.0, 1.0)


def _synthetic_alpha(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` uint8: a soft-edged ellipse with a few semi-transparent 'hairs' sticking out."""
    h, w = hw
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.12, 0.25) * h, rng.uniform(0.12, 0.25) * w
    y, x = np.mgrid[:h, :w]
    # Approximate signed distance (pixels) to the ellipse boundary, negative inside.
    dist = (np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2) - 1.0) * min(ry, rx)
    alpha = np.clip(0.5 - dist / rng.uniform(2.0, 6.0), 0.0, 1.0)
    hair = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(hair)
    for angle in rng.uniform(0.0, 2 * np.pi, int(rng.integers(4, 9))):
        start = (cx + rx * np.cos(angle), cy + ry * np.sin(angle))
        length = rng.uniform(6.0, 16.0)
        end = (start[0] + length * np.cos(angle), start[1] + length * np.sin(angle))
        draw.line([start, end], fill=int(rng.integers(70, 200)), width=1)
    alpha = np.maximum(alpha, np.asarray(hair, dtype=np.float64) / 255.0)
    return np.rint(alpha * 255.0).astype(np.uint8)


def make_synthetic_matting_folder(
    root: str | Path, num_samples: int = 8, size: tuple[int, int] = (96, 128), seed: int = 0
) -> Path:
    """Write a tiny DIM-style dataset of synthetic shapes, for tests and training smoke runs.

    Layout: ``root/fg/NNNN.png`` (RGB, smooth random colours), ``root/alpha/NNNN.png`` (8-bit grey:
    a soft-edged ellipse, 2-6 px ramp, with 4-8 thin semi-transparent hairs, placed well inside the
    frame so there is solid background around it) and ``root/bg/NNNN.jpg`` (textured backgrounds of
    varied sizes). Deterministic for a given ``seed``.

    Args:
        root: target folder (created if needed; existing files with the same names are overwritten).
        num_samples: number of fg/alpha pairs, and of backgrounds.
        size: ``(height, width)`` of the foregrounds.

    Returns:
        ``Path(root)``, ready for ``MattingTrainDataset(root)``.
    """
    if num_samples < 1 or min(size) < 16:
        raise InputError("make_synthetic_matting_folder needs num_samples >= 1 and a size of at least 16x16.")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for sub in ("fg", "alpha", "bg"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(num_samples):
        fg = _smooth_noise(rng, size, sigma=4.0)
        Image.fromarray(np.rint(fg * 255).astype(np.uint8)).save(root / "fg" / f"{i:04d}.png")
        Image.fromarray(_synthetic_alpha(rng, size)).save(root / "alpha" / f"{i:04d}.png")
        bg_hw = (int(size[0] * rng.uniform(0.75, 1.5)), int(size[1] * rng.uniform(0.75, 1.5)))
        bg = _smooth_noise(rng, bg_hw, sigma=2.0)
        Image.fromarray(np.rint(bg * 255).astype(np.uint8)).save(root / "bg" / f"{i:04d}.jpg", quality=90)
    return root
