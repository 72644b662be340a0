"""A folder written by `transferlab extract --out`, read back as a task and a features handle
(``features.handle.ExportedFeatures``): what ``probe --features`` and ``select --features``
evaluate, with no network loaded. Every problem is one line naming the file."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.data.base import Split, TaskData
from transferlab.errors import AnnotationError, TransferlabError
from transferlab.features.handle import ExportedFeatures

_MANIFEST_FIELDS = {"splits": dict, "layers": list}


def _read_manifest(path: Path) -> dict:
    """manifest.json, checked for the fields a probe reads; a problem names the file."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise TransferlabError(f"{path}: not UTF-8 text; export the folder again") from None
    except json.JSONDecodeError as exc:
        raise TransferlabError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); export the folder again") from None
    if not isinstance(manifest, dict):
        raise TransferlabError(f"{path}: not a JSON object; export the folder again")
    for key, kind in _MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(key), kind):
            raise TransferlabError(
                f"{path}: field {key!r} is missing or not a {kind.__name__}; export the folder again")
    for entry in manifest["layers"]:
        if not isinstance(entry, dict) or "name" not in entry or "index" not in entry:
            raise TransferlabError(f"{path}: field 'layers' holds an entry without name and index")
    return manifest


def exported_task_and_features(folder: str | Path) -> tuple[TaskData, ExportedFeatures, str]:
    """The task (labels from each split's items.csv, kind and classes from the manifest), the
    handle on its arrays, and the task's metric."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise TransferlabError(f"{folder}: no manifest.json (not a `transferlab extract --out` folder)")
    manifest = _read_manifest(manifest_path)
    if "train" not in manifest["splits"] or "test" not in manifest["splits"]:
        raise TransferlabError(f"{folder}: probing needs exported train and test splits (this export has "
                               f"{', '.join(manifest['splits']) or 'none'})")
    splits: dict[str, Split] = {}
    counts: dict[str, int] = {}
    label_names: list[list[str]] = []
    for name in manifest["splits"]:
        items = folder / name / "items.csv"
        if not items.is_file():
            raise TransferlabError(f"{items} is missing: the manifest lists split {name}; export it again")
        try:
            with open(items, newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))
        except UnicodeDecodeError as exc:
            raise AnnotationError(items, f"not UTF-8 text ({exc.reason})") from None
        except csv.Error as exc:
            raise AnnotationError(items, f"malformed CSV ({exc})") from None
        if not rows or rows[0] != ["path", "label"]:
            raise AnnotationError(items, "header must be path,label", line=1)
        body = rows[1:]
        for line, row in enumerate(body, start=2):
            if len(row) != 2:
                raise AnnotationError(items, f"expected 2 fields (path,label), found {len(row)}", line=line)
        if not body:
            skipped = len(manifest.get("skipped", {}).get(name, []))
            why = (f"all {skipped} of its images were skipped as unreadable (see the manifest's 'skipped')"
                   if skipped else "items.csv lists no images")
            raise TransferlabError(f"{folder}: split {name} has no images: {why}; a probe needs images in "
                                   "train and test")
        splits[name] = Split(name, [r[0] for r in body], np.zeros(len(body), dtype=np.int64))
        label_names.append([r[1] for r in body])
        counts[name] = len(body)
    # the manifest says what the task is; exports from before it did are guessed from labels
    guessed = "multilabel" if any(";" in x for names in label_names for x in names) else "single"
    kind: Any = manifest.get("kind") or guessed
    multilabel = kind != "single"
    classes = manifest.get("classes") or sorted({c for names in label_names for x in names for c in x.split(";") if c})
    index = {c: i for i, c in enumerate(classes)}
    for (name, split), names in zip(splits.items(), label_names, strict=True):
        items = folder / name / "items.csv"
        labels = -np.ones((len(names), len(classes)), dtype=np.int8) if multilabel else np.zeros(len(names), np.int64)
        for position, label in enumerate(names):
            for c in (label.split(";") if multilabel else [label]):
                if c == "" and multilabel:
                    continue  # an image with no positive label
                if c not in index:
                    raise AnnotationError(items, f"label {c!r} is not one of the manifest's classes",
                                          line=position + 2)
                if multilabel:
                    labels[position, index[c]] = 1
                else:
                    labels[position] = index[c]
        splits[name] = Split(name, split.paths, labels)
    if "train" not in splits or "test" not in splits:
        raise TransferlabError(f"{folder}: probing needs exported train and test splits")
    task = TaskData(name=manifest.get("task", folder.name), kind=kind, classes=list(classes), splits=splits,
                    root=str(folder))
    layers = [(entry["index"], entry["name"]) for entry in manifest["layers"]]
    kinds = {entry["name"]: str(entry.get("kind") or "") for entry in manifest["layers"]}
    dims: dict[str, Any] = manifest["dims"] if isinstance(manifest.get("dims"), dict) else {}
    metric = manifest.get("metric") or ("map" if multilabel else "accuracy")
    return task, ExportedFeatures(folder, layers, counts, list(dims), kinds), metric
