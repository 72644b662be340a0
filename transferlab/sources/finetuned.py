"""The ``finetuned:PATH`` source kind: a network written by ``transferlab finetune``.

The folder's format is owned here (``heads/finetune_store.py`` writes it): ``model.safetensors``
(the fine-tuned network), ``heads.safetensors`` (one linear head per target task) and
``source.json`` (architecture, preprocessing, layer names, base, tasks, SHA-256 of the model),
written last, so a folder without it is not a finished run.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from transferlab.errors import AnnotationError, TransferlabError
from transferlab.sources.base import DERIVED_OUTPUTS, Source, named_module
from transferlab.sources.preprocessing import Preprocessing
from transferlab.sources.registry import register_source_kind

CHECKPOINT = "checkpoint.pt"
MODEL_FILE = "model.safetensors"
HEADS_FILE = "heads.safetensors"
META_FILE = "source.json"
FORMAT = "transferlab-finetuned"
VERSION = 1


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


register_source_kind("finetuned", load_finetuned, "a network fine-tuned by transferlab finetune (PATH)")
