"""Distillation training: a CPU smoke run, layer-wise lr groups, the schedule, the config file and flags, gradients."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants
from transformers import AutoImageProcessor, AutoModelForImageMatting, TrainingArguments, VitMatteForImageMatting

from mematte_hf import MEMatteForImageMatting
from mematte_hf.commands import train as train_command
from mematte_hf.data import collate_matting, load_alpha, load_rgb, make_synthetic_matting_folder, make_trimap
from mematte_hf.errors import HubError, InputError
from mematte_hf.modeling_mematte import TO_GLOBAL, TO_LTRM, MEMatteRoutedLayer
from mematte_hf.predictor import MEMattePredictor
from mematte_hf.training import (
    MEMatteTrainer,
    MEMatteTrainingConfig,
    build_trainer,
    layerwise_parameter_groups,
    load_teacher,
    teacher_backbone_features,
    train,
)
from tests.utils import random_inputs, randomize_weights, tiny_config, tiny_model

RHO = 0.25


@pytest.fixture
def one_thread():
    """The machine is shared: one thread is faster than several fighting, and makes runs reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """Synthetic composites and a tiny random ViTMatte teacher saved as a folder."""
    root = tmp_path_factory.mktemp("training")
    data = make_synthetic_matting_folder(root / "data", num_samples=8, size=(96, 128), seed=0)
    teacher = randomize_weights(VitMatteForImageMatting(tiny_config().to_vitmatte_config()), seed=0)
    teacher.save_pretrained(root / "teacher")
    return {"root": root, "data": data, "teacher": root / "teacher"}


def _tiny_run(workspace: dict[str, Path], output_dir: Path, **overrides) -> MEMatteTrainingConfig:
    fields = {
        "train_data": str(workspace["data"]),
        "vitmatte": str(workspace["teacher"]),
        "output_dir": str(output_dir),
        "crop_size": 64,
        "batch_size": 2,
        "max_steps": 10,
        "warmup_steps": 2,
        "logging_steps": 5,
        "save_steps": 1000,
        "num_workers": 0,
        "seed": 0,
    }
    fields.update(overrides)
    return MEMatteTrainingConfig(**fields)


def _shift_routers(model: MEMatteForImageMatting, margin: float) -> None:
    """Add `margin` to every router's global-minus-LTRM logit (negative: fewer tokens to global attention)."""
    with torch.no_grad():
        for layer in model.backbone.encoder.layer:
            if isinstance(layer, MEMatteRoutedLayer):
                bias = layer.router.out_proj[-1].bias
                bias[TO_GLOBAL] += margin / 2
                bias[TO_LTRM] -= margin / 2


def _mean(logs: list[dict], key: str) -> float:
    return float(np.mean([log[key] for log in logs]))


# ---------------------------------------------------------------- smoke run


@pytest.mark.slow
def test_training_smoke_run_learns_distils_and_moves_gamma_to_rho(workspace, tmp_path, one_thread):
    # The routers start far below rho: almost every token goes through the untrained LTRMs, so the student's
    # features are far from the teacher's and the compression loss pushes gamma up.
    student = MEMatteForImageMatting.from_vitmatte(workspace["teacher"])
    _shift_routers(student, -3.0)
    student.save_pretrained(tmp_path / "student")
    config = _tiny_run(
        workspace,
        tmp_path / "run",
        vitmatte=None,
        student=str(tmp_path / "student"),
        teacher=str(workspace["teacher"]),
        batch_size=4,
        samples_per_epoch=32,
        max_steps=150,
        lr=2e-3,
        layer_decay=0.9,
        warmup_steps=10,
        lr_milestones=[0.8, 0.95],
        save_steps=150,
        rho=RHO,
    )
    output_dir = train(config)

    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    logs = [log for log in history if "distillation" in log]
    assert len(logs) == 31  # step 1, then every 5 steps
    first, last = logs[:3], logs[-5:]
    for log in logs:
        assert {"unknown_l1", "known_l1", "laplacian", "gradient", "compression", "compression_ratio"} <= set(log)
        assert np.isfinite(log["loss"])
    matting = [{"matting": log["unknown_l1"] + log["known_l1"] + log["laplacian"]} for log in logs]
    assert _mean(matting[-5:], "matting") < 0.8 * _mean(matting[:3], "matting")
    assert _mean(last, "distillation") < 0.6 * _mean(first, "distillation")
    gamma_start, gamma_end = _mean(first, "compression_ratio"), _mean(last, "compression_ratio")
    assert abs(gamma_end - RHO) < abs(gamma_start - RHO) - 0.05
    # The logged learning rate is the decoder's: the base lr, then x0.1 after 80% and x0.05 after 95%.
    lr_at = {log["step"]: log["learning_rate"] for log in logs}
    assert lr_at[100] == pytest.approx(2e-3) and lr_at[130] == pytest.approx(2e-4)
    assert lr_at[150] == pytest.approx(1e-4)

    for folder in (output_dir, output_dir / "checkpoint-150"):
        _check_checkpoint_predicts(folder, workspace["data"])
    assert MEMatteTrainingConfig.from_file(output_dir / "training_config.yaml") == config


