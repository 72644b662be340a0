"""PASCAL VOC 2007 image classification, read from the official devkit layout.

Labels come from ``ImageSets/Main/<class>_<set>.txt`` (``"%s %2d"``: image id, then 1 =
present, -1 = absent, 0 = only "difficult" objects), exactly the files the devkit's
``VOCevalcls`` reads; the ids of every class file must match the set's ``<set>.txt``.
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

CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip


def read_voc2007(
    root: Path | None, *, problems: Problems | None = None, use_val: bool = False
) -> TaskData:
    """Train on ``trainval`` and test on ``test`` (the paper's protocol); with ``use_val``
    the splits are ``train`` / ``val`` / ``test`` instead, for choosing hyper-parameters."""
    problems = problems if problems is not None else Problems()
    root = require_root(root, "voc2007", "the folder holding VOCdevkit/VOC2007")
    voc = (
        root
        if (root / "ImageSets" / "Main").is_dir()
        else find_under(root, ["VOCdevkit/VOC2007", "VOC2007"], "VOC2007 devkit folder")
    )
    main = voc / "ImageSets" / "Main"
    images = voc / "JPEGImages"
    sets = (
        {"train": "train", "val": "val", "test": "test"}
        if use_val
        else {"train": "trainval", "test": "test"}
    )
    task = TaskData(
        name="voc2007", kind="multilabel", classes=list(CLASSES), splits={}, root=str(voc)
    )
    task.notes.append(
        f"splits: {', '.join(f'{k}={v}' for k, v in sets.items())} (VOC2007 ImageSets/Main)"
    )
    for split_name, set_name in sets.items():
        split = _read_set(main, images, set_name, split_name, problems, task.source_files)
        if split is not None:
            task.splits[split_name] = split
            check_images_exist(split.paths, problems, main / f"{set_name}.txt")
    return task


def _read_set(
    main: Path, images: Path, set_name: str, split_name: str, problems: Problems, used: list[str]
) -> Split | None:
    set_file = main / f"{set_name}.txt"
    lines = problems.lines(set_file, used)
    if lines is None:
        return None
    ids = [line.strip() for _, line in lines]
    row = {image_id: i for i, image_id in enumerate(ids)}
    labels = np.zeros((len(ids), len(CLASSES)), dtype=np.int8)
    for k, cls in enumerate(CLASSES):
        cls_file = main / f"{cls}_{set_name}.txt"
        cls_lines = problems.lines(cls_file, used)
        if cls_lines is None:
            continue
        seen = 0
        for number, line in cls_lines:
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("1", "-1", "0"):
                problems.annotation(
                    cls_file, f"expected '<image id> <1|-1|0>', got {line.strip()!r}", line=number
                )
                continue
            if parts[0] not in row:
                problems.annotation(
                    cls_file, f"image {parts[0]} is not in {set_file.name}", line=number
                )
                continue
            labels[row[parts[0]], k] = int(parts[1])
            seen += 1
        if seen != len(ids):
            problems.annotation(
                cls_file, f"labels {seen} images but {set_file.name} lists {len(ids)}"
            )
        if not (labels[:, k] == 1).any():
            problems.annotation(cls_file, f"class {cls} has no positive image in {set_name}")
    paths = [str(images / f"{image_id}.jpg") for image_id in ids]
    return Split(split_name, paths, labels)


register(
    TaskSpec(
        name="voc2007",
        title="PASCAL VOC 2007 classification",
        group=1,
        distance=1,
        kind="multilabel",
        metric="voc07_map",
        layout="VOCdevkit/VOC2007/{ImageSets/Main/<class>_{trainval,test}.txt, JPEGImages/}",
        reader=read_voc2007,
        protocol="train on trainval (5011), test on test (4952); 20 classes; "
        "11-point AP of the VOC2007 devkit, difficult (0) ignored",
    )
)
