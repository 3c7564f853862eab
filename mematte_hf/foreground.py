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
from PIL import Image

from .colours import parse_colour
from .devices import resolve_device
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
        return _to_numpy(_estimate(image, alpha, device, solver))


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
        solution = _estimate(image, alpha, device, solver, with_background=True)
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
    image: ImageSource,
    alpha: np.ndarray,
    device: str | torch.device | None,
    solver: _Solver,
    with_background: bool = False,
) -> torch.Tensor:
    """The full solve on ``device``: (3, H, W) foreground, or (6, H, W) foreground stacked on background."""
    target = resolve_device(device)
    image_t, alpha_t = _image_and_alpha_tensors(image, alpha, target)
    solution = _solve_pyramid(image_t, alpha_t, solver)
    # The compositing equation fixes F = I where alpha == 1 and B = I where alpha == 0 exactly;
    # the smoothness term alone would leave them a hair off.
    foreground = solution[:3]
    torch.where(alpha_t == 1, image_t, foreground, out=foreground)
    if not with_background:
        return foreground
    background = solution[3:]
    torch.where(alpha_t == 0, image_t, background, out=background)
    return solution


def _image_and_alpha_tensors(
    image: ImageSource, alpha: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, H, W) image and (H, W) alpha as float32 tensors in [0, 1] on ``device``."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        # The common case, done in torch: one pass, and 4x less data to move to a GPU.
        alpha_t = _alpha_tensor(alpha, device)
        _check_same_size(tuple(alpha_t.shape), image.shape)
        # np.require copies arrays torch cannot wrap as they are (read-only, negative strides).
        image_t = torch.from_numpy(np.require(image, requirements=["C", "W"])).to(device).permute(2, 0, 1)
        image_t = image_t.to(torch.float32, memory_format=torch.contiguous_format).div_(255)
        return image_t, alpha_t
    rgb, matte = _image_and_alpha(image, alpha)
    return torch.from_numpy(rgb).to(device).permute(2, 0, 1).contiguous(), torch.from_numpy(matte).to(device)


