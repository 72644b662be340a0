"""Checkpoints whose keys differ from timm's (OpenAI/OpenCLIP image towers, original DINOv2,
BEiT, EVA, ...): converted by timm's own ``checkpoint_filter_fn`` of the model's module,
the function timm applies to its pretrained downloads, rather than a hand-written mapping.

Used only when the state dict does not already fit the architecture, so a timm-native file
is loaded exactly as saved. Nothing is downloaded.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn


def fits(model: nn.Module, state: Mapping[str, torch.Tensor]) -> bool:
    """Every key of the model present with its shape (the classifier may differ)."""
    own = model.state_dict()
    return all(k in state and tuple(state[k].shape) == tuple(v.shape) for k, v in own.items()
               if not k.endswith("num_batches_tracked"))


def timm_filter_fn(model: nn.Module):
    """The ``checkpoint_filter_fn`` of the timm module that defines ``model``'s class."""
    module = sys.modules.get(type(model).__module__)
    return getattr(module, "checkpoint_filter_fn", None) if module is not None else None


def convert_timm_checkpoint(model: nn.Module, state: dict[str, torch.Tensor],
                            path: str | Path = "<weights>") -> dict[str, torch.Tensor]:
    """``state`` as is when it fits ``model``; else what timm's filter function makes of it
    (kept only if it fits better, so the mismatch reported is the user's own file's)."""
    if fits(model, state):
        return state
    convert = timm_filter_fn(model)
    if convert is None:
        return state
    try:
        converted = convert(dict(state), model)
    except Exception:  # a filter that does not recognise the layout: report the original keys
        return state
    if not isinstance(converted, Mapping):
        return state
    converted = {str(k): v for k, v in converted.items() if isinstance(v, torch.Tensor)}
    own = model.state_dict()
    def matched(candidate: Mapping[str, torch.Tensor]) -> int:
        return sum(1 for k, v in own.items() if k in candidate and tuple(candidate[k].shape) == tuple(v.shape))
    return converted if matched(converted) > matched(state) else state
