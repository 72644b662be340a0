"""Learning factors in a study: the source networks of ``train:`` entries, trained once each
(cached by their settings under $TRANSFERLAB_CACHE/trained/) and added as sources, one per
snapshot, with their learning factors (arch, width, snapshot, classes, images per class,
source task) attached to every result row.

A ``sources:`` spec may name a trained network as ``train:NAME`` (its final epoch) or
``train:NAME@EPOCH``, also inside ``concat:[train:object, train:scene]`` (the paper's Concat
source); ``resolve_train_references`` rewrites these to the ``trained:DIR@EPOCH`` folders.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from transferlab.errors import TransferlabError
from transferlab.study.config import SourceEntry, StudyConfig, TrainEntry
from transferlab.study.plan import concat_members

# settings that do not change the trained weights, so not part of a network's cache identity
NOT_IDENTITY = {"snapshots", "name", "finetune"}
TRAIN_REFERENCE = re.compile(r"train:([A-Za-z0-9_.-]+)(?:@(\d+))?")


def train_dir(entry: TrainEntry) -> Path:
    from transferlab.paths import cache_dir

    # epochs are part of the identity: the learning-rate schedule is stretched over them, so
    # a 5-epoch run is not the first half of a 10-epoch one; snapshots are not (extra saves)
    identity = entry.model_dump(mode="json", exclude=NOT_IDENTITY)
    identity["options"] = {k: v for k, v in identity["options"].items() if k != "threads"}  # speed only
    text = json.dumps(identity, sort_keys=True)
    return cache_dir("trained") / f"{entry.arch}-{entry.width}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def epochs_of(entry: TrainEntry) -> list[int]:
    return sorted({e for e in entry.snapshots if 1 <= e <= entry.epochs} | {entry.epochs})


def task_names(entry: TrainEntry) -> list[str]:
    return [entry.source_task] if isinstance(entry.source_task, str) else list(entry.source_task)


def learning_factors(entry: TrainEntry, epoch: int) -> dict[str, Any]:
    return {"arch": entry.arch, "width": entry.width, "snapshot": epoch,
            "classes": entry.classes or "all", "images_per_class": entry.images_per_class or "all",
            "source_task": "+".join(task_names(entry))}


def source_label(entry: TrainEntry, epoch: int) -> str:
    if entry.name:
        return f"{entry.name}@{epoch}"
    factors = learning_factors(entry, epoch)
    return (f"{entry.arch}-{entry.width}@{epoch}"
            f"[{factors['source_task']}, {factors['classes']}x{factors['images_per_class']}]")


def trained_entries(config: StudyConfig) -> list[tuple[SourceEntry, dict[str, Any], TrainEntry]]:
    """The sources a study's ``train:`` entries will provide (whether trained yet or not)."""
    out = []
    for entry in config.train:
        folder = train_dir(entry)
        for epoch in epochs_of(entry):
            out.append((SourceEntry(spec=f"trained:{folder}@{epoch}", label=source_label(entry, epoch)),
                        learning_factors(entry, epoch), entry))
    return out


def named_entries(config: StudyConfig) -> dict[str, TrainEntry]:
    names: dict[str, TrainEntry] = {}
    for entry in config.train:
        if entry.name:
            if entry.name in names:
                raise TransferlabError(f"train: the name {entry.name!r} is given to two entries")
            names[entry.name] = entry
    return names


def resolve_train_references(config: StudyConfig) -> StudyConfig:
    """``train:NAME[@EPOCH]`` in source specs -> ``trained:DIR@EPOCH`` (the final epoch by default)."""
    names = named_entries(config)
    changed = False
    sources = []
    for source in config.sources:
        def swap(match: re.Match, source: SourceEntry = source) -> str:
            name, epoch = match.group(1), match.group(2)
            if name not in names:
                known = ", ".join(sorted(names)) or "none (give train: entries a name:)"
                raise TransferlabError(f"sources: {source.spec}: no train: entry is named {name!r} (named: {known})")
            entry = names[name]
            wanted = int(epoch) if epoch else entry.epochs
            if wanted not in epochs_of(entry):
                raise TransferlabError(f"sources: {source.spec}: train entry {name!r} keeps epochs "
                                       f"{', '.join(map(str, epochs_of(entry)))}, not {wanted}")
            return f"trained:{train_dir(entry)}@{wanted}"

        spec = TRAIN_REFERENCE.sub(swap, source.spec)
        if spec != source.spec:
            changed = True
            source = source.model_copy(update={"spec": spec, "label": source.label or source.spec})
        sources.append(source)
    return config.model_copy(update={"sources": sources}) if changed else config


def references_of(spec: str, config: StudyConfig) -> list[tuple[TrainEntry, int]]:
    """The (train entry, epoch) pairs a resolved source spec reads."""
    out = []
    for entry in config.train:
        folder = str(train_dir(entry))
        for epoch in epochs_of(entry):
            if f"trained:{folder}@{epoch}" in re.findall(r"trained:[^,\]\s]+", spec):
                out.append((entry, epoch))
    return out


def concat_factors(spec: str, config: StudyConfig) -> dict[str, Any] | None:
    """Learning factors of a ``concat:[...]`` source whose members are all trained here."""
    members = concat_members(spec)
    if not members:
        return None
    refs = [references_of(m, config) for m in members]
    if not all(len(r) == 1 for r in refs):
        return None
    parts = [learning_factors(entry, epoch) for ((entry, epoch),) in refs]

    def joined(key: str) -> Any:
        values = list(dict.fromkeys(str(p[key]) for p in parts))
        return parts[0][key] if len(values) == 1 else "+".join(values)

    return {"arch": joined("arch"), "width": joined("width"), "snapshot": joined("snapshot"),
            "classes": joined("classes"), "images_per_class": joined("images_per_class"),
            "source_task": "concat:" + "+".join(p["source_task"] for p in parts)}


