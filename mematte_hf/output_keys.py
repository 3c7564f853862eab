"""What an output was made from, so that a rerun reuses it only when nothing that changes it has changed.

`predict` and `video` both key their outputs on every input and setting that changes them (the inputs' content,
the prompts, the model and how it runs: dtype, device kind, cap, decoder tile, memory budget for 'auto', band,
smoothing, the text model and its threshold). The keys of a folder's outputs are kept in a small JSON manifest
there; an output with no key or another key was made by another run, and is reused, overwritten or refused as the
caller chooses (:data:`EXISTING_CHOICES`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import InputError

#: What to do with an output that another run made: stop with an error (before any work), redo it, or keep it.
EXISTING_CHOICES = ("refuse", "overwrite", "skip")


def file_digest(path: str | os.PathLike[str]) -> str:
    """A digest of the file's bytes (not its name or date: a copy is the same input, an edit is not)."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "blake2b").hexdigest()[:32]


def predictor_settings(predictor: Any) -> dict[str, Any]:
    """Everything about a MEMatte predictor that changes its alphas."""
    config = predictor.config
    return {
        "model": str(getattr(config, "_name_or_path", "")),
        "model_config": hashlib.sha1(config.to_json_string(use_diff=False).encode()).hexdigest()[:16],
        "dtype": str(predictor.dtype).removeprefix("torch."),
        "device": predictor.device.type,
        "max_global_tokens": predictor.max_global_tokens,
        "memory_budget": predictor.memory_budget if predictor.max_global_tokens == "auto" else None,
        "decoder_tile_size": predictor.decoder_tile_size,
        # a per-call routing mode, where the predictor has one (the checkpoint's default is in model_config)
        "routing_mode": getattr(predictor, "routing_mode", None),
    }


def text_model_settings(text_model: Any) -> dict[str, Any] | None:
    """The text model's checkpoint and threshold (None without a text model)."""
    if text_model is None:
        return None
    model = getattr(text_model, "model", None)
    name = str(getattr(getattr(model, "config", None), "_name_or_path", type(text_model).__name__))
    return {"model": name, "threshold": getattr(text_model, "threshold", None)}


def job_key(description: dict[str, Any]) -> str:
    """A short, stable key for a JSON-able description."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:24]


class OutputManifest:
    """``{output file name: key}`` in ``folder/name``, written atomically after each change."""

    def __init__(self, folder: str | os.PathLike[str], name: str) -> None:
        self.path = Path(folder) / name
        try:
            self.keys: dict[str, str] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.keys = {}

    def made_by(self, output: Path, key: str) -> bool:
        """Whether ``output`` exists and was made by the job with this key."""
        return output.exists() and self.keys.get(output.name) == key

    def record(self, outputs: list[Path], key: str) -> None:
        for output in outputs:
            self.keys[output.name] = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.partial")
        partial.write_text(json.dumps(self.keys, indent=1, sort_keys=True))
        os.replace(partial, self.path)


def refuse_other_runs_outputs(others: list[Path], existing: str) -> None:
    """With ``existing="refuse"``, one error naming the outputs another run made and the two ways on."""
    if existing not in EXISTING_CHOICES:
        raise InputError(f"existing must be one of {', '.join(EXISTING_CHOICES)}, got {existing!r}")
    if existing != "refuse" or not others:
        return
    shown = ", ".join(str(path) for path in others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
    verb = "exists" if len(others) == 1 else "exist"
    raise InputError(
        f"{shown} already {verb}, made from other inputs or settings; pass -y/--overwrite to redo or "
        "-n/--skip-existing to keep what exists (or choose another --output)"
    )


def refuse_inputs_as_outputs(outputs: list[Path], inputs: list[Path]) -> None:
    """An output path that is an input (the same file, by any name) would destroy that input."""
    resolved = {Path(path).resolve() for path in inputs}
    for output in outputs:
        if output.resolve() in resolved:
            raise InputError(f"writing {output} would overwrite an input; choose another --output")
