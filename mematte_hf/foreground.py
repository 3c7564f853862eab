"""Cutouts that look right: foreground colour estimation, compositing and display helpers.

A matte alone does not make a clean cutout. Where alpha is fractional (hair, fur, motion blur) an
image pixel is a mix ``I = alpha * F + (1 - alpha) * B`` of foreground and background colour, so
pasting the image itself onto a new background drags the old background's colour along as a halo.
:func:`estimate_foreground` recovers ``F`` so that composites over new backgrounds look clean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image, ImageColor

from .errors import InputError
from .image_io import ImageSource, alpha_to_float, load_image, load_image_float

#: Light and dark grey of the transparency checkerboard, as image editors draw it.
CHECKER_LIGHT, CHECKER_DARK = 255, 204

# --------------------------------------------------------------------------------------------------
# Foreground estimation


def estimate_foreground(
    image: ImageSource,
    alpha: np.ndarray,
    *,
    device: str | torch.device | None = None,
    regularization: float = 1e-5,
    gradient_weight: float = 1.0,
    coarse_iterations: int = 10,
    fine_iterations: int = 2,
    coarse_size: int = 32,
) -> np.ndarray:
    """Estimate the foreground colour of every pixel: an (H, W, 3) float32 array in [0, 1].

    Implements the multi-level method of Germer, Uelwer, Conrad and Harmeling, "Fast Multi-Level
    Foreground Estimation" (ICPR 2020). Foreground ``F`` and background ``B`` are solved for
    jointly, minimising per pixel the compositing error ``|alpha F + (1 - alpha) B - I|^2`` plus
    smoothness of ``F`` and ``B`` towards the four neighbours, weighted by ``regularization +
    gradient_weight * |alpha_neighbour - alpha_here|`` (colours may change where alpha does not
    explain them). The solve runs on an image pyramid from 1 x 1 up to full size, each level
    starting from the upsampled coarser solution, with ``coarse_iterations`` Jacobi sweeps on
    levels no larger than ``coarse_size`` and ``fine_iterations`` on larger ones.

    ``image`` is anything :func:`~mematte_hf.image_io.load_image` reads (uint8, or float in [0, 1],
    keeps its precision); ``alpha`` is (H, W) float in [0, 1] or uint8. ``device`` is where the
    solve runs: by default CUDA when available, else the CPU. Where alpha is exactly 1 the result
    is exactly the image colour, as the compositing equation demands. The solve needs roughly
    200 bytes of memory per pixel (about 3.5 GB at 4096 x 4096).
    """
    solver = _Solver(regularization, gradient_weight, coarse_iterations, fine_iterations, coarse_size)
    with torch.inference_mode():
        return _to_numpy(_estimate(image, alpha, device, solver)[:3])


def estimate_foreground_background(
    image: ImageSource,
    alpha: np.ndarray,
    *,
    device: str | torch.device | None = None,
    regularization: float = 1e-5,
    gradient_weight: float = 1.0,
    coarse_iterations: int = 10,
    fine_iterations: int = 2,
    coarse_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`estimate_foreground`, but return both (foreground, background), each (H, W, 3).

    Where alpha is exactly 0 the background is exactly the image colour.
    """
    solver = _Solver(regularization, gradient_weight, coarse_iterations, fine_iterations, coarse_size)
    with torch.inference_mode():
        solution = _estimate(image, alpha, device, solver)
        return _to_numpy(solution[:3]), _to_numpy(solution[3:])


@dataclass(frozen=True)
class _Solver:
    """Options of the multi-level solve, checked once."""

    regularization: float
    gradient_weight: float
    coarse_iterations: int
    fine_iterations: int
    coarse_size: int

    def __post_init__(self) -> None:
        if not self.regularization > 0:
            raise InputError(f"regularization must be above 0 (try 1e-5), not {self.regularization!r}")
        if not self.gradient_weight >= 0:
            raise InputError(f"gradient_weight must be 0 or more (try 1.0), not {self.gradient_weight!r}")
        for name in ("coarse_iterations", "fine_iterations", "coarse_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a whole number of at least 1, not {value!r}")

    def iterations(self, height: int, width: int) -> int:
        return self.coarse_iterations if max(height, width) <= self.coarse_size else self.fine_iterations


