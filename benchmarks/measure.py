"""What the model benchmarks share: the synthetic input, the ViT-S test models, peak memory and timing.

Kept free of `mematte_hf.memory` on purpose: `compare_landed.py` runs it against an older copy of the package,
and both versions must be measured by the same code.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

#: transformers' ViTMatte-S / MEMatte ViT-S backbone.
VIT_S = {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6}


def synthetic_inputs(size: int, batch_size: int = 1) -> torch.Tensor:
    """(batch, 4, size, size) float32: a normalised noisy image of a disc and a trimap with an unknown ring."""
    coords = torch.linspace(-1, 1, size)
    radius = torch.sqrt(coords[:, None] ** 2 + coords[None, :] ** 2)
    generator = torch.Generator().manual_seed(size)
    rgb = torch.randn(batch_size, 3, size, size, generator=generator) * 0.5 + (radius < 0.6).float() - 0.5
    trimap = torch.where(radius < 0.55, 1.0, torch.where(radius > 0.65, 0.0, 128 / 255))
    return torch.cat([rgb, trimap.expand(batch_size, 1, size, size)], dim=1)


def random_vitmatte(seed: int = 0):
    """transformers' `VitMatteForImageMatting` with ViT-S shapes and random weights (eval mode)."""
    from transformers import VitMatteForImageMatting

    from mematte_hf import MEMatteConfig

    torch.manual_seed(seed)
    return VitMatteForImageMatting(MEMatteConfig(**VIT_S).to_vitmatte_config()).eval()


@dataclass
class Peak:
    """Filled in when the `peak_memory` block ends; None where the platform cannot tell."""

    bytes: int | None = None


@contextmanager
def peak_memory(device: torch.device) -> Iterator[Peak]:
    """Peak memory of the block above what was in use when it started.

    CUDA: `torch.cuda.max_memory_allocated` minus `memory_allocated`, after `empty_cache` and a peak reset.
    CPU (Linux): the peak resident set (VmHWM, reset through /proc/self/clear_refs) minus the resident set
    before, after a garbage collection.
    """
    result = Peak()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result.bytes = torch.cuda.max_memory_allocated(device) - before
        return
    before = _resident_bytes()
    can_reset = before is not None and _reset_peak_resident()
    yield result
    if can_reset:
        result.bytes = max(_status_kib("VmHWM") * 1024 - before, 0)


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _reset_peak_resident() -> bool:
    """Reset VmHWM to the current resident set ("5" > /proc/self/clear_refs, Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def timed(function: Callable[[], object], device: torch.device) -> float:
    """Seconds one call takes, with the device synchronised before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
