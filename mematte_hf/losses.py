"""Training losses of MEMatte (the upstream ViTMatte/MEMatte recipe, every weight 1).

Every alpha-shaped tensor here is ``(B, 1, H, W)`` float in [0, 1]. The parts are:

* ``unknown_l1`` / ``known_l1``: mean absolute error over the trimap's unknown / known pixels;
* ``laplacian``: L1 distance between 5-level Laplacian pyramids, level ``i`` weighted by ``2**i``;
* ``gradient``: L1 distance between Sobel gradients inside the unknown region, plus a small
  sparsity term on the predicted gradients;
* ``distillation``: MSE between the student's and the (frozen) teacher's backbone features;
* ``compression``: ``(rho - gamma)**2``, pulling the routers' mean decision ``gamma`` towards the
  target ratio ``rho`` of tokens sent through the full global-attention path.

Masked losses return an exact zero, still attached to the graph, when their mask is empty, so a batch
without unknown pixels neither produces NaN nor breaks ``loss.backward()``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError

# Values of a trimap closer than this to 0 or 1 count as known; everything in between is unknown.
# The tolerance makes 0.5 and 128/255 (and small resampling noise) behave the same.
TRIMAP_TOLERANCE = 1e-3

# A floor for the mask's pixel count: with an empty mask the masked numerator is exactly 0, so the
# loss is 0 * (N / 1e-6) = 0 with no division by zero; any non-empty binary mask sums to >= 1.
_MIN_MASK_SUM = 1e-6


def _check_alpha_pair(pred: torch.Tensor, gt: torch.Tensor, name: str) -> None:
    """Raise InputError unless ``pred`` and ``gt`` are both ``(B, 1, H, W)`` of the same shape."""
    if pred.dim() != 4 or pred.shape[1] != 1:
        raise InputError(f"{name}: expected the prediction as (B, 1, H, W), got shape {tuple(pred.shape)}.")
    if pred.shape != gt.shape:
        raise InputError(f"{name}: prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape.")


def _as_mask(mask: torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``mask`` as a float tensor of ``like``'s dtype, checking that it has ``like``'s shape."""
    if mask.shape != like.shape:
        raise InputError(f"{name}: mask shape {tuple(mask.shape)} differs from the alpha {tuple(like.shape)}.")
    return mask.to(dtype=like.dtype)


def _area_scale(mask: torch.Tensor) -> torch.Tensor:
    """``numel / sum(mask)``: turns a mean over all pixels into a mean over the masked ones.

    Upstream hard-codes ``B * 262144`` (a 512x512 crop) as the numerator; using the real element count
    makes the result the masked mean at any crop size and identical to upstream at 512x512.
    """
    return mask.numel() / mask.sum().clamp_min(_MIN_MASK_SUM)


def unknown_mask_from_trimap(trimap: torch.Tensor) -> torch.Tensor:
    """Unknown region of a trimap scaled to [0, 1].

    Args:
        trimap: ``(B, 1, H, W)`` float, 0 = background, 1 = foreground, anything in between
            (0.5 or 128/255) = unknown.

    Returns:
        ``(B, 1, H, W)`` bool, True where the trimap is neither 0 nor 1 (within ``TRIMAP_TOLERANCE``).
    """
    return (trimap > TRIMAP_TOLERANCE) & (trimap < 1.0 - TRIMAP_TOLERANCE)


def unknown_l1_loss(pred: torch.Tensor, gt: torch.Tensor, unknown_mask: torch.Tensor) -> torch.Tensor:
    """Mean ``|pred - gt|`` over the unknown pixels.

    Computed as upstream, ``l1(pred * m, gt * m) * (B*H*W / sum(m))``, with the real ``H*W`` instead of
    upstream's fixed 512*512 (see ``_area_scale``).

    Args:
        pred, gt: ``(B, 1, H, W)`` alpha.
        unknown_mask: ``(B, 1, H, W)`` bool or {0, 1} float.

    Returns:
        Scalar tensor; exactly 0 (with a graph) when the mask is empty.
    """
    _check_alpha_pair(pred, gt, "unknown_l1_loss")
    m = _as_mask(unknown_mask, pred, "unknown_l1_loss")
    return F.l1_loss(pred * m, gt * m) * _area_scale(m)


def known_l1_loss(pred: torch.Tensor, gt: torch.Tensor, unknown_mask: torch.Tensor) -> torch.Tensor:
    """Mean ``|pred - gt|`` over the known pixels (the complement of ``unknown_mask``).

    Args:
        pred, gt: ``(B, 1, H, W)`` alpha.
        unknown_mask: ``(B, 1, H, W)`` bool or {0, 1} float marking the unknown pixels.

    Returns:
        Scalar tensor; exactly 0 (with a graph) when every pixel is unknown.
    """
    _check_alpha_pair(pred, gt, "known_l1_loss")
    known = 1.0 - _as_mask(unknown_mask, pred, "known_l1_loss")
    return F.l1_loss(pred * known, gt * known) * _area_scale(known)


