"""UIUC aPascal attributes (Farhadi et al. 2009), read from ``attribute_data.tgz`` plus the
VOC2008 trainval images.

``attribute_data/apascal_{train,test}.txt`` hold one object per line: ``<image> <class>
<xmin> <ymin> <xmax> <ymax>`` then 64 attribute values in {0, 1} (the format of the
authors' ``read_att_data.m``). Each object is one sample, cropped to its box; images are
``VOCdevkit/VOC2008/JPEGImages/<image>``. Attribute names come from
``attribute_data/attribute_names.txt`` (built-in list if that file is absent).

Metric: mAP over the 64 attributes, as in the paper; the dataset's own papers report the
mean area under the ROC curve, available as ``mean_auc``.
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

ATTRIBUTES = [
    "2D Boxy", "3D Boxy", "Round", "Vert Cyl", "Horiz Cyl", "Occluded", "Tail", "Beak", "Head",
    "Ear", "Snout", "Nose", "Mouth", "Hair", "Face", "Eye", "Torso", "Hand", "Arm", "Leg",
    "Foot/Shoe", "Wing", "Propeller", "Jet engine", "Window", "Row Wind", "Wheel", "Door",
    "Headlight", "Taillight", "Side mirror", "Exhaust", "Pedal", "Handlebars", "Engine", "Sail",
    "Mast", "Text", "Label", "Furniture Leg", "Furniture Back", "Furniture Seat",
    "Furniture Arm", "Horn", "Rein", "Saddle", "Leaf", "Flower", "Stem/Trunk", "Pot", "Screen",
    "Skin", "Metal", "Plastic", "Wood", "Cloth", "Furry", "Glass", "Feather", "Wool", "Clear",
    "Shiny", "Vegetation", "Leather",
]  # fmt: skip
LISTS = {"train": "apascal_train.txt", "test": "apascal_test.txt"}


def read_apascal(root: Path | None, *, problems: Problems | None = None) -> TaskData:
    """Official split: apascal_train (6340 objects) / apascal_test (6355 objects)."""
    problems = problems if problems is not None else Problems()
    root = require_root(root, "apascal", "the folder holding attribute_data/ and VOCdevkit/VOC2008")
    data = find_under(root, ["attribute_data"], "aPascal attribute_data/ folder")
    images = find_under(
        root, ["VOCdevkit/VOC2008/JPEGImages", "VOC2008/JPEGImages"], "VOC2008 JPEGImages/ folder"
    )
    task = TaskData(
        name="apascal", kind="attributes", classes=list(ATTRIBUTES), splits={}, root=str(root)
    )
    names_file = data / "attribute_names.txt"
    lines = problems.lines(names_file) if names_file.is_file() else None
    if lines is not None:
        names = [line.strip() for _, line in lines]
        if len(names) == len(ATTRIBUTES):
            task.classes = names
            task.source_files.append(str(names_file))
        else:
            problems.annotation(
                names_file, f"expected {len(ATTRIBUTES)} attribute names, found {len(names)}"
            )
    elif not names_file.is_file():
        task.notes.append(
            "attribute_names.txt absent: built-in names of the 64 aPascal attributes used"
        )
    width = 6 + len(ATTRIBUTES)
    for split_name, list_name in LISTS.items():
        list_file = data / list_name
        lines = problems.lines(list_file, task.source_files)
        if lines is None:
            continue
        paths: list[str] = []
        boxes: list[Box | None] = []
        rows: list[np.ndarray] = []
        for number, line in lines:
            parts = line.split()
            try:
                if len(parts) != width:
                    raise ValueError(f"expected {width} fields, got {len(parts)}")
                x1, y1, x2, y2 = (float(v) for v in parts[2:6])
                values = np.array([int(v) for v in parts[6:]])
                if not np.isin(values, (0, 1)).all():
                    raise ValueError("attribute values must be 0 or 1")
            except ValueError as exc:
                problems.annotation(
                    list_file,
                    f"expected '<image> <class> <xmin> <ymin> <xmax> <ymax> <64 x 0|1>': {exc}",
                    line=number,
                )
                continue
            paths.append(str(images / parts[0]))
            boxes.append((x1 - 1, y1 - 1, x2, y2))  # VOC boxes are 1-based, inclusive
            rows.append(np.where(values == 1, 1, -1).astype(np.int8))
        labels = np.stack(rows) if rows else np.zeros((0, len(ATTRIBUTES)), dtype=np.int8)
        split = Split(split_name, paths, labels, boxes)
        task.splits[split_name] = split
        if not rows:
            problems.annotation(list_file, "no object")
        empty = (
            [task.classes[k] for k in np.flatnonzero(~(labels == 1).any(axis=0))] if rows else []
        )
        if empty:
            task.notes.append(f"{split_name}: no positive object for {', '.join(empty)}")
        check_images_exist(sorted(set(paths)), problems, list_file)
    task.notes.append(
        "one sample per annotated object, cropped to its box; mean_auc is the dataset's own metric"
    )
    return task


register(
    TaskSpec(
        name="apascal",
        title="UIUC aPascal attributes",
        group=2,
        distance=5,
        kind="attributes",
        metric="map",
        layout="attribute_data/apascal_{train,test}.txt, VOCdevkit/VOC2008/JPEGImages/",
        reader=read_apascal,
        protocol="official split 6340 train / 6355 test objects, cropped to their boxes, 64 attributes; "
        "mAP (dataset papers: mean AUC)",
    )
)
