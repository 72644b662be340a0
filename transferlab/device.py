"""One place that turns a user's device choice into a torch.device."""

from __future__ import annotations

import torch

from transferlab.errors import TransferlabError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as torch understands it,
    with a clear error for an unknown name or a CUDA request on a machine without a GPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise TransferlabError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TransferlabError(f"device {device!r} requested but no CUDA GPU is available")
    return dev