def _check_checkpoint_predicts(folder: Path, data: Path) -> None:
    model = AutoModelForImageMatting.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    assert isinstance(model, MEMatteForImageMatting)
    # Training decodes whole crops, but the saved config keeps the inference tiling and the target rho.
    assert model.config.decoder_tile_size == 512 and model.config.compression_ratio_target == RHO
    assert processor.image_mean == pytest.approx([0.485, 0.456, 0.406])
    image = load_rgb(data / "fg" / "0000.png")[:90, :120]
    trimap = make_trimap(load_alpha(data / "alpha" / "0000.png")[:90, :120], 5, 5)
    inputs = processor(images=image, trimaps=trimap, return_tensors="pt")
    with torch.no_grad():
        alphas = model(**inputs).alphas
    assert alphas.shape == (1, 1, *inputs["pixel_values"].shape[-2:])
    assert alphas.shape[-2] >= 90 and alphas.shape[-1] >= 120
    assert torch.isfinite(alphas).all()
    _check_predictor(folder, image, trimap)


def _check_predictor(folder: Path, image: np.ndarray, trimap: np.ndarray) -> None:
    result = MEMattePredictor.from_pretrained(folder, device="cpu").predict(image, trimap)
    assert result.model_ran
    assert result.alpha.shape == image.shape[:2] and result.alpha.dtype == np.float32
    assert np.isfinite(result.alpha).all()


# ---------------------------------------------------------------- optimizer and schedule


def test_layerwise_groups_scale_lr_by_depth_and_skip_decay_on_positions_norms_biases():
    model = tiny_model()  # 4 blocks; blocks 1 and 3 are routed global blocks
    groups = layerwise_parameter_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    by_name = {name: group for group in groups for name in group["param_names"]}
    assert sorted(by_name) == sorted(name for name, _ in model.named_parameters())
    assert sum(len(group["params"]) for group in groups) == len(list(model.parameters()))

    expected_scale = {
        "backbone.embeddings.projection.weight": 0.5**5,
        "backbone.embeddings.position_embeddings": 0.5**5,
        "backbone.encoder.layer.0.attention.qkv.weight": 0.5**4,
        "backbone.encoder.layer.1.router.in_proj.weight": 0.5**3,
        "backbone.encoder.layer.1.router.out_proj.4.bias": 0.5**3,
        "backbone.encoder.layer.1.ltrm.fc1.weight": 0.5**3,
        "backbone.encoder.layer.3.mlp.fc2.weight": 0.5**1,
        "decoder.convstream.convs.0.conv.weight": 1.0,
        "decoder.matting_head.matting_convs.3.weight": 1.0,
    }
    for name, scale in expected_scale.items():
        assert by_name[name]["lr_scale"] == pytest.approx(scale), name
        assert by_name[name]["lr"] == pytest.approx(1e-3 * scale), name

    no_decay = [
        "backbone.embeddings.position_embeddings",
        "backbone.embeddings.projection.bias",
        "backbone.encoder.layer.1.router.in_norm.weight",
        "backbone.encoder.layer.1.norm1.weight",
        "backbone.encoder.layer.1.attention.qkv.bias",
        "backbone.encoder.layer.1.residual.norm1.weight",  # ViTDet's own LayerNorm class
        "decoder.convstream.convs.0.batch_norm.weight",
        "decoder.matting_head.matting_convs.1.weight",  # a BatchNorm2d in a Sequential
    ]
    for name in no_decay:
        assert by_name[name]["weight_decay"] == 0.0, name
    for name in ("backbone.embeddings.projection.weight", "backbone.encoder.layer.1.router.in_proj.weight"):
        assert by_name[name]["weight_decay"] == 0.05, name
    assert groups[0]["lr_scale"] == 1.0  # the decoder first: the Trainer logs the first group's lr


