"""Distillation training of MEMatte with `transformers.Trainer` (the upstream recipe).

The student starts from the ViTMatte checkpoint of the same size (`MEMatteForImageMatting.from_vitmatte`), and
that ViTMatte, frozen, is the teacher. The loss is the sum, all weights 1, of the unknown- and known-region L1,
the Laplacian-pyramid L1, the Sobel gradient penalty, the MSE between the student's and the teacher's backbone
features, and the compression loss `(rho - gamma)**2`; the model computes it when given `labels` and
`teacher_features`. The optimizer is AdamW with layer-wise learning-rate decay, the schedule a linear warm-up
followed by multi-step drops. Training data are DIM-style composites made on the fly (`mematte_hf.data`).

Everything distributed (several GPUs or machines, mixed precision) comes from `transformers.TrainingArguments`
and accelerate: run the same config with `accelerate launch` or `torchrun` and nothing else changes.

Example:

```python
>>> from mematte_hf.training import MEMatteTrainingConfig, train
>>> config = MEMatteTrainingConfig(train_data="data/dim", vitmatte="hustvl/vitmatte-small-composition-1k")
>>> folder = train(config)  # a save_pretrained folder with the image processor
```
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from .errors import InputError
from .modeling_mematte import MEMatteForImageMatting

logger = logging.getLogger(__name__)

POSITION_EMBEDDING_NAME = "backbone.embeddings.position_embeddings"
MIXED_PRECISION_MODES = ("no", "bf16", "fp16")
# Names under which the trainer logs the averaged loss parts and gamma (besides the Trainer's "loss").
LOGGED_PARTS = ("unknown_l1", "known_l1", "laplacian", "gradient", "distillation", "compression")
GAMMA_LOG_NAME = "compression_ratio"
#: `decoder_tile_size` for training forwards: 0 decodes each crop whole.
WHOLE_CROP = 0
_LAYER_PATTERN = re.compile(r"(?:^|\.)backbone\.encoder\.layer\.(\d+)\.")
_EMBEDDINGS_PATTERN = re.compile(r"(?:^|\.)backbone\.embeddings\.")


# ---------------------------------------------------------------- configuration


@dataclass
class MEMatteTrainingConfig:
    """Everything one MEMatte training run needs; load it with `from_file` (YAML or JSON).

    Data (exactly one of `train_data` and `dataset`):
        train_data: folder with `fg/`, `alpha/` (paired by file name) and `bg/`.
        dataset: a Hugging Face dataset id (e.g. `dafbgd/UHRIM`) or a folder written by `save_to_disk`, with
            the image columns `fg_column` and `alpha_column`, split `dataset_split`.
        background_dir: a folder of background images (overrides `train_data/bg`; for `dataset`, used
            instead of `background_dataset` or the dataset's own `background_column`).
        background_dataset: a dataset id or `save_to_disk` folder whose `background_column` holds backgrounds.
        samples_per_epoch: composites per epoch (default: one per foreground).
        crop_size: side of the square training crops, a multiple of 32 (upstream 512).

    Model (exactly one of `vitmatte` and `student`):
        vitmatte: a transformers ViTMatte id or folder; the student is initialised from it with
            `MEMatteForImageMatting.from_vitmatte`, and it is the default teacher.
        student: a MEMatte id or folder to go on training (e.g. to fine-tune on UHRIM); needs `teacher`.
        teacher: a ViTMatte id or folder, or a MEMatte one (run with routing_mode "global"); default `vitmatte`.
        model_overrides: extra `MEMatteConfig` fields for the student (e.g. `drop_path_rate`).
        rho: the target fraction of tokens routed to global attention (upstream 0.25).

    Optimisation:
        lr, layer_decay, weight_decay, adam_beta1, adam_beta2, adam_epsilon: AdamW with layer-wise lr decay;
            no weight decay on position embeddings, norms and biases.
        warmup_steps: linear warm-up steps; max_steps: optimizer steps in all.
        lr_milestones: fractions of `max_steps` after which the lr is multiplied by the matching
            `lr_factors` (relative to the base lr, not cumulative).
        batch_size: crops per device and step; gradient_accumulation_steps; max_grad_norm (0: no clipping,
            as upstream); mixed_precision: "no", "bf16" or "fp16"; use_cpu: train on the CPU even where a GPU
            is present (also what lets `torchrun` start several CPU processes).

    Run:
        output_dir, save_steps, save_total_limit, logging_steps, seed, num_workers (data-loader workers),
        report_to (e.g. "none", "tensorboard", "wandb"), resume_from_checkpoint (a checkpoint folder, or
        True for the last one in `output_dir`), push_to_hub (a Hub repo id to upload the final folder to)
        and hub_private.
    """

    train_data: str | None = None
    dataset: str | None = None
    dataset_split: str = "train"
    fg_column: str = "foreground"
    alpha_column: str = "alpha"
    background_column: str = "image"
    background_dir: str | None = None
    background_dataset: str | None = None
    samples_per_epoch: int | None = None
    crop_size: int = 512

    vitmatte: str | None = None
    student: str | None = None
    teacher: str | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    rho: float = 0.25

    lr: float = 5e-4
    layer_decay: float = 0.65
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    warmup_steps: int = 250
    max_steps: int = 10000
    lr_milestones: list[float] = field(default_factory=lambda: [0.6, 0.9])
    lr_factors: list[float] = field(default_factory=lambda: [0.1, 0.05])
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 0.0
    mixed_precision: str = "no"
    use_cpu: bool = False

    output_dir: str = "mematte-training"
    save_steps: int = 1000
    save_total_limit: int | None = 3
    logging_steps: int = 20
    seed: int = 42
    num_workers: int = 4
    report_to: str | list[str] = "none"
    resume_from_checkpoint: str | bool | None = None
    push_to_hub: str | None = None
    hub_private: bool = False

    def __post_init__(self) -> None:
        _coerce_fields(self)
        self.validate()

    def validate(self) -> None:
        """Raise `InputError` naming the first option that cannot work (paths are checked by `check_paths`)."""
        if bool(self.train_data) == bool(self.dataset):
            raise InputError(
                "Give the training data: either `train_data` (a folder with fg/, alpha/, bg/) or "
                "`dataset` (a Hugging Face dataset id), not both."
            )
        if bool(self.vitmatte) == bool(self.student):
            raise InputError(
                "Give the model to train: either `vitmatte` (a ViTMatte id or folder to initialise "
                "the student from) or `student` (a MEMatte id or folder), not both."
            )
        if self.student and not self.teacher:
            raise InputError(
                "Training a MEMatte `student` needs a `teacher` (a ViTMatte id or folder, usually "
                "the one the student was initialised from)."
            )
        if not 0.0 <= self.rho <= 1.0:
            raise InputError(f"rho must lie in [0, 1], got {self.rho}.")
        if self.crop_size < 32 or self.crop_size % 32:
            raise InputError(f"crop_size must be a positive multiple of 32, got {self.crop_size}.")
        _check_positive(
            self, ("lr", "max_steps", "batch_size", "gradient_accumulation_steps", "save_steps", "logging_steps")
        )
        if not 0.0 < self.layer_decay <= 1.0:
            raise InputError(f"layer_decay must lie in (0, 1], got {self.layer_decay}.")
        if self.weight_decay < 0 or self.warmup_steps < 0 or self.num_workers < 0 or self.max_grad_norm < 0:
            raise InputError("weight_decay, warmup_steps, num_workers and max_grad_norm must not be negative.")
        if self.mixed_precision not in MIXED_PRECISION_MODES:
            raise InputError(f"mixed_precision must be one of {MIXED_PRECISION_MODES}, got {self.mixed_precision!r}.")
        check_milestones(self.lr_milestones, self.lr_factors)

    def check_paths(self) -> None:
        """Raise `InputError` when a local data folder the config names does not exist."""
        if self.train_data and not Path(self.train_data).is_dir():
            raise InputError(
                f"The training data folder {self.train_data} does not exist (it must hold fg/, alpha/ and bg/)."
            )
        if self.background_dir and not Path(self.background_dir).is_dir():
            raise InputError(f"The background folder {self.background_dir} does not exist.")
        if (
            self.resume_from_checkpoint not in (None, True, False)
            and not Path(str(self.resume_from_checkpoint)).is_dir()
        ):
            raise InputError(f"The checkpoint to resume from, {self.resume_from_checkpoint}, does not exist.")

    # -- files

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MEMatteTrainingConfig:
        """Build from a mapping, rejecting unknown keys (a typo would otherwise silently use a default)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(f"Unknown training option(s) {unknown}; the options are {sorted(names)}.")
        return cls(**dict(values))

    @classmethod
    def from_file(cls, path: str | Path) -> MEMatteTrainingConfig:
        """Load a YAML or JSON file (JSON when the name ends in .json)."""
        return cls.from_dict(read_config_file(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the config as YAML, or JSON when the name ends in .json; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".json":
            path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        else:
            import yaml

            path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    # -- transformers

    def to_training_arguments(self, **overrides: Any) -> TrainingArguments:
        """The `TrainingArguments` of this run (distributed settings come from the launcher's environment)."""
        kwargs = {
            "output_dir": self.output_dir,
            "max_steps": self.max_steps,
            "per_device_train_batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "learning_rate": self.lr,
            "weight_decay": self.weight_decay,
            "adam_beta1": self.adam_beta1,
            "adam_beta2": self.adam_beta2,
            "adam_epsilon": self.adam_epsilon,
            "warmup_steps": self.warmup_steps,
            "max_grad_norm": self.max_grad_norm,
            "bf16": self.mixed_precision == "bf16",
            "fp16": self.mixed_precision == "fp16",
            "logging_strategy": "steps",
            "logging_steps": self.logging_steps,
            "logging_first_step": True,
            "save_strategy": "steps",
            "save_steps": self.save_steps,
            "save_total_limit": self.save_total_limit,
            "seed": self.seed,
            "dataloader_num_workers": self.num_workers,
            "dataloader_drop_last": True,
            "dataloader_pin_memory": torch.cuda.is_available(),
            # Our batches are dicts of tensors the model reads by name: keep every key, and say which is the label.
            "remove_unused_columns": False,
            "label_names": ["labels"],
            "report_to": self.report_to,
            # In adaptive training every parameter takes part in every step (both branches run for all tokens).
            "ddp_find_unused_parameters": False,
            "use_cpu": self.use_cpu,
        }
        kwargs.update(overrides)
        try:
            return TrainingArguments(**kwargs)
        except ValueError as error:  # e.g. bf16 asked for on a machine that cannot run it
            raise InputError(f"Invalid training options: {str(error).splitlines()[0]}") from error


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON config file, with a clear `InputError` when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"The training config file {path} does not exist.")
    import yaml

    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise InputError(f"Cannot read the training config {path}: {error}") from error
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InputError(f"The training config {path} must be a mapping of option: value, got {type(values).__name__}.")
    return values


def _coerce_fields(config: MEMatteTrainingConfig) -> None:
    """Turn YAML strings such as "5e-4" (PyYAML reads exponents without a dot as strings) into numbers."""
    hints = typing.get_type_hints(type(config))
    for name, hint in hints.items():
        value = getattr(config, name)
        if value is None or isinstance(value, bool):
            continue
        args = set(typing.get_args(hint)) or {hint}
        try:
            if float in args and isinstance(value, (str, int)):
                setattr(config, name, float(value))
            elif int in args and isinstance(value, (str, float)) and str not in args:
                number = float(value)
                if number != int(number):
                    raise ValueError(f"{value!r} is not a whole number")
                setattr(config, name, int(number))
            elif name in ("lr_milestones", "lr_factors"):
                setattr(config, name, [float(v) for v in value])
        except (TypeError, ValueError) as error:
            raise InputError(f"Training option {name} = {value!r} is not a valid number: {error}") from error


def _check_positive(config: MEMatteTrainingConfig, names: Sequence[str]) -> None:
    for name in names:
        if getattr(config, name) <= 0:
            raise InputError(f"{name} must be positive, got {getattr(config, name)}.")


def check_milestones(milestones: Sequence[float], factors: Sequence[float]) -> None:
    """Milestones are increasing fractions of training in (0, 1], one lr factor each."""
    if len(milestones) != len(factors):
        raise InputError(f"lr_milestones {list(milestones)} and lr_factors {list(factors)} need the same length.")
    if any(not 0.0 < m <= 1.0 for m in milestones) or list(milestones) != sorted(set(milestones)):
        raise InputError(f"lr_milestones must be increasing fractions of max_steps in (0, 1], got {list(milestones)}.")
    if any(f <= 0 for f in factors):
        raise InputError(f"lr_factors must be positive, got {list(factors)}.")


# ---------------------------------------------------------------- optimizer and schedule


def parameter_layer_id(name: str, num_layers: int) -> int:
    """Layer id for lr decay: 0 for the embeddings, i + 1 for block i (its router and LTRM included),
    num_layers + 1 for the decoder and anything else."""
    if _EMBEDDINGS_PATTERN.search(name):
        return 0
    match = _LAYER_PATTERN.search(name)
    if match:
        return int(match.group(1)) + 1
    return num_layers + 1


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Position embeddings, every norm's parameters and every bias: decaying them only hurts."""
    names = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)) or (
            "norm" in type(module).__name__.lower()
        )
        for param_name, _ in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            if is_norm or param_name == "bias" or full_name.endswith(POSITION_EMBEDDING_NAME):
                names.add(full_name)
    return names


