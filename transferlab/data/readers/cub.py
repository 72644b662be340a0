"""Caltech-UCSD Birds-200-2011, read from the files of ``CUB_200_2011.tgz``.

``images.txt`` (``<id> <path>``), ``image_class_labels.txt`` (``<id> <class id>``),
``train_test_split.txt`` (``<id> <1 = train | 0 = test>``) and ``classes.txt``
(``<class id> <name>``) are joined on the image id, as the dataset README prescribes.
``bounding_boxes.txt`` (``<id> <x> <y> <width> <height>``) is read only with ``crop=True``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transferlab.data.base import Box, Split, TaskData
from transferlab.data.readers._util import (
    Problems,
    check_images_exist,
    find_under,
    require_root,
)
from transferlab.data.tasks import TaskSpec, register

FILES = ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"]


def read_cub(
    root: Path | None, *, problems: Problems | None = None, crop: bool = False
) -> TaskData:
    """Official split: 5994 train / 5794 test images of 200 species. ``crop`` attaches the
    annotated bird box to every image, converted from (x, y, w, h) to (x1, y1, x2, y2)."""
    problems = problems if problems is not None else Problems()
    root = require_root(root, "cub", "the folder holding CUB_200_2011/")
    base = (
        root
        if (root / "images.txt").is_file()
        else find_under(root, ["CUB_200_2011"], "CUB_200_2011 folder")
    )
    task = TaskData(name="cub", kind="single", classes=[], splits={}, root=str(base))
    names = FILES + (["bounding_boxes.txt"] if crop else [])
    tables: dict[str, dict[int, tuple[int, list[str]]]] = {}
    for name in names:
        path = base / name
        lines = problems.lines(path, task.source_files)
        if lines is None:
            continue
        tables[name] = _id_table(
            path, lines, problems, maxsplit=1 if name in ("images.txt", "classes.txt") else -1
        )
    if len(tables) < len(names):
        return task

    class_ids = sorted(tables["classes.txt"])
    if class_ids != list(range(1, len(class_ids) + 1)):
        problems.annotation(base / "classes.txt", "class ids must run 1..n")
    task.classes = [tables["classes.txt"][k][1][0] for k in class_ids]
    images = tables["images.txt"]
    rows: dict[str, list[tuple[str, int, Box | None]]] = {"train": [], "test": []}
    for image_id in sorted(images):
        fields = _joined(base, tables, image_id, crop, len(task.classes), problems)
        if fields is None:
            continue
        is_train, class_index, box = fields
        rows["train" if is_train else "test"].append(
            (str(base / "images" / images[image_id][1][0]), class_index, box)
        )
    for name in FILES[1:3] + (["bounding_boxes.txt"] if crop else []):
        extra = sorted(set(tables[name]) - set(images))
        if extra:
            line = tables[name][extra[0]][0]
            problems.annotation(
                base / name,
                f"{len(extra)} image id(s) not in images.txt, first {extra[0]}",
                line=line,
            )
    for split_name, split_rows in rows.items():
        labels = np.array([c for _, c, _ in split_rows], dtype=np.int64)
        boxes = [b for _, _, b in split_rows] if crop else None
        split = Split(split_name, [p for p, _, _ in split_rows], labels, boxes)
        task.splits[split_name] = split
        counts = np.bincount(labels, minlength=len(task.classes))
        for k in np.flatnonzero(counts == 0):
            problems.annotation(
                base / "image_class_labels.txt",
                f"class {task.classes[k]} has no {split_name} image",
            )
        check_images_exist(split.paths, problems, base / "images.txt")
    task.notes.append(
        "split from train_test_split.txt" + ("; crops from bounding_boxes.txt" if crop else "")
    )
    return task


def _id_table(
    path: Path, lines: list[tuple[int, str]], problems: Problems, maxsplit: int
) -> dict[int, tuple[int, list[str]]]:
    """``{id: (line number, fields after the id)}``; names with spaces survive via ``maxsplit``."""
    table: dict[int, tuple[int, list[str]]] = {}
    for number, line in lines:
        parts = line.strip().split(" ", maxsplit) if maxsplit > 0 else line.split()
        if len(parts) < 2 or not parts[0].isdigit():
            problems.annotation(path, f"expected '<id> <value>', got {line.strip()!r}", line=number)
            continue
        image_id = int(parts[0])
        if image_id in table:
            problems.annotation(path, f"id {image_id} listed twice", line=number)
            continue
        table[image_id] = (number, [p.strip() for p in parts[1:]])
    return table


def _joined(
    base: Path,
    tables: dict[str, dict[int, tuple[int, list[str]]]],
    image_id: int,
    crop: bool,
    n_classes: int,
    problems: Problems,
) -> tuple[bool, int, Box | None] | None:
    """(is_train, class index, box) of one image, or None after reporting what is wrong."""
    line, split = tables["train_test_split.txt"].get(image_id, (None, []))
    if split[:1] not in (["0"], ["1"]):
        message = f"image id {image_id}: " + ("expected a 0/1 train flag" if line else "missing")
        problems.annotation(base / "train_test_split.txt", message, line=line)
        return None
    line, label = tables["image_class_labels.txt"].get(image_id, (None, []))
    if len(label) != 1 or not label[0].isdigit() or not 1 <= int(label[0]) <= n_classes:
        message = f"image id {image_id}: " + (
            f"expected a class id in 1..{n_classes}" if line else "missing"
        )
        problems.annotation(base / "image_class_labels.txt", message, line=line)
        return None
    box = None
    if crop:
        line, values = tables["bounding_boxes.txt"].get(image_id, (None, []))
        try:
            x, y, w, h = (float(v) for v in values)
        except ValueError:
            message = f"image id {image_id}: " + (
                "expected '<id> <x> <y> <width> <height>'" if line else "missing"
            )
            problems.annotation(base / "bounding_boxes.txt", message, line=line)
            return None
        box = (x, y, x + w, y + h)
    return split[0] == "1", int(label[0]) - 1, box


register(
    TaskSpec(
        name="cub",
        title="Caltech-UCSD Birds 200-2011",
        group=3,
        distance=8,
        kind="single",
        metric="accuracy",
        layout="CUB_200_2011/{images/, images.txt, image_class_labels.txt, train_test_split.txt, "
        "classes.txt[, bounding_boxes.txt]}",
        reader=read_cub,
        options={"crop": False},
        protocol="official split 5994 train / 5794 test, 200 classes; accuracy; "
        "crop=True uses the annotated bird boxes",
    )
)
