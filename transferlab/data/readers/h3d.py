"""H3D / Berkeley "Attributes of People" (Bourdev, Maji & Malik, ICCV 2011), read from
``attributes_dataset.tgz``.

Following the dataset README: ``train/labels.txt`` and ``test/labels.txt`` hold one person
per line, ``<image> <xmin> <ymin> <width> <height> a1 .. a9`` with a = 1 (present),
-1 (absent) or 0 (unspecified), for is_male, has_long_hair, has_glasses, has_hat,
has_t-shirt, has_long_sleeves, has_shorts, has_jeans, has_long_pants. The images sit next
to ``labels.txt``. The bounds are the visible extent of the labelled person; a line may give
``NaN`` bounds, which means "no box" (the whole image is used).
"""

from __future__ import annotations

import math
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

ATTRIBUTES = [
    "is_male", "has_long_hair", "has_glasses", "has_hat", "has_t-shirt",
    "has_long_sleeves", "has_shorts", "has_jeans", "has_long_pants",
]  # fmt: skip


def read_h3d(root: Path | None, *, problems: Problems | None = None, crop: bool = True) -> TaskData:
    """Official split: train (4013 people) / test (4022 people). With ``crop`` (default) each
    person is cropped to its visible bounds, since an image may show other people too."""
    problems = problems if problems is not None else Problems()
    root = require_root(root, "h3d", "the folder holding attributes_dataset/{train,test}/labels.txt")
    base = find_under(root, ["attributes_dataset"], "attributes_dataset/ folder")
    task = TaskData(
        name="h3d", kind="attributes", classes=list(ATTRIBUTES), splits={}, root=str(base)
    )
    for split_name in ("train", "test"):
        list_file = base / split_name / "labels.txt"
        lines = problems.lines(list_file, task.source_files)
        if lines is None:
            continue
        paths: list[str] = []
        boxes: list[Box | None] = []
        rows: list[list[int]] = []
        for number, line in lines:
            parts = line.split()
            try:
                if len(parts) != 5 + len(ATTRIBUTES):
                    raise ValueError(f"expected {5 + len(ATTRIBUTES)} fields, got {len(parts)}")
                x, y, w, h = (float(v) for v in parts[1:5])
                values = [int(v) for v in parts[5:]]
                if any(v not in (1, -1, 0) for v in values):
                    raise ValueError("attribute values must be 1, -1 or 0")
            except ValueError as exc:
                problems.annotation(
                    list_file,
                    f"expected '<image> <xmin> <ymin> <width> <height> <9 x 1|-1|0>': {exc}",
                    line=number,
                )
                continue
            paths.append(str(list_file.parent / parts[0]))
            boxes.append(None if any(math.isnan(v) for v in (x, y, w, h)) else (x, y, x + w, y + h))
            rows.append(values)
        labels = np.array(rows, dtype=np.int8).reshape(len(rows), len(ATTRIBUTES))
        split = Split(split_name, paths, labels, boxes if crop else None)
        task.splits[split_name] = split
        if not rows:
            problems.annotation(list_file, "no person")
        empty = [ATTRIBUTES[k] for k in np.flatnonzero(~(labels == 1).any(axis=0))] if rows else []
        if empty:
            task.notes.append(f"{split_name}: no positive person for {', '.join(empty)}")
        check_images_exist(sorted(set(paths)), problems, list_file)
    task.notes.append(
        "layout from the dataset README (attributes_dataset/{train,test}/labels.txt); no real copy was checked"
    )
    if crop:
        task.notes.append(
            "people cropped to their visible bounds (x, y, width, height -> x1, y1, x2, y2); "
            "NaN bounds keep the whole image"
        )
    return task


register(
    TaskSpec(
        name="h3d",
        title="H3D attributes of people",
        group=2,
        distance=6,
        kind="attributes",
        metric="map",
        layout="attributes_dataset/{train,test}/{labels.txt, <image>.jpg}",
        reader=read_h3d,
        options={"crop": True},
        protocol="official split 4013 train / 4022 test people, 9 attributes (0 = unspecified, ignored); mAP",
    )
)
