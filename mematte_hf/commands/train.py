"""Train MEMatte by distillation from ViTMatte (the upstream recipe), on one or several GPUs.

Give a config file (YAML or JSON, the fields of `mematte_hf.training.MEMatteTrainingConfig`), flags, or both:
flags override the file. For several GPUs or machines, start the same command with `accelerate launch` or
`torchrun`, e.g. `accelerate launch -m mematte_hf.cli train --config train.yaml`.
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "train MEMatte by distillation from a ViTMatte teacher"

# flag dest -> MEMatteTrainingConfig field, for the flags whose names differ from the field.
_RENAMED = {"milestones": "lr_milestones", "private": "hub_private"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of `mematte train`; every default is None so that only given flags override the file."""
    parser.add_argument("--config", help="YAML or JSON file with the training options (flags override it)")
    data = parser.add_argument_group("data")
    data.add_argument("--train-data", metavar="DIR", help="folder with fg/, alpha/ (paired by name) and bg/")
    data.add_argument("--dataset", metavar="ID_OR_PATH", help="Hugging Face dataset of foregrounds and alphas")
    data.add_argument("--dataset-split", help="split of --dataset (default train)")
    data.add_argument("--fg-column", help="foreground image column of --dataset (default foreground)")
    data.add_argument("--alpha-column", help="alpha image column of --dataset (default alpha)")
    data.add_argument("--background-dir", metavar="DIR", help="folder of background images")
    data.add_argument("--crop-size", type=int, help="training crop side in pixels, a multiple of 32 (default 512)")
    model = parser.add_argument_group("model")
    model.add_argument("--vitmatte", metavar="ID_OR_PATH", help="ViTMatte to initialise the student from")
    model.add_argument("--student", metavar="ID_OR_PATH", help="MEMatte checkpoint to go on training")
    model.add_argument("--teacher", metavar="ID_OR_PATH", help="frozen teacher (default: the --vitmatte model)")
    model.add_argument("--rho", type=float, help="target fraction of tokens routed to global attention (0.25)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--lr", type=float, help="base learning rate (default 5e-4)")
    optim.add_argument("--layer-decay", type=float, help="layer-wise lr decay (default 0.65)")
    optim.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.1)")
    optim.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default 250)")
    optim.add_argument("--max-steps", type=int, help="optimizer steps in all")
    optim.add_argument(
        "--milestones", type=float, nargs="+", metavar="FRACTION", help="fractions of training where the lr drops"
    )
    optim.add_argument("--lr-factors", type=float, nargs="+", metavar="FACTOR", help="lr factor after each milestone")
    optim.add_argument("--batch-size", type=int, help="crops per device and step")
    optim.add_argument("--gradient-accumulation-steps", type=int, help="micro-batches per optimizer step")
    optim.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), help="autocast dtype (default no)")
    optim.add_argument("--use-cpu", action="store_true", default=None, help="train on the CPU even with a GPU")
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", metavar="DIR", help="where checkpoints and the final model go")
    run.add_argument("--save-steps", type=int, help="save a checkpoint every this many steps")
    run.add_argument("--logging-steps", type=int, help="log the loss parts and gamma every this many steps")
    run.add_argument("--seed", type=int, help="random seed")
    run.add_argument("--num-workers", type=int, help="data-loader worker processes")
    run.add_argument("--report-to", help="none, tensorboard, wandb, ... (default none)")
    run.add_argument("--resume-from-checkpoint", metavar="DIR", help="checkpoint folder to resume from")
    run.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the final folder to this Hub model repo")
    run.add_argument("--private", action="store_true", default=None, help="with --push-to-hub: a private repo")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the command line sets (flags left out are not overrides)."""
    overrides = {}
    for dest, value in vars(args).items():
        if value is None or dest in ("config", "command", "run"):
            continue
        overrides[_RENAMED.get(dest, dest)] = value
    return overrides


def config_from_args(args: argparse.Namespace):
    """The `MEMatteTrainingConfig` of the config file (if any) with the flags on top."""
    from ..training import MEMatteTrainingConfig, read_config_file

    values = read_config_file(args.config) if args.config else {}
    values.update(overrides_from_args(args))
    return MEMatteTrainingConfig.from_dict(values)


def run(args: argparse.Namespace) -> int:
    """Train, then print the final folder (and the Hub URL with --push-to-hub)."""
    from ..training import train

    config = config_from_args(args)
    output_dir = train(config)
    print(f"wrote {output_dir}")
    if config.push_to_hub:  # train() raises HubError (one line, folder kept) when the upload fails
        print(f"uploaded to https://huggingface.co/{config.push_to_hub}")
    return 0
