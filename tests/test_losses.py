"""Losses checked against values worked out by hand or by an explicit-loop reference."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mematte_hf.errors import InputError
from mematte_hf.losses import (
    MattingLoss,
    compression_loss,
    distillation_loss,
    gradient_penalty_loss,
    known_l1_loss,
    laplacian_pyramid_loss,
    max_pyramid_levels,
    unknown_l1_loss,
    unknown_mask_from_trimap,
)


def _four_by_four() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pred = 0 everywhere; 4 unknown pixels with errors 0.1..0.4; the 12 known pixels have error 1."""
    pred = torch.zeros(1, 1, 4, 4)
    gt = torch.ones(1, 1, 4, 4)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    for value, (y, x) in zip((0.1, 0.2, 0.3, 0.4), ((0, 0), (1, 2), (2, 1), (3, 3)), strict=True):
        gt[0, 0, y, x] = value
        mask[0, 0, y, x] = True
    return pred, gt, mask


# ---------------------------------------------------------------- unknown / known L1


def test_unknown_and_known_l1_are_masked_means() -> None:
    pred, gt, mask = _four_by_four()
    assert unknown_l1_loss(pred, gt, mask).item() == pytest.approx((0.1 + 0.2 + 0.3 + 0.4) / 4)
    assert known_l1_loss(pred, gt, mask).item() == pytest.approx(1.0)
    # A {0, 1} float mask means the same as the bool one.
    assert unknown_l1_loss(pred, gt, mask.float()).item() == pytest.approx(0.25)


def test_unknown_l1_pools_pixels_over_the_batch() -> None:
    # Sample 0: one unknown pixel with error 0.9; sample 1: three with error 0.1.
    # Pooled mean (0.9 + 0.3) / 4 = 0.3 (a mean of per-sample means would give 0.5).
    pred = torch.zeros(2, 1, 3, 3)
    gt = torch.zeros(2, 1, 3, 3)
    mask = torch.zeros(2, 1, 3, 3, dtype=torch.bool)
    gt[0, 0, 1, 1], mask[0, 0, 1, 1] = 0.9, True
    gt[1, 0, 0, :], mask[1, 0, 0, :] = 0.1, True
    assert unknown_l1_loss(pred, gt, mask).item() == pytest.approx(0.3)


def test_unknown_l1_matches_upstream_formula_at_512() -> None:
    g = torch.Generator().manual_seed(0)
    pred, gt = torch.rand(2, 1, 512, 512, generator=g), torch.rand(2, 1, 512, 512, generator=g)
    mask = torch.rand(2, 1, 512, 512, generator=g) > 0.7
    m = mask.float()
    upstream = F.l1_loss(pred * m, gt * m) * (2 * 262144) / m.sum()
    assert torch.allclose(unknown_l1_loss(pred, gt, mask), upstream, rtol=1e-5)


def test_l1_losses_are_zero_for_perfect_prediction() -> None:
    _, gt, mask = _four_by_four()
    assert unknown_l1_loss(gt.clone(), gt, mask).item() == pytest.approx(0.0, abs=1e-12)
    assert known_l1_loss(gt.clone(), gt, mask).item() == pytest.approx(0.0, abs=1e-12)


def test_empty_masks_give_zero_with_finite_gradients() -> None:
    pred = torch.full((1, 1, 4, 4), 0.3, requires_grad=True)
    gt = torch.zeros(1, 1, 4, 4)
    nothing = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    everything = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    losses = [
        unknown_l1_loss(pred, gt, nothing),
        known_l1_loss(pred, gt, everything),
        gradient_penalty_loss(pred, gt, nothing),
    ]
    for loss in losses:
        assert loss.item() == pytest.approx(0.0, abs=1e-12)
        assert loss.requires_grad
    sum(losses).backward()
    assert pred.grad is not None
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_l1_shape_errors() -> None:
    with pytest.raises(InputError, match="differ in shape"):
        unknown_l1_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5), torch.zeros(1, 1, 4, 4))
    with pytest.raises(InputError, match=r"\(B, 1, H, W\)"):
        known_l1_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(InputError, match="mask shape"):
        unknown_l1_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2))


