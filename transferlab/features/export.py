"""Extraction of a whole task (every split, queries included) and the user-facing export:
``OUT/<split>/<layer>__<pool>[__<view>].npy``, ``OUT/<split>/items.csv``, ``OUT/manifest.json``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferlab import __version__
from transferlab.atomic import atomic_save_npy, atomic_write_text
from transferlab.data.base import TaskData, image_splits, label_text
from transferlab.errors import TransferlabError
from transferlab.features.extract import SplitFeatures, extract
from transferlab.features.pooling import layer_pooled_shape, pooling_applies
from transferlab.features.store import FeatureStore
from transferlab.sources.base import Layer, Source


@dataclass
class TaskFeatures:
    """Features of every split of one task for one source."""

    layers: list[Layer]
    poolings: list[str]
    views: list[str]
    splits: dict[str, SplitFeatures] = field(default_factory=dict)

    def pairs(self) -> list[tuple[Layer, str]]:
        return [(layer, p) for layer in self.layers for p in self.poolings if pooling_applies(layer, p)]

    def manifest(self, source: Source, task: TaskData) -> dict:
        skipped = {
            name: [task_path for task_path in (_paths(task, name)[i] for i in feats.bad)]
            for name, feats in self.splits.items() if feats.bad
        }
        return {
            "transferlab": __version__,
            "source": source.name,
            "arch": source.arch,
            "weights": source.weights_id,
            "preprocessing": source.preprocessing.to_dict(),
            "pixels": self.pixel_recipe(),
            "task": task.name,
            "kind": task.kind,
            "metric": _metric_of(task),
            "classes": list(task.classes),
            "layers": [layer.to_dict() for layer in self.layers],
            "poolings": self.poolings,
            "views": self.views,
            "dims": {f"{layer.name}__{p}": list(layer_pooled_shape(layer, p)) for layer, p in self.pairs()},
            "splits": {name: int(len(feats.kept)) for name, feats in self.splits.items()},
            "skipped": skipped,
        }


    def pixel_recipe(self) -> str | None:
        """How images became pixels (decoder and resampling), as recorded in the store key."""
        for feats in self.splits.values():
            for key in feats.keys.values():
                return json.loads(key.preprocessing).get("pixels")
        return None


def _metric_of(task: TaskData) -> str:
    """The task's own protocol when it is a registered task of that kind, else the kind's
    usual metric (a generic folder that happens to share a task's name keeps the default)."""
    from transferlab.data.tasks import get_task

    try:
        spec = get_task(task.name)
    except TransferlabError:
        spec = None
    if spec is not None and spec.kind == task.kind:
        return spec.metric
    return "accuracy" if task.kind == "single" else "map"


def _paths(task: TaskData, split: str) -> list[str]:
    return image_splits(task)[split].paths


def extract_task(
    source: Source,
    task: TaskData,
    layers: Sequence[str | int],
    poolings: Sequence[str],
    views: Sequence[str] = ("orig",),
    splits: Sequence[str] | None = None,
    store: FeatureStore | None = None,
    **options,
) -> TaskFeatures:
    """Extract every requested split of ``task`` (all by default; queries included)."""
    available = image_splits(task)
    names = list(splits) if splits else list(available)
    for name in names:
        if name not in available:
            raise TransferlabError(f"task {task.name} has no split {name!r} (has {', '.join(available)})")
    resolved = source.resolve_layers(layers)
    result = TaskFeatures(resolved, list(poolings), list(views))
    for name in names:
        result.splits[name] = extract(source, available[name], resolved, poolings, views, store=store,
                                      desc=f"{source.name} {task.name}/{name}", **options)
    return result


def export_features(source: Source, task: TaskData, features: TaskFeatures, out: str | Path) -> dict:
    """Write the arrays, item lists and manifest under ``out`` (each file atomically)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TransferlabError(f"--out {out} is a file, not a folder; give a folder (it is created if missing)")
    all_splits = image_splits(task)
    for name, feats in features.splits.items():
        split = all_splits[name]
        folder = out / name
        for layer, p in features.pairs():
            for view in features.views:
                suffix = "" if view == "orig" else f"__{view}"
                array = np.asarray(feats.get(layer, p, view), dtype=np.float32)
                atomic_save_npy(folder / f"{layer.name}__{p}{suffix}.npy", array)
        _write_items(folder, task, split, feats.kept)
    manifest = features.manifest(source, task)
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def export_concat(spec: str, members: Sequence[tuple[Source, TaskFeatures]], task: TaskData,
                  out: str | Path | None) -> dict:
    """Export a ``concat:[a, b, ...]`` source: per split the images every member kept, and for
    each requested layer (paired by position: ``-1`` of each member) and pooling every member
    gives, the members' arrays side by side, named ``<layer a>+<layer b>``, each member's vector
    L2-normalised first (along the last axis), as ``ConcatFeatures`` does for the study, so
    ``probe --features`` on the folder and ``probe --source concat:[...]`` see the same numbers.
    The manifest is read like any other; ``members`` records each member's own one."""
    from transferlab.features.postprocess import l2_normalize  # scikit-learn: only concat needs it

    if out is not None:
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise TransferlabError(f"--out {out} is a file, not a folder; give a folder (it is created if missing)")
    first = members[0][1]
    layer_sets = [feats.layers for _, feats in members]
    if len({len(layers) for layers in layer_sets}) != 1:
        raise TransferlabError(f"{spec}: the members resolve to different numbers of layers")
    pairs = [(k, p) for k in range(len(first.layers)) for p in first.poolings
             if all(pooling_applies(layers[k], p) for layers in layer_sets)]
    names = ["+".join(layers[k].name for layers in layer_sets) for k in range(len(first.layers))]
    all_splits = image_splits(task)
    splits_written: dict[str, int] = {}
    dims: dict[str, list[int]] = {}
    for split_name in first.splits:
        kept_sets = [feats.splits[split_name].kept for _, feats in members]
        common = kept_sets[0]
        for kept in kept_sets[1:]:
            common = np.intersect1d(common, kept)
        rows = [np.searchsorted(kept, common) for kept in kept_sets]  # each member's rows of the common images
        splits_written[split_name] = int(len(common))
        for k, p in pairs:
            for view in first.views:
                parts = [l2_normalize(np.asarray(feats.splits[split_name].get(feats.layers[k], p, view),
                                                 dtype=np.float32)[r])
                         for (_, feats), r in zip(members, rows, strict=True)]
                if len({part.shape[1:-1] for part in parts}) != 1:
                    raise TransferlabError(f"{spec}: {p} of layer {names[k]} has a different shape per member "
                                           f"({', '.join(str(part.shape[1:]) for part in parts)})")
                array = np.concatenate(parts, axis=-1)
                dims[f"{names[k]}__{p}"] = list(array.shape[1:])
                if out is not None:
                    suffix = "" if view == "orig" else f"__{view}"
                    atomic_save_npy(out / split_name / f"{names[k]}__{p}{suffix}.npy", array)
        if out is not None:
            _write_items(out / split_name, task, all_splits[split_name], common)
    manifests = [feats.manifest(source, task) for source, feats in members]
    layers = [{"index": first.layers[k].index, "name": names[k],
               "channels": sum(layers[k].channels for layers in layer_sets)} for k in range(len(first.layers))]
    skipped = sorted({path for m in manifests for paths in m["skipped"].values() for path in paths})
    manifest = {
        **manifests[0],
        "source": spec, "arch": "concat", "weights": [m["weights"] for m in manifests],
        "preprocessing": [m["preprocessing"] for m in manifests], "pixels": [m["pixels"] for m in manifests],
        "layers": layers, "poolings": sorted({p for _, p in pairs}, key=first.poolings.index),
        "dims": dims, "splits": splits_written, "normalised": "each member L2-normalised, then side by side",
        "skipped": {"any member": skipped} if skipped else {},
        "members": manifests,
    }
    if out is not None:
        atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def _write_items(folder: Path, task: TaskData, split, rows) -> None:
    """``items.csv``: path and label of each exported row, in row order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label"])
    for i in rows:
        writer.writerow([split.paths[i], label_text(task, split.labels, int(i))])
    atomic_write_text(folder / "items.csv", buffer.getvalue())
