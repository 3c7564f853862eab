"""Load the weights a predictor runs: a MEMatte folder or Hub id, or a transformers ViTMatte one run by this engine.

A ViTMatte checkpoint (`model_type: vitmatte`, e.g. `hustvl/vitmatte-small-composition-1k`) holds the very weights
MEMatte starts from. It runs here as a `MEMatteForImageMatting` that sends every token to global attention with
ViTMatte's relative positions (`from_vitmatte(..., run_as_vitmatte=True)`), on the lean inference path and with
the decoder over the whole image, prepared by the checkpoint's own image processor (transformers' padding): the
alphas of `VitMatteForImageMatting`, in far less memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, HubError, InputError

MEMATTE = "mematte"
VITMATTE = "vitmatte"


@dataclass(frozen=True)
class LoadedWeights:
    """Which weights a predictor runs: `source` (folder or Hub id) and `kind` (`"mematte"` or `"vitmatte"`)."""

    source: str
    kind: str

    @property
    def routing(self) -> bool:
        """Whether the routers choose tokens (MEMatte) or every token is global (a ViTMatte checkpoint)."""
        return self.kind == MEMATTE

    def describe(self) -> str:
        """One line for the CLI, the logs and the Space: which weights run, and whether routing is on."""
        if self.kind == VITMATTE:
            return (
                f"weights: {self.source} (transformers ViTMatte, run by MEMatte's engine with routing off: "
                "every token global)"
            )
        return f"weights: {self.source} (MEMatte, adaptive token routing)"

    def __str__(self) -> str:
        return self.describe()


def weights_of(model, source: str | None = None) -> LoadedWeights:
    """The `LoadedWeights` of a built model: a ViTMatte run by the engine carries its global relative positions."""
    kind = VITMATTE if model.config.global_relative_position_size is not None else MEMATTE
    return LoadedWeights(source=str(source or model.name_or_path or "weights in memory"), kind=kind)


def load_matting_model(model_id_or_path: str | Path):
    """(model, image processor, `LoadedWeights`) of a MEMatte or transformers ViTMatte folder or Hub id."""
    from transformers import AutoConfig

    from . import register_auto_classes

    register_auto_classes()  # "mematte" with the Auto classes: `import mematte_hf` alone does not register it
    source = str(model_id_or_path)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise loading_error(source, error) from None
    if config.model_type == VITMATTE:
        model, processor = _load_vitmatte(source)
    elif config.model_type == MEMATTE:
        model, processor = _load_mematte(source)
    else:
        raise CheckpointError(
            f"{source} holds a {config.model_type!r} model; pass a MEMatte folder (made by `mematte convert`) or "
            "a transformers ViTMatte checkpoint such as hustvl/vitmatte-small-composition-1k"
        )
    return model, processor, LoadedWeights(source=source, kind=config.model_type)


def _load_mematte(source: str):
    from transformers import AutoModelForImageMatting

    from .convert import load_image_processor

    try:
        model = AutoModelForImageMatting.from_pretrained(source)
    except OSError as error:
        raise loading_error(source, error) from None
    return model, load_image_processor(source)


def _load_vitmatte(source: str):
    from transformers import VitMatteForImageMatting

    from .image_processing_mematte import MEMatteImageProcessor
    from .modeling_mematte import MEMatteForImageMatting

    try:
        vitmatte = VitMatteForImageMatting.from_pretrained(source)
        # The checkpoint's own settings (mean, std, size divisor) and transformers' padding, which it was
        # trained and evaluated with; the Pillow backend, so no torchvision.
        processor = MEMatteImageProcessor.from_pretrained(source, padding_rule="minimal")
    except OSError as error:
        raise loading_error(source, error) from None
    model = MEMatteForImageMatting.from_vitmatte(vitmatte, run_as_vitmatte=True)
    model.name_or_path = source
    return model, processor


def loading_error(source: str, error: Exception) -> Exception:
    """One line that says what is wrong with `source` and how to point `--model` at weights that load."""
    if Path(source).exists():
        return CheckpointError(
            f"{source} is not a MEMatte or ViTMatte folder (no config.json or weights): {_first_line(error)}"
        )
    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1
    if looks_local:
        return InputError(f"model folder {source} does not exist; pass --model with a folder or a Hub id")
    return HubError(
        f"could not load the model {source!r} from the Hugging Face Hub ({_first_line(error)}); without Hub "
        f"access pass --model (or set MEMATTE_MODEL) to a local folder: `hf download {source} --local-dir "
        "./weights` where the Hub is reachable, or a folder made by `mematte convert`"
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
