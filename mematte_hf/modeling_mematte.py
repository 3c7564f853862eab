"""PyTorch MEMatte: ViTMatte with adaptive token routing (Lin et al., AAAI 2025).

Every global-attention block of the ViT backbone gets a router. At inference the tokens a router selects
(at most `max_global_tokens` per image) go through global attention; every token goes through the
Lightweight Token Refinement Module (LTRM), whose output the attention result overwrites at the selected
positions. In training both branches run for every token and a straight-through Gumbel-softmax mixes them.

This file imports only torch, transformers and sibling modules by relative import, because
`save_pretrained` copies it next to the weights for `trust_remote_code=True` users.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.models.vitdet.modeling_vitdet import (
    VitDetDropPath,
    VitDetEmbeddings,
    VitDetLayer,
    VitDetMlp,
    VitDetResBottleneckBlock,
    get_rel_pos,
    window_partition,
    window_unpartition,
)
from transformers.models.vitmatte.modeling_vitmatte import VitMatteDetailCaptureModule
from transformers.utils import ModelOutput, logging

from .configuration_mematte import ROUTING_MODES, MEMatteConfig
from .losses import MattingLoss

logger = logging.get_logger(__name__)


@dataclass(frozen=True)
class ExecutionPlan:
    """How the lean inference path lays its work out; never what it computes (every plan gives the same alphas).

    band_tokens: window blocks, MLPs and the decoder's full-resolution rows run in row bands of about this many
        tokens (`None`: the whole grid at once).
    tile_batch: how many decoder tiles of one shape are decoded in one batched call.
    fused_window_attention: window attention in one `scaled_dot_product_attention` call with the relative
        positions as a mask (fewest kernels); otherwise scores, relative positions added in place, softmax (the
        least memory where SDPA has no fused kernel for a float mask, as on a CPU).
    """

    band_tokens: int | None
    tile_batch: int
    fused_window_attention: bool = True

    def __post_init__(self) -> None:
        if self.band_tokens is not None and self.band_tokens < 1:
            raise ValueError(f"band_tokens must be positive or None, got {self.band_tokens}")
        if self.tile_batch < 1:
            raise ValueError(f"tile_batch must be at least 1, got {self.tile_batch}")


#: On a CPU, bands of 4096 tokens keep tensors cache-sized, so the allocator reuses them instead of page-faulting
#: image-sized ones in afresh for every operation (4096 px: 60.8 s -> 43 s, 1.8 GB -> 0.8 GB); tiles one by one;
#: window attention with its relative positions added in place (SDPA's CPU math path would hold two more score maps).
CPU_EXECUTION = ExecutionPlan(band_tokens=4096, tile_batch=1, fused_window_attention=False)
#: On a GPU launches, not arithmetic, dominate small kernels: bands of 65536 tokens, and decoder tiles in batches of 8
#: (about 1 GiB of bfloat16 activations for 512 px tiles). One band holds the whole grid of a 3840 or 4000 px image
#: (240 or 250 rows of tokens); at exactly 4096 px (256 x 256 tokens) the MLPs run in one band, but the window
#: blocks, whose bands hold whole 14-token windows (252 rows), run in two: 252 rows, then 4.
GPU_EXECUTION = ExecutionPlan(band_tokens=65536, tile_batch=8)
EXECUTION_PLANS = {"cpu": CPU_EXECUTION, "gpu": GPU_EXECUTION}


def resolve_execution(execution: ExecutionPlan | str | None, device: torch.device) -> ExecutionPlan:
    """`execution` as a plan: a plan, `"cpu"` / `"gpu"`, or `None` for the plan of `device`'s kind."""
    if isinstance(execution, ExecutionPlan):
        return execution
    if execution is None:
        return CPU_EXECUTION if device.type == "cpu" else GPU_EXECUTION
    if execution not in EXECUTION_PLANS:
        raise ValueError(f"execution must be an ExecutionPlan or one of {sorted(EXECUTION_PLANS)}, got {execution!r}")
    return EXECUTION_PLANS[execution]


# Index 0 of a router's log-probabilities means "send to global attention", index 1 "send to the LTRM"
# (the paper's text has them the other way round; the released weights use 0 for attention).
TO_GLOBAL, TO_LTRM = 0, 1


@dataclass
class MEMatteBackboneOutput(ModelOutput):
    r"""
    feature_map (`torch.Tensor` of shape `(batch_size, hidden_size, height // 16, width // 16)`):
        Output of the last block.
    routing_masks (`tuple(torch.BoolTensor)`, one per router, each `(batch_size, height // 16, width // 16)`):
        True where the router sent the token to global attention.
    router_log_probs (`tuple(torch.Tensor)`, one per router, each `(batch_size, height // 16, width // 16, 2)`):
        The routers' log-probabilities (index 0: global attention, 1: LTRM); `None` when the routing mode
        is not `"adaptive"`.
    routing_decisions (`tuple(torch.Tensor)`, one per router, each `(batch_size, height // 16, width // 16)`):
        The decision d in {0, 1} as a float tensor; in training it carries the straight-through gradient.
    hidden_states (`tuple(torch.Tensor)`, *optional*): the input of every block and the final output,
        each `(batch_size, hidden_size, height // 16, width // 16)`.
    """

    feature_map: torch.Tensor | None = None
    routing_masks: tuple[torch.Tensor, ...] | None = None
    router_log_probs: tuple[torch.Tensor, ...] | None = None
    routing_decisions: tuple[torch.Tensor, ...] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class MEMatteImageMattingOutput(ModelOutput):
    r"""
    loss (`torch.Tensor` of shape `()`, *optional*, returned when `labels` are given):
        The sum of the training losses.
    alphas (`torch.Tensor` of shape `(batch_size, 1, height, width)`):
        Estimated alpha values at the padded input size, as transformers' ViTMatte returns them.
    routing_masks (`tuple(torch.BoolTensor)`, one per router, each `(batch_size, height // 16, width // 16)`):
        True where the router sent the token to global attention.
    router_log_probs (`tuple(torch.Tensor)`, one per router, each `(batch_size, height // 16, width // 16, 2)`):
        The routers' log-probabilities; `None` when the routing mode is not `"adaptive"`.
    backbone_features (`torch.Tensor` of shape `(batch_size, hidden_size, height // 16, width // 16)`):
        The backbone output the decoder reads (also the target of feature distillation).
    compression_ratio (`torch.Tensor` of shape `()`):
        gamma, the fraction of tokens sent to global attention, averaged over images, routers and tokens.
    loss_parts (`dict[str, torch.Tensor]`, *optional*): each part of `loss`, for logging.
    hidden_states (`tuple(torch.Tensor)`, *optional*): the backbone's hidden states.
    """

    loss: torch.Tensor | None = None
    alphas: torch.Tensor | None = None
    routing_masks: tuple[torch.Tensor, ...] | None = None
    router_log_probs: tuple[torch.Tensor, ...] | None = None
    backbone_features: torch.Tensor | None = None
    compression_ratio: torch.Tensor | None = None
    loss_parts: dict[str, torch.Tensor] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class WeightTransferReport:
    """Which weights `MEMatteForImageMatting.from_vitmatte` copied, initialised anew, and left behind."""

    copied: list[str]
    new: list[str]
    dropped: list[str]

    def summary(self) -> str:
        def families(keys: list[str]) -> str:
            # "backbone.encoder.layer.2.router.in_proj.weight" -> "layer.2.router"
            names = sorted({".".join(key.split(".")[2:5]) for key in keys})
            return ", ".join(names) if names else "none"

        return (
            f"MEMatte from ViTMatte: copied {len(self.copied)} tensors; newly initialised {len(self.new)} "
            f"(routers and LTRMs: {families(self.new)}); dropped {len(self.dropped)} "
            f"(global-block relative positions: {families(self.dropped)})"
        )