# ---------------------------------------------------------------- Laplacian pyramid


def _checkerboard(h: int, w: int) -> torch.Tensor:
    """(1, 1, h, w) tensor of (-1)**(y + x)."""
    y, x = np.mgrid[:h, :w]
    return torch.from_numpy(((-1.0) ** (y + x)).astype(np.float32)).view(1, 1, h, w)


@pytest.mark.parametrize("size", [(33, 35), (40, 48)])
def test_laplacian_of_checkerboard_offset(size: tuple[int, int]) -> None:
    # [1,4,6,4,1] with alternating signs sums to 0, and reflect padding keeps the alternation, so a
    # checkerboard blurs to exactly 0: it sits entirely in level 0's diff (weight 2**0), nothing is
    # passed down. The pyramid is linear, so pred = gt + a * checker gives loss = mean|a * checker| = |a|.
    g = torch.Generator().manual_seed(1)
    gt = torch.rand(2, 1, *size, generator=g)
    pred = gt + 0.2 * _checkerboard(*size)
    assert laplacian_pyramid_loss(pred, gt).item() == pytest.approx(0.2, abs=1e-5)


def test_laplacian_ignores_constant_offsets_and_is_zero_when_equal() -> None:
    # Every level reconstructs a constant exactly (the 4x kernel's even / odd taps both sum to 1), so
    # all band-pass diffs of a constant are 0.
    g = torch.Generator().manual_seed(2)
    gt = torch.rand(1, 1, 37, 34, generator=g, dtype=torch.float64)
    assert laplacian_pyramid_loss(gt + 0.3, gt).item() == pytest.approx(0.0, abs=1e-12)
    assert laplacian_pyramid_loss(gt.clone(), gt).item() == pytest.approx(0.0, abs=1e-12)


def _reference_laplacian(pred: np.ndarray, gt: np.ndarray, levels: int) -> float:
    """Independent float64 reference for one (h, w) image pair, written with explicit loops."""
    k1 = np.array([1.0, 4.0, 6.0, 4.0, 1.0])
    kernel = np.outer(k1, k1) / 256.0

    def reflect(i: int, n: int) -> int:
        return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

    def blur(x: np.ndarray, k: np.ndarray) -> np.ndarray:
        h, w = x.shape
        out = np.zeros_like(x)
        for y in range(h):
            for xx in range(w):
                for u in range(5):
                    for v in range(5):
                        out[y, xx] += k[u, v] * x[reflect(y + u - 2, h), reflect(xx + v - 2, w)]
        return out

    def pyramid(x: np.ndarray) -> list[np.ndarray]:
        diffs = []
        for _ in range(levels):
            down = blur(x, kernel)[::2, ::2]
            zero_inserted = np.zeros_like(x)
            for y in range(down.shape[0]):
                for xx in range(down.shape[1]):
                    zero_inserted[2 * y, 2 * xx] = down[y, xx]
            diffs.append(x - blur(zero_inserted, 4.0 * kernel))
            x = down
        return diffs

    return sum(2**i * np.abs(a - b).mean() for i, (a, b) in enumerate(zip(pyramid(pred), pyramid(gt), strict=True)))


def test_laplacian_matches_loop_reference_on_odd_sizes() -> None:
    rng = np.random.default_rng(3)
    pred, gt = rng.random((9, 11)), rng.random((9, 11))
    expected = _reference_laplacian(pred, gt, levels=3)
    got = laplacian_pyramid_loss(
        torch.from_numpy(pred).view(1, 1, 9, 11), torch.from_numpy(gt).view(1, 1, 9, 11), levels=3
    )
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_max_pyramid_levels() -> None:
    # Level inputs: 33 -> 17 -> 9 -> 5 -> 3 (5 levels); 32 -> 16 -> 8 -> 4 -> 2 (only 4 are >= 3).
    assert max_pyramid_levels(33, 40) == 5 and max_pyramid_levels(40, 32) == 4
    assert max_pyramid_levels(512, 512) == 8 and max_pyramid_levels(2, 100) == 0  # 512 ... 8, 4


