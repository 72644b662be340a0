"""Loading weight files safely and fitting them to an architecture.

Only ``weights_only=True`` torch loading or safetensors: a checkpoint from the internet
must not be able to run code. Common wrappers are unwrapped (``state_dict``/``model`` keys,
DataParallel's ``module.`` prefix, as in the Places365 checkpoints).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from transferlab.errors import TransferlabError

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file (.safetensors, .pth, .pth.tar, .pt, .bin) into a flat state dict."""
    path = Path(path)
    if not path.is_file():
        raise TransferlabError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # safetensors raises several types
            raise TransferlabError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        if path.stat().st_size == 0:
            raise TransferlabError(f"{path}: the weights file is empty (0 bytes); download or copy it again")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise TransferlabError(
                f"{path}: cannot load with weights_only=True ({reason}); "
                "convert it to safetensors or a plain state dict"
            ) from None
    return unwrap_state_dict(state, path)


def unwrap_state_dict(state: object, path: str | Path = "<weights>") -> dict[str, torch.Tensor]:
    if isinstance(state, Mapping):
        for key in _WRAPPER_KEYS:
            inner = state.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                state = inner
                break
    if not isinstance(state, Mapping) or not state:
        raise TransferlabError(f"{path}: no state dict of tensors found")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise TransferlabError(f"{path}: no tensors found in the checkpoint")
    for prefix in ("module.", "model.", "backbone."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def fit_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path,
                   allow_missing_head: bool = False, head_keys: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``model`` strictly; on mismatch list the first offending keys.

    ``allow_missing_head`` tolerates a missing or differently-shaped classifier (a checkpoint
    trained on another label set still gives valid representations)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape_bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if allow_missing_head:
        missing = [k for k in missing if not k.startswith(head_keys)]
        unexpected = [k for k in unexpected if not k.startswith(head_keys)]
        shape_bad = [k for k in shape_bad if not k.startswith(head_keys)]
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected or shape_bad:
        parts = []
        if missing:
            parts.append(f"missing {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected {_first(unexpected)}")
        if shape_bad:
            parts.append(
                "shape mismatch "
                + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shape_bad[:3])
            )
        raise TransferlabError(f"{path}: weights do not fit the architecture: " + "; ".join(parts))
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(usable, strict=False)


def _first(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def file_sha256(path: str | Path) -> str:
    """Content hash of a weights file, cached by (path, size, mtime)."""
    stat = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
