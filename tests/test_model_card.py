"""The generated Hub model card: YAML metadata the Hub understands, a body built from real data only."""

from __future__ import annotations

import importlib.resources
import json
import re
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard
from mematte_hf.model_card import build_model_card, write_model_card
from mematte_hf.model_card.generator import PIPELINE_TAG, TAGS, main

from mematte_hf.errors import InputError

CONFIG = {
    "model_type": "mematte",
    "architectures": ["MEMatteForImageMatting"],
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "patch_size": 16,
    "window_block_indices": [0, 1, 3, 4, 6, 7, 9, 10],
    "max_global_tokens": 18500,
    "routing_mode": "adaptive",
    "auto_map": {"AutoConfig": "configuration_mematte.MEMatteConfig"},
}
# Arbitrary test values, deliberately unlike any published number.
MEAN = {"sad": 23.4567, "mse": 4.5678, "grad": 8.9012, "conn": 19.8765}
REPO_ID = "someone/mematte-test"


def make_checkpoint(folder: Path, config: dict | None = None) -> Path:
    """A minimal checkpoint folder: config.json plus a one-tensor model.safetensors."""
    import safetensors.torch
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG if config is None else config))
    safetensors.torch.save_file({"w": torch.zeros(1)}, str(folder / "model.safetensors"))
    return folder


def write_metrics(path: Path, mean: dict | None = None) -> Path:
    """A metrics file shaped like the one `mematte evaluate` writes."""
    mean = MEAN if mean is None else mean
    path.write_text(json.dumps({"per_image": {"a.png": mean}, "mean": mean, "num_images": 1}))
    return path


