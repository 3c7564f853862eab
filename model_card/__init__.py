"""The Hugging Face model card (README.md) of a MEMatte checkpoint folder.

Installed as `mematte_hf.model_card`. The names below are loaded on first use, so that
`python -m mematte_hf.model_card.generator` does not import the generator twice.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["TEMPLATE_PATH", "build_model_card", "load_metrics", "write_model_card"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(f"{__name__}.generator"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