def _alpha_tensor(alpha: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W) float32 alpha in [0, 1] on ``device``, as :func:`~mematte_hf.image_io.alpha_to_float` makes it.

    A 2-D uint8 or float array is converted on ``device`` (on a GPU that is faster than numpy and moves
    less data); the host only checks it for NaN. Anything else goes through ``alpha_to_float``, which
    also words the errors.
    """
    array = np.asarray(alpha)
    if array.ndim == 2 and array.size and array.dtype == np.uint8:
        # uint8 / 255 in float32, exactly as numpy divides it.
        return torch.from_numpy(np.require(array, requirements=["C", "W"])).to(device).to(torch.float32).div_(255)
    if array.ndim == 2 and array.size and array.dtype in (np.float32, np.float64) and not np.isnan(array.min()):
        tensor = torch.from_numpy(np.require(array, requirements=["C", "W"])).to(device)
        # Clamping after rounding to float32 equals rounding after clamping: rounding keeps the order, 0 and 1.
        return tensor.to(torch.float32).clamp_(0, 1)
    return torch.from_numpy(alpha_to_float(array)).to(device)


def _solve_pyramid(image: torch.Tensor, alpha: torch.Tensor, solver: _Solver) -> torch.Tensor:
    """Coarse-to-fine solve; returns (6, H, W): foreground RGB stacked on background RGB."""
    levels = _pyramid(torch.cat([image, alpha[None]]))
    solution = _initial_guess(image, alpha)
    for level in levels:
        height, width = level.shape[1:]
        solution = nnf.interpolate(solution[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        system = _LevelSystem.build(level[:3], level[3], solver.regularization, solver.gradient_weight)
        solution = _relax(system, solution, solver.iterations(height, width))
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


@dataclass(frozen=True)
class _LevelSystem:
    """One level's per-pixel 2 x 2 systems, which stay the same through its sweeps.

    Setting the derivative of the cost to zero gives, per pixel and colour channel,
        (alpha^2 + W) F + alpha (1 - alpha) B = alpha I + sum_j w_j F_j
        alpha (1 - alpha) F + ((1 - alpha)^2 + W) B = (1 - alpha) I + sum_j w_j B_j
    with w_j the neighbour weights and W their sum. Only the neighbour sums change between sweeps.
    """

    data: torch.Tensor  # (6, H, W): alpha I stacked on (1 - alpha) I
    weights: torch.Tensor  # (4, H, W): left, right, upper, lower neighbour
    inverse: torch.Tensor  # (3, H, W): i00, i01 (negated), i11 of each pixel's inverse matrix

    @classmethod
    def build(
        cls, image: torch.Tensor, alpha: torch.Tensor, regularization: float, gradient_weight: float
    ) -> _LevelSystem:
        weights = _neighbour_weights(alpha, regularization, gradient_weight)
        data = torch.empty((6, *alpha.shape), dtype=image.dtype, device=image.device)
        torch.mul(image, alpha, out=data[:3])  # alpha I
        torch.sub(image, data[:3], out=data[3:])  # (1 - alpha) I
        return cls(data, weights, _inverse_systems(alpha, weights.sum(dim=0)))


def _relax(system: _LevelSystem, solution: torch.Tensor, iterations: int) -> torch.Tensor:
    """Jacobi sweeps on one level: every pixel solves its 2 x 2 system from its neighbours' last values.

    All full-size buffers and their views are made once per level and reused, so a sweep is nine
    element-wise operations and two border copies, nothing else: on a GPU each operation is a kernel
    launch, and on the CPU a fresh 400 MB tensor per operation (at 4K) costs more in page faults than
    the arithmetic itself.
    """
    current = _PaddedSolution(_padded(solution))  # the solution lives inside a one-pixel replicated border
    following = _PaddedSolution(torch.empty_like(current.padded))
    rhs = torch.empty_like(system.data)
    weights, inverse = system.weights.unbind(0), system.inverse.unbind(0)
    rhs_halves = (rhs[:3], rhs[3:])
    for _ in range(iterations):
        _right_hand_side(system.data, current.neighbours, weights, out=rhs)
        _solve_pixels(rhs_halves, inverse, out=following.halves)
        following.interior.clamp_(0, 1)  # colours outside [0, 1] are never right; clamping steadies the sweeps
        following.replicate_border()
        current, following = following, current  # Jacobi: read only the previous sweep's values
    return current.interior


class _PaddedSolution:
    """A (C, H + 2, W + 2) buffer holding a solution inside a one-pixel border, with the views sweeps use."""

    def __init__(self, padded: torch.Tensor) -> None:
        self.padded = padded
        self.interior = padded[:, 1:-1, 1:-1]
        self.halves = (self.interior[: padded.shape[0] // 2], self.interior[padded.shape[0] // 2 :])
        # left, right, upper and lower neighbour of every interior pixel
        self.neighbours = (padded[:, 1:-1, :-2], padded[:, 1:-1, 2:], padded[:, :-2, 1:-1], padded[:, 2:, 1:-1])
        self._border = _border_views(padded)

    def replicate_border(self) -> None:
        """Fill the border from the pixels next to it: top and bottom rows, then both columns (corners too)."""
        rows, row_sources, columns, column_sources = self._border
        rows.copy_(row_sources)
        columns.copy_(column_sources)


def _border_views(padded: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Views of a contiguous (C, H + 2, W + 2) tensor: its top and bottom rows (inner columns) and the rows
    next to them, its left and right columns and the columns next to them. Two copies then replicate the
    border, where four slice assignments would be four kernel launches."""
    channels, rows, columns = padded.shape
    plane, start = rows * columns, padded.storage_offset()
    edge_rows = padded.as_strided((channels, 2, columns - 2), (plane, (rows - 1) * columns, 1), start + 1)
    inner_rows = padded.as_strided((channels, 2, columns - 2), (plane, (rows - 3) * columns, 1), start + columns + 1)
    edge_columns = padded.as_strided((channels, rows, 2), (plane, columns, columns - 1), start)
    inner_columns = padded.as_strided((channels, rows, 2), (plane, columns, columns - 3), start + 1)
    return edge_rows, inner_rows, edge_columns, inner_columns


