"""What fine-tuning writes (``sources/finetuned.py`` owns the format and reads it back).

``OUT/checkpoint.pt``      resumable state after every epoch (model, heads, optimizer,
                           schedule step, best weights, history, settings); tensors and
                           plain Python values only, so it loads with ``weights_only=True``.
``OUT/model.safetensors``  the fine-tuned network (best epoch), full state dict of the
                           source architecture (its source-task classifier is kept untrained).
``OUT/heads.safetensors``  one linear head per target task: ``<i>.weight``, ``<i>.bias``.
``OUT/source.json``        architecture, preprocessing, layer names, base source, tasks,
                           metrics, settings and the SHA-256 of model.safetensors. Written
                           last: a folder without it is not a finished run.

Every file is written to a temp file in ``OUT`` and moved into place with ``os.replace``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from transferlab.atomic import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    stale_temporaries,
)
from transferlab.errors import TransferlabError
from transferlab.results.encoding import dumps_pretty, plain
from transferlab.sources.finetuned import (
    CHECKPOINT,
    FORMAT,
    HEADS_FILE,
    META_FILE,
    MODEL_FILE,
    VERSION,
)

CHECKPOINT_FORMAT = "transferlab-finetune-checkpoint"
# Settings that may differ when a run is resumed: more epochs extend training (the cosine
# schedule is stretched to the new length from the current step); the device may change.
RESUMABLE_SETTINGS = ("epochs",)


# ------------------------------------------------------------------------------ atomic io
def remove_stale_temps(out: Path) -> None:
    """Delete temp files left in ``out`` by a killed run (one run per folder at a time)."""
    for name in (CHECKPOINT, MODEL_FILE, HEADS_FILE, META_FILE):
        for tmp in stale_temporaries(out, name):
            tmp.unlink(missing_ok=True)


def cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached CPU copy (contiguous, unshared storage) of a state dict."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def save_safetensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save(cpu_state(state), metadata={"format": "pt"}))


def write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, dumps_pretty(payload) + "\n")


# ------------------------------------------------------------------------------ checkpoint
def save_checkpoint(path: Path, payload: dict) -> None:
    payload = {"format": CHECKPOINT_FORMAT, "version": VERSION, **payload}
    atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: Path) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TransferlabError(
            f"{path}: cannot read the fine-tuning checkpoint ({str(exc).splitlines()[0]}); "
            "delete it to start over"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise TransferlabError(f"{path}: not a transferlab fine-tuning checkpoint; use another --out")
    if payload.get("version") != VERSION:
        raise TransferlabError(f"{path}: checkpoint version {payload.get('version')} is not {VERSION}")
    return payload


def check_settings(saved: dict, current: dict, path: Path) -> None:
    """A checkpoint resumes only the run that made it: same source, tasks and hyper-parameters."""
    keys = sorted((set(saved) | set(current)) - set(RESUMABLE_SETTINGS))
    diffs = [k for k in keys if _plain(saved.get(k)) != _plain(current.get(k))]
    if diffs:
        shown = "; ".join(f"{k}: checkpoint {_short(saved.get(k))} vs now {_short(current.get(k))}" for k in diffs[:4])
        raise TransferlabError(
            f"{path} was written by a run with different settings ({shown}); use another --out, "
            f"or delete {path.name} to start over"
        )


def _plain(value: Any) -> Any:
    return plain(value)


def _short(value: Any) -> str:
    text = json.dumps(_plain(value))
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------- final output
def write_finetuned(out: Path, model_state: dict, heads_state: dict, meta: dict) -> dict:
    """Write model, heads and (last) source.json; returns the metadata as written."""
    from transferlab.sources.weights import file_sha256

    (out / META_FILE).unlink(missing_ok=True)  # the folder is unfinished until source.json returns
    save_safetensors(out / MODEL_FILE, model_state)
    save_safetensors(out / HEADS_FILE, heads_state)
    meta = {"format": FORMAT, "version": VERSION, **meta, "model_sha256": file_sha256(out / MODEL_FILE)}
    write_json(out / META_FILE, meta)
    return meta