def _estimate(
    image: ImageSource, alpha: np.ndarray, device: str | torch.device | None, solver: _Solver
) -> torch.Tensor:
    """The full solve on ``device``: (6, H, W), foreground RGB stacked on background RGB."""
    target = _device(device)
    image_t, alpha_t = _image_and_alpha_tensors(image, alpha, target)
    solution = _solve_pyramid(image_t, alpha_t, solver)
    # The compositing equation fixes F = I where alpha == 1 and B = I where alpha == 0 exactly;
    # the smoothness term alone would leave them a hair off.
    solution[:3] = torch.where(alpha_t == 1, image_t, solution[:3])
    solution[3:] = torch.where(alpha_t == 0, image_t, solution[3:])
    return solution


def _image_and_alpha_tensors(
    image: ImageSource, alpha: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, H, W) image and (H, W) alpha as float32 tensors in [0, 1] on ``device``."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        # The common case, done in torch: one pass, and 4x less data to move to a GPU.
        matte = alpha_to_float(alpha)
        _check_same_size(matte, image)
        # np.require copies arrays torch cannot wrap as they are (read-only, negative strides).
        image_t = torch.from_numpy(np.require(image, requirements=["C", "W"])).to(device).permute(2, 0, 1)
        image_t = image_t.to(torch.float32, memory_format=torch.contiguous_format).div_(255)
        return image_t, torch.from_numpy(matte).to(device)
    rgb, matte = _image_and_alpha(image, alpha)
    return torch.from_numpy(rgb).to(device).permute(2, 0, 1).contiguous(), torch.from_numpy(matte).to(device)


