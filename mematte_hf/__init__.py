"""MEMatte for Hugging Face.

The model classes load on first use (PEP 562), and loading them registers the "mematte" model type with the
Auto classes, so that ``import mematte_hf`` alone stays free of torch and transformers: the ``mematte`` command
line answers ``--help`` and argument errors at once. Call :func:`register_auto_classes` (or import a class, e.g.
``from mematte_hf import MEMatteForImageMatting``) before ``AutoModelForImageMatting.from_pretrained``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Exported name -> the module that defines it.
_LAZY_CLASSES = {
    "MEMatteConfig": "configuration_mematte",
    "MEMatteImageProcessor": "image_processing_mematte",
    "MEMatteForImageMatting": "modeling_mematte",
    "MEMatteImageMattingOutput": "modeling_mematte",
    "MEMattePreTrainedModel": "modeling_mematte",
}

if TYPE_CHECKING:
    from .configuration_mematte import MEMatteConfig
    from .image_processing_mematte import MEMatteImageProcessor
    from .modeling_mematte import MEMatteForImageMatting, MEMatteImageMattingOutput, MEMattePreTrainedModel


def register_auto_classes() -> None:
    """Register MEMatte with AutoConfig / AutoModel / AutoModelForImageMatting / AutoImageProcessor (idempotent),
    and mark the classes so that `save_pretrained` copies their code for `trust_remote_code=True` users."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageMatting

    from .configuration_mematte import MEMatteConfig
    from .image_processing_mematte import MEMatteImageProcessor
    from .modeling_mematte import MEMatteForImageMatting

    AutoConfig.register(MEMatteConfig.model_type, MEMatteConfig, exist_ok=True)
    AutoModel.register(MEMatteConfig, MEMatteForImageMatting, exist_ok=True)
    AutoModelForImageMatting.register(MEMatteConfig, MEMatteForImageMatting, exist_ok=True)
    MEMatteConfig.register_for_auto_class()
    MEMatteForImageMatting.register_for_auto_class("AutoModelForImageMatting")
    AutoImageProcessor.register(MEMatteConfig, image_processor_classes={"pil": MEMatteImageProcessor}, exist_ok=True)
    MEMatteImageProcessor.register_for_auto_class("AutoImageProcessor")


def __getattr__(name: str) -> Any:
    if name not in _LAZY_CLASSES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    register_auto_classes()
    value = getattr(importlib.import_module(f".{_LAZY_CLASSES[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


__all__ = [
    "MEMatteConfig",
    "MEMatteForImageMatting",
    "MEMatteImageProcessor",
    "MEMatteImageMattingOutput",
    "MEMattePreTrainedModel",
    "register_auto_classes",
]