def test_matting_loss_uses_the_levels_that_fit() -> None:
    g = torch.Generator().manual_seed(5)
    pred, gt = torch.rand(1, 1, 32, 32, generator=g), torch.rand(1, 1, 32, 32, generator=g)
    trimap = torch.full((1, 1, 32, 32), 0.5)
    out = MattingLoss()(pred, gt, trimap)
    assert torch.allclose(out["laplacian"], laplacian_pyramid_loss(pred, gt, levels=4))


def test_laplacian_rejects_too_small_inputs() -> None:
    with pytest.raises(InputError, match="too small"):
        laplacian_pyramid_loss(torch.zeros(1, 1, 32, 64), torch.zeros(1, 1, 32, 64), levels=5)
    with pytest.raises(InputError, match="levels"):
        laplacian_pyramid_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), levels=0)


# ---------------------------------------------------------------- gradient penalty


def _ramp(h: int, w: int, slope: float) -> torch.Tensor:
    """(1, 1, h, w) with value slope * column."""
    return (slope * torch.arange(w, dtype=torch.float32)).expand(h, w).reshape(1, 1, h, w).clone()


def test_gradient_penalty_on_a_ramp_interior() -> None:
    # Interior of a ramp a*x: Sobel x = (a(x+1) - a(x-1)) * (1 + 2 + 1) = 8a, Sobel y = 0.
    # With gt = 0: |8a - 0| + 0 + 0.01 * 8a + 0 = 8.08a per unknown pixel.
    a = 0.1
    pred, gt = _ramp(6, 6, a), torch.zeros(1, 1, 6, 6)
    interior = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    interior[..., 1:-1, 1:-1] = True
    assert gradient_penalty_loss(pred, gt, interior).item() == pytest.approx(8.08 * a, rel=1e-6)
    # pred == gt leaves only the sparsity term 0.01 * 8a.
    assert gradient_penalty_loss(pred, pred.clone(), interior).item() == pytest.approx(0.08 * a, rel=1e-6)


def test_gradient_penalty_uses_zero_padding() -> None:
    # Pixel (row 0, col 2) of the ramp 0.1*x, rows outside the image being 0:
    # Sobel x = (0.3 - 0.1) * (2 + 1) = 0.6; Sobel y = row 1 weighted [1, 2, 1] = 4 * 0.2 = 0.8.
    # Loss = (0.6 + 0.8) * 1.01 = 1.414.
    pred, gt = _ramp(5, 5, 0.1), torch.zeros(1, 1, 5, 5)
    mask = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    mask[0, 0, 0, 2] = True
    assert gradient_penalty_loss(pred, gt, mask).item() == pytest.approx(1.414, rel=1e-6)


def test_constant_images_have_no_gradient_penalty() -> None:
    mask = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    mask[..., 1:4, 1:4] = True
    loss = gradient_penalty_loss(torch.full((1, 1, 5, 5), 0.7), torch.full((1, 1, 5, 5), 0.2), mask)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


# ---------------------------------------------------------------- distillation / compression


def test_distillation_value_and_gradient_only_to_student() -> None:
    student = torch.full((2, 3, 2, 2), 0.5, requires_grad=True)
    teacher = torch.zeros(2, 3, 2, 2, requires_grad=True)
    loss = distillation_loss(student, teacher)
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    # d/ds mean((s - t)^2) = 2 (s - t) / N = 2 * 0.5 / 24.
    assert torch.allclose(student.grad, torch.full_like(student, 1.0 / 24))
    assert teacher.grad is None
    with pytest.raises(InputError, match="differ in shape"):
        distillation_loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 3, 2, 2))


