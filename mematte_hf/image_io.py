"""Reading images and trimaps the way real files come, and writing results atomically.

Everything here turns "whatever the user has" into the two arrays the matting predictor needs, an
(H, W, 3) uint8 RGB image and an (H, W) uint8 trimap with the values {0, 128, 255}, and raises
:class:`~mematte_hf.errors.InputError` with a plain message for anything it cannot use, instead of
letting a traceback from deep inside Pillow or numpy reach the user.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import struct
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TypeAlias

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

#: Largest image, in pixels, read without an explicit ``max_pixels``: 80 megapixels. That is a little
#: above an 8K x 8K square (67 MP) and far above any photo a camera takes, yet low enough that an
#: image claiming a huge size in its header (a "decompression bomb") is refused before it is decoded.
DEFAULT_MAX_PIXELS = 80_000_000

#: File suffixes that :func:`list_images` picks up (compared in lower case).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})

# Trimap grey levels, read the way the upstream MEMatte / ViTMatte training code reads them.
TRIMAP_BACKGROUND, TRIMAP_UNKNOWN, TRIMAP_FOREGROUND = 0, 128, 255
_TRIMAP_LOW, _TRIMAP_HIGH = 85, 170

# Float data may overshoot [0, 1] by rounding noise (after a resize, say); more than this is an error.
_FLOAT_TOLERANCE = 1e-3

_SUPPORTED_KINDS = "supported kinds are PNG, JPEG, WebP, BMP, TIFF and the other formats Pillow reads"

#: What the readers accept: a file path, a PIL image or a numpy array.
ImageSource: TypeAlias = str | os.PathLike[str] | Image.Image | np.ndarray

# Serialises our temporary changes to PIL's global Image.MAX_IMAGE_PIXELS, so that two of our own
# threads never save each other's temporary value as "the original" and leave it changed for good.
_PIL_LIMIT_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------------
# Public readers


def load_image(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image as an (H, W, 3) uint8 RGB array.

    ``source`` is a file path, a PIL image or a numpy array of shape (H, W), (H, W, 1), (H, W, 3) or
    (H, W, 4) with dtype uint8, uint16 (0..65535) or float (0..1). Files and PIL images are turned
    upright from their EXIF orientation, as every photo viewer shows them. Grey, bilevel, palette,
    16-bit, 32-bit integer ("I", taken as 0..65535 since it comes from 16-bit files), float ("F",
    0..1) and CMYK images are converted to RGB; 16-bit values are scaled to 8 bits with rounding.
    An alpha channel (RGBA, LA, palette transparency) is dropped: the matting network reads RGB
    only, and the matte it predicts is what replaces the alpha. Multi-frame files give their first
    frame.

    ``max_pixels`` refuses larger images before their pixels are decoded (``None``: no limit).

    Raises:
        InputError: the source is missing, not an image, too large, or of an unsupported kind.
    """
    _check_max_pixels(max_pixels)
    rgb = _channels_to_rgb(_to_uint8(_read_array(source, max_pixels, "image"), "image"))
    if isinstance(source, np.ndarray) and np.may_share_memory(rgb, source):
        rgb = rgb.copy()  # the caller's array must not change when they edit the result
    return np.require(rgb, requirements=["C", "W"])  # Pillow's buffers are read-only


