"""Convert an upstream MEMatte checkpoint (`torch.save({"model": state_dict})`) into a transformers folder.

The architecture is read off the tensor shapes; every key is mapped, and anything left over, missing or of
the wrong shape stops the conversion with the names of the keys.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import zipfile
from pathlib import Path

import torch

from .configuration_mematte import MEMatteConfig
from .errors import CheckpointError, InputError
from .releases import RELEASES, Release

TEACHER_PREFIX = "teacher_backbone."
# Where the weights of a converted folder came from; the model card reads it (`mematte_hf.model_card`).
SOURCE_RECORD = "conversion.json"
_BLOCK_KEY = re.compile(r"^backbone\.blocks\.(\d+)\.(.+)$")
_ROUTER_KEY = re.compile(r"^backbone\.routers\.(\d+)\.(.+)$")

# Upstream name -> transformers name, for the parts that are not indexed by block or router.
_FIXED_RENAMES = {
    "backbone.pos_embed": "backbone.embeddings.position_embeddings",
    "backbone.patch_embed.proj.weight": "backbone.embeddings.projection.weight",
    "backbone.patch_embed.proj.bias": "backbone.embeddings.projection.bias",
}
# Renames inside a block: ViTDet's `attn` is transformers' `attention`; MEMatte's LTRM is `ltrm`.
_BLOCK_RENAMES = (("attn.", "attention."), ("efficient_block.", "ltrm."))
_ROUTER_RENAMES = (("in_conv.0.", "in_norm."), ("in_conv.1.", "in_proj."), ("out_conv.", "out_proj."))
_DECODER_RENAMES = ((".bn.", ".batch_norm."), ("decoder.fusion_blks.", "decoder.fusion_blocks."))


def load_upstream_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an upstream checkpoint safely (`weights_only=True`) and return the student's state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (expected an upstream MEMatte .pth file)")
    if not _looks_like_torch_file(path):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (neither a torch.save zip nor a pickle); expected the .pth "
            "file of an upstream MEMatte model"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"{path} holds Python objects other than tensors, so it was not loaded ({first_line}); "
            "convert only checkpoints you trust from their weights (a dict of tensors under 'model')"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint ({type(error).__name__}); expected the .pth file of an "
            "upstream MEMatte model"
        ) from None
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(
            f"{path} is a PyTorch file but not a MEMatte checkpoint: expected a dict of tensors under 'model'"
        )
    student = {key: value for key, value in state_dict.items() if not key.startswith(TEACHER_PREFIX)}
    if "backbone.pos_embed" not in student:
        raise CheckpointError(f"{path} has no 'backbone.pos_embed': it is not an upstream MEMatte/ViTMatte checkpoint")
    return student


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (or, in the legacy format, a pickle starting with the PROTO opcode)."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    return zipfile.is_zipfile(path) or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _block_indices(state_dict: dict[str, torch.Tensor], suffix: str) -> list[int]:
    indices = set()
    for key in state_dict:
        match = _BLOCK_KEY.match(key)
        if match and match.group(2).startswith(suffix):
            indices.add(int(match.group(1)))
    return sorted(indices)


def infer_config(state_dict: dict[str, torch.Tensor], num_heads: int | None = None, **overrides) -> MEMatteConfig:
    """Read the architecture off the tensor shapes of an upstream state dict."""
    hidden_size = state_dict["backbone.pos_embed"].shape[-1]
    patch_weight = state_dict["backbone.patch_embed.proj.weight"]
    depth = len(_block_indices(state_dict, ""))
    window_blocks = _block_indices(state_dict, "attn.rel_pos_h")
    if not window_blocks:
        raise CheckpointError("no block has relative positions, so the window blocks cannot be identified")
    rel_pos = state_dict[f"backbone.blocks.{window_blocks[0]}.attn.rel_pos_h"]
    # rel_pos_h has one row per relative offset (2 * window - 1) and one column per head channel.
    inferred_heads = hidden_size // rel_pos.shape[1]
    if num_heads is not None and num_heads != inferred_heads:
        raise CheckpointError(
            f"--num-heads {num_heads} does not fit the checkpoint: its relative position tables have "
            f"{rel_pos.shape[1]} channels per head, i.e. {inferred_heads} heads of hidden size {hidden_size}"
        )
    num_positions = state_dict["backbone.pos_embed"].shape[1] - 1
    convstream = _numbered_shapes(state_dict, r"decoder\.convstream\.convs\.(\d+)\.conv\.weight")
    fusion = _numbered_shapes(state_dict, r"decoder\.fusion_blks\.(\d+)\.conv\.conv\.weight")
    fields = {
        "hidden_size": hidden_size,
        "num_hidden_layers": depth,
        "num_attention_heads": inferred_heads,
        "mlp_ratio": state_dict["backbone.blocks.0.mlp.fc1.weight"].shape[0] // hidden_size,
        "num_channels": patch_weight.shape[1],
        "patch_size": patch_weight.shape[-1],
        "pretrain_image_size": int(round(math.sqrt(num_positions))) * patch_weight.shape[-1],
        "window_size": (rel_pos.shape[0] + 1) // 2,
        "window_block_indices": window_blocks,
        "residual_block_indices": _block_indices(state_dict, "residual.conv1.weight"),
        "convstream_hidden_sizes": [shape[0] for shape in convstream],
        "fusion_hidden_sizes": [shape[0] for shape in fusion],
    }
    fields.update({key: value for key, value in overrides.items() if value is not None})
    return MEMatteConfig(**fields)


def _numbered_shapes(state_dict: dict[str, torch.Tensor], pattern: str) -> list[torch.Size]:
    regex = re.compile(pattern)
    found = {int(m.group(1)): value.shape for key, value in state_dict.items() if (m := regex.fullmatch(key))}
    return [found[index] for index in sorted(found)]


def _rename(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    for old, new in renames:
        key = key.replace(old, new)
    return key


def map_key(key: str, global_blocks: list[int]) -> str:
    """The transformers name of one upstream key."""
    if key in _FIXED_RENAMES:
        return _FIXED_RENAMES[key]
    if match := _BLOCK_KEY.match(key):
        return f"backbone.encoder.layer.{match.group(1)}.{_rename(match.group(2), _BLOCK_RENAMES)}"
    if match := _ROUTER_KEY.match(key):
        router = int(match.group(1))
        if router >= len(global_blocks):
            return key  # left unmapped: reported as unexpected
        suffix = _rename(match.group(2), _ROUTER_RENAMES)
        return f"backbone.encoder.layer.{global_blocks[router]}.router.{suffix}"
    if key.startswith("decoder."):
        return _rename(key, _DECODER_RENAMES)
    return key


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], global_blocks: list[int]
) -> dict[str, torch.Tensor]:
    """Map every upstream key; fail naming the keys that are left over, missing or of the wrong shape."""
    converted = {map_key(key, global_blocks): value for key, value in state_dict.items()}
    unexpected = sorted(set(converted) - set(expected))
    missing = sorted(set(expected) - set(converted))
    wrong_shape = [
        f"{key} {tuple(converted[key].shape)} != {tuple(expected[key].shape)}"
        for key in sorted(set(converted) & set(expected))
        if converted[key].shape != expected[key].shape
    ]
    problems = []
    for label, keys in (("unexpected keys", unexpected), ("missing keys", missing), ("wrong shapes", wrong_shape)):
        if keys:
            shown = ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError("the checkpoint does not match the MEMatte architecture: " + "; ".join(problems))
    return converted


def convert_checkpoint(
    checkpoint_path: str | Path,
    output_dir: str | Path,
    num_heads: int | None = None,
    max_global_tokens: int | None = None,
    decoder_tile_size: int | None = None,
    release: str | None = None,
) -> Path:
    """Convert an upstream checkpoint into a folder that `from_pretrained` loads (safetensors weights,
    config.json with the Auto-class map and code, preprocessor_config.json) and record where it came from
    (`conversion.json`: the file's name and SHA-256, and `release`, the name of the authors' release it is, if
    given: see `mematte_hf.releases.RELEASES`)."""
    from .modeling_mematte import MEMatteForImageMatting

    known_release = find_release(release)
    state_dict = load_upstream_state_dict(checkpoint_path)
    config = infer_config(
        state_dict, num_heads=num_heads, max_global_tokens=max_global_tokens, decoder_tile_size=decoder_tile_size
    )
    if known_release is not None:
        check_release_architecture(known_release, config.hidden_size)
    model = MEMatteForImageMatting(config).eval()
    converted = convert_state_dict(state_dict, model.state_dict(), config.global_block_indices)
    model.load_state_dict(converted, strict=True)
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    build_image_processor().save_pretrained(output_dir)
    write_source_record(output_dir, Path(checkpoint_path), known_release)
    return output_dir


def find_release(name: str | None) -> Release | None:
    """The authors' release called `name` (None for none); an `InputError` listing the names otherwise."""
    if name is None:
        return None
    if name not in RELEASES:
        raise InputError(f"unknown release {name!r}; the authors' releases are {', '.join(RELEASES)}")
    return RELEASES[name]


