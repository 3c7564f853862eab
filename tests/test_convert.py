"""`mematte convert`: architecture inference, key mapping, and one clear error for every bad checkpoint."""

from __future__ import annotations

import collections
import hashlib
import json
import pickle

import pytest
import torch
from huggingface_hub import ModelCard
from mematte_hf.model_card import write_model_card
from transformers import AutoModelForImageMatting

from mematte_hf.cli import main
from mematte_hf.convert import infer_config, load_upstream_state_dict
from mematte_hf.errors import CheckpointError
from tests.utils import tiny_model


def _upstream_state_dict(model) -> dict[str, torch.Tensor]:
    """Write a MEMatte model back in the upstream naming (the inverse of the converter's map)."""
    global_blocks = model.config.global_block_indices
    state = {}
    for key, value in model.state_dict().items():
        upstream = key.replace("backbone.embeddings.position_embeddings", "backbone.pos_embed")
        upstream = upstream.replace("backbone.embeddings.projection", "backbone.patch_embed.proj")
        upstream = upstream.replace("backbone.encoder.layer.", "backbone.blocks.")
        upstream = upstream.replace(".attention.", ".attn.").replace(".ltrm.", ".efficient_block.")
        if ".router." in upstream:
            block = int(upstream.split(".")[2])
            suffix = upstream.split(".router.")[1]
            suffix = suffix.replace("in_norm.", "in_conv.0.").replace("in_proj.", "in_conv.1.")
            suffix = suffix.replace("out_proj.", "out_conv.")
            upstream = f"backbone.routers.{global_blocks.index(block)}.{suffix}"
        upstream = upstream.replace(".batch_norm.", ".bn.").replace("decoder.fusion_blocks.", "decoder.fusion_blks.")
        state[upstream] = value.clone()
    return state


@pytest.fixture
def upstream_checkpoint(tmp_path):
    model = tiny_model(seed=21)
    state = _upstream_state_dict(model)
    state["teacher_backbone.blocks.0.norm1.weight"] = torch.ones(32)  # teachers are ignored
    path = tmp_path / "upstream.pth"
    torch.save({"model": state, "iteration": 10}, path)
    return model, state, path


def _convert(arguments, capsys) -> tuple[int, str]:
    code = main(["convert", *map(str, arguments)])
    return code, capsys.readouterr().err


def test_convert_infers_the_architecture_and_reproduces_the_model(upstream_checkpoint, tmp_path, capsys):
    model, state, path = upstream_checkpoint
    config = infer_config(load_upstream_state_dict(path))
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "window_block_indices"):
        assert getattr(config, field) == getattr(model.config, field)
    code, _ = _convert([path, tmp_path / "out", "--max-global-tokens", "9", "--decoder-tile-size", "64"], capsys)
    assert code == 0
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "modeling_mematte.py"):
        assert (tmp_path / "out" / name).is_file(), name
    loaded = AutoModelForImageMatting.from_pretrained(tmp_path / "out")
    assert (loaded.config.max_global_tokens, loaded.config.decoder_tile_size) == (9, 64)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)


def _error_for(state, tmp_path, capsys, *extra) -> str:
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    code, error = _convert([path, tmp_path / "out", *extra], capsys)
    assert code == 1
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1
    return error


def test_missing_key_is_named(upstream_checkpoint, tmp_path, capsys):
    _, state, _ = upstream_checkpoint
    del state["backbone.routers.1.out_conv.4.bias"]
    error = _error_for(state, tmp_path, capsys)
    assert "missing keys" in error and "layer.3.router.out_proj.4.bias" in error


def test_wrong_shape_is_named(upstream_checkpoint, tmp_path, capsys):
    _, state, _ = upstream_checkpoint
    state["backbone.blocks.1.efficient_block.fc2.weight"] = torch.zeros(32, 7)
    error = _error_for(state, tmp_path, capsys)
    assert "wrong shapes" in error and "layer.1.ltrm.fc2.weight (32, 7) != (32, 64)" in error


def test_left_over_key_is_named(upstream_checkpoint, tmp_path, capsys):
    _, state, _ = upstream_checkpoint
    state["backbone.routers.5.in_conv.1.weight"] = torch.zeros(32, 32)
    error = _error_for(state, tmp_path, capsys)
    assert "unexpected keys" in error and "backbone.routers.5.in_conv.1.weight" in error