def load_image_float(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Like :func:`load_image`, but as (H, W, 3) float32 in [0, 1].

    A float array keeps its precision (values are checked to lie in [0, 1] and clipped for
    rounding noise); any other source is read by :func:`load_image` and divided by 255.
    """
    if isinstance(source, np.ndarray) and np.issubdtype(source.dtype, np.floating):
        _check_max_pixels(max_pixels)
        array = _check_array(source, "image")
        _check_pixel_limit(array.shape[1], array.shape[0], max_pixels, "image", "array")
        _check_unit_range(array, "image")
        rgb = np.clip(_channels_to_rgb(array), 0.0, 1.0)  # np.clip returns a new array
        return np.require(rgb.astype(np.float32, copy=False), requirements=["C"])
    return load_image(source, max_pixels).astype(np.float32) / np.float32(255)


def load_trimap(
    source: ImageSource,
    expected_size: tuple[int, int] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read a trimap as an (H, W) uint8 array holding only 0 (background), 128 (unknown), 255 (foreground).

    Grey levels below 85 become background, 170 and above foreground, and everything between
    unknown, as the upstream training code reads trimaps. ``source`` is a path, a PIL image of any
    mode (colour is reduced to grey by luma, 16-bit is scaled to 8 bits first) or a numpy array
    (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) of uint8, uint16 (0..65535) or float (0..1).
    EXIF orientation is applied as for :func:`load_image`.

    ``expected_size`` is the image's (H, W); a trimap of another size is refused.

    Raises:
        InputError: unreadable source, too large, or not of ``expected_size``.
    """
    _check_max_pixels(max_pixels)
    grey = _channels_to_grey(_to_uint8(_read_array(source, max_pixels, "trimap"), "trimap"))
    if expected_size is not None and grey.shape != tuple(expected_size):
        height, width = grey.shape
        raise InputError(
            f"trimap is {width} x {height} but the image is {expected_size[1]} x {expected_size[0]}; "
            "the trimap must have the image's size (resize it with nearest-neighbour interpolation "
            "so that its three grey levels stay intact)"
        )
    trimap = np.full(grey.shape, TRIMAP_UNKNOWN, dtype=np.uint8)
    trimap[grey < _TRIMAP_LOW] = TRIMAP_BACKGROUND
    trimap[grey >= _TRIMAP_HIGH] = TRIMAP_FOREGROUND
    return trimap


def has_unknown_region(trimap: np.ndarray) -> bool:
    """Whether a trimap array has any unknown pixel: grey level 85..169 (128 after :func:`load_trimap`).

    Any array :func:`load_trimap` accepts will do (uint16 and float are scaled first). A trimap
    without an unknown pixel leaves nothing for the matting network to decide.
    """
    grey = _channels_to_grey(_to_uint8(_check_array(np.asarray(trimap), "trimap"), "trimap"))
    return bool(np.any((grey >= _TRIMAP_LOW) & (grey < _TRIMAP_HIGH)))


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name.

    Suffixes are those of :data:`IMAGE_SUFFIXES`, in any case; hidden files (names starting with a
    dot, such as macOS ``._photo.jpg`` side files) and sub-folders are skipped.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"'{folder}' is not a folder; pass the folder that holds the images")
    return sorted(
        path
        for path in folder.iterdir()
        if not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )


# --------------------------------------------------------------------------------------------------
# Public converters and writers


def alpha_to_float(alpha: np.ndarray) -> np.ndarray:
    """An (H, W) alpha matte (float in [0, 1], uint8 or bool) as float32 in [0, 1]; floats are clipped."""
    return _unit_alpha(alpha).astype(np.float32)


def alpha_to_uint8(alpha: np.ndarray) -> np.ndarray:
    """An alpha matte (float in [0, 1], uint8 or bool) as uint8 0..255: ``round(alpha * 255)``."""
    return np.rint(_unit_alpha(alpha) * 255).astype(np.uint8)


def alpha_to_uint16(alpha: np.ndarray) -> np.ndarray:
    """An alpha matte (float in [0, 1], uint8 or bool) as uint16 0..65535: ``round(alpha * 65535)``."""
    return np.rint(_unit_alpha(alpha) * 65535).astype(np.uint16)


def save_alpha_png(path: str | os.PathLike[str], alpha: np.ndarray, bits: int = 8) -> Path:
    """Write an (H, W) alpha matte as a greyscale PNG of 8 or 16 bits, atomically; return the path.

    16 bits keep the network's float precision for compositing tools that read it (PNG mode I;16).
    """
    if bits == 8:
        image = Image.fromarray(alpha_to_uint8(alpha))
    elif bits == 16:
        image = Image.fromarray(alpha_to_uint16(alpha))  # uint16 arrays become mode "I;16"
    else:
        raise InputError(f"bits={bits!r} is not supported; alpha PNGs are written with bits=8 or bits=16")
    return _atomic_save(path, image, "PNG")


