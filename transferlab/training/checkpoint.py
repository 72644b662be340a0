"""Checkpoints of every trainer: written atomically, read with ``weights_only=True``, and
resumed only by the run that wrote them.

A checkpoint is one ``torch.save``'d dict of tensors and plain Python values::

    format, version, kind         "transferlab-training-checkpoint", 1, "train-source" | "finetune"
    epoch, step                   last finished epoch (1-based), optimizer steps taken
    settings                      everything that decides the numbers (checked on resume)
    <module name>                 one state dict per trained module ("model", "heads", ...)
    optimizer                     the optimizer's state dict, on the CPU
    history                       one row per finished epoch
    bad_epochs, stopped_early, best   early-stopping state and the best epoch (its weights
                                  when the trainer keeps the best epoch, not the last)

Checkpoints written before the shared loop (formats "transferlab-trained-source" and
"transferlab-finetune-checkpoint") hold the same fields and resume as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from transferlab.atomic import atomic_write
from transferlab.errors import TransferlabError
from transferlab.results.encoding import plain

FORMAT = "transferlab-training-checkpoint"
VERSION = 1
# formats of the checkpoints the two trainers wrote before they shared this loop -> kind
LEGACY_FORMATS = {"transferlab-trained-source": "train-source", "transferlab-finetune-checkpoint": "finetune"}
SHOWN_DIFFERENCES = 4  # settings named in a refusal


def cpu_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached CPU copy (contiguous, unshared storage) of a state dict."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def cpu_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict with its tensors copied to the CPU (the live state is
    never mutated)."""
    packed = optimizer.state_dict()
    return {
        "state": {index: {key: value.detach().to("cpu", copy=True) if isinstance(value, torch.Tensor) else value
                          for key, value in values.items()}
                  for index, values in packed["state"].items()},
        "param_groups": packed["param_groups"],
    }


def save_checkpoint(path: Path, kind: str, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` (tensors and plain values) atomically: a killed run leaves the
    previous checkpoint, never a torn one."""
    full = {"format": FORMAT, "version": VERSION, "kind": kind, **payload}
    atomic_write(path, lambda handle: torch.save(full, handle))


def load_checkpoint(path: Path, kind: str) -> dict[str, Any]:
    """The checkpoint at ``path``, written by a ``kind`` trainer; one clear line otherwise."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TransferlabError(f"{path}: unreadable {kind} checkpoint ({reason}); delete it to start over") from None
    if not isinstance(payload, dict):
        raise TransferlabError(f"{path}: not a transferlab {kind} checkpoint; use another --out")
    found = payload.get("format")
    if found in LEGACY_FORMATS:
        payload = {"kind": LEGACY_FORMATS[found], "step": 0, "bad_epochs": 0, "stopped_early": False,
                   "best": None, **payload, "format": FORMAT, "version": VERSION}
    elif found != FORMAT:
        raise TransferlabError(f"{path}: not a transferlab {kind} checkpoint; use another --out")
    elif payload.get("version") != VERSION:
        raise TransferlabError(f"{path}: checkpoint version {payload.get('version')} is not {VERSION}; "
                               "delete it to start over")
    if payload.get("kind") != kind:
        raise TransferlabError(f"{path} is a {payload.get('kind')} checkpoint, not a {kind} one; use another --out")
    for key in ("epoch", "settings", "optimizer", "history"):
        if key not in payload:
            raise TransferlabError(f"{path}: checkpoint without {key!r}; delete it to start over")
    return payload


def check_settings(saved: Mapping[str, Any], current: Mapping[str, Any], path: Path, *,
                   resumable: Sequence[str] = ("epochs",), advice: str = "use another --out") -> None:
    """A checkpoint resumes only the run that wrote it: every setting but ``resumable``
    ones (e.g. more epochs, which extend the run) must be equal."""
    keys = sorted((set(saved) | set(current)) - set(resumable))
    differ = [k for k in keys if plain(saved.get(k)) != plain(current.get(k))]
    if differ:
        shown = "; ".join(f"{k}: {_show(current.get(k))} here, {_show(saved.get(k))} in the checkpoint"
                          for k in differ[:SHOWN_DIFFERENCES])
        more = f"; {len(differ) - SHOWN_DIFFERENCES} more" if len(differ) > SHOWN_DIFFERENCES else ""
        raise TransferlabError(f"{path} was written by a run with different settings ({shown}{more}); {advice}")


def _show(value: Any) -> str:
    """Settings as a person writes them: none, 0.02, tiny, a,b; others as short JSON."""
    if value is None:
        return "none"
    if isinstance(value, str | int | float | bool):
        return str(value)
    if isinstance(value, list | tuple) and all(isinstance(v, str | int | float) for v in value):
        return ",".join(map(str, value))
    text = json.dumps(plain(value))
    return text if len(text) <= 80 else text[:77] + "..."
