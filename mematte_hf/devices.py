"""The one place that turns a device request ('cuda', 'cuda:1', 'cpu', None) into a `torch.device`."""

from __future__ import annotations

import torch

from .errors import InputError


def default_device() -> torch.device:
    """CUDA when it is available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The requested device, or `default_device()` for None; a clear `InputError` for one we cannot use."""
    if device is None or device == "":
        return default_device()
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"device {str(device)!r} is not a device name; use 'cpu' or 'cuda' (or 'cuda:N')") from exc
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {str(device)!r} was asked for but CUDA is not available here; use 'cpu'")
        if target.index is not None and target.index >= torch.cuda.device_count():
            raise InputError(
                f"device {str(device)!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif target.type != "cpu" and not _backend_available(target.type):
        raise InputError(f"device {str(device)!r} is not available here; use 'cpu' or 'cuda'")
    return target


def _backend_available(kind: str) -> bool:
    """Whether torch can place tensors on a device of this kind here (mps, xpu, ...)."""
    module = getattr(torch, kind, None)
    is_available = getattr(module, "is_available", None)
    return bool(is_available and is_available())