def front_matter(text: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", text, flags=re.DOTALL)
    assert match, "the card must start with a YAML front matter block"
    return yaml.safe_load(match.group(1))


def section(text: str, title: str) -> str:
    """The body of the markdown section `## title`, up to the next `## `."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.DOTALL | re.MULTILINE)
    assert match, f"no section {title!r}"
    return match.group(1)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "checkpoint")


@pytest.fixture
def metrics_file(tmp_path: Path) -> Path:
    return write_metrics(tmp_path / "metrics.json")


def test_front_matter_carries_metadata_and_model_index(checkpoint: Path, metrics_file: Path) -> None:
    path = write_model_card(
        checkpoint,
        repo_id=REPO_ID,
        base_model="hustvl/vitmatte-small-composition-1k",
        datasets=["someone/dim-train"],
        metrics=metrics_file,
        metrics_dataset="Composition-1K",
        metrics_split="test",
    )
    assert path == checkpoint / "README.md"
    meta = front_matter(path.read_text(encoding="utf-8"))
    assert meta["license"] == "mit"
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == PIPELINE_TAG == "image-to-image"
    assert meta["base_model"] == "hustvl/vitmatte-small-composition-1k"
    assert meta["datasets"] == ["someone/dim-train"]
    assert set(TAGS) <= set(meta["tags"])
    [entry] = meta["model-index"]
    assert entry["name"] == "mematte-test"
    [result] = entry["results"]
    assert result["task"]["type"] == "image-matting"
    assert result["dataset"] == {"name": "Composition-1K", "type": "composition-1k", "split": "test"}
    values = {metric["type"]: metric["value"] for metric in result["metrics"]}
    assert values == MEAN


def test_card_round_trips_through_huggingface_hub(checkpoint: Path, metrics_file: Path) -> None:
    path = write_model_card(
        checkpoint,
        repo_id=REPO_ID,
        base_model="hustvl/vitmatte-small-composition-1k",
        metrics=metrics_file,
        metrics_dataset="Composition-1K",
    )
    card = ModelCard.load(path)
    assert card.data.license == "mit"
    assert card.data.base_model == "hustvl/vitmatte-small-composition-1k"
    assert {result.metric_type: result.metric_value for result in card.data.eval_results} == MEAN
    assert {result.dataset_name for result in card.data.eval_results} == {"Composition-1K"}
    # Saving and loading again gives the same metadata: nothing is lost in the YAML.
    again = ModelCard(str(card))
    assert again.data.to_dict() == card.data.to_dict()


def test_body_is_built_from_config_and_metrics(checkpoint: Path, metrics_file: Path) -> None:
    memory = {"resolution": [2048, 2048], "peak_memory_gb": 1.5, "device": "Test GPU"}
    card = build_model_card(
        checkpoint, repo_id=REPO_ID, metrics=metrics_file, metrics_dataset="Composition-1K", memory=memory
    )
    text = card.text
    architecture = section(text, "Architecture")
    assert "| Hidden size | 384 |" in architecture
    assert "12 (8 window attention, 4 global attention with a router)" in architecture
    assert "| Attention heads | 6 |" in architecture
    assert "18500 tokens per image and router" in architecture
    assert "adaptive" in architecture
    usage = section(text, "How to use")
    assert "import mematte_hf" in usage
    assert f'AutoModelForImageMatting.from_pretrained("{REPO_ID}")' in usage
    assert f'AutoImageProcessor.from_pretrained("{REPO_ID}")' in usage
    assert "trust_remote_code=True" in usage
    assert "mematte predict" in usage
    evaluation = section(text, "Evaluation")
    assert "| SAD (/1000) | MSE (x1000) | Grad (/1000) | Conn (/1000) |" in evaluation
    assert "| 23.46 | 4.57 | 8.90 | 19.88 |" in evaluation
    assert "Composition-1K" in evaluation
    assert "| 2048 x 2048 | 1.50 | Test GPU |" in section(text, "Memory")
    citation = section(text, "Citation")
    assert "@inproceedings{lin2025mematte," in citation
    assert "Memory Efficient Matting with Adaptive Token Routing" in citation
    assert "ViTMatte" in citation


def test_without_measurements_there_is_no_model_index_and_no_number(checkpoint: Path) -> None:
    card = build_model_card(checkpoint, repo_id=REPO_ID)
    meta = front_matter(str(card))
    assert "model-index" not in meta
    assert "base_model" not in meta and "datasets" not in meta  # not given, so not claimed
    assert card.data.eval_results is None
    for title in ("Evaluation", "Memory"):
        body = section(card.text, title)
        assert "Not measured for this checkpoint." in body
        assert not re.search(r"\d", body), f"the {title} section must not contain numbers: {body!r}"


def test_missing_config_fields_are_reported_not_guessed() -> None:
    card = build_model_card({"model_type": "mematte"}, repo_id=REPO_ID)
    architecture = section(card.text, "Architecture")
    assert architecture.count("not recorded in config.json") == 6
    # Without auto_map the checkpoint carries no code, so trust_remote_code is not offered.
    assert "trust_remote_code=True` does not work" in section(card.text, "How to use")


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"per_image": {}}, 'no "mean"'),
        ({"mean": {"sad": "n/a"}}, "not a number"),
        ({"mean": {"sad": float("nan")}}, "not a number"),
    ],
)
def test_bad_metrics_are_an_input_error(checkpoint: Path, metrics: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        build_model_card(checkpoint, repo_id=REPO_ID, metrics=metrics, metrics_dataset="Composition-1K")


def test_metrics_need_a_dataset_name(checkpoint: Path, metrics_file: Path) -> None:
    with pytest.raises(InputError, match="--dataset"):
        build_model_card(checkpoint, repo_id=REPO_ID, metrics=metrics_file)


def test_bad_repo_id_and_missing_config_are_input_errors(tmp_path: Path, checkpoint: Path) -> None:
    with pytest.raises(InputError, match="USER/NAME"):
        build_model_card(checkpoint, repo_id="no namespace here")
    with pytest.raises(InputError, match="no config.json"):
        build_model_card(tmp_path / "empty", repo_id=REPO_ID)


def test_command_line_writes_the_card(checkpoint: Path, metrics_file: Path, capsys) -> None:
    argv = [str(checkpoint), "--repo-id", REPO_ID, "--metrics-json", str(metrics_file), "--dataset", "AIM-500"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(checkpoint / "README.md")
    meta = front_matter((checkpoint / "README.md").read_text(encoding="utf-8"))
    assert meta["model-index"][0]["results"][0]["dataset"]["name"] == "AIM-500"


def test_command_line_error_is_one_line(checkpoint: Path, tmp_path: Path, capsys) -> None:
    assert main([str(checkpoint), "--repo-id", REPO_ID, "--metrics-json", str(tmp_path / "absent.json")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    assert not (checkpoint / "README.md").exists()


def test_template_is_installed_with_the_package() -> None:
    template = importlib.resources.files("mematte_hf.model_card") / "template.md"
    assert template.is_file()
    assert "{{ card_data }}" in template.read_text(encoding="utf-8")