def check_release_architecture(release: Release, hidden_size: int) -> None:
    """Refuse to label a checkpoint with a release of another backbone (the scores would be another model's)."""
    if hidden_size != release.hidden_size:
        raise CheckpointError(
            f"the checkpoint has hidden size {hidden_size}, but --release {release.name} is a {release.backbone} "
            f"(hidden size {release.hidden_size}); pick the release this file was downloaded as"
        )


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks (checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_source_record(output_dir: Path, checkpoint_path: Path, release: Release | None) -> Path:
    """Write `conversion.json`: the checkpoint's file name and SHA-256, and the release it is (or null)."""
    record = {
        "checkpoint": checkpoint_path.name,
        "sha256": file_sha256(checkpoint_path),
        "release": release.name if release is not None else None,
    }
    path = output_dir / SOURCE_RECORD
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def build_image_processor(**overrides):
    """The image processor MEMatte checkpoints ship with: upstream's ImageNet mean and std, the trimap appended
    in [0, 1], zero padding by upstream's rule (see `MEMatteImageProcessor`)."""
    from .image_processing_mematte import MEMatteImageProcessor

    return MEMatteImageProcessor(**overrides)


def load_image_processor(model_id_or_path: str | Path, **hub_kwargs):
    """The image processor of a MEMatte folder or Hub id, as a `MEMatteImageProcessor`.

    Folders written before this project had its own processor carry transformers' `VitMatteImageProcessor`
    settings: their mean and std are kept and the padding follows upstream's rule, so old folders give upstream's
    outputs too. A folder without `preprocessor_config.json` gets the default MEMatte processor.
    """
    from .image_processing_mematte import MEMatteImageProcessor

    try:
        return MEMatteImageProcessor.from_pretrained(str(model_id_or_path), **hub_kwargs)
    except OSError:
        return build_image_processor()