def _solve_pyramid(image: torch.Tensor, alpha: torch.Tensor, solver: _Solver) -> torch.Tensor:
    """Coarse-to-fine solve; returns (6, H, W): foreground RGB stacked on background RGB."""
    levels = _pyramid(torch.cat([image, alpha[None]]))
    solution = _initial_guess(image, alpha)
    for level in levels:
        height, width = level.shape[1:]
        solution = nnf.interpolate(solution[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        solution = _relax(
            level[:3],
            level[3],
            solution,
            solver.regularization,
            solver.gradient_weight,
            solver.iterations(height, width),
        )
    return solution


def _pyramid(stack: torch.Tensor) -> list[torch.Tensor]:
    """Box-filtered copies of a (C, H, W) tensor, halving (rounding up) down to 1 x 1; coarsest first."""
    levels = [stack]
    while levels[-1].shape[1] > 1 or levels[-1].shape[2] > 1:
        height, width = levels[-1].shape[1:]
        if height % 2 == 0 and width % 2 == 0:
            # A plain 2 x 2 mean; several times faster than the general pooling below.
            smaller = nnf.avg_pool2d(levels[-1][None], 2)[0]
        else:
            # Built from the previous level rather than the full image: each step stays cheap.
            smaller = nnf.adaptive_avg_pool2d(levels[-1][None], (math.ceil(height / 2), math.ceil(width / 2)))[0]
        levels.append(smaller)
    return levels[::-1]


def _initial_guess(image: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """A (6, 1, 1) start: alpha-weighted mean colour for F, (1 - alpha)-weighted mean colour for B.

    At 1 x 1 the compositing equation alone cannot separate F from B, so the start must already
    lean the right way; plain means would make F and B equal there.
    """
    weights = torch.stack([alpha, 1 - alpha])  # (2, H, W)
    totals = weights.sum(dim=(1, 2))  # (2,)
    sums = torch.einsum("khw,chw->kc", weights, image)  # (2, 3)
    means = torch.where(totals[:, None] > 0, sums / totals.clamp_min(1e-12)[:, None], image.mean(dim=(1, 2)))
    return means.reshape(6, 1, 1)


def _relax(
    image: torch.Tensor,
    alpha: torch.Tensor,
    solution: torch.Tensor,
    regularization: float,
    gradient_weight: float,
    iterations: int,
) -> torch.Tensor:
    """Jacobi sweeps on one level: every pixel solves its 2 x 2 system from its neighbours' last values.

    Setting the derivative of the cost to zero gives, per pixel and colour channel,
        (alpha^2 + W) F + alpha (1 - alpha) B = alpha I + sum_j w_j F_j
        alpha (1 - alpha) F + ((1 - alpha)^2 + W) B = (1 - alpha) I + sum_j w_j B_j
    with w_j the neighbour weights and W their sum. Only the right-hand sides change between sweeps.
    All full-size buffers are made once per level and reused: on the CPU, a fresh 400 MB tensor per
    operation (at 4K) costs more in page faults than the arithmetic itself.
    """
    weights = _neighbour_weights(alpha, regularization, gradient_weight)  # (4, H, W)
    inverse = _inverse_systems(alpha, weights.sum(dim=0))  # (3, H, W)
    data = torch.empty((6, *alpha.shape), dtype=image.dtype, device=image.device)
    torch.mul(image, alpha, out=data[:3])  # alpha I
    torch.sub(image, data[:3], out=data[3:])  # (1 - alpha) I
    current = _padded(solution)  # the solution lives inside a one-pixel replicated border
    following = torch.empty_like(current)
    rhs = torch.empty_like(data)
    for _ in range(iterations):
        _right_hand_side(data, current, weights, out=rhs)
        _solve_pixels(rhs, inverse, out=following[:, 1:-1, 1:-1])
        _replicate_border(following)
        current, following = following, current  # Jacobi: read only the previous sweep's values
    return current[:, 1:-1, 1:-1]


def _neighbour_weights(alpha: torch.Tensor, regularization: float, gradient_weight: float) -> torch.Tensor:
    """(4, H, W) weights of the left, right, upper and lower neighbour of each pixel.

    A pixel on the border counts itself as its missing neighbour: the alpha difference is 0 there,
    so its weight is ``regularization``, which keeps every 2 x 2 system invertible.
    """
    weights = torch.zeros((4, *alpha.shape), dtype=alpha.dtype, device=alpha.device)
    across = (alpha[:, 1:] - alpha[:, :-1]).abs_()  # between horizontal neighbours
    weights[0, :, 1:] = across
    weights[1, :, :-1] = across
    down = (alpha[1:] - alpha[:-1]).abs_()  # between vertical neighbours
    weights[2, 1:] = down
    weights[3, :-1] = down
    return weights.mul_(gradient_weight).add_(regularization)


def _inverse_systems(alpha: torch.Tensor, total_weight: torch.Tensor) -> torch.Tensor:
    """(3, H, W): the entries (i00, i01, i11) of each pixel's inverse 2 x 2 matrix, i01 negated.

    The matrix is [[alpha^2 + W, alpha (1 - alpha)], [alpha (1 - alpha), (1 - alpha)^2 + W]]. Its
    determinant expands to W (alpha^2 + (1 - alpha)^2 + W), computed so rather than as a difference
    of products to avoid cancellation; with W >= 4 * regularization > 0 it is positive everywhere.
    """
    beta = 1 - alpha
    entries = torch.stack([beta * beta, alpha * beta, alpha * alpha])  # (a11 - W, a01, a00 - W)
    entries[0] += total_weight
    entries[2] += total_weight
    det = (entries[0] + entries[2]).sub_(total_weight).mul_(total_weight)
    return entries.div_(det)


def _padded(solution: torch.Tensor) -> torch.Tensor:
    """Copy a (C, H, W) tensor into a new (C, H + 2, W + 2) one with a replicated border."""
    padded = torch.empty(
        (solution.shape[0], solution.shape[1] + 2, solution.shape[2] + 2),
        dtype=solution.dtype,
        device=solution.device,
    )
    padded[:, 1:-1, 1:-1] = solution
    _replicate_border(padded)
    return padded


def _replicate_border(padded: torch.Tensor) -> None:
    """Fill the one-pixel border of a (C, H + 2, W + 2) tensor from the pixels next to it."""
    padded[:, 0, 1:-1] = padded[:, 1, 1:-1]
    padded[:, -1, 1:-1] = padded[:, -2, 1:-1]
    padded[:, :, 0] = padded[:, :, 1]
    padded[:, :, -1] = padded[:, :, -2]


def _right_hand_side(data: torch.Tensor, padded: torch.Tensor, weights: torch.Tensor, out: torch.Tensor) -> None:
    """``out = data + sum_j w_j * solution_j`` over the left, right, upper and lower neighbours."""
    torch.addcmul(data, weights[0], padded[:, 1:-1, :-2], out=out)
    out.addcmul_(weights[1], padded[:, 1:-1, 2:])
    out.addcmul_(weights[2], padded[:, :-2, 1:-1])
    out.addcmul_(weights[3], padded[:, 2:, 1:-1])


def _solve_pixels(rhs: torch.Tensor, inverse: torch.Tensor, out: torch.Tensor) -> None:
    """Write each pixel's new (F, B) = inverse @ rhs into ``out`` (6, H, W), clamped to [0, 1]."""
    i00, i01, i11 = inverse
    foreground, background = out[:3], out[3:]
    torch.mul(rhs[:3], i00, out=foreground)
    foreground.addcmul_(rhs[3:], i01, value=-1)
    torch.mul(rhs[3:], i11, out=background)
    background.addcmul_(rhs[:3], i01, value=-1)
    out.clamp_(0, 1)  # colours outside [0, 1] are never right; clamping also steadies the sweeps


def _device(device: str | torch.device | None) -> torch.device:
    """The requested device, or CUDA when available and the CPU otherwise; refuse devices we lack."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {device!r} is not a device name; use 'cpu' or 'cuda'") from exc
    if target.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was asked for but CUDA is not available here; use device='cpu'")
    return target


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor -> (H, W, 3) float32 numpy array in [0, 1]."""
    return tensor.permute(1, 2, 0).float().cpu().numpy().copy()


# --------------------------------------------------------------------------------------------------
# Compositing and display


def composite(
    foreground: ImageSource,
    alpha: np.ndarray,
    background: tuple[int, int, int] | str | ImageSource,
) -> np.ndarray:
    """Paste ``foreground`` over ``background`` with ``alpha``: an (H, W, 3) uint8 RGB image.

    ``foreground`` is (H, W, 3) uint8 or float in [0, 1] (best the output of
    :func:`estimate_foreground`), ``alpha`` (H, W) float in [0, 1] or uint8. ``background`` is an
    (r, g, b) tuple of 0..255 integers, a ``"#rrggbb"`` string, or an image (array, PIL image or
    path). An image of another size is scaled, keeping its aspect ratio, until it covers the
    foreground (Lanczos filter), and then cropped around its centre, so it is never distorted.
    """
    rgb, matte = _image_and_alpha(foreground, alpha)
    backdrop = _background(background, rgb.shape[0], rgb.shape[1])
    weight = matte[..., None]
    mixed = weight * rgb + (1 - weight) * backdrop
    return np.rint(np.clip(mixed, 0.0, 1.0) * 255).astype(np.uint8)


def rgba_cutout(foreground: ImageSource, alpha: np.ndarray) -> np.ndarray:
    """An (H, W, 4) uint8 RGBA cutout with straight (not premultiplied) alpha, as PNG expects."""
    rgb, matte = _image_and_alpha(foreground, alpha)
    channels = np.rint(np.concatenate([rgb, matte[..., None]], axis=2) * 255)
    return channels.astype(np.uint8)


def checkerboard(height: int, width: int, square: int = 16) -> np.ndarray:
    """An (H, W, 3) uint8 light/dark grey checkerboard with ``square``-pixel squares, light first."""
    for name, value in (("height", height), ("width", width), ("square", square)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"checkerboard {name} must be a whole number of at least 1, not {value!r}")
    rows = (np.arange(height) // square)[:, None]
    columns = (np.arange(width) // square)[None, :]
    grey = np.where((rows + columns) % 2 == 0, CHECKER_LIGHT, CHECKER_DARK).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def over_checkerboard(rgba: np.ndarray, square: int = 16) -> np.ndarray:
    """Show an (H, W, 4) RGBA cutout (uint8, or float in [0, 1]) over a checkerboard: (H, W, 3) uint8."""
    rgba = np.asarray(rgba)
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise InputError(f"RGBA cutout has shape {rgba.shape}; expected (H, W, 4)")
    board = checkerboard(rgba.shape[0], rgba.shape[1], square)
    return composite(rgba[..., :3], rgba[..., 3], board)


# --------------------------------------------------------------------------------------------------
# Input helpers


def _image_and_alpha(image: ImageSource, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) float32 image and (H, W) float32 alpha, both in [0, 1], checked to match in size."""
    rgb = load_image_float(image, max_pixels=None)
    matte = alpha_to_float(alpha)
    _check_same_size(matte, rgb)
    return rgb, matte


def _check_same_size(matte: np.ndarray, rgb: np.ndarray) -> None:
    if matte.shape != rgb.shape[:2]:
        raise InputError(
            f"alpha is {matte.shape[1]} x {matte.shape[0]} but the image is {rgb.shape[1]} x "
            f"{rgb.shape[0]}; the matte must have the image's size"
        )


def _background(background: tuple[int, int, int] | str | ImageSource, height: int, width: int) -> np.ndarray:
    """The background as (H, W, 3) float32 in [0, 1], or (3,) for a plain colour."""
    if isinstance(background, (tuple, list)):
        return _colour_tuple(background)
    if isinstance(background, str):
        text = background.strip()
        # A string is a colour unless it names an existing file ("#..." never does, for us).
        if text.startswith("#") or not Path(text).expanduser().exists():
            return _colour_string(text)
    picture = load_image(background, max_pixels=None)
    if picture.shape[:2] != (height, width):
        picture = _cover(picture, height, width)
    return picture.astype(np.float32) / 255


def _colour_string(text: str) -> np.ndarray:
    """'#rrggbb' (or any colour Pillow knows: '#rgb', 'white', 'rgb(0, 128, 255)') as (3,) floats."""
    try:
        red, green, blue = ImageColor.getrgb(text)[:3]
    except ValueError as exc:
        raise InputError(
            f"background colour {text!r} is neither a colour ('#rrggbb' or a name such as 'white') "
            "nor an existing image file"
        ) from exc
    return np.array([red, green, blue], dtype=np.float32) / 255


def _colour_tuple(colour: tuple | list) -> np.ndarray:
    if len(colour) != 3 or not all(isinstance(value, (int, np.integer)) and 0 <= value <= 255 for value in colour):
        raise InputError(
            f"background colour {tuple(colour)!r} must be three whole numbers 0..255 (r, g, b) or '#rrggbb'"
        )
    return np.array(colour, dtype=np.float32) / 255


def _cover(picture: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale ``picture`` keeping its aspect ratio until it covers height x width, then centre-crop."""
    scale = max(height / picture.shape[0], width / picture.shape[1])
    new_height = max(height, round(picture.shape[0] * scale))
    new_width = max(width, round(picture.shape[1] * scale))
    resized = np.asarray(Image.fromarray(picture).resize((new_width, new_height), Image.Resampling.LANCZOS))
    top, left = (new_height - height) // 2, (new_width - width) // 2
    return resized[top : top + height, left : left + width]
