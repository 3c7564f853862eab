"""Which weights run when no `--model` is given: the one place the CLI, the video command and the Space ask.

The order: `--model` (or the Space's own option), else the `MEMATTE_MODEL` environment variable (set it once to
a converted MEMatte checkpoint, see the README's Models section), else transformers' ViTMatte ViT-S checkpoint,
which exists on the Hub today and runs through MEMatte's engine with every token global. Torch-free, so that
`--help` stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

# transformers' port of ViTMatte ViT-S (Composition-1K): the weights MEMatte ViT-S starts from.
DEFAULT_MODEL = "hustvl/vitmatte-small-composition-1k"
MODEL_ENVIRONMENT_VARIABLE = "MEMATTE_MODEL"
MODEL_HELP = (
    f"MEMatte or transformers ViTMatte folder or Hub id (default: ${MODEL_ENVIRONMENT_VARIABLE} if set, else "
    f"{DEFAULT_MODEL} run by MEMatte's engine)"
)


@dataclass(frozen=True)
class ModelChoice:
    """The weights to load and why: `origin` is `"--model"`, the environment variable's name, or `"default"`."""

    model: str
    origin: str

    def describe(self) -> str:
        """One line saying which weights were chosen and how to choose others."""
        if self.origin == "default":
            return (
                f"model: {self.model} (default: transformers' ViTMatte ViT-S, every token global; for MEMatte's "
                f"routing convert an authors' checkpoint and pass --model or set {MODEL_ENVIRONMENT_VARIABLE})"
            )
        return f"model: {self.model} (from {self.origin})"


def choose_model(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> ModelChoice:
    """`explicit` (a `--model` value) when given, else `$MEMATTE_MODEL` when set, else `DEFAULT_MODEL`."""
    environ = os.environ if environ is None else environ
    if explicit:
        return ModelChoice(explicit, "--model")
    configured = environ.get(MODEL_ENVIRONMENT_VARIABLE, "").strip()
    if configured:
        return ModelChoice(configured, MODEL_ENVIRONMENT_VARIABLE)
    return ModelChoice(DEFAULT_MODEL, "default")


def load_chosen_predictor(explicit: str | None = None, echo=print, **predictor_options):
    """The predictor of `choose_model(explicit)`, saying which model was chosen and which weights run."""
    from .predictor import MEMattePredictor

    choice = choose_model(explicit)
    echo(choice.describe())
    predictor = MEMattePredictor.from_pretrained(choice.model, **predictor_options)
    echo(predictor.describe())
    return predictor
