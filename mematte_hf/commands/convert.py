"""Convert an upstream MEMatte checkpoint (.pth) into a folder that `from_pretrained` loads."""

from __future__ import annotations

import argparse

from ..releases import RELEASES

HELP = "convert an upstream MEMatte .pth checkpoint into a transformers folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="upstream checkpoint, e.g. MEMatte_ViTS_DIM.pth")
    parser.add_argument("output_dir", help="folder to write (safetensors weights, config.json, preprocessor)")
    parser.add_argument("--num-heads", type=int, help="attention heads (default: read off the checkpoint)")
    parser.add_argument(
        "--max-global-tokens", type=int, help="cap k on the tokens routed to global attention (default 18500)"
    )
    parser.add_argument(
        "--decoder-tile-size", type=int, help="decoder tile in pixels (default 512; 0 decodes the whole image)"
    )
    parser.add_argument(
        "--release",
        choices=sorted(RELEASES),
        help="which of the authors' released checkpoints this file is: its published scores go into the model card",
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repo")


def run(args: argparse.Namespace) -> int:
    from ..convert import SOURCE_RECORD, convert_checkpoint

    output_dir = convert_checkpoint(
        args.checkpoint,
        args.output_dir,
        num_heads=args.num_heads,
        max_global_tokens=args.max_global_tokens,
        decoder_tile_size=args.decoder_tile_size,
        release=args.release,
    )
    print(f"wrote {output_dir} (source recorded in {SOURCE_RECORD}: {args.checkpoint}, its SHA-256, the release)")
    if args.push_to_hub:
        from ..hub import push_to_hub

        url = push_to_hub(output_dir, args.push_to_hub, private=args.private)
        print(f"uploaded to {url}")
    return 0