def layerwise_parameter_groups(
    model: nn.Module, lr: float, weight_decay: float, layer_decay: float
) -> list[dict[str, Any]]:
    """AdamW parameter groups with layer-wise lr decay, one per (layer id, decay or not).

    A parameter of layer id `l` gets `lr * layer_decay ** (num_layers + 1 - l)` (see `parameter_layer_id`), so
    the decoder learns at `lr` and the patch embedding slowest. Each group also carries `lr_scale`, `layer_id`
    and the `param_names` in it; groups come from the decoder down to the embeddings. Frozen parameters are
    left out.
    """
    num_layers = model.config.num_hidden_layers
    skip_decay = no_weight_decay_names(model)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        layer_id = parameter_layer_id(name, num_layers)
        decays = name not in skip_decay
        if (layer_id, decays) not in groups:
            scale = layer_decay ** (num_layers + 1 - layer_id)
            groups[layer_id, decays] = {
                "params": [],
                "param_names": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "layer_id": layer_id,
                "weight_decay": weight_decay if decays else 0.0,
            }
        groups[layer_id, decays]["params"].append(parameter)
        groups[layer_id, decays]["param_names"].append(name)
    # Decoder first: the Trainer logs the first group's lr, which should be the base lr.
    return [groups[key] for key in sorted(groups, reverse=True)]