def _neighbour_weights(alpha: torch.Tensor, regularization: float, gradient_weight: float) -> torch.Tensor:
    """(4, H, W) weights of the left, right, upper and lower neighbour of each pixel.

    A pixel on the border counts itself as its missing neighbour: the alpha difference is 0 there,
    so its weight is ``regularization``, which keeps every 2 x 2 system invertible.
    """
    padded = nnf.pad(alpha[None], (1, 1, 1, 1), mode="replicate")[0]
    neighbours = torch.stack([padded[1:-1, :-2], padded[1:-1, 2:], padded[:-2, 1:-1], padded[2:, 1:-1]])
    return neighbours.sub_(alpha).abs_().mul_(gradient_weight).add_(regularization)


def _inverse_systems(alpha: torch.Tensor, total_weight: torch.Tensor) -> torch.Tensor:
    """(3, H, W): the entries (i00, i01, i11) of each pixel's inverse 2 x 2 matrix, i01 negated.

    The matrix is [[alpha^2 + W, alpha (1 - alpha)], [alpha (1 - alpha), (1 - alpha)^2 + W]]. Its
    determinant expands to W (alpha^2 + (1 - alpha)^2 + W), computed so rather than as a difference
    of products to avoid cancellation; with W >= 4 * regularization > 0 it is positive everywhere.
    """
    beta = 1 - alpha
    entries = torch.stack([beta * beta, alpha * beta, alpha * alpha])  # (a11 - W, a01, a00 - W)
    entries[::2] += total_weight
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
    rows, row_sources, columns, column_sources = _border_views(padded)
    rows.copy_(row_sources)
    columns.copy_(column_sources)
    return padded


def _right_hand_side(
    data: torch.Tensor, neighbours: tuple[torch.Tensor, ...], weights: tuple[torch.Tensor, ...], out: torch.Tensor
) -> None:
    """``out = data + sum_j w_j * solution_j`` over the left, right, upper and lower neighbours."""
    torch.addcmul(data, weights[0], neighbours[0], out=out)
    for weight, neighbour in zip(weights[1:], neighbours[1:], strict=True):
        out.addcmul_(weight, neighbour)


def _solve_pixels(
    rhs: tuple[torch.Tensor, torch.Tensor], inverse: tuple[torch.Tensor, ...], out: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Write each pixel's new (F, B) = inverse @ rhs into ``out``."""
    i00, i01, i11 = inverse
    (rhs_foreground, rhs_background), (foreground, background) = rhs, out
    torch.mul(rhs_foreground, i00, out=foreground)
    foreground.addcmul_(rhs_background, i01, value=-1)
    torch.mul(rhs_background, i11, out=background)
    background.addcmul_(rhs_foreground, i01, value=-1)


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor -> (H, W, 3) float32 numpy array in [0, 1], a fresh one that owns its memory.

    One copy on the CPU; from a GPU, torch transposes on the device and crosses to the host once.
    """
    array = np.empty((tensor.shape[1], tensor.shape[2], tensor.shape[0]), dtype=np.float32)
    torch.from_numpy(array).copy_(tensor.permute(1, 2, 0))
    return array


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
    cutout = np.empty((*matte.shape, 4), dtype=np.uint8)
    _to_uint8_into(rgb, cutout[..., :3])
    _to_uint8_into(matte, cutout[..., 3])
    return cutout


def _to_uint8_into(values: np.ndarray, out: np.ndarray) -> None:
    """Write float32 ``values`` in [0, 1] as ``rint(values * 255)`` into the uint8 array (or view) ``out``.

    One float32 temporary instead of a chain of full-size ones: at 4K a cutout is 33 million values.
    """
    scaled = np.multiply(values, np.float32(255), dtype=np.float32)
    np.rint(scaled, out=scaled)
    out[...] = scaled


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
    _check_same_size(matte.shape, rgb.shape)
    return rgb, matte


def _check_same_size(matte_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> None:
    if tuple(matte_shape) != tuple(image_shape[:2]):
        raise InputError(
            f"alpha is {matte_shape[1]} x {matte_shape[0]} but the image is {image_shape[1]} x "
            f"{image_shape[0]}; the matte must have the image's size"
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
    """'#rrggbb' (or '#rgb', a name such as 'white', 'rgb(0, 128, 255)') as (3,) floats in [0, 1]."""
    return np.array(parse_colour(text, what="background colour"), dtype=np.float32) / 255


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
