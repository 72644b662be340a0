"""MIT Indoor 67 (Quattoni & Torralba 2009), read from the official lists.

``TrainImages.txt`` / ``TestImages.txt`` hold one ``<class>/<file>`` per line, relative to
``Images/`` (the folder ``indoorCVPR_09.tar`` extracts). File names may contain spaces
("laundromat/laundry room.jpg"), so a line is taken whole, never split on whitespace.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transferlab.data.base import Split, TaskData
from transferlab.data.readers._util import (
    Problems,
    check_images_exist,
    find_under,
    require_root,
)
from transferlab.data.tasks import TaskSpec, register
from transferlab.errors import TransferlabError

LISTS = {"train": "TrainImages.txt", "test": "TestImages.txt"}


def read_mit67(root: Path | None, *, problems: Problems | None = None) -> TaskData:
    """Official split: 5360 train / 1340 test images (about 80 / 20 per class)."""
    problems = problems if problems is not None else Problems()
    root = require_root(root, "mit67", "the folder holding Images/ and TrainImages.txt")
    images = find_under(root, ["Images", "indoorCVPR_09/Images"], "MIT67 image folder Images/")
    entries: dict[str, tuple[Path, list[tuple[str, str]]]] = {}
    task = TaskData(name="mit67", kind="single", classes=[], splits={}, root=str(root))
    for split_name, list_name in LISTS.items():
        try:
            list_file = find_under(root, [list_name], f"MIT67 list {list_name}")
        except TransferlabError as exc:
            problems.report(exc)
            continue
        lines = problems.lines(list_file, task.source_files)
        if lines is None:
            continue
        rows = []
        for number, line in lines:
            rel = line.strip()
            cls, _, name = rel.partition("/")
            if not cls or not name or "/" in name:
                problems.annotation(
                    list_file, f"expected '<class>/<file>', got {rel!r}", line=number
                )
                continue
            rows.append((cls, rel))
        entries[split_name] = (list_file, rows)
    task.classes = sorted({cls for _, rows in entries.values() for cls, _ in rows})
    index = {cls: k for k, cls in enumerate(task.classes)}
    for split_name, (list_file, rows) in entries.items():
        labels = np.array([index[cls] for cls, _ in rows], dtype=np.int64)
        split = Split(split_name, [str(images / rel) for _, rel in rows], labels)
        task.splits[split_name] = split
        counts = np.bincount(labels, minlength=len(task.classes))
        for k in np.flatnonzero(counts == 0):
            problems.annotation(list_file, f"class {task.classes[k]} has no {split_name} image")
        check_images_exist(split.paths, problems, list_file)
    task.notes.append(
        f"images under {images}; {len(task.classes)} classes from the class folders named in the lists"
    )
    return task


register(
    TaskSpec(
        name="mit67",
        title="MIT Indoor 67",
        group=1,
        distance=2,
        kind="single",
        metric="mean_class_accuracy",
        layout="TrainImages.txt, TestImages.txt, Images/<class>/<file>",
        reader=read_mit67,
        protocol="official split 5360 train / 1340 test, 67 classes; mean class accuracy",
    )
)
