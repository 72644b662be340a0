"""What fine-tuning writes, and the ``finetuned:PATH`` source kind that reads it back.

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
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from transferlab.atomic import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    stale_temporaries,
)
from transferlab.errors import AnnotationError, TransferlabError
from transferlab.sources.base import DERIVED_OUTPUTS, Source, named_module
from transferlab.sources.preprocessing import Preprocessing

CHECKPOINT = "checkpoint.pt"
MODEL_FILE = "model.safetensors"
HEADS_FILE = "heads.safetensors"
META_FILE = "source.json"
FORMAT = "transferlab-finetuned"
CHECKPOINT_FORMAT = "transferlab-finetune-checkpoint"
VERSION = 1
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
    atomic_write_text(path, json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


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
    return json.loads(json.dumps(value, default=_json_default))


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


def read_meta(path: str | Path) -> tuple[Path, dict]:
    """(folder, metadata) of a fine-tuned source given its folder or its source.json."""
    path = Path(path).expanduser()
    meta_path = path / META_FILE if path.is_dir() else path
    folder = meta_path.parent
    if not meta_path.is_file():
        if path.is_dir() and (path / CHECKPOINT).is_file():
            raise TransferlabError(
                f"{path}: fine-tuning has not finished (checkpoint.pt but no {META_FILE}); "
                "rerun `transferlab finetune` with the same --out to resume it"
            )
        raise TransferlabError(f"{path}: not a fine-tuned source folder (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise AnnotationError(meta_path, f"not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AnnotationError(meta_path, f"not a transferlab fine-tuned source (format is not {FORMAT!r})")
    for key in ("arch", "preprocessing", "layer_names", "base", "tasks", "model_sha256"):
        if key not in meta:
            raise AnnotationError(meta_path, "missing key", key=key)
    return folder, meta


def load_heads(path: str | Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (weight, bias) of each task's head, in the order of ``source.json``'s tasks."""
    from safetensors.torch import load_file

    folder, meta = read_meta(path)
    state = load_file(str(folder / HEADS_FILE))
    return [(state[f"{i}.weight"], state[f"{i}.bias"]) for i in range(len(meta["tasks"]))]


def load_finetuned(arg: str, weights: str | None = None) -> Source:
    """The ``finetuned:PATH`` source kind: rebuild the architecture, load model.safetensors
    (checked against the SHA-256 in source.json) with the preprocessing it was trained with
    and the base source's layer names."""
    from transferlab.sources.registry import load_source, source_from_arch
    from transferlab.sources.weights import file_sha256, fit_state_dict, load_state_dict_file

    if weights not in (None, "", "builtin"):
        raise TransferlabError("finetuned:PATH carries its own weights; do not pass --weights")
    if not arg:
        raise TransferlabError("finetuned needs a path: finetuned:PATH (the --out folder of transferlab finetune)")
    folder, meta = read_meta(arg)
    meta_path = folder / META_FILE
    model_path = folder / MODEL_FILE
    sha = file_sha256(model_path) if model_path.is_file() else ""
    if not sha:
        raise TransferlabError(f"{folder}: {MODEL_FILE} is missing")
    if sha != meta["model_sha256"]:
        raise TransferlabError(
            f"{model_path} does not match {meta_path} (SHA-256 differs): the weights were replaced "
            "or the run was not finished; rerun `transferlab finetune` with the same --out"
        )
    state = load_state_dict_file(model_path)
    try:
        preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AnnotationError(meta_path, f"bad preprocessing ({exc})", key="preprocessing") from None
    arch = str(meta["arch"])
    name = f"finetuned:{arg}"
    weights_id = f"finetuned:{sha[:16]}"
    if arch.partition(":")[0] in ("timm", "torchvision"):
        source = source_from_arch(arch, state, name=name, preprocessing=preprocessing, weights_id=weights_id,
                                  num_classes=meta.get("build_num_classes"), path=model_path)
    else:  # a kind without a timm/torchvision arch (e.g. trained:): rebuild the base, then load
        base = load_source(str(meta["base"]["name"]))
        fit_state_dict(base.model, state, model_path)
        source = replace(base, name=name, preprocessing=preprocessing, weights_id=weights_id, _layers=None)
    layer_names = [str(n) for n in meta["layer_names"]]
    for layer in layer_names:
        if layer not in DERIVED_OUTPUTS:  # features / pre_logits are computed, not hooked
            named_module(source.model, layer)
    source.layer_names = layer_names
    source._layers = None
    source.info = {"finetuned": {"base": meta["base"], "tasks": meta["tasks"], "path": str(folder)}}
    return source