def test_scheduler_warms_up_then_drops_at_the_milestones(tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=100, warmup_steps=10, learning_rate=1e-3, report_to="none"
    )
    trainer = MEMatteTrainer(
        model=tiny_model(), args=args, layer_decay=0.5, lr_milestones=[0.6, 0.9], lr_factors=[0.1, 0.05]
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=100)
    decoder_lr, embeddings_lr = [], []
    for _ in range(100):
        decoder_lr.append(trainer.optimizer.param_groups[0]["lr"])
        embeddings_lr.append(trainer.optimizer.param_groups[-1]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    expected = {0: 1e-4, 4: 5e-4, 9: 1e-3, 30: 1e-3, 59: 1e-3, 60: 1e-4, 89: 1e-4, 90: 5e-5, 99: 5e-5}
    for step, lr in expected.items():
        assert decoder_lr[step] == pytest.approx(lr), step
        assert embeddings_lr[step] == pytest.approx(lr * 0.5**5), step
    assert isinstance(trainer.optimizer, torch.optim.AdamW)


# ---------------------------------------------------------------- config file and command line


def test_config_yaml_and_json_round_trip(tmp_path):
    config = MEMatteTrainingConfig(
        train_data="data/dim",
        vitmatte="hustvl/vitmatte-small-composition-1k",
        lr=1e-3,
        lr_milestones=[0.5, 0.75],
        model_overrides={"drop_path_rate": 0.1},
        push_to_hub="someone/mematte-s",
    )
    for name in ("train.yaml", "train.json"):
        assert MEMatteTrainingConfig.from_file(config.save(tmp_path / name)) == config
    # PyYAML reads "5e-4" (no dot) as a string: the config turns it into a number.
    (tmp_path / "typed.yaml").write_text("train_data: d\nvitmatte: v\nlr: 5e-4\nmax_steps: '100'\n")
    loaded = MEMatteTrainingConfig.from_file(tmp_path / "typed.yaml")
    assert loaded.lr == 5e-4 and loaded.max_steps == 100


def test_config_rejects_unknown_keys_and_impossible_options(tmp_path):
    (tmp_path / "typo.yaml").write_text("train_data: d\nvitmatte: v\nlearning_rate: 1e-3\n")
    with pytest.raises(InputError, match="learning_rate"):
        MEMatteTrainingConfig.from_file(tmp_path / "typo.yaml")
    with pytest.raises(InputError, match="training data"):
        MEMatteTrainingConfig(vitmatte="v")
    with pytest.raises(InputError, match="model to train"):
        MEMatteTrainingConfig(train_data="d", vitmatte="v", student="s")
    with pytest.raises(InputError, match="teacher"):
        MEMatteTrainingConfig(train_data="d", student="s")
    with pytest.raises(InputError, match="crop_size"):
        MEMatteTrainingConfig(train_data="d", vitmatte="v", crop_size=500)
    with pytest.raises(InputError, match="lr_milestones"):
        MEMatteTrainingConfig(train_data="d", vitmatte="v", lr_milestones=[0.9, 0.6])
    with pytest.raises(InputError, match="does not exist"):
        MEMatteTrainingConfig.from_file(tmp_path / "missing.yaml")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    return parser.parse_args(argv)


def test_command_flags_override_the_config_file(tmp_path):
    file_config = MEMatteTrainingConfig(train_data="data/dim", vitmatte="v", batch_size=3, lr=5e-4, max_steps=1000)
    path = file_config.save(tmp_path / "train.yaml")
    argv = ["--config", str(path), "--lr", "1e-4", "--max-steps", "7", "--milestones", "0.5", "0.7"]
    argv += ["--push-to-hub", "someone/mematte", "--private", "--output-dir", str(tmp_path / "out")]
    config = train_command.config_from_args(_parse(argv))
    assert (config.lr, config.max_steps, config.lr_milestones) == (1e-4, 7, [0.5, 0.7])
    assert (config.push_to_hub, config.hub_private, config.output_dir) == (
        "someone/mematte",
        True,
        str(tmp_path / "out"),
    )
    assert (config.batch_size, config.train_data, config.vitmatte) == (3, "data/dim", "v")  # from the file

    flags_only = train_command.config_from_args(_parse(["--train-data", "d", "--vitmatte", "v", "--rho", "0.3"]))
    assert (flags_only.rho, flags_only.crop_size, flags_only.hub_private, flags_only.use_cpu) == (
        0.3,
        512,
        False,
        False,
    )
    assert train_command.config_from_args(_parse(["--train-data", "d", "--vitmatte", "v", "--use-cpu"])).use_cpu


def test_command_reports_missing_data_and_models(workspace, tmp_path):
    with pytest.raises(InputError, match="training data"):
        train_command.run(_parse(["--vitmatte", str(workspace["teacher"])]))
    missing = tmp_path / "no-such-folder"
    with pytest.raises(InputError, match="does not exist"):
        train_command.run(_parse(["--train-data", str(missing), "--vitmatte", str(workspace["teacher"])]))
    with pytest.raises(InputError, match="Cannot load"):
        train_command.run(_parse(["--train-data", str(workspace["data"]), "--vitmatte", str(missing)]))
    with pytest.raises(InputError, match="background"):
        train(_tiny_run(workspace, tmp_path / "out", background_dir=str(missing)))


def test_failed_upload_raises_hub_error_and_keeps_the_trained_folder(workspace, tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    config = _tiny_run(workspace, tmp_path / "run", max_steps=2, push_to_hub="someone/mematte-test")
    with pytest.raises(HubError, match="could not reach the Hugging Face Hub"):
        train(config)
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "preprocessor_config.json").is_file()


def test_example_config_loads():
    config = MEMatteTrainingConfig.from_file(Path(__file__).parents[1] / "examples" / "train_config.yaml")
    assert (config.lr, config.layer_decay, config.rho, config.warmup_steps) == (5e-4, 0.65, 0.25, 250)
    assert (config.crop_size, config.lr_factors) == (512, [0.1, 0.05])


# ---------------------------------------------------------------- one training step


def test_one_step_trains_routers_and_ltrms_through_the_gumbel_decisions(workspace, tmp_path, one_thread):
    trainer = build_trainer(_tiny_run(workspace, tmp_path / "run"))
    model, teacher = trainer.model, trainer.teacher
    # The default teacher is the ViTMatte the student came from, frozen.
    assert isinstance(teacher, VitMatteForImageMatting) and not teacher.training
    assert not any(parameter.requires_grad for parameter in teacher.parameters())

    batch = collate_matting([trainer.train_dataset[i] for i in range(2)])
    trainer.create_optimizer()
    model.train()
    decoded_sizes = []
    hook = model.decoder.register_forward_hook(lambda module, args, output: decoded_sizes.append(args[1].shape[-1]))
    loss = trainer.compute_loss(model, batch)
    hook.remove()
    # The 64-pixel crop is decoded as it is, not padded to the 512-pixel inference tile.
    assert decoded_sizes == [64] and model.config.decoder_tile_size == 512
    loss.backward()
    # Every parameter takes part (hence ddp_find_unused_parameters=False). A router's only way into the loss is
    # its hard Gumbel decision, so a router gradient is a gradient through the straight-through decisions.
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
    routed = [name for name, _ in model.named_parameters() if ".router." in name or ".ltrm." in name]
    assert any(".router." in name for name in routed) and any(".ltrm." in name for name in routed)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters() if name in routed}
    for name in routed:
        if name.endswith("out_proj.4.weight") or name.endswith("ltrm.fc2.weight"):
            assert model.get_parameter(name).grad.abs().sum() > 0, name
    trainer.optimizer.step()
    for layer_index in model.config.global_block_indices:
        prefix = f"backbone.encoder.layer.{layer_index}."
        for part in ("router.out_proj.4.weight", "router.in_proj.weight", "ltrm.fc1.weight", "ltrm.fc2.weight"):
            name = prefix + part
            assert not torch.equal(before[name], model.get_parameter(name)), name


def test_mematte_teacher_runs_every_token_through_global_attention(tmp_path):
    student = tiny_model()
    student.save_pretrained(tmp_path / "mematte")
    teacher = load_teacher(str(tmp_path / "mematte"))
    assert teacher.config.routing_mode == "global" and not teacher.training
    pixel_values = torch.rand(2, 4, 64, 96)
    with torch.no_grad():
        features = teacher_backbone_features(teacher, pixel_values)
    assert features.shape == (2, 32, 4, 6)


def test_a_plain_transformers_trainer_trains_mematte(tmp_path, one_thread):
    from transformers import Trainer

    model = tiny_model(seed=91)
    generator = torch.Generator().manual_seed(91)
    batches = [
        {"pixel_values": pixel_values, "labels": torch.rand(1, 64, 64, generator=generator)}
        for pixel_values in random_inputs(4, 64, 64, seed=91)
    ]
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    result = Trainer(model=model, args=arguments, train_dataset=batches).train()
    assert np.isfinite(result.training_loss)
    moved = [name for name, parameter in model.named_parameters() if not torch.equal(parameter, before[name])]
    assert any(".router." in name for name in moved) and any(name.startswith("decoder.") for name in moved)