def save_rgba_png(path: str | os.PathLike[str], rgba: np.ndarray) -> Path:
    """Write an (H, W, 4) RGBA array (uint8, or float in [0, 1]) as a PNG, atomically; return the path."""
    rgba = _to_uint8(_check_channels(np.asarray(rgba), 4, "RGBA array"), "RGBA array")
    return _atomic_save(path, Image.fromarray(rgba), "PNG")


def save_rgb_image(path: str | os.PathLike[str], rgb: np.ndarray, quality: int = 95) -> Path:
    """Write an (H, W, 3) RGB array (uint8, or float in [0, 1]) as PNG or JPEG by the path's suffix.

    The file is written atomically; ``quality`` applies to JPEG only. Returns the path.
    """
    suffix = Path(path).suffix.lower()
    formats = {
        ".png": ("PNG", {}),
        ".jpg": ("JPEG", {"quality": quality}),
        ".jpeg": ("JPEG", {"quality": quality}),
    }
    if suffix not in formats:
        raise InputError(f"cannot tell how to write '{path}'; give it a .png, .jpg or .jpeg suffix")
    rgb = _to_uint8(_check_channels(np.asarray(rgb), 3, "RGB array"), "RGB array")
    image_format, params = formats[suffix]
    return _atomic_save(path, Image.fromarray(rgb), image_format, **params)


# --------------------------------------------------------------------------------------------------
# Reading: source -> array in its own dtype


def _read_array(source: ImageSource, max_pixels: int | None, what: str) -> np.ndarray:
    """Any supported source as an array of its natural dtype: uint8, uint16, float or bool."""
    if isinstance(source, np.ndarray):
        array = _check_array(source, what)
        _check_pixel_limit(array.shape[1], array.shape[0], max_pixels, what, "array")
        return array
    if isinstance(source, Image.Image):
        _check_pixel_limit(source.width, source.height, max_pixels, what, "PIL image")
        _load_pixels(source, "the PIL image", what)
        return _pil_to_array(_upright(source, "the PIL image"), what)
    if isinstance(source, (str, os.PathLike)):
        return _pil_to_array(_open_file(Path(source).expanduser(), max_pixels, what), what)
    raise InputError(
        f"cannot read {_article(what)} from a {type(source).__name__}; pass a file path, a PIL image or a numpy array"
    )


def _open_file(path: Path, max_pixels: int | None, what: str) -> Image.Image:
    """Open, size-check, decode and turn upright one image file."""
    if not path.exists():
        raise InputError(f"{what} file '{path}' does not exist; check the path")
    if path.is_dir():
        raise InputError(f"'{path}' is a folder, not {_article(what)} file")
    try:
        # Image.open only parses the header. PIL's own bomb check runs inside it and would answer
        # before ours (with a raw DecompressionBombError, or a warning), so it is off just for the
        # header read; our limit, checked next, is the one that decides.
        with _without_pil_pixel_limit(None):
            image = Image.open(path)
    except UnidentifiedImageError as exc:
        reason = "the file is empty" if path.stat().st_size == 0 else "its format is not recognised"
        raise InputError(_unreadable(path, what, reason)) from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise InputError(_unreadable(path, what, str(exc))) from exc
    with image:
        _check_pixel_limit(image.width, image.height, max_pixels, what, f"'{path}'")
        _load_pixels(image, f"'{path}'", what)
        return _upright(image, f"'{path}'")  # a copy, so closing the file here is safe


