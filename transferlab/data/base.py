"""The in-memory form every dataset reader produces: splits of image paths with labels.

A reader never loads pixels; it lists files and labels. Pixels are decoded later, in the
extraction DataLoader, so memory stays bounded by the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

TaskKind = Literal["single", "multilabel", "attributes", "retrieval"]
Box = tuple[float, float, float, float]  # (x1, y1, x2, y2) in pixels of the original image


@dataclass
class Split:
    """One split of a dataset.

    labels: single-label -> int64 (n,) class indices; multi-label / attributes -> int8 (n, K)
    with 1 = positive, -1 = negative, 0 = difficult/unknown (ignored in training and scoring);
    retrieval database -> int64 (n,) of -1 (unused).
    boxes: optional crop per image (e.g. CUB bounding boxes, VOC action person boxes).
    """

    name: str
    paths: list[str]
    labels: np.ndarray
    boxes: list[Box | None] | None = None

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise ValueError(f"split {self.name}: {len(self.paths)} paths but {len(self.labels)} labels")
        if self.boxes is not None and len(self.boxes) != len(self.paths):
            raise ValueError(f"split {self.name}: {len(self.boxes)} boxes for {len(self.paths)} paths")

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Query:
    """A retrieval query: an image (optionally cropped to a box) and its ground truth.

    Indices refer to the database split. ``positives`` are the images that count as relevant
    (Oxford: good+ok; revisited: easy+hard for Medium). ``junk`` is removed before scoring.
    Revisited Oxford/Paris also fill ``easy`` and ``hard``.
    """

    path: str
    positives: np.ndarray
    junk: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    box: Box | None = None
    name: str = ""
    easy: np.ndarray | None = None
    hard: np.ndarray | None = None
    db_index: int | None = None  # the query's own index in the database, if it is in it (Holidays)


@dataclass
class TaskData:
    """A dataset as read from disk: splits, class names and, for retrieval, queries.

    Classification tasks use splits ``train``, ``val`` (optional) and ``test``. Retrieval
    tasks use split ``db`` plus ``queries``. ``source`` lists the annotation files used.
    """

    name: str
    kind: TaskKind
    classes: list[str]
    splits: dict[str, Split]
    queries: list[Query] | None = None
    root: str = ""
    source_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> Split:
        from transferlab.errors import TransferlabError

        if name not in self.splits:
            raise TransferlabError(
                f"task {self.name}: no split {name!r} (has {', '.join(self.splits) or 'none'})"
            )
        return self.splits[name]


def image_splits(task: TaskData) -> dict[str, Split]:
    """Every image list a task needs features for: its splits plus, for retrieval, the
    queries (cropped to their boxes) as a split named ``queries``."""
    splits = dict(task.splits)
    if task.queries:
        paths = [q.path for q in task.queries]
        boxes = [q.box for q in task.queries]
        splits["queries"] = Split("queries", paths, np.full(len(paths), -1, dtype=np.int64),
                                  boxes if any(b is not None for b in boxes) else None)
    return splits


def label_text(task: TaskData, labels: np.ndarray, row: int) -> str:
    """A split row's label as text: class name, or ';'-joined positive names (multi-label)."""
    value = labels[row]
    if np.ndim(value) == 0:
        index = int(value)
        return task.classes[index] if 0 <= index < len(task.classes) else ""
    return ";".join(task.classes[k] for k in np.flatnonzero(np.asarray(value) == 1))