def _gauss_kernel(like: torch.Tensor) -> torch.Tensor:
    """The 5x5 binomial kernel ``outer([1,4,6,4,1], [1,4,6,4,1]) / 256`` as a ``(1, 1, 5, 5)`` weight."""
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=like.dtype, device=like.device)
    return (torch.outer(k1, k1) / 256.0).view(1, 1, 5, 5)


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``(N, 1, h, w)`` -> same shape: reflect-pad by 2, then a valid 5x5 convolution."""
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel)


def _pyramid_level(current: torch.Tensor, kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One Laplacian-pyramid step.

    Args:
        current: ``(N, 1, h, w)``.
        kernel: the ``(1, 1, 5, 5)`` Gaussian.

    Returns:
        ``(diff, down)``: ``diff`` is ``(N, 1, h, w)`` = current - expand(reduce(current)); ``down`` is
        ``(N, 1, ceil(h/2), ceil(w/2))``, the next level's input.
    """
    down = _blur(current, kernel)[..., ::2, ::2]
    # Zero insertion straight at the current size: the ceil(h/2) even rows/cols hold ``down``, so odd
    # sizes need no cropping, and even sizes match upstream's interleave-then-reshape exactly.
    up = torch.zeros_like(current)
    up[..., ::2, ::2] = down
    # 4x the kernel restores the mean lost to the three zeros inserted per sample.
    up = _blur(up, 4.0 * kernel)
    return current - up, down


def max_pyramid_levels(height: int, width: int) -> int:
    """Most pyramid levels an ``height x width`` map supports: each level's input must be >= 3x3."""
    side, levels = min(height, width), 0
    while side >= 3:
        levels += 1
        side = (side + 1) // 2
    return levels