@dataclass
class WarmupMultiStepSchedule:
    """The lr multiplier at each optimizer step: a linear warm-up to 1 over `warmup_steps`, times the factor of
    the last milestone (an absolute step) passed. A callable object (not a closure) so that LambdaLR can save
    and restore it with the checkpoint."""

    warmup_steps: int
    milestones: list[int]
    factors: list[float]

    def __call__(self, step: int) -> float:
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        factor = 1.0
        for milestone, value in zip(self.milestones, self.factors, strict=True):
            if step >= milestone:
                factor = value
        return warmup * factor


def warmup_multistep_schedule(
    num_training_steps: int, warmup_steps: int, milestones: Sequence[float], factors: Sequence[float]
) -> WarmupMultiStepSchedule:
    """The schedule with milestones given as fractions of `num_training_steps`."""
    check_milestones(milestones, factors)
    steps = [max(1, round(fraction * num_training_steps)) for fraction in milestones]
    return WarmupMultiStepSchedule(int(warmup_steps), steps, [float(f) for f in factors])


# ---------------------------------------------------------------- teacher


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """Evaluation mode and no gradients: the teacher only provides targets."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def teacher_backbone_features(teacher: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The backbone output a teacher's decoder reads, `(batch_size, C, height // 16, width // 16)`.

    Works for a transformers `VitMatteForImageMatting` (its backbone returns `feature_maps`) and for a
    `MEMatteForImageMatting` (whose backbone returns `feature_map`).
    """
    output = teacher.backbone(pixel_values)
    feature_map = getattr(output, "feature_map", None)
    if feature_map is not None:
        return feature_map
    return output.feature_maps[-1]


