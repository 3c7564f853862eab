"""MEMatte model configuration.

This file is self-contained (it imports only transformers) because `save_pretrained` copies it next to the
weights, so that `trust_remote_code=True` loads a checkpoint where `mematte_hf` is not installed.
"""

from __future__ import annotations

from typing import Literal

from transformers import PreTrainedConfig, VitDetConfig, VitMatteConfig

ROUTING_MODES = ("adaptive", "global", "light")


class MEMatteConfig(PreTrainedConfig):
    r"""
    Configuration of a [`MEMatteForImageMatting`]: a plain ViT backbone (as in ViTDet / ViTMatte) whose global
    attention blocks each have a router in front, plus ViTMatte's detail-capture decoder. The defaults give
    MEMatte ViT-S.

    Backbone (same meaning as in [`VitDetConfig`]):
        hidden_size (`int`, defaults to 384): token width C (ViT-S 384, ViT-B 768).
        num_hidden_layers (`int`, defaults to 12): number of transformer blocks.
        num_attention_heads (`int`, defaults to 6): attention heads (ViT-S 6, ViT-B 12).
        mlp_ratio (`int`, defaults to 4): MLP hidden width as a multiple of `hidden_size`.
        hidden_act (`str`, defaults to `"gelu"`): activation of the MLPs, routers, LTRMs and residual blocks.
        layer_norm_eps (`float`, defaults to 1e-6): epsilon of every LayerNorm in the backbone.
        qkv_bias (`bool`, defaults to `True`): bias on the query/key/value projection.
        num_channels (`int`, defaults to 4): RGB plus the trimap.
        patch_size (`int`, defaults to 16): patch embedding kernel and stride.
        pretrain_image_size (`int`, defaults to 224): image size of the learned 14x14 absolute position grid.
        window_size (`int`, defaults to 14): window of the window-attention blocks.
        window_block_indices (`list[int]`): blocks with window attention; every other block is a global block
            with a router and an LTRM.
        residual_block_indices (`list[int]`): blocks followed by a residual bottleneck conv block.
        use_relative_position_embeddings (`bool`, defaults to `True`): decomposed relative positions in the
            window blocks (MEMatte's global blocks never have them).
        global_relative_position_size (`int`, *optional*): the token grid of relative-position tables in the
            global blocks, as ViTMatte's global blocks have (ViTDet's `image_size // patch_size`, 32 for the
            hustvl checkpoints). Set only for a ViTMatte checkpoint run by this engine
            (`MEMatteForImageMatting.from_vitmatte(..., run_as_vitmatte=True)`), which needs `routing_mode="global"`:
            MEMatte's routed attention has no relative positions.
        drop_path_rate (`float`, defaults to 0.0): stochastic depth, used in training only.
        dropout_prob (`float`, defaults to 0.0): MLP dropout, used in training only.
        initializer_range (`float`, defaults to 0.02): std of the truncated normal initialisation.

    Decoder (same meaning as in [`VitMatteConfig`]):
        batch_norm_eps (`float`, defaults to 1e-5), convstream_hidden_sizes (`[48, 96, 192]`),
        fusion_hidden_sizes (`[256, 128, 64, 32]`).

    MEMatte:
        routing_mode (`str`, defaults to `"adaptive"`): `"adaptive"` lets each router choose, `"global"` sends
            every token to global attention (the model then behaves as a ViTMatte without relative positions
            in its global blocks), `"light"` sends every token to the LTRM.
        max_global_tokens (`int`, defaults to 18500): the cap k; at inference at most k tokens per image and
            router go to global attention (the k with the largest router margin). `None` or 0 = no cap.
            This bounds memory at any resolution.
        decoder_tile_size (`int`, defaults to 512): decode in tiles of this many pixels with
            `decoder_tile_context` pixels of context (the upstream inference default, needed at high
            resolution). 0 or `None` decodes the whole image at once. Must be a multiple of
            `patch_size * 2`.
        decoder_tile_context (`int`, defaults to 64): context in pixels around each tile; a multiple of
            `patch_size`.
        compression_ratio_target (`float`, defaults to 0.25): rho, the target fraction of tokens routed to
            global attention in training.
        gumbel_temperature (`float`, defaults to 1.0): temperature of the training-time Gumbel-softmax.
    """

    model_type = "mematte"

    hidden_size: int = 384
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    mlp_ratio: int = 4
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    num_channels: int = 4
    patch_size: int = 16
    pretrain_image_size: int = 224
    window_size: int = 14
    window_block_indices: list[int] | tuple[int, ...] = (0, 1, 3, 4, 6, 7, 9, 10)
    residual_block_indices: list[int] | tuple[int, ...] = (2, 5, 8, 11)
    use_relative_position_embeddings: bool = True
    global_relative_position_size: int | None = None
    drop_path_rate: float = 0.0
    dropout_prob: float = 0.0
    initializer_range: float = 0.02
    batch_norm_eps: float = 1e-5
    convstream_hidden_sizes: list[int] | tuple[int, ...] = (48, 96, 192)
    fusion_hidden_sizes: list[int] | tuple[int, ...] = (256, 128, 64, 32)
    routing_mode: Literal["adaptive", "global", "light"] = "adaptive"
    max_global_tokens: int | None = 18500
    decoder_tile_size: int | None = 512
    decoder_tile_context: int = 64
    compression_ratio_target: float = 0.25
    gumbel_temperature: float = 1.0

    def __post_init__(self, **kwargs):
        self.window_block_indices = [int(i) for i in self.window_block_indices]
        self.residual_block_indices = [int(i) for i in self.residual_block_indices]
        self.convstream_hidden_sizes = [int(i) for i in self.convstream_hidden_sizes]
        self.fusion_hidden_sizes = [int(i) for i in self.fusion_hidden_sizes]
        super().__post_init__(**kwargs)
        self.validate_mematte()

    def validate_mematte(self) -> None:
        """Raise a `ValueError` naming the field when the MEMatte-specific settings are inconsistent."""
        if self.routing_mode not in ROUTING_MODES:
            raise ValueError(f"routing_mode must be one of {ROUTING_MODES}, got {self.routing_mode!r}")
        if self.global_relative_position_size is not None and self.routing_mode != "global":
            raise ValueError(
                "global_relative_position_size (a ViTMatte checkpoint's global relative positions) needs "
                f"routing_mode='global', got {self.routing_mode!r}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.max_global_tokens is not None and self.max_global_tokens < 0:
            raise ValueError(f"max_global_tokens must be positive, 0 or None, got {self.max_global_tokens}")
        tile_unit = 2 * self.patch_size
        if self.decoder_tile_size and self.decoder_tile_size % tile_unit:
            raise ValueError(f"decoder_tile_size must be a multiple of {tile_unit}, got {self.decoder_tile_size}")
        if self.decoder_tile_context % self.patch_size:
            raise ValueError(
                f"decoder_tile_context must be a multiple of {self.patch_size}, got {self.decoder_tile_context}"
            )

    @property
    def global_block_indices(self) -> list[int]:
        """The blocks with global attention, each with a router and an LTRM, in order."""
        return [i for i in range(self.num_hidden_layers) if i not in self.window_block_indices]

    def to_vitdet_config(self) -> VitDetConfig:
        """The equivalent ViTDet backbone configuration (for transformers' ViTDet building blocks)."""
        return VitDetConfig(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            mlp_ratio=self.mlp_ratio,
            hidden_act=self.hidden_act,
            dropout_prob=self.dropout_prob,
            initializer_range=self.initializer_range,
            layer_norm_eps=self.layer_norm_eps,
            image_size=self.pretrain_image_size,
            pretrain_image_size=self.pretrain_image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            qkv_bias=self.qkv_bias,
            drop_path_rate=self.drop_path_rate,
            window_block_indices=list(self.window_block_indices),
            residual_block_indices=list(self.residual_block_indices),
            use_absolute_position_embeddings=True,
            use_relative_position_embeddings=self.use_relative_position_embeddings,
            window_size=self.window_size,
            out_features=[f"stage{self.num_hidden_layers}"],
        )

    def to_vitmatte_config(self, global_image_size: int = 512) -> VitMatteConfig:
        """The ViTMatte configuration with the same backbone and decoder.

        ViTMatte's global blocks carry relative position tables sized for `global_image_size` (512 in the
        released ViTMatte checkpoints); MEMatte's global blocks have none.
        """
        backbone_config = self.to_vitdet_config()
        backbone_config.image_size = global_image_size
        return VitMatteConfig(
            backbone_config=backbone_config,
            hidden_size=self.hidden_size,
            batch_norm_eps=self.batch_norm_eps,
            initializer_range=self.initializer_range,
            convstream_hidden_sizes=list(self.convstream_hidden_sizes),
            fusion_hidden_sizes=list(self.fusion_hidden_sizes),
        )

    @classmethod
    def from_vitmatte_config(cls, vitmatte_config: VitMatteConfig, **overrides) -> MEMatteConfig:
        """A MEMatte configuration with the backbone and decoder of a ViTMatte configuration."""
        backbone = vitmatte_config.backbone_config
        fields = {
            "hidden_size": backbone.hidden_size,
            "num_hidden_layers": backbone.num_hidden_layers,
            "num_attention_heads": backbone.num_attention_heads,
            "mlp_ratio": backbone.mlp_ratio,
            "hidden_act": backbone.hidden_act,
            "layer_norm_eps": backbone.layer_norm_eps,
            "qkv_bias": backbone.qkv_bias,
            "num_channels": backbone.num_channels,
            "patch_size": backbone.patch_size,
            "pretrain_image_size": backbone.pretrain_image_size,
            "window_size": backbone.window_size,
            "window_block_indices": list(backbone.window_block_indices),
            "residual_block_indices": list(backbone.residual_block_indices),
            "use_relative_position_embeddings": backbone.use_relative_position_embeddings,
            "batch_norm_eps": vitmatte_config.batch_norm_eps,
            "convstream_hidden_sizes": list(vitmatte_config.convstream_hidden_sizes),
            "fusion_hidden_sizes": list(vitmatte_config.fusion_hidden_sizes),
        }
        fields.update(overrides)
        return cls(**fields)


__all__ = ["MEMatteConfig", "ROUTING_MODES"]