def _load_pixels(image: Image.Image, name: str, what: str) -> None:
    """Decode a lazily opened image, turning Pillow's decoding errors into InputError."""
    try:
        # Some decoders (TIFF tiles, GIF frames) repeat PIL's bomb check while decoding.
        with _without_pil_pixel_limit(image.width * image.height):
            image.load()
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"{what} {name} has parts larger than Pillow's decompression-bomb limit ({exc}); it may be a malicious file"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise InputError(_unreadable(name, what, str(exc))) from exc


@contextlib.contextmanager
def _without_pil_pixel_limit(pixels: int | None) -> Iterator[None]:
    """Switch off PIL's global decompression-bomb check while PIL handles an image of ``pixels`` pixels.

    ``pixels=None`` means "not known yet" (header parsing). The check is only switched off when it
    would fire, and always put back on exit, so a user's own ``Image.MAX_IMAGE_PIXELS`` setting is
    never changed for good. Our ``max_pixels`` limit replaces it for our reads. Other threads of the
    same program that open images during that short window run without PIL's check; that is the
    price of PIL offering no per-call limit.
    """
    with _PIL_LIMIT_LOCK:
        limit = Image.MAX_IMAGE_PIXELS
    if limit is None or (pixels is not None and pixels <= limit):
        yield
        return
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _upright(image: Image.Image, name: str) -> Image.Image:
    """A copy of ``image`` turned as its EXIF orientation says; unreadable EXIF is ignored with a warning."""
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error) as exc:
        warnings.warn(f"ignoring the unreadable EXIF orientation of {name}: {exc}", stacklevel=4)
        return image.copy()


def _pil_to_array(image: Image.Image, what: str) -> np.ndarray:
    """Pixels of a decoded PIL image without losing precision: uint8, uint16 or float32."""
    mode = image.mode
    if mode in ("L", "RGB", "RGBA"):
        return np.asarray(image)
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode in ("LA", "La"):
        return np.asarray(image.convert("LA"))[..., 0]
    if mode in ("P", "PA"):
        # Via RGBA so that palette transparency is resolved by Pillow without its warning; the alpha
        # channel is dropped later with the others.
        return np.asarray(image.convert("RGBA"))
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)  # native byte order whatever the file's
    if mode == "I":
        return np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
    if mode == "F":
        return np.asarray(image, dtype=np.float32)
    try:
        return np.asarray(image.convert("RGB"))  # CMYK, YCbCr, HSV, RGBX, RGBa, ...
    except (ValueError, OSError) as exc:
        raise InputError(f"{what} mode {mode!r} cannot be converted to RGB; save it as an RGB image") from exc


def _article(what: str) -> str:
    return f"an {what}" if what[0] in "aeiou" else f"a {what}"


def _unreadable(name: str | Path, what: str, reason: str) -> str:
    label = f"'{name}'" if isinstance(name, Path) else name
    return f"{label} is not a readable {what} ({reason}); {_SUPPORTED_KINDS}"


# --------------------------------------------------------------------------------------------------
# Checks


def _check_max_pixels(max_pixels: int | None) -> None:
    if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels <= 0):
        raise InputError(f"max_pixels must be a positive whole number or None, not {max_pixels!r}")


def _check_pixel_limit(width: int, height: int, max_pixels: int | None, what: str, name: str) -> None:
    pixels = width * height
    if max_pixels is not None and pixels > max_pixels:
        raise InputError(
            f"{what} {name} is {width} x {height} = {pixels / 1e6:.1f} megapixels, above the limit of "
            f"{max_pixels / 1e6:.1f} megapixels; pass max_pixels={pixels} (or max_pixels=None for no "
            f"limit) to raise it, or downscale the {what} first"
        )


def _check_array(array: np.ndarray, what: str) -> np.ndarray:
    """Refuse arrays whose shape or dtype has no image meaning."""
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
        raise InputError(f"{what} array has shape {array.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{what} array has shape {array.shape}, which holds no pixels")
    if not (array.dtype in (np.uint8, np.uint16, np.bool_) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"{what} array has dtype {array.dtype}; use uint8 (0..255), uint16 (0..65535) or float (0..1)")
    return array