# ---------------------------------------------------------------- trainer


class _DatasetEpochCallback(TrainerCallback):
    """Give the composite dataset the epoch before each epoch's loader starts, so augmentations change.

    accelerate forwards `set_epoch` to the dataset on one process only; this covers every launch."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(int((state.epoch or 0.0) + 1e-6))


class MEMatteTrainer(Trainer):
    """`transformers.Trainer` for MEMatte distillation.

    Adds a frozen `teacher` whose backbone features are the distillation targets, AdamW on layer-wise decayed
    parameter groups, a warm-up plus multi-step schedule, and logs of every loss part and of gamma (the
    fraction of tokens routed to global attention) averaged over each logging window. Pass an image processor
    as `processing_class` so that every checkpoint folder also loads with `AutoImageProcessor`.
    """

    # The model's loss is a mean over its batch: the Trainer must divide it for gradient accumulation.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        teacher: nn.Module | None = None,
        layer_decay: float = 0.65,
        lr_milestones: Sequence[float] = (0.6, 0.9),
        lr_factors: Sequence[float] = (0.1, 0.05),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        check_milestones(lr_milestones, lr_factors)
        self.teacher = freeze_teacher(teacher) if teacher is not None else None
        self.layer_decay = float(layer_decay)
        self.lr_milestones = [float(m) for m in lr_milestones]
        self.lr_factors = [float(f) for f in lr_factors]
        self._part_sums: dict[str, torch.Tensor] = {}
        self._part_count = 0
        if self.train_dataset is not None:
            self.add_callback(_DatasetEpochCallback(self.train_dataset))

    # -- loss

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The model's summed loss, with the teacher's backbone features as distillation targets."""
        pixel_values = inputs["pixel_values"]
        teacher_features = self.teacher_features(pixel_values)
        # Each crop is decoded in one piece, as upstream trains, whatever the checkpoint's inference tiling: the
        # tiled decoder would pad a crop smaller than a tile, and the decoder's batch norms would then take their
        # training statistics mostly from zero padding.
        outputs = model(
            pixel_values=pixel_values,
            labels=inputs["labels"],
            teacher_features=teacher_features,
            decoder_tile_size=WHOLE_CROP,
        )
        if model.training:
            self._accumulate(outputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    @torch.no_grad()
    def teacher_features(self, pixel_values: torch.Tensor) -> torch.Tensor | None:
        """The frozen teacher's backbone features for this batch (None without a teacher)."""
        if self.teacher is None:
            return None
        # The teacher is not prepared by accelerate (it has no optimizer state and needs no DDP wrapper): move
        # it to each process's device on first use, and run it under the same autocast as the student.
        first = next(self.teacher.parameters())
        if first.device != pixel_values.device:
            self.teacher.to(pixel_values.device)
        with self.accelerator.autocast():
            return teacher_backbone_features(self.teacher, pixel_values)

    def _accumulate(self, outputs: Any) -> None:
        """Add this micro-batch's loss parts and gamma to the running sums of the logging window."""
        values = dict(outputs.loss_parts or {})
        values[GAMMA_LOG_NAME] = outputs.compression_ratio
        for name, value in values.items():
            value = value.detach().float()
            self._part_sums[name] = self._part_sums[name] + value if name in self._part_sums else value
        self._part_count += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the window averages of the loss parts and gamma to the Trainer's training logs."""
        if "loss" in logs and self._part_count:
            logs = {**logs, **self._drain_parts()}
        super().log(logs, start_time)

    def _drain_parts(self) -> dict[str, float]:
        names = sorted(self._part_sums)
        means = torch.stack([self._part_sums[name] for name in names]) / self._part_count
        # Every process logs at the same step, so this collective is matched on all of them.
        means = self.accelerator.reduce(means, reduction="mean")
        self._part_sums, self._part_count = {}, 0
        return {name: round(float(value), 6) for name, value in zip(names, means.tolist(), strict=True)}

    # -- optimizer and schedule

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """AdamW on `layerwise_parameter_groups` (the betas and epsilon of the TrainingArguments)."""
        if self.optimizer is None:
            groups = layerwise_parameter_groups(
                self.model if model is None else model,
                lr=self.args.learning_rate,
                weight_decay=self.args.weight_decay,
                layer_decay=self.layer_decay,
            )
            self.optimizer = torch.optim.AdamW(
                groups,
                lr=self.args.learning_rate,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
            )
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """Linear warm-up, then the lr times each `lr_factors` entry after the matching milestone."""
        if self.lr_scheduler is None:
            schedule = warmup_multistep_schedule(
                num_training_steps,
                self.args.get_warmup_steps(num_training_steps),
                self.lr_milestones,
                self.lr_factors,
            )
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, schedule)
            self._created_lr_scheduler = True
        return self.lr_scheduler


