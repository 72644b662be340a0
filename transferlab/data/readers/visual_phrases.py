"""UIUC Visual Phrases (Sadeghi & Farhadi, CVPR 2011). LAYOUT UNVERIFIED: no copy of the
release could be inspected; this follows public code that reads it.

That code reads ``UIUC_PhrasalRecognitionDataset/VOC3000/`` with ``JPEGImages/3000_*.jpg``
and either VOC-style ``Annotations/<image id>.xml`` or ``groundtruth.mat`` (``groundtruth``:
an n x 3 cell array of image id, tag, [x1 y1 x2 y2]). Tags are single objects (``person``,
``horse``), phrases joined by underscores (``person_riding_horse``, ``person_jumping``) or
``absolute_negatives``. The task here is image-level multi-label phrase recognition: an
image is positive for every phrase it has a box of and negative otherwise. Train/test come
from ``ImageSets/Main/{train,test}.txt`` when present; otherwise the images are split in half
at random with ``seed``.
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
from transferlab.data.readers.flowers import load_mat
from transferlab.data.readers.sun_attributes import cell_strings
from transferlab.data.readers.voc2012_actions import read_voc_objects
from transferlab.data.tasks import TaskSpec, register
from transferlab.errors import AnnotationError, TransferlabError

NEGATIVE_TAG = "absolute_negatives"


def read_visual_phrases(
    root: Path | None,
    *,
    problems: Problems | None = None,
    seed: int = 0,
    train_fraction: float = 0.5,
    phrases: list[str] | None = None,
) -> TaskData:
    """Image-level labels for every phrase tag (a tag with an underscore, except
    ``absolute_negatives``), or for the given ``phrases``."""
    problems = problems if problems is not None else Problems()
    root = require_root(root, "visual_phrases", "the folder holding VOC3000/")
    if not 0 < train_fraction < 1:
        raise TransferlabError(
            f"visual_phrases: train_fraction must be in (0, 1), got {train_fraction!r}"
        )
    base = find_under(
        root,
        ["VOC3000", "UIUC_PhrasalRecognitionDataset/VOC3000"],
        "Visual Phrases VOC3000/ folder",
    )
    images = base / "JPEGImages"
    task = TaskData(name="visual_phrases", kind="multilabel", classes=[], splits={}, root=str(base))
    task.notes.append("layout unverified (no copy of the release was inspected); see docs/tasks.md")
    if (base / "Annotations").is_dir():
        tags = _tags_from_xml(base / "Annotations", problems)
        task.source_files.append(str(base / "Annotations"))
    elif (base / "groundtruth.mat").is_file():
        try:
            tags = _tags_from_mat(base / "groundtruth.mat")
        except TransferlabError as exc:
            problems.report(exc)
            return task
        task.source_files.append(str(base / "groundtruth.mat"))
    else:
        problems.report(TransferlabError(f"{base}: neither Annotations/ nor groundtruth.mat found"))
        return task
    found = sorted({t for ts in tags.values() for t in ts if "_" in t and t != NEGATIVE_TAG})
    task.classes = list(phrases) if phrases is not None else found
    if not task.classes:
        problems.report(
            TransferlabError(
                f"{base}: no phrase tag (a tag joined by underscores) in the annotations"
            )
        )
        return task
    image_ids = sorted(tags)
    labels = np.array(
        [[1 if c in tags[i] else -1 for c in task.classes] for i in image_ids], dtype=np.int8
    )
    split_rows = _official_split(base, image_ids, problems, task)
    if split_rows is None:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(image_ids))
        n_train = int(round(len(image_ids) * train_fraction))
        split_rows = {"train": np.sort(order[:n_train]), "test": np.sort(order[n_train:])}
        task.notes.append(
            f"no ImageSets/Main split: images split {train_fraction:g}/{1 - train_fraction:g} at random, seed {seed}"
        )
    for split_name, rows in split_rows.items():
        split = Split(
            split_name,
            [str(images / f"{image_ids[i]}.jpg") for i in rows],
            labels[rows].reshape(len(rows), len(task.classes)),
        )
        task.splits[split_name] = split
        for k in np.flatnonzero(~(split.labels == 1).any(axis=0)):
            problems.report(
                TransferlabError(f"{base}: phrase {task.classes[k]} has no {split_name} image")
            )
        check_images_exist(split.paths, problems, task.source_files[0])
    return task


def _tags_from_xml(annotations: Path, problems: Problems) -> dict[str, set[str]]:
    tags: dict[str, set[str]] = {}
    for xml_file in sorted(annotations.glob("*.xml")):
        try:
            objects = read_voc_objects(xml_file)
        except TransferlabError as exc:
            problems.report(exc)
            continue
        tags[xml_file.stem] = {obj.name for obj in objects if obj.name}
    if not tags:
        problems.report(TransferlabError(f"{annotations}: no .xml annotation files"))
    return tags


def _tags_from_mat(path: Path) -> dict[str, set[str]]:
    table = np.asarray(load_mat(path, ["groundtruth"])["groundtruth"])
    if table.dtype != object or table.ndim != 2 or table.shape[1] != 3:
        raise AnnotationError(
            path,
            f"expected an n x 3 cell array (image id, tag, box), got {table.dtype} {table.shape}",
            key="groundtruth",
        )
    ids = cell_strings(path, table[:, :1], "groundtruth")
    names = cell_strings(path, table[:, 1:2], "groundtruth")
    tags: dict[str, set[str]] = {}
    for image_id, tag in zip(ids, names, strict=True):
        tags.setdefault(image_id.removesuffix(".jpg"), set()).add(tag)
    return tags


def _official_split(
    base: Path, image_ids: list[str], problems: Problems, task: TaskData
) -> dict[str, np.ndarray] | None:
    main = base / "ImageSets" / "Main"
    if not ((main / "train.txt").is_file() and (main / "test.txt").is_file()):
        return None
    row = {image_id: i for i, image_id in enumerate(image_ids)}
    out = {}
    for split_name in ("train", "test"):
        list_file = main / f"{split_name}.txt"
        rows = []
        for number, line in problems.lines(list_file) or []:
            image_id = line.strip().removesuffix(".jpg")
            if image_id not in row:
                problems.annotation(list_file, f"image {image_id} has no annotation", line=number)
                continue
            rows.append(row[image_id])
        out[split_name] = np.array(rows, dtype=np.int64)
        task.source_files.append(str(list_file))
    task.notes.append("split from ImageSets/Main/{train,test}.txt")
    return out


register(
    TaskSpec(
        name="visual_phrases",
        title="UIUC Visual Phrases",
        group=4,
        distance=12,
        kind="multilabel",
        metric="map",
        layout="VOC3000/{JPEGImages/, Annotations/*.xml or groundtruth.mat [, ImageSets/Main/{train,test}.txt]} "
        "(unverified)",
        reader=read_visual_phrases,
        options={"seed": 0, "train_fraction": 0.5},
        protocol="image-level phrase recognition, 1 = image has a box of the phrase; "
        "seeded half/half split unless ImageSets/Main exists; mAP",
    )
)
