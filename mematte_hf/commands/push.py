"""Upload a MEMatte checkpoint folder (config.json + model.safetensors) to the Hugging Face Hub.

The folder's README.md is used as the model card; when there is none, one is generated from config.json.
With --metrics-json (the file written by `mematte evaluate`) the card's evaluation results are updated.
Nothing else in the folder is changed, so a push that fails can be run again as it is.
"""

from __future__ import annotations

import argparse

HELP = "upload a checkpoint folder and its model card to the Hugging Face Hub"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of `mematte push`."""
    parser.add_argument("folder", help="checkpoint folder with config.json and model.safetensors")
    parser.add_argument("--repo-id", required=True, help="Hub model repo to push to, USER/NAME")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument(
        "--token", help="Hub token with write access (default: HF_TOKEN or the token of `hf auth login`)"
    )
    parser.add_argument("--metrics-json", help="JSON written by `mematte evaluate`, added to the model card")
    parser.add_argument("--dataset", help="dataset the metrics were measured on, e.g. Composition-1K")
    parser.add_argument("--base-model", help="Hub id of the model this checkpoint was initialised from")


def run(args: argparse.Namespace) -> int:
    """Push the folder and print the repo URL."""
    from ..errors import InputError
    from ..hub import push_to_hub  # imports huggingface_hub: kept out of `mematte --help`

    if args.dataset and not args.metrics_json:
        raise InputError("--dataset names the dataset of --metrics-json; pass both or neither")
    card_kwargs = {
        "metrics": args.metrics_json,
        "metrics_dataset": args.dataset,
        "base_model": args.base_model,
    }
    url = push_to_hub(args.folder, args.repo_id, token=args.token, private=args.private, card_kwargs=card_kwargs)
    print(url)
    return 0