# ---------------------------------------------------------------- building a run


def _load_pretrained(kind: str, name: str, loader: Any, **kwargs: Any) -> Any:
    """`loader(name, **kwargs)` with load failures (missing folder, unknown id offline) as `InputError`."""
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError) as error:
        raise InputError(f"Cannot load the {kind} {name!r}: {str(error).splitlines()[0]}") from error


def _model_type(name: str) -> str:
    from transformers import AutoConfig

    from . import register_auto_classes

    register_auto_classes()  # a MEMatte config.json needs "mematte" registered with AutoConfig

    config = _load_pretrained("model config", name, AutoConfig.from_pretrained)
    return config.model_type


def load_vitmatte(name: str) -> nn.Module:
    """A transformers `VitMatteForImageMatting` from an id or folder."""
    from transformers import VitMatteForImageMatting

    model_type = _model_type(name)
    if model_type != "vitmatte":
        raise InputError(
            f"{name!r} is a {model_type!r} checkpoint, not a ViTMatte one (pass a MEMatte as `student` or `teacher`)."
        )
    return _load_pretrained("ViTMatte", name, VitMatteForImageMatting.from_pretrained)


def load_teacher(name: str) -> nn.Module:
    """A frozen teacher: a ViTMatte, or a MEMatte run with every token through global attention."""
    model_type = _model_type(name)
    if model_type == "vitmatte":
        teacher = load_vitmatte(name)
    elif model_type == "mematte":
        teacher = _load_pretrained(
            "MEMatte teacher", name, MEMatteForImageMatting.from_pretrained, routing_mode="global"
        )
    else:
        raise InputError(f"The teacher {name!r} is a {model_type!r} model; use a ViTMatte or a MEMatte checkpoint.")
    return freeze_teacher(teacher)