def test_compression_value_and_gradient() -> None:
    gamma = torch.tensor(0.75, requires_grad=True)
    loss = compression_loss(gamma, rho=0.25)
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    assert gamma.grad.item() == pytest.approx(2 * (0.75 - 0.25))

    gamma = torch.tensor(0.1, requires_grad=True)
    compression_loss(gamma).backward()  # default rho = 0.25
    assert gamma.grad.item() == pytest.approx(2 * (0.1 - 0.25))
    assert compression_loss(torch.tensor(0.25)).item() == pytest.approx(0.0, abs=1e-12)
    # Per-layer decisions are averaged first: mean(0.2, 0.6) = 0.4 -> (0.25 - 0.4)^2.
    assert compression_loss(torch.tensor([0.2, 0.6])).item() == pytest.approx(0.0225)
    with pytest.raises(InputError, match="rho"):
        compression_loss(torch.tensor(0.5), rho=1.5)


# ---------------------------------------------------------------- MattingLoss


def test_unknown_mask_from_trimap_accepts_both_unknown_codes() -> None:
    trimap = torch.tensor([0.0, 0.5, 128 / 255, 1.0, 0.0004, 0.9999]).view(1, 1, 1, 6)
    assert unknown_mask_from_trimap(trimap).flatten().tolist() == [False, True, True, False, False, False]
    assert MattingLoss.unknown_mask_from_trimap is unknown_mask_from_trimap


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    gt = torch.rand(2, 1, 40, 40, generator=g)
    pred = torch.rand(2, 1, 40, 40, generator=g).requires_grad_(True)
    trimap = torch.zeros(2, 1, 40, 40)
    trimap[..., 20:, :] = 1.0
    trimap[..., 10:30, :] = 128 / 255
    return pred, gt, trimap


def test_matting_loss_parts_and_sum() -> None:
    pred, gt, trimap = _batch()
    student = torch.full((2, 4, 3, 3), 1.0, requires_grad=True)
    teacher = torch.zeros(2, 4, 3, 3)
    out = MattingLoss()(pred, gt, trimap, student, teacher, gamma=torch.tensor(0.5), rho=0.25)
    parts = {"unknown_l1", "known_l1", "laplacian", "gradient", "distillation", "compression"}
    assert set(out) == {"loss"} | parts
    mask = trimap == 128 / 255
    assert torch.allclose(out["unknown_l1"], (pred - gt).abs()[mask].mean())
    assert torch.allclose(out["known_l1"], (pred - gt).abs()[~mask].mean())
    assert out["distillation"].item() == pytest.approx(1.0)
    assert out["compression"].item() == pytest.approx(0.0625)
    assert torch.allclose(out["loss"], sum(out[name] for name in parts))
    out["loss"].backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_matting_loss_optional_parts_and_weights() -> None:
    pred, gt, trimap = _batch()
    out = MattingLoss()(pred, gt, trimap)
    assert set(out) == {"loss", "unknown_l1", "known_l1", "laplacian", "gradient"}
    weighted = MattingLoss(weights={"laplacian": 0.0, "gradient": 2.0})(pred, gt, trimap)
    expected = out["unknown_l1"] + out["known_l1"] + 2.0 * out["gradient"]
    assert torch.allclose(weighted["loss"], expected)
    # 0.5 and 128/255 as the unknown code give the same losses.
    same = MattingLoss()(pred, gt, torch.where(trimap == 128 / 255, 0.5, trimap))
    assert torch.allclose(same["loss"], out["loss"])
    with pytest.raises(InputError, match="unknown loss part"):
        MattingLoss(weights={"lap": 1.0})
    # Student features without a teacher (training without distillation): no distillation part.
    no_teacher = MattingLoss()(pred, gt, trimap, student_features=torch.zeros(2, 4, 3, 3))
    assert "distillation" not in no_teacher and torch.allclose(no_teacher["loss"], out["loss"])


def test_matting_loss_without_unknown_pixels_is_finite() -> None:
    pred, gt, _ = _batch()
    known_only = (gt > 0.5).float()
    out = MattingLoss()(pred, gt, known_only)
    assert out["unknown_l1"].item() == pytest.approx(0.0, abs=1e-12)
    assert out["gradient"].item() == pytest.approx(0.0, abs=1e-12)
    assert math.isfinite(out["loss"].item())
    out["loss"].backward()
    assert torch.isfinite(pred.grad).all()
