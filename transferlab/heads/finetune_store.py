"""What fine-tuning writes (``sources/finetuned.py`` owns the format and reads it back).

``OUT/checkpoint.pt``      resumable state after every epoch (model, heads, optimizer,
                           best weights, history, settings), written and read by the shared
                           training loop (``transferlab/training/checkpoint.py``).
``OUT/model.safetensors``  the fine-tuned network (best epoch), full state dict of the
                           source architecture (its source-task classifier is kept untrained).
``OUT/heads.safetensors``  one linear head per target task: ``<i>.weight``, ``<i>.bias``.
``OUT/source.json``        architecture, preprocessing, layer names, base source, tasks,
                           metrics, settings and the SHA-256 of model.safetensors. Written
                           last: a folder without it is not a finished run.

Every file is written to a temp file in ``OUT`` and moved into place with ``os.replace``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from transferlab.atomic import atomic_write_bytes, atomic_write_text, stale_temporaries
from transferlab.results.encoding import dumps_pretty
from transferlab.sources.finetuned import (
    CHECKPOINT,
    FORMAT,
    HEADS_FILE,
    META_FILE,
    MODEL_FILE,
    VERSION,
)
from transferlab.training.checkpoint import cpu_state


def remove_stale_temps(out: Path) -> None:
    """Delete temp files left in ``out`` by a killed run (one run per folder at a time)."""
    for name in (CHECKPOINT, MODEL_FILE, HEADS_FILE, META_FILE):
        for tmp in stale_temporaries(out, name):
            tmp.unlink(missing_ok=True)


def save_safetensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save(cpu_state(state), metadata={"format": "pt"}))


def write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, dumps_pretty(payload) + "\n")


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
