"""Images and labels of one or several target tasks, as fine-tuning batches.

Several tasks train jointly (the paper's VOC+CUB+Pet experiment): their training images are
pooled and shuffled together, so each batch mixes tasks in proportion to their sizes, and
every sample carries the index of its task so that its loss uses only its own head. Labels
of all tasks are packed into one int64 matrix: column 0 holds the class of a single-label
sample, the first K columns the {1,-1,0} vector of a multi-label one (the rest is padding).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sized
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from transferlab.data.base import Box, Split, TaskData
from transferlab.errors import BadImageError, TransferlabError
from transferlab.sources.preprocessing import Preprocessing

MULTI_KINDS = ("multilabel", "attributes")


@dataclass
class FinetuneTask:
    """A target task as fine-tuning sees it: its training, validation (chosen by
    ``prepare_task``) and test splits, its metric and the size of its head."""

    name: str
    kind: str  # "single" or "multilabel"
    classes: list[str]
    metric: str
    train: Split
    val: Split
    test: Split | None
    val_source: str  # "val" or "10% of train (seed S)"

    @property
    def multilabel(self) -> bool:
        return self.kind != "single"

    @property
    def n_outputs(self) -> int:
        return len(self.classes)


def task_metric(task: TaskData) -> str:
    """The task's own protocol when it is a registered classification task, else accuracy
    (single-label) or non-interpolated mAP (multi-label)."""
    from transferlab.data.tasks import get_task
    from transferlab.evaluate import metric_kind

    try:
        spec = get_task(task.name)
    except TransferlabError:
        spec = None
    if spec is not None and metric_kind(spec.metric) == "classification":
        return spec.metric
    return "accuracy" if task.kind == "single" else "map"


def prepare_task(task: TaskData, seed: int, val_fraction: float) -> FinetuneTask:
    """Check a task can be fine-tuned on and pick its validation split."""
    if task.kind == "retrieval":
        raise TransferlabError(
            f"task {task.name} is a retrieval task; fine-tuning needs a classification task "
            "(fine-tune on one, then use the result as --source for retrieval)"
        )
    if "train" not in task.splits or len(task.splits["train"]) == 0:
        raise TransferlabError(f"task {task.name} has no training images (split 'train')")
    kind = "single" if task.kind == "single" else "multilabel"
    train = task.splits["train"]
    n_classes = len(task.classes)
    for split in task.splits.values():
        _check_labels(task, split, kind, n_classes)
    val = task.splits.get("val")
    if val is not None and len(val) > 0:
        val_source = "val"
    else:
        if not 0 < val_fraction < 1:
            raise TransferlabError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if len(train) < 2:
            raise TransferlabError(f"task {task.name}: 1 training image and no 'val' split; need at least 2")
        order = np.random.default_rng(seed).permutation(len(train))
        n_val = max(1, int(round(val_fraction * len(train))))
        val = _subset(train, np.sort(order[:n_val]), "val")
        train = _subset(train, np.sort(order[n_val:]), "train")
        val_source = f"{val_fraction:.0%} of train (seed {seed})"
    test = task.splits.get("test")
    return FinetuneTask(task.name, kind, list(task.classes), task_metric(task), train, val,
                    test if test is not None and len(test) else None, val_source)


def _check_labels(task: TaskData, split: Split, kind: str, n_classes: int) -> None:
    labels = np.asarray(split.labels)
    where = f"task {task.name}, split {split.name}"
    if kind == "single":
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise TransferlabError(
                f"{where}: single-label tasks need int class indices, got {labels.dtype} {labels.shape}")
        bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
        if len(bad):
            raise TransferlabError(
                f"{where}: label {int(labels[bad[0]])} of {split.paths[bad[0]]} is outside the "
                f"{n_classes} classes"
            )
    else:
        if labels.ndim != 2 or labels.shape[1] != n_classes:
            raise TransferlabError(f"{where}: multi-label labels must be (n, {n_classes}), got {labels.shape}")
        if not np.isin(labels, (-1, 0, 1)).all():
            raise TransferlabError(f"{where}: multi-label labels must be 1, -1 or 0")


def _subset(split: Split, rows: np.ndarray, name: str) -> Split:
    boxes = [split.boxes[i] for i in rows] if split.boxes is not None else None
    return Split(name, [split.paths[i] for i in rows], np.asarray(split.labels)[rows], boxes)


def split_fingerprint(split: Split) -> str:
    """Identity of an image list and its labels (not file times, so a re-materialised
    built-in task still resumes)."""
    digest = hashlib.sha256()
    for i, path in enumerate(split.paths):
        box = split.boxes[i] if split.boxes is not None else None
        digest.update(f"{path}\0{box}\0".encode())
    digest.update(np.ascontiguousarray(split.labels).tobytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------ datasets
def pack_labels(tasks: list[FinetuneTask], splits: list[Split]) -> np.ndarray:
    """Every sample's label as one int64 row (see the module docstring)."""
    width = max([1] + [t.n_outputs for t in tasks if t.multilabel])
    rows = []
    for task, split in zip(tasks, splits, strict=True):
        block = np.zeros((len(split), width), dtype=np.int64)
        labels = np.asarray(split.labels)
        if task.multilabel:
            block[:, : labels.shape[1]] = labels
        else:
            block[:, 0] = labels
        rows.append(block)
    return np.concatenate(rows) if rows else np.zeros((0, width), dtype=np.int64)


class TaskImages(Dataset):
    """(image tensor, task index, label row, reason) per sample; an unreadable image gives a
    non-empty reason instead of raising, so the main process can name the file."""

    def __init__(self, tasks: list[FinetuneTask], splits: list[Split], preprocessing: Preprocessing, train: bool):
        self.paths: list[str] = []
        self.boxes: list[Box | None] = []
        task_ids = []
        for t, split in enumerate(splits):
            self.paths.extend(split.paths)
            self.boxes.extend(split.boxes if split.boxes is not None else [None] * len(split))
            task_ids.extend([t] * len(split))
        self.task_ids = torch.tensor(task_ids, dtype=torch.int64)
        self.labels = torch.from_numpy(pack_labels(tasks, splits))
        self.preprocessing = preprocessing
        self.train = train

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from transferlab.data.images import read_image

        size = self.preprocessing.input_size
        try:
            image = read_image(self.paths[index], self.boxes[index])
            pre = self.preprocessing
            tensor = pre.to_train_tensor(image) if self.train else pre.to_tensor(image)
            reason = ""
        except Exception as exc:  # any decoder failure is reported with the file name
            tensor = torch.zeros(3, size, size)
            reason = (str(exc).splitlines()[0] if str(exc) else "") or type(exc).__name__
        return tensor, self.task_ids[index], self.labels[index], index, reason


def check_batch(dataset: TaskImages, indices: torch.Tensor, reasons) -> None:
    for k, reason in enumerate(reasons):
        if reason:
            raise BadImageError(dataset.paths[int(indices[k])], reason)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, workers: int, seed: int = 0,
                pin: bool = False, drop_single: bool = False) -> DataLoader:
    """``drop_single``: drop a last batch of one image (BatchNorm cannot train on it)."""
    n = len(cast(Sized, dataset))  # every dataset here is map-style
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, pin_memory=pin,
        drop_last=drop_single and n > batch_size and n % batch_size == 1,
        generator=torch.Generator().manual_seed(seed), persistent_workers=False,
    )