def test_inconsistent_head_count_is_explained(upstream_checkpoint, tmp_path, capsys):
    _, state, _ = upstream_checkpoint
    error = _error_for(state, tmp_path, capsys, "--num-heads", "4")
    assert "--num-heads 4 does not fit" in error and "2 heads" in error


def test_file_that_is_not_a_checkpoint(tmp_path, capsys):
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, error = _convert([path, tmp_path / "out"], capsys)
    assert code == 1 and "is not a PyTorch checkpoint" in error


def test_missing_file(tmp_path, capsys):
    code, error = _convert([tmp_path / "nope.pth", tmp_path / "out"], capsys)
    assert code == 1 and "does not exist" in error


def test_pickle_with_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": collections.Counter(a=1)}, handle)  # an object weights_only refuses
    code, error = _convert([path, tmp_path / "out"], capsys)
    assert code == 1 and "Python objects other than tensors" in error


def test_weights_of_another_model(tmp_path, capsys):
    path = tmp_path / "other.pth"
    torch.save({"model": {"encoder.weight": torch.zeros(3)}}, path)
    code, error = _convert([path, tmp_path / "out"], capsys)
    assert code == 1 and "not an upstream MEMatte/ViTMatte checkpoint" in error


def test_state_dict_loader_rejects_non_tensor_payload(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a MEMatte checkpoint"):
        load_upstream_state_dict(path)


def test_push_to_hub_without_network_keeps_the_local_folder(upstream_checkpoint, tmp_path):
    import os
    import subprocess
    import sys

    _, _, path = upstream_checkpoint
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run(
        [sys.executable, "-m", "mematte_hf.cli", "convert", str(path), str(tmp_path / "out"), "--push-to-hub", "me/x"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert result.returncode == 1
    assert "could not reach the Hugging Face Hub" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "config.json").is_file()


def _release_sized_checkpoint(tmp_path, name: str) -> tuple[object, object]:
    """A 4-block upstream checkpoint with ViT-S's width (384, 6 heads), saved under `name`."""
    model = tiny_model(seed=22, hidden_size=384, num_attention_heads=6, routed_fraction=None)
    path = tmp_path / name
    torch.save({"model": _upstream_state_dict(model)}, path)
    return model, path


def test_convert_records_the_source_and_the_authors_scores_apart_from_measured_ones(tmp_path, capsys):
    _, path = _release_sized_checkpoint(tmp_path, "MEMatte_ViTS_DIM.pth")
    code, _ = _convert([path, tmp_path / "out", "--release", "vits-composition1k"], capsys)
    assert code == 0
    record = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert record == {
        "checkpoint": "MEMatte_ViTS_DIM.pth",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "release": "vits-composition1k",
    }
    measured = {"mean": {"sad": 30.5, "mse": 6.25, "grad": 12.5, "conn": 25.75}, "num_images": 3}
    card_path = write_model_card(tmp_path / "out", repo_id="me/mematte-vits", metrics=measured, metrics_dataset="X")
    text = card_path.read_text(encoding="utf-8")
    assert f"`MEMatte_ViTS_DIM.pth` (SHA-256 `{record['sha256']}`)" in text
    reported = text[text.index("Reported by the authors") : text.index("Measured with `mematte evaluate`")]
    assert "| 21.90 | 3.37 | 7.43 | 16.77 |" in reported and "Composition-1K" in reported
    assert "| 30.50 | 6.25 | 12.50 | 25.75 |" in text[text.index("Measured with `mematte evaluate`") :]
    values = [result.metric_value for result in ModelCard.load(card_path).data.eval_results]
    assert values == pytest.approx([30.5, 6.25, 12.5, 25.75])  # the model-index holds measured scores only


def test_convert_without_release_records_the_file_and_no_scores(upstream_checkpoint, tmp_path, capsys):
    _, _, path = upstream_checkpoint
    assert _convert([path, tmp_path / "out"], capsys)[0] == 0
    text = write_model_card(tmp_path / "out", repo_id="me/x").read_text(encoding="utf-8")
    assert "Converted with `mematte convert` from `upstream.pth`" in text
    assert "Reported by the authors" not in text


def test_release_of_another_backbone_is_refused(upstream_checkpoint, tmp_path, capsys):
    _, _, path = upstream_checkpoint
    code, err = _convert([path, tmp_path / "out", "--release", "vitb-composition1k"], capsys)
    assert code == 1
    assert "hidden size 32" in err and "vitb-composition1k is a ViT-B" in err
    assert not (tmp_path / "out").exists()