def learning_settings(settings: list, finetune: bool) -> list:
    """Learning-factor sources are compared at the standard setting; an entry with
    ``finetune: true`` also gets the standard setting with fine-tuning switched on."""
    standard = settings[0][0]
    keep = [settings[0]]
    if finetune:
        keep += [(s, std) for s, std in settings[1:]
                 if s.finetune == "on" and s.with_values(finetune=standard.finetune) == standard]
    return keep


def is_trained(entry: TrainEntry) -> bool:
    folder = train_dir(entry)
    return all((folder / "snapshots" / f"epoch_{e:03d}.safetensors").exists() for e in epochs_of(entry))


def train_all(config: StudyConfig, device: str, progress: bool) -> None:
    """Train (or resume) every ``train:`` network not yet in the cache."""
    from transferlab.data.tasks import load_task
    from transferlab.sources.train import train_source

    pending = [entry for entry in config.train if not is_trained(entry)]
    for number, entry in enumerate(pending, start=1):
        tasks = [load_task(name, entry.options.get("root"), **({"quick": True} if entry.options.get("quick") else {}))
                 for name in task_names(entry)]
        if progress:
            import sys

            print(f"transferlab: training source {number}/{len(pending)}: {source_label(entry, entry.epochs)}",
                  file=sys.stderr)
        train_source(entry.arch, entry.width, tasks, train_dir(entry), resolution=entry.resolution,
                     epochs=entry.epochs, snapshots=epochs_of(entry), classes=entry.classes,
                     images_per_class=entry.images_per_class, seed=entry.seed, device=device,
                     progress=progress, **_train_options(entry))


def _train_options(entry: TrainEntry) -> dict[str, Any]:
    keys = {"lr": float, "batch_size": int, "threads": int, "dropout": float}
    return {k: cast(entry.options[k]) for k, cast in keys.items() if k in entry.options}


# ------------------------------------------------------------------------------ records
def source_records(config: StudyConfig) -> dict[str, dict[str, Any]]:
    """Per trained source of the study (one per snapshot, and Concat sources of them): its
    training record at that snapshot, for ``results --sources`` and the report."""
    from transferlab.sources.train import near_chance

    out: dict[str, dict[str, Any]] = {}
    for source, factors, entry in trained_entries(config):
        out[source.name] = _record(source, factors, entry, near_chance)
    for source in config.sources:
        concat = concat_factors(source.spec, config)
        if concat is None:
            continue
        members = []
        for member in concat_members(source.spec) or []:
            ((entry, epoch),) = references_of(member, config)
            members.append(_record(SourceEntry(spec=member, label=source_label(entry, epoch)),
                                   learning_factors(entry, epoch), entry, near_chance))
        accuracies = [m["val_accuracy"] for m in members]
        out[source.name] = {
            "source": source.name, "spec": source.spec, "kind": "concat",
            "source_task": [t for m in members for t in m["source_task"]],
            "arch": concat["arch"], "width": concat["width"], "snapshot": concat["snapshot"],
            "epochs": None, "images": sum(m["images"] or 0 for m in members),
            "classes": sum(m["classes"] or 0 for m in members),
            "images_per_class": concat["images_per_class"],
            "parameters": sum(m["parameters"] or 0 for m in members),
            "val_accuracy": None if None in accuracies else min(accuracies),
            "near_chance": any(m["near_chance"] for m in members),
            "members": members,
        }
    return out


def warn_near_chance(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Say on stderr which trained sources have not learnt their own task (and return the records)."""
    import sys

    for name, record in records.items():
        if record.get("near_chance") and record.get("kind") != "concat":
            print(f"transferlab: WARNING: source {name} is near chance on its own validation split "
                  f"(accuracy {record['val_accuracy']:.3f}, chance {record['chance']:.3f}): its results say "
                  "nothing about transfer; train it on more images or for more epochs", file=sys.stderr)
    return records


def _record(source: SourceEntry, factors: dict[str, Any], entry: TrainEntry, near_chance) -> dict[str, Any]:
    from transferlab.data.builtin.scenes import SOURCE_KINDS
    from transferlab.sources.train import TrainRecord

    tasks = task_names(entry)
    folder = train_dir(entry)
    record = None
    try:
        meta = json.loads((folder / "source.json").read_text())
        record = TrainRecord.from_dict(meta["training"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    epoch = int(factors["snapshot"])
    val = record.val_accuracy_at(epoch) if record else None
    row = next((r for r in record.history if r["epoch"] == epoch), {}) if record else {}
    kind = "hybrid" if len(tasks) > 1 else SOURCE_KINDS.get(tasks[0], tasks[0])
    return {
        "source": source.name, "spec": source.spec, "kind": kind, "source_task": tasks,
        "arch": entry.arch, "width": entry.width, "snapshot": epoch, "epochs": entry.epochs,
        "images": record.train_images if record else None,
        "classes": record.num_classes if record else entry.classes,
        "images_per_class": entry.images_per_class or "all",
        "parameters": record.parameters if record else None,
        "val_accuracy": val, "val_images": record.val_images if record else None,
        "chance": round(1.0 / record.num_classes, 6) if record else None,
        "near_chance": near_chance(val, record.num_classes) if record else None,
        "train_accuracy": row.get("train_accuracy"),
        "seconds": (round(sum(r.get("seconds") or 0 for r in record.history if r["epoch"] <= epoch), 1)
                    if record else None),
        "images_per_second": row.get("images_per_second"),
        "status": record.status if record else "not trained",
    }
