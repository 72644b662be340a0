"""The features handle: what everything that evaluates features reads.

One protocol, ``FeatureHandle`` ("the pooled features of one source on one task's splits"),
and its implementations:

- ``StoreFeatures``: one extraction in the FeatureStore (``features.export.extract_task``'s
  ``TaskFeatures``); what the study, ``probe``, ``retrieve`` and ``select`` read.
- ``ExportedFeatures``: a folder written by ``transferlab extract --out`` (``probe
  --features``, ``select --features``); its task comes from ``features.exported``.
- ``ConcatFeatures``: several handles side by side (``concat:[a, b]``), each member's vectors
  L2-normalised first so no source dominates by scale.

The repeat views of ``study.evaluation`` (``ResplitFeatures``, ``PartitionFeatures``) wrap
a handle and are handles too. ``members`` (store-backed handles only) lists the
``TaskFeatures`` behind a handle, for what needs the store itself (extraction placement).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from transferlab.errors import TransferlabError
from transferlab.features.postprocess import l2_normalize


@dataclass(frozen=True)
class Representation:
    """One (layer, pooling) a handle can give: ``layer`` is the spec to ask for it with (the
    index from the top, -1, -2, ..., when known, else the module name)."""

    layer: int | str
    layer_name: str
    pooling: str
    kind: str = ""  # map | tokens | vector, when known


@runtime_checkable
class FeatureHandle(Protocol):
    """The pooled features of one source on the splits of one task. Rows of ``split`` are the
    images ``kept`` (dataset indices, unreadable images skipped), in that order."""

    def layer_name(self, layer: int | str) -> str: ...
    def split(self, name: str, layer: int | str, pooling: str, view: str = "orig") -> np.ndarray: ...
    def kept(self, name: str) -> np.ndarray: ...
    def representations(self) -> list[Representation]: ...


def _matches(index: Any, name: str, layer: int | str) -> bool:
    return str(index) == str(layer) or name == str(layer)


class StoreFeatures:
    """One extraction's features in the FeatureStore (a ``TaskFeatures``: layers, poolings,
    views and one store handle per split)."""

    def __init__(self, features: Any):
        self.features = features

    @property
    def members(self) -> list[Any]:
        return [self.features]

    def _layer(self, layer: int | str):
        for candidate in self.features.layers:
            if _matches(candidate.index, candidate.name, layer):
                return candidate
        raise TransferlabError(f"layer {layer} was not extracted")

    def _split(self, name: str):
        try:
            return self.features.splits[name]
        except KeyError:
            have = ", ".join(self.features.splits)
            raise TransferlabError(f"split {name!r} was not extracted (have {have})") from None

    def layer_name(self, layer: int | str) -> str:
        return self._layer(layer).name

    def split(self, name: str, layer: int | str, pooling: str, view: str = "orig") -> np.ndarray:
        return np.asarray(self._split(name).get(self._layer(layer), pooling, view), dtype=np.float32)

    def kept(self, name: str) -> np.ndarray:
        return np.asarray(self._split(name).kept)

    def representations(self) -> list[Representation]:
        return [Representation(layer.index if layer.index < 0 else layer.name, layer.name, p, layer.kind)
                for layer, p in self.features.pairs()]


class ExportedFeatures:
    """The arrays of a ``transferlab extract --out`` folder: ``<split>/<layer>__<pool>[__<view>].npy``,
    one row per line of ``<split>/items.csv`` (``counts``). A missing, damaged or mismatched
    array is one line naming the file."""

    def __init__(self, folder: str | Path, layers: Sequence[tuple[int | str, str]], counts: dict[str, int],
                 dims: Sequence[str] = (), kinds: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.layers = list(layers)  # (index, name) as the manifest lists them
        self.counts = dict(counts)
        self.dims = list(dims)  # the manifest's "<layer>__<pool>" keys: what was exported
        self.kinds = kinds or {}

    def _name(self, layer: int | str) -> str:
        for index, name in self.layers:
            if _matches(index, name, layer):
                return name
        raise TransferlabError(f"layer {layer} was not extracted")

    def layer_name(self, layer: int | str) -> str:
        return self._name(layer)

    def split(self, name: str, layer: int | str, pooling: str, view: str = "orig") -> np.ndarray:
        if name not in self.counts:
            raise TransferlabError(f"{self.folder}: split {name!r} was not exported (has {', '.join(self.counts)})")
        suffix = "" if view == "orig" else f"__{view}"
        path = self.folder / name / f"{self._name(layer)}__{pooling}{suffix}.npy"
        if not path.exists():
            raise TransferlabError(f"{path} not found: export it with transferlab extract --out")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise TransferlabError(f"{path}: truncated or damaged array ({reason}); export it again with "
                                   "transferlab extract --out") from None
        if array.ndim < 2 or array.shape[0] != self.counts[name]:
            raise TransferlabError(
                f"{path}: {array.shape[0] if array.ndim else 0} rows but {self.folder / name / 'items.csv'} lists "
                f"{self.counts[name]} images; the folder mixes exports, extract it again")
        return np.asarray(array, dtype=np.float32)

    def kept(self, name: str) -> np.ndarray:
        if name not in self.counts:
            raise TransferlabError(f"{self.folder}: split {name!r} was not exported (has {', '.join(self.counts)})")
        return np.arange(self.counts[name])

    def representations(self) -> list[Representation]:
        out = []
        for index, name in self.layers:
            for key in self.dims:
                layer, sep, pooling = key.rpartition("__")
                if sep and layer == name:
                    spec: int | str = index if isinstance(index, int) and index < 0 else name
                    out.append(Representation(spec, name, pooling, self.kinds.get(name, "")))
        return out


class ConcatFeatures:
    """Handles side by side: each member's vectors L2-normalised (along the last axis, so
    spatial-search windows ``(n, R, D)`` stay windows), then concatenated. A layer is asked
    for by its spec (``-1``: each member's own top layer) or by the joined name
    ``<layer a>+<layer b>`` that ``layer_name`` gives."""

    def __init__(self, parts: Sequence[FeatureHandle], normalise: bool = True):
        if len(parts) < 2:
            raise TransferlabError("a concatenation needs at least two feature handles")
        self.parts = list(parts)
        self.normalise = normalise

    @property
    def members(self) -> list[Any]:
        return [m for part in self.parts for m in getattr(part, "members", [])]

    def _specs(self, layer: int | str) -> list[int | str]:
        if isinstance(layer, str):
            pieces = layer.split("+")
            if len(pieces) == len(self.parts) and layer not in {r.layer_name for r in self.parts[0].representations()}:
                return list(pieces)
        return [layer] * len(self.parts)

    def layer_name(self, layer: int | str) -> str:
        return "+".join(part.layer_name(spec) for part, spec in zip(self.parts, self._specs(layer), strict=True))

    def split(self, name: str, layer: int | str, pooling: str, view: str = "orig") -> np.ndarray:
        arrays = [part.split(name, spec, pooling, view)
                  for part, spec in zip(self.parts, self._specs(layer), strict=True)]
        if self.normalise:
            arrays = [l2_normalize(a) for a in arrays]
        if len({a.shape[:-1] for a in arrays}) != 1:
            raise TransferlabError(f"concat members give {pooling} of layer {self.layer_name(layer)} in different "
                                   f"shapes ({', '.join(str(a.shape) for a in arrays)})")
        return np.concatenate(arrays, axis=-1)

    def kept(self, name: str) -> np.ndarray:
        kept = [part.kept(name) for part in self.parts]
        common = kept[0]
        for other in kept[1:]:
            common = np.intersect1d(common, other)
        if any(len(k) != len(common) for k in kept):
            raise TransferlabError(f"concat members skipped different images in split {name}")
        return common

    def representations(self) -> list[Representation]:
        """What every member gives, paired by layer spec (the index from the top)."""
        per_part = [{(r.layer, r.pooling): r for r in part.representations()} for part in self.parts]
        out = []
        for (layer, pooling), first in per_part[0].items():
            found = [reps.get((layer, pooling)) for reps in per_part]
            if all(found):
                names = "+".join(r.layer_name for r in found if r is not None)
                out.append(Representation(layer, names, pooling, first.kind))
        return out


def features_of(members: Sequence[Any]) -> FeatureHandle:
    """The handle on a spec's extraction: its one member's, or its members' side by side."""
    if len(members) == 1:
        return StoreFeatures(members[0])
    return ConcatFeatures([StoreFeatures(m) for m in members])