def load_student_and_teacher(config: MEMatteTrainingConfig) -> tuple[MEMatteForImageMatting, nn.Module]:
    """The student (from `vitmatte` or `student`) with `rho` and `model_overrides` set, and the frozen teacher."""
    overrides = {**config.model_overrides, "compression_ratio_target": config.rho, "routing_mode": "adaptive"}
    if config.vitmatte:
        vitmatte = load_vitmatte(config.vitmatte)
        student = MEMatteForImageMatting.from_vitmatte(vitmatte, **overrides)
        teacher = load_teacher(config.teacher) if config.teacher else freeze_teacher(vitmatte)
    else:
        if _model_type(config.student) != "mematte":
            raise InputError(
                f"The student {config.student!r} is not a MEMatte checkpoint (start from a ViTMatte with `vitmatte`)."
            )
        student = _load_pretrained(
            "MEMatte student", config.student, MEMatteForImageMatting.from_pretrained, **overrides
        )
        teacher = load_teacher(config.teacher)
    student.train()
    return student, teacher


def _load_hf_dataset(name: str, split: str) -> Any:
    """A `datasets.Dataset` from a Hub id or a `save_to_disk` folder."""
    import datasets

    try:
        path = Path(name)
        if path.is_dir() and any((path / f).is_file() for f in ("state.json", "dataset_dict.json")):
            loaded = datasets.load_from_disk(str(path))
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return datasets.load_dataset(name, split=split)
    except (OSError, ValueError, KeyError, ConnectionError) as error:
        raise InputError(f"Cannot load the dataset {name!r} (split {split!r}): {error}") from error