def _check_channels(array: np.ndarray, channels: int, what: str) -> np.ndarray:
    if array.ndim != 3 or array.shape[2] != channels or 0 in array.shape:
        raise InputError(f"{what} has shape {array.shape}; expected (H, W, {channels})")
    return _check_array(array, what)


def _check_unit_range(array: np.ndarray, what: str) -> None:
    low, high = float(np.min(array)), float(np.max(array))
    if not (low >= -_FLOAT_TOLERANCE and high <= 1 + _FLOAT_TOLERANCE):  # written so NaN fails too
        raise InputError(
            f"float {what} values must lie in [0, 1] but range from {low:g} to {high:g}; "
            "divide 0..255 data by 255, or pass uint8"
        )


# --------------------------------------------------------------------------------------------------
# Conversions


def _to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    """Scale uint8 / uint16 / float (0..1) / bool data to uint8, rounding to nearest."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        # round(v * 255 / 65535) == round(v / 257) == (v + 128) // 257 for every integer v.
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    _check_unit_range(array, what)
    unit = np.clip(array.astype(np.float32, copy=False), 0.0, 1.0)
    return np.rint(unit * 255).astype(np.uint8)


def _channels_to_rgb(array: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> (H, W, 3) of the same dtype; alpha is dropped."""
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return array[..., :3]


def _channels_to_grey(array: np.ndarray) -> np.ndarray:
    """(H, W, ...) uint8 -> (H, W) uint8; colour by ITU-R 601 luma (as PIL's "L"), alpha dropped."""
    if array.ndim == 2:
        return array
    if array.shape[2] == 1:
        return array[..., 0]
    rgb = array[..., :3].astype(np.uint32)
    # Integer weights summing to 1000 keep grey pixels (R == G == B) exactly unchanged.
    return ((rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114 + 500) // 1000).astype(np.uint8)


def _unit_alpha(alpha: np.ndarray) -> np.ndarray:
    """An (H, W) alpha matte as floats in [0, 1]; float input is clipped (NaN is refused)."""
    alpha = np.asarray(alpha)
    if alpha.ndim == 3 and alpha.shape[2] == 1:
        alpha = alpha[..., 0]
    if alpha.ndim != 2 or 0 in alpha.shape:
        raise InputError(f"alpha has shape {alpha.shape}; expected (H, W)")
    if alpha.dtype == np.uint8:
        return alpha / np.float32(255)
    if alpha.dtype == np.bool_:
        return alpha.astype(np.float32)
    if not np.issubdtype(alpha.dtype, np.floating):
        raise InputError(f"alpha has dtype {alpha.dtype}; use float values in [0, 1] or uint8")
    if np.isnan(alpha).any():
        raise InputError("alpha contains NaN values; check the model output before saving it")
    return np.clip(alpha.astype(np.promote_types(alpha.dtype, np.float32), copy=False), 0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Atomic writing


def _atomic_save(path: str | os.PathLike[str], image: Image.Image, image_format: str, **params: object) -> Path:
    """Save ``image`` to a temporary file next to ``path``, then rename it over ``path``.

    Readers never see a half-written file, and a failed write leaves no temporary file behind.
    """
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise InputError(f"cannot write '{path}': the folder '{path.parent}' does not exist; create it first")
    temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    created = False
    try:
        # os.open with mode 0o666 lets the umask set the permissions, as for any file the user writes
        # (tempfile would make it 0o600).
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        created = True
        with os.fdopen(descriptor, "wb") as handle:
            image.save(handle, format=image_format, **params)
            handle.flush()
            os.fsync(handle.fileno())  # the data is on disk before the rename makes it visible
        os.replace(temporary, path)
    except BaseException as exc:
        if created:
            temporary.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InputError(f"could not write '{path}': {exc.strerror or exc}") from exc
        raise
    return path