def eca_kernel_size(channels: int) -> int:
    """Kernel size of efficient channel attention: |log2(C) / 2 + 1/2|, made odd (5 for 384 and 768, 3 for 64)."""
    size = int(abs(math.log2(channels) / 2 + 0.5))
    return size if size % 2 else size + 1


class MEMatteEfficientChannelAttention(nn.Module):
    """Efficient channel attention: channel weights from a 1-D convolution over the pooled channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        kernel_size = eca_kernel_size(channels)
        self.conv = nn.Conv1d(1, 1, kernel_size=kernel_size, padding=(kernel_size - 1) // 2, bias=False)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        """(batch_size, height, width, channels) -> channel weights in (0, 1) of shape (batch_size, 1, 1, channels)."""
        pooled = hidden_state.mean(dim=(1, 2)).unsqueeze(1)  # (batch_size, 1, channels)
        return torch.sigmoid(self.conv(pooled)).unsqueeze(1)


class MEMatteLightweightTokenRefinement(nn.Module):
    """The LTRM: linear C->2C, GELU, depth-wise 5x5 conv, GELU, linear 2C->C, then z + ECA(z).

    It sees the raw block input (not norm1 of it), on the full token grid, so its cost is linear in the
    number of tokens.
    """

    def __init__(self, config: MEMatteConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.dwconv = nn.Conv2d(2 * dim, 2 * dim, kernel_size=5, padding=2, groups=2 * dim, bias=True)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.act = ACT2FN[config.hidden_act]
        self.eca = MEMatteEfficientChannelAttention(dim)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        """(batch_size, height, width, C) -> (batch_size, height, width, C)."""
        expanded = self.act(self.fc1(hidden_state))
        # A (B, H, W, 2C) tensor viewed as NCHW is channels-last: the depth-wise conv runs without a copy.
        expanded = self.act(self.dwconv(expanded.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        refined = self.fc2(expanded)
        return refined * (1.0 + self.eca(refined))


class MEMatteRouter(nn.Module):
    """Scores every token of a block's input: log-probabilities of (global attention, LTRM).

    Half of the projected channels stay per token, the other half is averaged over all tokens of the image,
    so each decision sees both the token and the image it belongs to.
    """

    def __init__(self, config: MEMatteConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.in_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.in_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Sequential(
            nn.Linear(dim, dim // 2),
            nn.GELU(),
            nn.Linear(dim // 2, dim // 4),
            nn.GELU(),
            nn.Linear(dim // 4, 2),
        )
        self.act = nn.GELU()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(batch_size, num_tokens, C) -> float32 log-probabilities (batch_size, num_tokens, 2).

        Always computed in float32, whatever the model's dtype: the decisions are thresholds and a top-k on the
        margin logp[0] - logp[1], which half precision would flip for every token near the boundary. The router
        is per token and small, so this costs next to nothing.
        """
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            tokens = tokens.float()
            normed = F.layer_norm(
                tokens,
                self.in_norm.normalized_shape,
                _float(self.in_norm.weight),
                _float(self.in_norm.bias),
                self.in_norm.eps,
            )
            projected = self.act(_float_linear(self.in_proj, normed))
            half = projected.shape[-1] // 2
            local_part, global_part = projected[..., :half], projected[..., half:]
            global_part = global_part.mean(dim=1, keepdim=True).expand_as(global_part)
            scores = torch.cat([local_part, global_part], dim=-1)
            for module in self.out_proj:
                scores = _float_linear(module, scores) if isinstance(module, nn.Linear) else module(scores)
            return F.log_softmax(scores, dim=-1)