def build_train_dataset(config: MEMatteTrainingConfig) -> Any:
    """The on-the-fly composite dataset of the config."""
    from .data import MattingTrainDataset

    options = {"crop_size": config.crop_size, "seed": config.seed, "samples_per_epoch": config.samples_per_epoch}
    if config.train_data:
        return MattingTrainDataset(config.train_data, bg_dir=config.background_dir, **options)
    foregrounds = _load_hf_dataset(config.dataset, config.dataset_split)
    backgrounds = config.background_dir
    if backgrounds is None and config.background_dataset:
        backgrounds = _load_hf_dataset(config.background_dataset, config.dataset_split)
    return MattingTrainDataset.from_hf_dataset(
        foregrounds,
        fg_column=config.fg_column,
        alpha_column=config.alpha_column,
        backgrounds=backgrounds,
        background_column=config.background_column,
        **options,
    )


def build_trainer(config: MEMatteTrainingConfig, **training_argument_overrides: Any) -> MEMatteTrainer:
    """Models, data and `MEMatteTrainer` of the config, ready for `.train()`."""
    from transformers import set_seed

    from .convert import build_image_processor
    from .data import collate_matting

    config.check_paths()
    args = config.to_training_arguments(**training_argument_overrides)
    set_seed(config.seed)  # the routers and LTRMs are initialised here, before the Trainer seeds
    dataset = build_train_dataset(config)
    # drop_last with fewer composites than one global batch would leave no step at all.
    needed = config.batch_size * config.gradient_accumulation_steps * args.world_size
    if len(dataset) < needed:
        dataset.samples_per_epoch = needed
    student, teacher = load_student_and_teacher(config)
    return MEMatteTrainer(
        model=student,
        args=args,
        train_dataset=dataset,
        data_collator=collate_matting,
        processing_class=build_image_processor(),
        teacher=teacher,
        layer_decay=config.layer_decay,
        lr_milestones=config.lr_milestones,
        lr_factors=config.lr_factors,
    )


def _hub_id_or_none(name: str | None) -> str | None:
    """`name` when it looks like a Hub id rather than a local folder (for the model card's base_model)."""
    if not name or Path(name).exists() or name.count("/") != 1:
        return None
    return name


def train(config: MEMatteTrainingConfig) -> Path:
    """Run the training of `config`; returns `output_dir`, a `save_pretrained` folder with the image processor.

    Checkpoints go to `output_dir/checkpoint-N`, each loadable on its own. The final folder also holds
    `trainer_state.json` (every log) and `training_config.yaml`. With `push_to_hub` set, the folder is uploaded
    at the end; a failed upload raises `HubError` and leaves the folder in place.
    """
    trainer = build_trainer(config)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint or None)
    output_dir = Path(config.output_dir)
    trainer.save_model(str(output_dir))
    trainer.save_state()
    if trainer.is_world_process_zero():
        config.save(output_dir / "training_config.yaml")
        if config.push_to_hub:
            from .hub import push_to_hub

            base_model = _hub_id_or_none(config.vitmatte or config.student)
            card = {"base_model": base_model, "datasets": _hub_id_or_none(config.dataset)}
            push_to_hub(output_dir, config.push_to_hub, private=config.hub_private, card_kwargs=card)
    return output_dir


__all__ = [
    "MEMatteTrainer",
    "MEMatteTrainingConfig",
    "WarmupMultiStepSchedule",
    "build_train_dataset",
    "build_trainer",
    "layerwise_parameter_groups",
    "load_student_and_teacher",
    "teacher_backbone_features",
    "train",
    "warmup_multistep_schedule",
]
