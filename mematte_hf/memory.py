"""Memory budgets: pick the cap k and the decoder tile from a byte budget, and measure what a forward used.

The estimate is a model of MEMatte's inference peak, with coefficients measured on CPU in float32
(`benchmarks/memory_latency.py`) and scaled by the element size for other dtypes:

- backbone: about 8 x hidden_size values per token (the window blocks and MLPs run in row bands at
  inference, so the full-grid LTRM of the routed blocks and the block inputs set the peak; 6.4 measured
  at 4096 px);
- global attention over k routed tokens: about 6 x hidden_size values per routed token with a fused
  attention kernel (CPU and CUDA `scaled_dot_product_attention`), plus k^2 x heads x 2 values without one;
- decoder: per pixel of a tile plus its context, what the lean decoder keeps alive in its half-resolution
  fusion block (the full-resolution block and the head run in row chunks): (128 upsampled + 2 x 64 partial
  sums + 48 detail) / 4 = 76 values for ViTMatte's decoder;
- the padded input and the output alphas, 5 values per pixel, held throughout;
- with the foreground colours asked for in the same call, the foreground estimation after the forward (float32,
  about `FOREGROUND_BYTES_PER_PIXEL`; `mematte_hf.foreground`), whose peak replaces the forward's.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .configuration_mematte import MEMatteConfig
from .errors import InputError
from .image_processing_mematte import padded_size as upstream_padded_size

BACKBONE_VALUES_PER_TOKEN_PER_CHANNEL = 8
ATTENTION_VALUES_PER_ROUTED_TOKEN_PER_CHANNEL = 6
PERSISTENT_VALUES_PER_PIXEL = 5
FOREGROUND_BYTES_PER_PIXEL = 200
TILE_SIZES = (512, 256, 128)
# Fraction of the free memory an automatic budget takes: leaves room for the allocator and the rest of the app.
AUTO_BUDGET_FRACTION = 0.8

_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "M": 2**20, "MB": 2**20, "G": 2**30, "GB": 2**30, "T": 2**40}


def parse_bytes(value: int | float | str) -> int:
    """`2147483648`, `"2GB"`, `"1.5 GiB"` or `"512M"` -> bytes (binary units)."""
    if isinstance(value, (int, float)):
        return int(value)
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(I?B)?\s*", value.upper())
    if not match:
        raise InputError(f"cannot read the memory budget {value!r}; write it like 2GB, 512MB or 1.5GiB")
    number, prefix, _ = match.groups()
    return int(float(number) * _UNITS[prefix])


def format_bytes(value: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit}"
    return f"{int(value)} B"


@dataclass(frozen=True)
class MemoryPlan:
    """What a budget allows for one image: the cap, the decoder tile, and the estimated peak."""

    max_global_tokens: int
    decoder_tile_size: int
    estimated_bytes: int
    budget_bytes: int
    tokens: int

    def __str__(self) -> str:
        return (
            f"max_global_tokens={self.max_global_tokens} (of {self.tokens} tokens), "
            f"decoder_tile_size={self.decoder_tile_size}: estimated peak {format_bytes(self.estimated_bytes)} "
            f"within a budget of {format_bytes(self.budget_bytes)}"
        )


def estimate_peak_bytes(
    config: MEMatteConfig,
    height: int,
    width: int,
    max_global_tokens: int | None,
    decoder_tile_size: int | None,
    element_size: int = 4,
    fused_attention: bool = True,
    batch_size: int = 1,
    with_foreground: bool = False,
    padded: tuple[int, int] | None = None,
) -> int:
    """Estimated inference peak (bytes above the model weights) for `batch_size` height x width images.

    `padded` is the size the image processor pads to (default: upstream's rule, `MEMatteImageProcessor`).
    """
    padded_height, padded_width = padded or upstream_padded_size(height, width, 2 * config.patch_size)
    tokens = (padded_height // config.patch_size) * (padded_width // config.patch_size)
    routed = tokens if not max_global_tokens else min(max_global_tokens, tokens)
    backbone = tokens * config.hidden_size * BACKBONE_VALUES_PER_TOKEN_PER_CHANNEL
    attention = routed * config.hidden_size * ATTENTION_VALUES_PER_ROUTED_TOKEN_PER_CHANNEL
    if not fused_attention:
        attention += routed * routed * config.num_attention_heads * 2
    if decoder_tile_size:
        context = config.decoder_tile_context
        tile_height = min(decoder_tile_size + 2 * context, padded_height)
        tile_width = min(decoder_tile_size + 2 * context, padded_width)
    else:
        tile_height, tile_width = padded_height, padded_width
    decoder = tile_height * tile_width * decoder_values_per_pixel(config)
    persistent = padded_height * padded_width * PERSISTENT_VALUES_PER_PIXEL
    forward = element_size * batch_size * (persistent + max(backbone + attention, decoder))
    if not with_foreground:
        return int(forward)
    foreground = batch_size * height * width * FOREGROUND_BYTES_PER_PIXEL
    return int(max(forward, foreground))


def decoder_values_per_pixel(config: MEMatteConfig) -> int:
    """Values alive per full-resolution pixel in the lean decoder's half-resolution fusion block: the upsampled
    features, the two partial convolution sums and the detail map, at a quarter of the pixels."""
    upsampled, fused = config.fusion_hidden_sizes[-3], config.fusion_hidden_sizes[-2]
    return (upsampled + 2 * fused + config.convstream_hidden_sizes[0]) // 4


def plan_memory(
    config: MEMatteConfig,
    height: int,
    width: int,
    budget_bytes: int,
    element_size: int = 4,
    fused_attention: bool = True,
    batch_size: int = 1,
    with_foreground: bool = False,
    padded: tuple[int, int] | None = None,
) -> MemoryPlan:
    """The largest cap and decoder tile whose estimated peak fits `budget_bytes`.

    The upstream tile (512) is kept whenever it fits, since it reproduces upstream outputs; smaller tiles
    trade a little decoding time for memory. The cap grows until the budget is used, up to every token.
    """
    padded = padded or upstream_padded_size(height, width, 2 * config.patch_size)
    tokens = math.prod(side // config.patch_size for side in padded)

    def estimate(cap: int, tile: int) -> int:
        return estimate_peak_bytes(
            config, height, width, cap, tile, element_size, fused_attention, batch_size, with_foreground, padded
        )

    tile = next((t for t in TILE_SIZES if estimate(1, t) <= budget_bytes), None)
    if tile is None:
        what = f"{batch_size} images of {width} x {height}" if batch_size > 1 else f"a {width} x {height} image"
        raise InputError(
            f"{what} needs at least {format_bytes(estimate(1, TILE_SIZES[-1]))} but the memory budget is "
            f"{format_bytes(budget_bytes)}; raise the budget, free memory, or use a smaller image"
        )
    low, high = 1, tokens  # binary search: the estimate grows with the cap
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if estimate(middle, tile) <= budget_bytes else (low, middle - 1)
    return MemoryPlan(low, tile, estimate(low, tile), budget_bytes, tokens)


def plan_execution(
    config: MEMatteConfig,
    device: torch.device,
    budget_bytes: int,
    decoder_tile_size: int | None,
    element_size: int = 4,
    batch_size: int = 1,
):
    """The execution plan for `device` within `budget_bytes`: the CPU's cache-sized plan on a CPU; elsewhere the GPU
    plan (bands of 65536 tokens, decoder tiles in batches of 8), with the band and the tile batch shrunk
    until each fits half the budget. The plan never changes the alphas, only how the work is laid out."""
    from .modeling_mematte import CPU_EXECUTION, GPU_EXECUTION, ExecutionPlan

    if device.type == "cpu":
        return CPU_EXECUTION
    half = budget_bytes // 2
    # A band holds the window blocks' relative-position mask (heads x window^2 per token) and the MLP activations.
    per_token = (
        element_size * batch_size * (config.num_attention_heads * config.window_size**2 + 8 * config.hidden_size)
    )
    band_tokens = max(config.window_size**2, min(GPU_EXECUTION.band_tokens, half // per_token))
    tile_batch = 1
    if decoder_tile_size:
        side = decoder_tile_size + 2 * config.decoder_tile_context
        per_tile = element_size * batch_size * side * side * full_resolution_values_per_pixel(config)
        tile_batch = max(1, min(GPU_EXECUTION.tile_batch, half // per_tile))
    return ExecutionPlan(band_tokens=band_tokens, tile_batch=tile_batch)


def full_resolution_values_per_pixel(config: MEMatteConfig) -> int:
    """Values alive per pixel when the decoder's full-resolution block runs unchunked (the GPU plan): upsampled
    features, the fused map and its partial sum, the head's hidden map and the input."""
    return config.fusion_hidden_sizes[-2] + 2 * config.fusion_hidden_sizes[-1] + 16 + config.num_channels


def available_memory(device: torch.device) -> int:
    """Free memory on `device`: the CUDA free memory, or the system's available memory for CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def automatic_budget(device: torch.device) -> int:
    return int(available_memory(device) * AUTO_BUDGET_FRACTION)


def uses_fused_attention(device: torch.device) -> bool:
    """CPU and CUDA have fused `scaled_dot_product_attention` kernels; other backends may build the k x k matrix."""
    return device.type in ("cpu", "cuda")


class PeakMemory:
    """The peak memory a block of code used above what was in use when it started (`bytes`, or None)."""

    bytes: int | None = None


@contextmanager
def measure_peak_memory(device: torch.device) -> Iterator[PeakMemory]:
    """CUDA: `torch.cuda.max_memory_allocated`; CPU on Linux: the process's peak resident set (VmHWM, reset
    through /proc/self/clear_refs). Elsewhere the result stays None."""
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result.bytes = torch.cuda.max_memory_allocated(device) - before
        return
    before = resident_bytes()
    can_reset = before is not None and reset_peak_resident()
    yield result
    if can_reset:
        result.bytes = max(peak_resident_bytes() - before, 0)


def resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def peak_resident_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("VmHWM not reported")


def reset_peak_resident() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False