def laplacian_pyramid_loss(pred: torch.Tensor, gt: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Sum over pyramid levels ``i`` of ``2**i * mean|lap_i(pred) - lap_i(gt)|``.

    Only the band-pass levels are compared (no final low-pass residual), as upstream, so a constant
    offset between ``pred`` and ``gt`` costs nothing here; the L1 terms take care of it.

    Args:
        pred, gt: ``(B, 1, H, W)`` alpha; the level ``levels - 1`` input, ``ceil(H / 2**(levels-1))``
            by ``ceil(W / 2**(levels-1))``, must be at least 3x3 (reflect padding by 2).
        levels: number of pyramid levels (upstream: 5).

    Returns:
        Scalar tensor.
    """
    _check_alpha_pair(pred, gt, "laplacian_pyramid_loss")
    if levels < 1:
        raise InputError(f"laplacian_pyramid_loss: levels must be >= 1, got {levels}.")
    if levels > max_pyramid_levels(pred.shape[-2], pred.shape[-1]):
        raise InputError(
            f"laplacian_pyramid_loss: a {pred.shape[-2]}x{pred.shape[-1]} alpha is too small for {levels} "
            "pyramid levels (the coarsest level must be at least 3x3); use a larger crop or fewer levels."
        )
    kernel = _gauss_kernel(pred)
    # The pyramid is linear, so both inputs go through it together as one batch.
    current = torch.cat([pred, gt], dim=0)
    batch = pred.shape[0]
    loss = pred.new_zeros(())
    for i in range(levels):
        diff, current = _pyramid_level(current, kernel)
        loss = loss + (2**i) * F.l1_loss(diff[:batch], diff[batch:])
    return loss


def _sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel gradients of ``(N, 1, h, w)`` with zero padding 1 -> ``(gx, gy)``, each ``(N, 1, h, w)``."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    kx = kx.view(1, 1, 3, 3)
    ky = kx.transpose(-1, -2)
    return F.conv2d(x, kx, padding=1), F.conv2d(x, ky, padding=1)


def gradient_penalty_loss(pred: torch.Tensor, gt: torch.Tensor, unknown_mask: torch.Tensor) -> torch.Tensor:
    """Sobel-gradient L1 inside the unknown region plus ``0.01 *`` the predicted gradient magnitude.

    ``(mean|dpx*m - dgx*m| + mean|dpy*m - dgy*m| + 0.01*mean|dpx*m| + 0.01*mean|dpy*m|) * B*H*W/sum(m)``,
    i.e. each term averaged over the unknown pixels. The small last two terms discourage noisy,
    high-frequency predictions.

    Args:
        pred, gt: ``(B, 1, H, W)`` alpha.
        unknown_mask: ``(B, 1, H, W)`` bool or {0, 1} float.

    Returns:
        Scalar tensor; exactly 0 (with a graph) when the mask is empty.
    """
    _check_alpha_pair(pred, gt, "gradient_penalty_loss")
    m = _as_mask(unknown_mask, pred, "gradient_penalty_loss")
    pgx, pgy = _sobel(pred)
    ggx, ggy = _sobel(gt)
    loss = (
        F.l1_loss(pgx * m, ggx * m)
        + F.l1_loss(pgy * m, ggy * m)
        + 0.01 * (pgx * m).abs().mean()
        + 0.01 * (pgy * m).abs().mean()
    )
    return loss * _area_scale(m)


def distillation_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Mean squared error between student and teacher backbone features; no gradient reaches the teacher.

    Args:
        student_features, teacher_features: ``(B, C, h, w)`` (any equal shapes work).

    Returns:
        Scalar tensor.
    """
    if student_features.shape != teacher_features.shape:
        raise InputError(
            f"distillation_loss: student features {tuple(student_features.shape)} and teacher features "
            f"{tuple(teacher_features.shape)} differ in shape."
        )
    return F.mse_loss(student_features, teacher_features.detach())


def compression_loss(gamma: torch.Tensor, rho: float = 0.25) -> torch.Tensor:
    """``(rho - gamma)**2``: keeps the routers' mean decision near the target ratio ``rho``.

    Args:
        gamma: the mean routing decision, a scalar tensor in [0, 1]; a tensor with more elements
            (e.g. one value per layer) is averaged first.
        rho: target fraction of tokens routed to the global-attention path, in [0, 1].

    Returns:
        Scalar tensor.
    """
    if not 0.0 <= rho <= 1.0:
        raise InputError(f"compression_loss: rho must lie in [0, 1], got {rho}.")
    if gamma.numel() == 0:
        raise InputError("compression_loss: gamma is empty; pass the mean routing decision.")
    return (rho - gamma.mean()) ** 2


_PARTS = ("unknown_l1", "known_l1", "laplacian", "gradient", "distillation", "compression")


class MattingLoss(nn.Module):
    """All MEMatte training losses, summed with per-part weights (upstream: all 1).

    ``loss_fn(pred_alpha, gt_alpha, trimap, ...)`` returns ``{"loss": total, <part>: value, ...}``;
    ``distillation`` is present only when both feature tensors are given and ``compression`` only
    when ``gamma`` is given.
    """

    unknown_mask_from_trimap = staticmethod(unknown_mask_from_trimap)

    def __init__(self, weights: dict[str, float] | None = None, laplacian_levels: int = 5) -> None:
        """
        Args:
            weights: optional per-part weights keyed by part name; missing parts weigh 1.
            laplacian_levels: pyramid depth of the Laplacian loss (upstream 5); inputs too small for it
                (below 33x33 for 5) use the most levels they support, see ``max_pyramid_levels``.
        """
        super().__init__()
        unknown = set(weights or {}) - set(_PARTS)
        if unknown:
            raise InputError(f"MattingLoss: unknown loss part(s) {sorted(unknown)}; known parts: {list(_PARTS)}.")
        self.weights = {name: 1.0 for name in _PARTS} | dict(weights or {})
        self.laplacian_levels = laplacian_levels

    def forward(
        self,
        pred_alpha: torch.Tensor,
        gt_alpha: torch.Tensor,
        trimap: torch.Tensor,
        student_features: torch.Tensor | None = None,
        teacher_features: torch.Tensor | None = None,
        gamma: torch.Tensor | None = None,
        rho: float = 0.25,
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            pred_alpha, gt_alpha, trimap: ``(B, 1, H, W)``; the trimap in [0, 1] (0 / 0.5 or 128/255 / 1).
            student_features, teacher_features: ``(B, C, h, w)`` backbone features; the distillation
                part is computed only when both are given (a model can always pass its own features).
            gamma: mean routing decision (scalar tensor), or None.
            rho: target routing ratio for the compression loss.

        Returns:
            Dict of scalar tensors: ``loss`` (weighted sum) and every computed part, unweighted.
        """
        if trimap.shape != pred_alpha.shape:
            raise InputError(
                f"MattingLoss: trimap {tuple(trimap.shape)} and prediction {tuple(pred_alpha.shape)} differ in shape."
            )
        mask = unknown_mask_from_trimap(trimap)
        # Small smoke-test crops (e.g. 32x32) cannot hold 5 levels; use as many as fit rather than fail.
        levels = min(self.laplacian_levels, max_pyramid_levels(*pred_alpha.shape[-2:]))
        parts = {
            "unknown_l1": unknown_l1_loss(pred_alpha, gt_alpha, mask),
            "known_l1": known_l1_loss(pred_alpha, gt_alpha, mask),
            "laplacian": laplacian_pyramid_loss(pred_alpha, gt_alpha, levels),
            "gradient": gradient_penalty_loss(pred_alpha, gt_alpha, mask),
        }
        if student_features is not None and teacher_features is not None:
            parts["distillation"] = distillation_loss(student_features, teacher_features)
        if gamma is not None:
            parts["compression"] = compression_loss(gamma, rho)
        total = sum(self.weights[name] * value for name, value in parts.items())
        return {"loss": total, **parts}