def _float(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """The tensor in float32 (no copy when it already is)."""
    return None if tensor is None else tensor.float()


def _float_linear(linear: nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
    return F.linear(inputs, _float(linear.weight), _float(linear.bias))


class MEMatteLayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (batch_size, C, height, width) map, with transformers' `VitDetLayerNorm`
    parameter names, as one fused `layer_norm` kernel.

    `VitDetLayerNorm` squares `x - mean` in the input dtype, which overflows float16 once activations pass 256;
    `F.layer_norm` keeps its statistics in float32 for half-precision inputs.
    """

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        hidden_state = hidden_state.permute(0, 2, 3, 1)
        weight, bias = self.weight, self.bias
        # Under autocast a float32 model's convolutions hand half-precision activations to these float32 weights
        # (in a model cast to half precision, weights and activations share the dtype and nothing is cast).
        if weight.dtype != hidden_state.dtype:
            weight, bias = weight.to(hidden_state.dtype), bias.to(hidden_state.dtype)
        return F.layer_norm(hidden_state, self.normalized_shape, weight, bias, self.eps).permute(0, 3, 1, 2)


class MEMattePatchProjection(nn.Conv2d):
    """The patch embedding's convolution (kernel = stride, no padding: each output is one patch's dot product),
    with transformers' parameter names. For bfloat16 inputs on a CPU it runs as a matrix product over the patches:
    oneDNN's bfloat16 convolution for this shape (torch 2.13 on AVX-512 CPUs) returns values off by their own
    magnitude, which turned every bfloat16 forward on a CPU into a different model. The sums are the same."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.device.type != "cpu" or pixel_values.dtype != torch.bfloat16:
            return super().forward(pixel_values)
        batch_size, channels, height, width = pixel_values.shape
        patch_height, patch_width = self.kernel_size
        patches = pixel_values.reshape(
            batch_size, channels, height // patch_height, patch_height, width // patch_width, patch_width
        )
        patches = patches.permute(0, 2, 4, 1, 3, 5).flatten(3)  # (batch_size, rows, columns, C * patch area)
        return F.linear(patches, self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)


def as_patch_projection(embeddings: VitDetEmbeddings) -> VitDetEmbeddings:
    """Swap the embeddings' convolution for `MEMattePatchProjection` (same parameters, same maths)."""
    old = embeddings.projection
    embeddings.projection = MEMattePatchProjection(
        old.in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride, bias=old.bias is not None
    )
    return embeddings


def use_float32_statistics(residual: VitDetResBottleneckBlock) -> VitDetResBottleneckBlock:
    """Swap the residual block's channels-first norms for `MEMatteLayerNorm2d` (same parameters, same maths)."""
    for name in ("norm1", "norm2", "norm3"):
        old = getattr(residual, name)
        new = MEMatteLayerNorm2d(old.normalized_shape, eps=old.eps)
        setattr(residual, name, new)
    return residual


def select_global_tokens(log_probs: torch.Tensor, max_tokens: int | None) -> torch.Tensor:
    """Inference routing: which tokens go to global attention.

    Args:
        log_probs: (batch_size, num_tokens, 2) router log-probabilities.
        max_tokens: the cap k per image; `None` or 0 for no cap.

    Returns:
        (batch_size, num_tokens) bool: logp[0] > logp[1], and where an image selects more than k tokens only
        its k tokens with the largest margin logp[0] - logp[1]. Each image is decided on its own.
    """
    margin = log_probs[..., TO_GLOBAL] - log_probs[..., TO_LTRM]
    selected = margin > 0
    if not max_tokens or max_tokens >= margin.shape[1]:
        return selected
    over_cap = selected.sum(dim=1) > max_tokens
    if over_cap.any():
        top = margin[over_cap].topk(max_tokens, dim=1).indices
        capped = torch.zeros_like(selected[over_cap]).scatter_(1, top, True)
        selected[over_cap] = capped
    return selected


# Elements of the relative-position score bias built per chunk of queries in `MEMatteAttention.forward_on_grid`:
# 2**24 float32 values are 64 MiB, so a ViTMatte global block never holds a num_tokens x num_tokens matrix.
GLOBAL_BIAS_CHUNK_ELEMENTS = 2**24


class MEMatteAttention(nn.Module):
    """Multi-head self-attention over a set of tokens, without relative positions (MEMatte's global blocks), or
    over the whole token grid with ViTDet's decomposed relative positions (a ViTMatte checkpoint's global blocks,
    when `config.global_relative_position_size` is set)."""

    def __init__(self, config: MEMatteConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=config.qkv_bias)
        self.proj = nn.Linear(dim, dim)
        grid = config.global_relative_position_size
        self.has_relative_positions = grid is not None
        if grid is not None:  # the names and shapes of transformers' VitDetAttention, so ViTMatte weights load
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid - 1, self.head_dim))

    def forward_on_grid(
        self, tokens: torch.Tensor, size: tuple[int, int], chunk_elements: int = GLOBAL_BIAS_CHUNK_ELEMENTS
    ) -> torch.Tensor:
        """(batch_size, height * width, C) of a whole token grid -> (batch_size, height * width, C), with the
        decomposed relative positions of ViTDet's global attention (transformers' `VitDetAttention`).

        The score of query (i, j) for key (k, l) gains q . R_h[i - k] + q . R_w[j - l] (q unscaled). The queries
        go through `scaled_dot_product_attention` in chunks whose bias holds at most `chunk_elements` values, so
        memory grows with the number of tokens, not with its square as in transformers' ViTMatte.
        """
        height, width = size
        queries, keys, values = self._split_heads(tokens)
        table_h = get_rel_pos(height, height, self.rel_pos_h).to(queries.dtype)  # (height, height, head_dim)
        table_w = get_rel_pos(width, width, self.rel_pos_w).to(queries.dtype)  # (width, width, head_dim)
        positions = torch.arange(height * width, device=tokens.device)
        rows, columns = positions // width, positions % width
        batch_size, heads, num_tokens, _ = queries.shape
        chunk = max(1, chunk_elements // (batch_size * heads * num_tokens))
        attended = torch.empty_like(queries)
        for start in range(0, num_tokens, chunk):
            part = slice(start, start + chunk)
            query = queries[:, :, part]
            along_height = torch.einsum("bnqc,qkc->bnqk", query, table_h[rows[part]])
            along_width = torch.einsum("bnqc,qkc->bnqk", query, table_w[columns[part]])
            bias = (along_height[..., :, None] + along_width[..., None, :]).flatten(-2)
            attended[:, :, part] = F.scaled_dot_product_attention(query, keys, values, attn_mask=bias, scale=self.scale)
        return self._merge_heads(attended)

    def _split_heads(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch_size, num_tokens, _ = tokens.shape
        qkv = self.qkv(tokens).reshape(batch_size, num_tokens, 3, self.num_heads, self.head_dim)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (batch_size, heads, num_tokens, head_dim)

    def _merge_heads(self, hidden_state: torch.Tensor) -> torch.Tensor:
        batch_size, _, num_tokens, _ = hidden_state.shape
        return self.proj(hidden_state.transpose(1, 2).reshape(batch_size, num_tokens, -1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(batch_size, num_tokens, C) -> (batch_size, num_tokens, C), through a fused kernel where one exists,
        so that no num_tokens x num_tokens matrix is kept in memory."""
        queries, keys, values = self._split_heads(tokens)
        return self._merge_heads(F.scaled_dot_product_attention(queries, keys, values))

    def forward_masked(self, tokens: torch.Tensor, decisions: torch.Tensor) -> torch.Tensor:
        """Training attention: each query attends to the selected keys and to itself.

        Args:
            tokens: (batch_size, num_tokens, C), already normalised by norm1.
            decisions: (batch_size, num_tokens) in {0, 1}, differentiable (straight-through Gumbel).

        The mask multiplies the exponentiated scores, so gradients reach the router through `decisions`;
        the epsilon terms follow the upstream training code.
        """
        queries, keys, values = self._split_heads(tokens)
        num_tokens = tokens.shape[1]
        scores = (queries * self.scale) @ keys.transpose(-2, -1)
        keep = decisions[:, None, None, :].to(torch.float32)
        identity = torch.eye(num_tokens, device=tokens.device, dtype=torch.float32)
        keep = keep + (1.0 - keep) * identity
        scores = scores - scores.amax(dim=-1, keepdim=True)
        weights = scores.to(torch.float32).exp() * keep
        epsilon = 1e-6
        weights = (weights + epsilon / num_tokens) / (weights.sum(dim=-1, keepdim=True) + epsilon)
        return self._merge_heads(weights.to(values.dtype) @ values)


@dataclass(frozen=True)
class ForwardSettings:
    """Per-call settings of one forward, resolved against the config (nothing is written to the config, so one
    model serves concurrent callers with different settings).

    routing_mode: `"adaptive"`, `"global"` or `"light"`.
    max_global_tokens: the cap k per image and router (`None` or 0: no cap).
    decoder_tile_size: decoder tile in pixels (`None` or 0: the whole image at once).
    inplace: the memory-lean inference path (in-place updates, row bands); chosen when autograd is not recording.
    """

    routing_mode: str
    max_global_tokens: int | None
    decoder_tile_size: int | None
    inplace: bool
    execution: ExecutionPlan = CPU_EXECUTION


def resolve_forward_settings(
    config: MEMatteConfig,
    training: bool,
    max_global_tokens: int | None = None,
    decoder_tile_size: int | None = None,
    routing_mode: str | None = None,
    execution: ExecutionPlan | str | None = None,
    device: torch.device | None = None,
) -> ForwardSettings:
    """The settings of one forward: each argument, or the config's value where it is `None`; checked."""
    settings = ForwardSettings(
        routing_mode=config.routing_mode if routing_mode is None else routing_mode,
        max_global_tokens=config.max_global_tokens if max_global_tokens is None else max_global_tokens,
        decoder_tile_size=config.decoder_tile_size if decoder_tile_size is None else decoder_tile_size,
        inplace=not (training or torch.is_grad_enabled()),
        execution=resolve_execution(execution, device or torch.device("cpu")),
    )
    check_forward_settings(settings, config)
    return settings


def check_forward_settings(settings: ForwardSettings, config: MEMatteConfig) -> None:
    """Raise a `ValueError` naming the argument when a per-call setting is invalid."""
    if settings.routing_mode not in ROUTING_MODES:
        raise ValueError(f"routing_mode must be one of {ROUTING_MODES}, got {settings.routing_mode!r}")
    if config.global_relative_position_size is not None and settings.routing_mode != "global":
        raise ValueError(
            f"routing_mode={settings.routing_mode!r} needs MEMatte weights: this model is a ViTMatte checkpoint "
            "(relative positions in its global blocks, routers never trained), which runs only with "
            "routing_mode='global'"
        )
    cap = settings.max_global_tokens
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 0):
        raise ValueError(f"max_global_tokens must be a non-negative integer (0 or None: no cap), got {cap!r}")
    tile, unit = settings.decoder_tile_size, 2 * config.patch_size
    if tile is not None and (not isinstance(tile, int) or isinstance(tile, bool) or tile < 0 or tile % unit):
        raise ValueError(f"decoder_tile_size must be 0 / None (whole image) or a multiple of {unit}, got {tile!r}")


class MEMatteRoutedLayer(nn.Module):
    """A global block with a router: `x + routed(x)`, then `x + mlp(norm2(x))`, then the residual conv block.

    Takes and returns (batch_size, C, height, width) like transformers' `VitDetLayer`.
    """

    def __init__(self, config: MEMatteConfig, drop_path_rate: float = 0.0, use_residual_block: bool = False):
        super().__init__()
        vitdet_config = config.to_vitdet_config()
        dim = config.hidden_size
        self.gumbel_temperature = config.gumbel_temperature
        self.router = MEMatteRouter(config)
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attention = MEMatteAttention(config)
        self.ltrm = MEMatteLightweightTokenRefinement(config)
        self.drop_path = VitDetDropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = VitDetMlp(config=vitdet_config, in_features=dim, hidden_features=int(dim * config.mlp_ratio))
        self.residual = (
            use_float32_statistics(
                VitDetResBottleneckBlock(vitdet_config, in_channels=dim, out_channels=dim, bottleneck_channels=dim // 2)
            )
            if use_residual_block
            else None
        )

    def forward(
        self, hidden_states: torch.Tensor, settings: ForwardSettings
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(batch_size, C, h, w) -> (output (batch_size, C, h, w), float32 log-probs (batch_size, h*w, 2) or None,
        decisions (batch_size, h*w) float)."""
        hidden_states = hidden_states.permute(0, 2, 3, 1)
        mode = settings.routing_mode
        log_probs = self.router(hidden_states.flatten(1, 2)) if mode == "adaptive" else None
        if mode == "global":
            branch, decisions = self._all_global(hidden_states)
        elif mode == "light":
            branch = self.ltrm(hidden_states)
            decisions = hidden_states.new_zeros(hidden_states.shape[:1] + (hidden_states[0, ..., 0].numel(),))
        elif self.training:
            branch, decisions = self._mixed(hidden_states, log_probs)
        else:
            to_global = select_global_tokens(log_probs, settings.max_global_tokens)
            if settings.inplace:
                branch = self._routed(hidden_states, to_global)
                decisions = to_global.to(hidden_states.dtype)
            else:
                branch, decisions = self._routed_differentiable(hidden_states, log_probs, to_global)
        if not settings.inplace:
            hidden_states = hidden_states + self.drop_path(branch)
            hidden_states = hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))
        else:
            hidden_states = hidden_states + branch
            height, width = hidden_states.shape[1], hidden_states.shape[2]
            for band in row_bands(height, width, 1, settings.execution.band_tokens):
                rows = hidden_states[:, band]
                rows += self.mlp(self.norm2(rows))  # per token, so band by band is the same
        hidden_states = hidden_states.permute(0, 3, 1, 2)
        if self.residual is not None:
            hidden_states = self.residual(hidden_states)
        return hidden_states, log_probs, decisions

    def _all_global(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch_size, height, width, dim = hidden_states.shape
        tokens = self.norm1(hidden_states).reshape(batch_size, height * width, dim)
        if self.attention.has_relative_positions:
            attended = self.attention.forward_on_grid(tokens, (height, width))
        else:
            attended = self.attention(tokens)
        return attended.reshape(batch_size, height, width, dim), hidden_states.new_ones(batch_size, height * width)

    def _routed(self, hidden_states: torch.Tensor, to_global: torch.Tensor) -> torch.Tensor:
        """Inference: the LTRM for every token, global attention among each image's selected tokens, written in
        place over the LTRM's output."""
        batch_size, height, width, dim = hidden_states.shape
        branch = self.ltrm(hidden_states).reshape(batch_size, height * width, dim)
        for index, selected, attended in self._attend_selected(hidden_states, to_global):
            branch[index, selected] = attended.to(branch.dtype)
        return branch.reshape(batch_size, height, width, dim)

    def _attend_selected(self, hidden_states: torch.Tensor, to_global: torch.Tensor):
        """Yield (image index, selected token indices, attention output of those tokens) for each image with a
        selection: each image has its own, and a batch must equal running its images alone."""
        batch_size, height, width, dim = hidden_states.shape
        tokens = hidden_states.reshape(batch_size, height * width, dim)
        for index in range(batch_size):
            selected = to_global[index].nonzero().squeeze(1)
            if selected.numel():
                # norm1 is per token, so normalising only the gathered tokens gives the same result.
                gathered = self.norm1(tokens[index, selected]).unsqueeze(0)
                yield index, selected, self.attention(gathered)[0]

    def _routed_differentiable(
        self, hidden_states: torch.Tensor, log_probs: torch.Tensor, to_global: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The inference routing with autograd recording (eval mode with gradients: fine-tuning with frozen norms,
        attribution, gradient checks): the same output as `_routed`, without in-place updates.

        The decision is the hard inference decision with a straight-through gradient to the router's
        probability of global attention (as the training Gumbel decision carries one), so routers, LTRMs,
        attention and decoder all get gradients.
        """
        batch_size, height, width, dim = hidden_states.shape
        refined = self.ltrm(hidden_states).reshape(batch_size, height * width, dim)
        attended = refined
        for index, selected, image_attended in self._attend_selected(hidden_states, to_global):
            rows = torch.full_like(selected, index)
            attended = attended.index_put((rows, selected), image_attended.to(attended.dtype))
        probability = log_probs[..., TO_GLOBAL].exp()
        straight_through = probability - probability.detach()  # 0 in value, d/dp = 1
        # `attended` equals `refined` wherever the token was not selected, so this is the hard mix in value.
        branch = attended + straight_through.unsqueeze(-1).to(attended.dtype) * (attended - refined)
        decisions = to_global.to(probability.dtype) + straight_through
        return branch.reshape(batch_size, height, width, dim), decisions

    def _mixed(self, hidden_states: torch.Tensor, log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: a hard straight-through Gumbel decision mixes both branches for every token."""
        batch_size, height, width, dim = hidden_states.shape
        sample = F.gumbel_softmax(log_probs, tau=self.gumbel_temperature, hard=True)
        decisions = sample[..., TO_GLOBAL]
        tokens = self.norm1(hidden_states).reshape(batch_size, height * width, dim)
        attended = self.attention.forward_masked(tokens, decisions)
        refined = self.ltrm(hidden_states).reshape(batch_size, height * width, dim)
        gate = decisions.unsqueeze(-1).to(attended.dtype)
        branch = attended * gate + refined * (1.0 - gate)
        return branch.reshape(batch_size, height, width, dim), decisions


def row_bands(height: int, width: int, multiple: int, band_tokens: int | None) -> list[slice]:
    """Row ranges of about `band_tokens` tokens (all rows when None) whose starts are multiples of `multiple`."""
    if band_tokens is None:
        return [slice(0, height)]
    rows = max(1, band_tokens // (width * multiple)) * multiple
    return [slice(start, min(start + rows, height)) for start in range(0, height, rows)]


class MEMatteWindowLayer(VitDetLayer):
    """transformers' ViTDet window block (same parameters and maths) with its attention in one fused
    `scaled_dot_product_attention` call: the decomposed relative positions enter as an additive mask, and the
    position tables are gathered with an index computed once instead of rebuilt from `arange` at every call.
    On a GPU this is a third of the kernel launches of `VitDetLayer.forward`.

    Takes and returns (batch_size, C, height, width).
    """

    def __init__(self, config, drop_path_rate: float, window_size: int, use_residual_block: bool) -> None:
        super().__init__(config, drop_path_rate, window_size, use_residual_block)
        if use_residual_block:
            use_float32_statistics(self.residual)
        # Per device: not a buffer, because transformers builds models on the meta device and leaves buffers that
        # are not in the checkpoint uninitialised.
        self._relative_index: dict[torch.device, torch.Tensor] = {}

    def forward(self, hidden_states: torch.Tensor, fused_attention: bool = True) -> torch.Tensor:
        """`fused_attention=False` (no autograd only) adds the relative positions to the scores in place."""
        hidden_states = hidden_states.permute(0, 2, 3, 1)
        height, width = hidden_states.shape[1], hidden_states.shape[2]
        windows, padded_size = window_partition(self.norm1(hidden_states), self.window_size)
        attend = self._attend if fused_attention else self._attend_in_place
        attended = window_unpartition(attend(windows), self.window_size, padded_size, (height, width))
        hidden_states = hidden_states + self.drop_path(attended)
        hidden_states = hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))
        hidden_states = hidden_states.permute(0, 3, 1, 2)
        if self.use_residual_block:
            hidden_states = self.residual(hidden_states)
        return hidden_states

    def _split_heads(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(num_windows, window, window, C) -> queries, keys, values (num_windows, heads, window^2, head_dim)."""
        count, size, _, dim = windows.shape
        heads = self.attention.num_heads
        qkv = self.attention.qkv(windows).reshape(count, size * size, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def _merge_heads(self, attended: torch.Tensor, size: int) -> torch.Tensor:
        count, _, _, head_dim = attended.shape
        return self.attention.proj(attended.transpose(1, 2).reshape(count, size, size, -1))

    def _attend(self, windows: torch.Tensor) -> torch.Tensor:
        """(num_windows, window, window, C) -> (num_windows, window, window, C), in one fused attention call."""
        size = windows.shape[1]
        queries, keys, values = self._split_heads(windows)
        bias = None
        if self.attention.use_relative_position_embeddings:
            along_height, along_width = self._relative_positions(queries, size)
            bias = along_height[..., :, None] + along_width[..., None, :]  # (count * heads, size, size, size, size)
            bias = bias.reshape(*queries.shape[:2], size * size, size * size)
        attended = F.scaled_dot_product_attention(queries, keys, values, attn_mask=bias, scale=self.attention.scale)
        return self._merge_heads(attended, size)

    def _attend_in_place(self, windows: torch.Tensor) -> torch.Tensor:
        """`_attend` with the relative positions added to the scores in place: one score map less alive.

        Scores, relative positions and softmax are computed in float32 for half-precision inputs, as SDPA's fused
        kernels accumulate them: in bfloat16 the summed scores keep 8 bits, which moved alphas by 0.03 and flipped
        routing decisions downstream, so the plans would no longer agree.
        """
        size = windows.shape[1]
        queries, keys, values = self._split_heads(windows)
        score_dtype = torch.promote_types(queries.dtype, torch.float32)
        queries, keys = queries.to(score_dtype), keys.to(score_dtype)
        scores = (queries * self.attention.scale) @ keys.transpose(-2, -1)
        if self.attention.use_relative_position_embeddings:
            along_height, along_width = self._relative_positions(queries, size)
            grid = scores.view(-1, size, size, size, size)
            grid += along_height[..., :, None]
            grid += along_width[..., None, :]
        return self._merge_heads(scores.softmax(dim=-1).to(values.dtype) @ values, size)

    def _relative_positions(self, queries: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The decomposed relative positions of MViTv2 / ViTDet, each (num_windows * heads, size, size, size):
        the score of query (i, j) for key (k, l) gains q_(i, j) . R_h[i - k] + q_(i, j) . R_w[j - l], q unscaled."""
        count, heads, _, head_dim = queries.shape
        index = self._relative_index.get(queries.device)
        if index is None:  # index[i, j] = i - j + size - 1: the table row for query i and key j
            # A normal tensor even when built under `torch.inference_mode()`: an inference tensor kept here would
            # make every later forward with gradients fail ("Inference tensors cannot be saved for backward").
            with torch.inference_mode(False):
                positions = torch.arange(size, device=queries.device)
                index = self._relative_index[queries.device] = positions[:, None] - positions[None, :] + size - 1
        table_h = self.attention.rel_pos_h[index].to(queries.dtype)  # (size, size, head_dim)
        table_w = self.attention.rel_pos_w[index].to(queries.dtype)
        grid = queries.reshape(count * heads, size, size, head_dim)
        along_height = torch.einsum("bhwc,hkc->bhwk", grid, table_h)
        along_width = torch.einsum("bhwc,wkc->bhwk", grid, table_w)
        return along_height, along_width


def run_window_layer(layer: MEMatteWindowLayer, hidden_states: torch.Tensor, settings: ForwardSettings) -> torch.Tensor:
    """A ViTDet window block, on the lean inference path band by band.

    Bands start at multiples of the window size, so every band holds whole windows, padded exactly as the
    whole grid would be; attention never crosses a window and the rest is per token, so the result is the
    same. Blocks with a residual conv block (3x3 convolutions) and the differentiable path run whole.
    """
    if not settings.inplace:
        return layer(hidden_states)
    fused = settings.execution.fused_window_attention
    if layer.use_residual_block or not layer.window_size:
        return layer(hidden_states, fused_attention=fused)
    height, width = hidden_states.shape[2], hidden_states.shape[3]
    bands = row_bands(height, width, layer.window_size, settings.execution.band_tokens)
    if len(bands) == 1:
        return layer(hidden_states, fused_attention=fused)
    return torch.cat([layer(hidden_states[:, :, band], fused_attention=fused) for band in bands], dim=2)


class MEMatteBackbone(nn.Module):
    """Patch embedding, absolute positions and the blocks: transformers' ViTDet window blocks, routed global
    blocks in the other positions."""

    def __init__(self, config: MEMatteConfig) -> None:
        super().__init__()
        vitdet_config = config.to_vitdet_config()
        self.config = config
        self.embeddings = as_patch_projection(VitDetEmbeddings(vitdet_config))
        drop_path_rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers).tolist()
        layers = []
        for index, drop_path_rate in enumerate(drop_path_rates):
            use_residual_block = index in config.residual_block_indices
            if index in config.window_block_indices:
                layers.append(MEMatteWindowLayer(vitdet_config, drop_path_rate, config.window_size, use_residual_block))
            else:
                layers.append(MEMatteRoutedLayer(config, drop_path_rate, use_residual_block))
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(layers)

    def forward(
        self,
        pixel_values: torch.Tensor,
        settings: ForwardSettings | None = None,
        output_hidden_states: bool = False,
    ) -> MEMatteBackboneOutput:
        """(batch_size, 4, height, width) -> features (batch_size, C, height // 16, width // 16) and routing.

        `settings` default to the config's (see `resolve_forward_settings`)."""
        settings = settings or resolve_forward_settings(self.config, self.training, device=pixel_values.device)
        hidden_states = self.embeddings(pixel_values)
        grid = hidden_states.shape[0], hidden_states.shape[2], hidden_states.shape[3]
        all_hidden_states = [] if output_hidden_states else None
        masks, log_probs, decisions = [], [], []
        for layer in self.encoder.layer:
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)
            if isinstance(layer, MEMatteRoutedLayer):
                hidden_states, layer_log_probs, layer_decisions = layer(hidden_states, settings)
                decisions.append(layer_decisions.reshape(grid))
                masks.append(decisions[-1] > 0.5)
                if layer_log_probs is not None:
                    log_probs.append(layer_log_probs.reshape(*grid, 2))
            else:
                hidden_states = run_window_layer(layer, hidden_states, settings)
        if all_hidden_states is not None:
            all_hidden_states.append(hidden_states)
        return MEMatteBackboneOutput(
            feature_map=hidden_states,
            routing_masks=tuple(masks),
            router_log_probs=tuple(log_probs) if log_probs else None,
            routing_decisions=tuple(decisions),
            hidden_states=tuple(all_hidden_states) if all_hidden_states is not None else None,
        )


def _folded_conv(conv: nn.Conv2d, batch_norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of conv followed by an inference-mode batch norm, as one convolution, computed in float32
    and returned in the convolution's dtype (folding in half precision would round the scale twice)."""
    dtype = torch.promote_types(conv.weight.dtype, torch.float32)
    scale = batch_norm.weight.to(dtype) * torch.rsqrt(batch_norm.running_var.to(dtype) + batch_norm.eps)
    bias = batch_norm.bias.to(dtype) - batch_norm.running_mean.to(dtype) * scale
    if conv.bias is not None:
        bias = bias + conv.bias.to(dtype) * scale
    weight = conv.weight.to(dtype) * scale[:, None, None, None]
    return weight.to(conv.weight.dtype), bias.to(conv.weight.dtype)


@dataclass(frozen=True)
class FoldedDecoder:
    """The detail-capture decoder's convolutions with their batch norms folded in: (weight, bias) pairs."""

    convstream: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    fusion: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    head: tuple[torch.Tensor, torch.Tensor]
    head_out: nn.Conv2d

    @classmethod
    def fold(cls, decoder: VitMatteDetailCaptureModule) -> FoldedDecoder:
        head = decoder.matting_head.matting_convs
        return cls(
            convstream=tuple(_folded_conv(block.conv, block.batch_norm) for block in decoder.convstream.convs),
            fusion=tuple(_folded_conv(block.conv.conv, block.conv.batch_norm) for block in decoder.fusion_blocks),
            head=_folded_conv(head[0], head[1]),
            head_out=head[3],
        )


def lean_detail_capture(
    folded: FoldedDecoder, features: torch.Tensor, pixel_values: torch.Tensor, band_tokens: int | None = None
) -> torch.Tensor:
    """Inference forward of transformers' `VitMatteDetailCaptureModule` with the same maths and less memory.

    Batch norms are folded into their convolutions (`FoldedDecoder.fold`, once per forward), activations run in place,
    each fusion block's convolution over `concat(detail, upsampled)` is computed as the sum of two convolutions
    (so the concatenation is never built), every detail map is freed once used, and the last fusion block and
    the head, which work at full resolution, run in row chunks with exact halos. The decoder's peak drops to a
    fraction; it dominates MEMatte's memory up to about 2K pixels.

    Args:
        features: (batch_size, C, height // 16, width // 16); pixel_values: (batch_size, 4, height, width).
        band_tokens: the full-resolution rows run in chunks of about this many tokens' worth of pixels (None: at
            once).

    Returns:
        (batch_size, 1, height, width) alphas.
    """
    details = [pixel_values]
    hidden = pixel_values
    for weight, bias in folded.convstream:
        hidden = F.conv2d(hidden, weight, bias, stride=2, padding=1).relu_()
        details.append(hidden)
    del hidden
    for weight, bias in folded.fusion[:-1]:
        upsampled = F.interpolate(features, scale_factor=2, mode="bilinear", align_corners=False)
        features = _fuse_upsampled(weight, bias, upsampled, details.pop()).relu_()  # with D3, D2, D1
    return _last_fusion_and_head(folded, features, pixel_values, band_tokens)


def _last_fusion_and_head(
    folded: FoldedDecoder, features: torch.Tensor, pixel_values: torch.Tensor, band_tokens: int | None
) -> torch.Tensor:
    """The last fusion block and the matting head, in chunks of output rows.

    Output rows [r0, r1) need the fused map on rows [r0 - 1, r1 + 1) (the head's 3x3 conv), which needs the
    input and the upsampled features on rows [r0 - 2, r1 + 2) (the fusion's 3x3 conv), which bilinear
    upsampling computes exactly from input rows [(r0 - 2) // 2 - 1, (r1 + 3) // 2 + 1). Halos are clipped only
    at the image's own border, where the whole-image computation pads and clamps the same way.
    """
    fusion_weight, fusion_bias = folded.fusion[-1]
    head_weight, head_bias = folded.head
    height, width = pixel_values.shape[-2:]
    rows = height if band_tokens is None else max(16, band_tokens * 16 // width)
    alphas = pixel_values.new_empty(pixel_values.shape[0], 1, height, width)
    for r0 in range(0, height, rows):
        r1 = min(r0 + rows, height)
        f0, f1 = max(r0 - 1, 0), min(r1 + 1, height)
        u0, u1 = max(r0 - 2, 0), min(r1 + 2, height)
        i0, i1 = max(u0 // 2 - 1, 0), min((u1 + 1) // 2 + 1, features.shape[-2])
        upsampled_rows = slice(u0 - 2 * i0, u1 - 2 * i0)
        chunk_features = F.interpolate(features[..., i0:i1, :], scale_factor=2, mode="bilinear", align_corners=False)[
            ..., upsampled_rows, :
        ]
        fused = _fuse_upsampled(fusion_weight, fusion_bias, chunk_features, pixel_values[..., u0:u1, :])
        fused = fused[..., f0 - u0 : f1 - u0, :].relu_()
        hidden = F.conv2d(fused, head_weight, head_bias, padding=1)[..., r0 - f0 : r1 - f0, :].relu_()
        alphas[..., r0:r1, :] = torch.sigmoid_(folded.head_out(hidden))
    return alphas


def _fuse_upsampled(
    weight: torch.Tensor, bias: torch.Tensor, upsampled: torch.Tensor, detail: torch.Tensor
) -> torch.Tensor:
    """A fusion block's folded convolution over concat(detail, upsampled), as the sum of two convolutions so
    that the concatenation is never built; the upsampled map, the larger input, is used first."""
    detail_channels = detail.shape[1]
    fused = F.conv2d(upsampled, weight[:, detail_channels:], bias, padding=1)
    fused += F.conv2d(detail, weight[:, :detail_channels], None, padding=1)
    return fused


def decode_in_tiles(
    decoder,
    features: torch.Tensor,
    pixel_values: torch.Tensor,
    tile_size: int,
    context: int,
    patch_size: int,
    tile_batch: int = 1,
) -> torch.Tensor:
    """The upstream tiled decoder: bounded memory at any resolution.

    The input is zero-padded to a multiple of `tile_size` and the feature grid to the matching multiple of
    tokens. Each tile is decoded with up to `context` pixels (context / patch_size tokens) of its
    neighbours on every side (none past the padded border) and only its centre is kept. Tiles of the same
    shape (inner tiles, and those on each border) are decoded `tile_batch` at a time in one batched call: the
    same tiles with the same context give the same alphas, in fewer, larger kernels.

    Args:
        decoder: a callable (features, pixel_values) -> alphas, per image (no statistics across the batch).
        features: (batch_size, C, height // patch_size, width // patch_size).
        pixel_values: (batch_size, 4, height, width), height and width multiples of 2 * patch_size.

    Returns:
        (batch_size, 1, height, width) alphas.
    """
    height, width = pixel_values.shape[-2:]
    padded_height = math.ceil(height / tile_size) * tile_size
    padded_width = math.ceil(width / tile_size) * tile_size
    if (padded_height, padded_width) != (height, width):  # F.pad copies even when it adds nothing
        pixel_values = F.pad(pixel_values, (0, padded_width - width, 0, padded_height - height))
        features = F.pad(
            features,
            (0, padded_width // patch_size - features.shape[-1], 0, padded_height // patch_size - features.shape[-2]),
        )
    alphas = pixel_values.new_empty(pixel_values.shape[0], 1, padded_height, padded_width)
    by_shape: dict[tuple[int, int], list[DecoderTile]] = {}
    for top in range(0, padded_height, tile_size):
        for left in range(0, padded_width, tile_size):
            tile = DecoderTile.around(top, left, tile_size, context, padded_height, padded_width)
            by_shape.setdefault(tile.shape, []).append(tile)
    for tiles in by_shape.values():
        for start in range(0, len(tiles), tile_batch):
            _decode_tile_batch(decoder, features, pixel_values, tiles[start : start + tile_batch], patch_size, alphas)
    return alphas[..., :height, :width]


@dataclass(frozen=True)
class DecoderTile:
    """A decoder tile: the kept square [top, top + size) x [left, left + size) and the window decoded for it,
    rows [y0, y1) and columns [x0, x1), which adds the context that lies inside the padded image."""

    top: int
    left: int
    size: int
    y0: int
    y1: int
    x0: int
    x1: int

    @classmethod
    def around(cls, top: int, left: int, size: int, context: int, height: int, width: int) -> DecoderTile:
        y0, x0 = max(top - context, 0), max(left - context, 0)
        y1, x1 = min(top + size + context, height), min(left + size + context, width)
        return cls(top, left, size, y0, y1, x0, x1)

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def window(self, tensor: torch.Tensor, scale: int = 1) -> torch.Tensor:
        """The decoded window of a (..., H, W) tensor sampled every `scale` pixels (the feature grid: patch size)."""
        return tensor[..., self.y0 // scale : self.y1 // scale, self.x0 // scale : self.x1 // scale]

    def centre(self, tile_alphas: torch.Tensor) -> torch.Tensor:
        """The kept square of the alphas decoded for this tile's window."""
        top, left = self.top - self.y0, self.left - self.x0
        return tile_alphas[..., top : top + self.size, left : left + self.size]


def _decode_tile_batch(
    decoder,
    features: torch.Tensor,
    pixel_values: torch.Tensor,
    tiles: list[DecoderTile],
    patch_size: int,
    alphas: torch.Tensor,
) -> None:
    """Decode tiles of one shape in one call and write their centres into `alphas`."""
    if len(tiles) == 1:  # views, no copy
        tile_features, tile_pixels = tiles[0].window(features, patch_size), tiles[0].window(pixel_values)
    else:
        tile_features = torch.cat([tile.window(features, patch_size) for tile in tiles])
        tile_pixels = torch.cat([tile.window(pixel_values) for tile in tiles])
    decoded = decoder(tile_features, tile_pixels).split(pixel_values.shape[0])
    for tile, tile_alphas in zip(tiles, decoded, strict=True):
        alphas[..., tile.top : tile.top + tile.size, tile.left : tile.left + tile.size] = tile.centre(tile_alphas)


class MEMattePreTrainedModel(PreTrainedModel):
    config_class = MEMatteConfig
    config: MEMatteConfig
    base_model_prefix = "mematte"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = False
    _no_split_modules = []
    # The routers decide by thresholds and a top-k: loading with `dtype=torch.bfloat16` / `float16` keeps them in
    # float32 (they compute in float32 whatever their weights' dtype; this also keeps the weights unrounded).
    _keep_in_fp32_modules_strict = ["router"]
    # The loss is a mean over the batch, never normalised by `num_items_in_batch`: `Trainer` must not pass it, and
    # divides the loss for gradient accumulation itself. `forward` declares every argument it takes (no `**kwargs`).
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """ViTDet's initialisation for the backbone, ViTMatte's for the decoder; routers and LTRMs like any
        linear or conv layer."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv1d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.normal_(module.weight, mean=0.0, std=std)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, VitDetEmbeddings):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
        elif isinstance(module, VitDetResBottleneckBlock):
            for layer in (module.conv1, module.conv2, module.conv3):
                init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            for norm in (module.norm1, module.norm2):
                init.ones_(norm.weight)
                init.zeros_(norm.bias)
            # The residual branch starts as the identity.
            init.zeros_(module.norm3.weight)
            init.zeros_(module.norm3.bias)
        if getattr(module, "rel_pos_h", None) is not None:
            init.trunc_normal_(module.rel_pos_h, mean=0.0, std=std)
            init.trunc_normal_(module.rel_pos_w, mean=0.0, std=std)


def vitmatte_engine_overrides(vitmatte_config) -> dict:
    """The MEMatte config fields that make this engine compute a ViTMatte: every token global, the
    relative-position grid of ViTDet's global blocks (`image_size // patch_size`), and the decoder over the whole
    image (MEMatte's tiles see only 64 px of context, which changes a ViTMatte's alphas)."""
    backbone = vitmatte_config.backbone_config
    image_size, patch_size = backbone.image_size, backbone.patch_size
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    patch_size = patch_size[0] if isinstance(patch_size, (list, tuple)) else patch_size
    grid = image_size // patch_size if backbone.use_relative_position_embeddings else None
    return {"routing_mode": "global", "global_relative_position_size": grid, "decoder_tile_size": 0}


class MEMatteForImageMatting(MEMattePreTrainedModel):
    """MEMatte: a routed ViT backbone and ViTMatte's detail-capture decoder.

    Example:

    ```python
    >>> from mematte_hf import MEMatteForImageMatting  # loading a class registers "mematte" with the Auto classes
    >>> from transformers import AutoImageProcessor, AutoModelForImageMatting
    >>> model = AutoModelForImageMatting.from_pretrained("path/to/mematte")
    >>> processor = AutoImageProcessor.from_pretrained("path/to/mematte")
    >>> inputs = processor(images=image, trimaps=trimap, return_tensors="pt")
    >>> alphas = model(**inputs).alphas  # (1, 1, padded_height, padded_width)
    ```
    """

    def __init__(self, config: MEMatteConfig) -> None:
        super().__init__(config)
        self.backbone = MEMatteBackbone(config)
        self.decoder = VitMatteDetailCaptureModule(config.to_vitmatte_config())
        self._decoder_function = lean_detail_capture  # compiled by `compile_blocks`
        self.post_init()

    @classmethod
    def from_vitmatte(
        cls,
        vitmatte: str | PreTrainedModel,
        output_loading_info: bool = False,
        run_as_vitmatte: bool = False,
        **config_overrides,
    ) -> MEMatteForImageMatting | tuple[MEMatteForImageMatting, WeightTransferReport]:
        """A MEMatte model initialised from a transformers ViTMatte (a `VitMatteForImageMatting` or its id/path).

        Every ViTMatte weight whose maths MEMatte shares is copied; the routers and LTRMs are newly initialised
        and the relative position tables of ViTMatte's global blocks are dropped (MEMatte's global blocks have
        none). This is the starting point of distillation training, with the ViTMatte as the frozen teacher.
        The report of new and dropped weights is logged, and returned with `output_loading_info=True`.

        `run_as_vitmatte=True` builds the ViTMatte itself on this engine instead: the global blocks keep their
        relative positions, every token goes to global attention (`routing_mode="global"`), nothing is dropped,
        and the alphas are those of `VitMatteForImageMatting` on the lean inference path.
        """
        from transformers import VitMatteForImageMatting

        if isinstance(vitmatte, (str, bytes)) or hasattr(vitmatte, "__fspath__"):
            vitmatte = VitMatteForImageMatting.from_pretrained(vitmatte)
        if run_as_vitmatte:
            config_overrides = {**vitmatte_engine_overrides(vitmatte.config), **config_overrides}
        config = MEMatteConfig.from_vitmatte_config(vitmatte.config, **config_overrides)
        model = cls(config)
        source = vitmatte.state_dict()
        target = model.state_dict()
        shared = {key: value for key, value in source.items() if key in target and value.shape == target[key].shape}
        model.load_state_dict(shared, strict=False)
        report = WeightTransferReport(
            copied=sorted(shared),
            new=sorted(set(target) - set(shared)),
            dropped=sorted(set(source) - set(shared)),
        )
        if run_as_vitmatte:
            if report.dropped:  # a ViTMatte whose maths this engine does not share: refuse rather than differ
                raise ValueError(f"this ViTMatte has weights the engine cannot run: {', '.join(report.dropped[:8])}")
            logger.info(report.summary())  # the new weights are the unused routers and LTRMs
        else:
            logger.warning(report.summary())
        return (model, report) if output_loading_info else model

    def compile_blocks(self, **compile_options) -> None:
        """Opt-in: `torch.compile` the parts whose shapes are fixed for a given image size (the window blocks, the
        routers, LTRMs, MLPs and residual blocks, and the inference decoder per tile shape) into fewer, fused
        kernels. The routed global attention, whose token count changes with every image and router, stays eager,
        so it never triggers a recompilation. The alphas are those of the eager model.

        `compile_options` go to `torch.compile` (e.g. `mode="max-autotune"`, `backend=...`). On ZeroGPU, where
        only ahead-of-time compilation is allowed, do not call this at run time.
        """
        for layer in self.backbone.encoder.layer:
            parts = [layer] if isinstance(layer, MEMatteWindowLayer) else [layer.router, layer.ltrm, layer.mlp]
            if isinstance(layer, MEMatteRoutedLayer) and layer.residual is not None:
                parts.append(layer.residual)
            for part in parts:
                part.compile(**compile_options)
        self._decoder_function = torch.compile(lean_detail_capture, **compile_options)

    def decode(
        self,
        features: torch.Tensor,
        pixel_values: torch.Tensor,
        decoder_tile_size: int | None = None,
        execution: ExecutionPlan | str | None = None,
    ) -> torch.Tensor:
        """Backbone features (B, C, H/16, W/16) and input (B, 4, H, W) -> alphas (B, 1, H, W), in tiles of
        `decoder_tile_size` pixels (default: the config's; 0 decodes the whole image at once), laid out by the
        execution plan (default: the one of the input's device).

        With autograd recording (training, or eval mode with gradients) this runs transformers' decoder module;
        otherwise the lean inference decoder with the same maths.
        """
        tile_size = self.config.decoder_tile_size if decoder_tile_size is None else decoder_tile_size
        execution = resolve_execution(execution, pixel_values.device)
        if self.training:  # batch norms use the statistics of what they see: one tile at a time
            decoder, tile_batch = self.decoder, 1
        elif torch.is_grad_enabled():
            decoder, tile_batch = self.decoder, execution.tile_batch
        else:
            # Folded at every call, never cached between calls: a cache cannot see every way weights change (a
            # write through `.data` leaves no trace on the tensor), and folding costs about 60 small operations
            # once per forward, shared by all its tiles (0.8 ms for ViT-S on a CPU).
            folded = FoldedDecoder.fold(self.decoder)
            decoder = partial(self._decoder_function, folded, band_tokens=execution.band_tokens)
            tile_batch = execution.tile_batch
        if not tile_size:
            return decoder(features, pixel_values)
        return decode_in_tiles(
            decoder,
            features,
            pixel_values,
            tile_size=tile_size,
            context=self.config.decoder_tile_context,
            patch_size=self.config.patch_size,
            tile_batch=tile_batch,
        )

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        teacher_features: torch.Tensor | None = None,
        max_global_tokens: int | None = None,
        decoder_tile_size: int | None = None,
        routing_mode: str | None = None,
        execution: ExecutionPlan | str | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MEMatteImageMattingOutput | tuple:
        r"""
        pixel_values (`torch.Tensor` of shape `(batch_size, 4, height, width)`):
            Normalised RGB and the trimap in [0, 1], as `MEMatteImageProcessor` prepares them; height and width
            multiples of 32.
        labels (`torch.Tensor` of shape `(batch_size, 1, height, width)` or `(batch_size, height, width)`, *optional*):
            Ground-truth alpha in [0, 1]; when given, `loss` and `loss_parts` are returned.
        teacher_features (`torch.Tensor` of shape `(batch_size, C, height // 16, width // 16)`, *optional*):
            A frozen teacher's backbone features for the distillation loss.
        max_global_tokens (`int`, *optional*, defaults to `config.max_global_tokens`):
            The cap k for this call: at most k tokens per image and router go to global attention; 0 = no cap.
        decoder_tile_size (`int`, *optional*, defaults to `config.decoder_tile_size`):
            Decoder tile in pixels for this call (a multiple of 32); 0 decodes the whole image at once.
        routing_mode (`str`, *optional*, defaults to `config.routing_mode`):
            `"adaptive"`, `"global"` (every token to global attention) or `"light"` (every token to the LTRM).
        execution (`ExecutionPlan` or `str`, *optional*, defaults to the plan of the input's device):
            How the lean inference path lays its work out, never what it computes: `"cpu"` (cache-sized row
            bands, tiles one by one) or `"gpu"` (bands of 65536 tokens: the whole grid up to 4000 px, decoder tiles
            in batches: fewer, larger kernels), or an `ExecutionPlan`.

        The lean inference path (in-place updates, row bands, folded batch norms) runs when autograd is not
        recording (`torch.no_grad()` / `torch.inference_mode()`); with gradients on, eval mode runs the same
        routing through differentiable operations and gives the same output.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        settings = resolve_forward_settings(
            self.config,
            self.training,
            max_global_tokens,
            decoder_tile_size,
            routing_mode,
            execution,
            pixel_values.device,
        )
        self._check_input(pixel_values)
        backbone_output = self.backbone(pixel_values, settings, output_hidden_states=output_hidden_states)
        features = backbone_output.feature_map
        alphas = self.decode(features, pixel_values, settings.decoder_tile_size, settings.execution)
        compression_ratio = torch.stack([d.float().mean() for d in backbone_output.routing_decisions]).mean()

        loss, loss_parts = None, None
        if labels is not None:
            loss_parts = MattingLoss()(
                alphas,
                labels.reshape(alphas.shape).to(alphas.dtype),
                pixel_values[:, -1:],
                student_features=features,
                teacher_features=teacher_features,
                gamma=compression_ratio if settings.routing_mode == "adaptive" else None,
                rho=self.config.compression_ratio_target,
            )
            loss = loss_parts.pop("loss")

        output = MEMatteImageMattingOutput(
            loss=loss,
            alphas=alphas,
            routing_masks=backbone_output.routing_masks,
            router_log_probs=backbone_output.router_log_probs,
            backbone_features=features,
            compression_ratio=compression_ratio,
            loss_parts=loss_parts,
            hidden_states=backbone_output.hidden_states,
        )
        return output if return_dict else output.to_tuple()

    def _check_input(self, pixel_values: torch.Tensor) -> None:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must have shape (batch_size, {self.config.num_channels}, height, width) "
                f"(RGB plus trimap, as VitMatteImageProcessor prepares them), got {tuple(pixel_values.shape)}"
            )
        multiple = 2 * self.config.patch_size
        if pixel_values.shape[-2] % multiple or pixel_values.shape[-1] % multiple:
            raise ValueError(
                f"pixel_values height and width must be multiples of {multiple}, got "
                f"{tuple(pixel_values.shape[-2:])}; let the image processor pad them (do_pad=True)"
            )


__all__ = ["MEMatteForImageMatting", "MEMattePreTrainedModel", "MEMatteImageMattingOutput", "select_global_tokens"]
