"""Learning factors in a study: the source networks of ``train:`` entries, trained once each
(cached by their settings under $TRANSFERLAB_CACHE/trained/) and added as sources, one per
snapshot, with their learning factors (arch, width, snapshot, classes, images per class,
source task) attached to every result row."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from transferlab.study.config import SourceEntry, StudyConfig, TrainEntry


def train_dir(entry: TrainEntry) -> Path:
    from transferlab.paths import cache_dir

    # epochs are part of the identity: the learning-rate schedule is stretched over them, so
    # a 5-epoch run is not the first half of a 10-epoch one; snapshots are not (extra saves)
    text = json.dumps(entry.model_dump(mode="json", exclude={"snapshots"}), sort_keys=True)
    return cache_dir("trained") / f"{entry.arch}-{entry.width}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def epochs_of(entry: TrainEntry) -> list[int]:
    return sorted({e for e in entry.snapshots if 1 <= e <= entry.epochs} | {entry.epochs})


def learning_factors(entry: TrainEntry, epoch: int) -> dict[str, Any]:
    tasks = entry.source_task if isinstance(entry.source_task, str) else "+".join(entry.source_task)
    return {"arch": entry.arch, "width": entry.width, "snapshot": epoch,
            "classes": entry.classes or "all", "images_per_class": entry.images_per_class or "all",
            "source_task": tasks}


def trained_entries(config: StudyConfig) -> list[tuple[SourceEntry, dict[str, Any], TrainEntry]]:
    """The sources a study's ``train:`` entries will provide (whether trained yet or not)."""
    out = []
    for entry in config.train:
        folder = train_dir(entry)
        for epoch in epochs_of(entry):
            factors = learning_factors(entry, epoch)
            label = (f"{entry.arch}-{entry.width}@{epoch}"
                     f"[{factors['source_task']}, {factors['classes']}x{factors['images_per_class']}]")
            out.append((SourceEntry(spec=f"trained:{folder}@{epoch}", label=label), factors, entry))
    return out


def is_trained(entry: TrainEntry) -> bool:
    folder = train_dir(entry)
    return all((folder / "snapshots" / f"epoch_{e:03d}.safetensors").exists() for e in epochs_of(entry))


def train_all(config: StudyConfig, device: str, progress: bool) -> None:
    """Train (or resume) every ``train:`` network not yet in the cache."""
    from transferlab.data.tasks import load_task
    from transferlab.sources.train import train_source

    for entry in config.train:
        if is_trained(entry):
            continue
        names = [entry.source_task] if isinstance(entry.source_task, str) else list(entry.source_task)
        tasks = [load_task(name, entry.options.get("root"), **({"quick": True} if entry.options.get("quick") else {}))
                 for name in names]
        train_source(entry.arch, entry.width, tasks, train_dir(entry), resolution=entry.resolution,
                     epochs=entry.epochs, snapshots=epochs_of(entry), classes=entry.classes,
                     images_per_class=entry.images_per_class, seed=entry.seed, device=device,
                     progress=progress)
