"""PASCAL VOC 2012 action classification, read from the official devkit layout.

``ImageSets/Action/<action>_<set>.txt`` lists ``<image id> <object index> <1|-1>`` for every
annotated person; the object index counts the ``<object>`` elements of
``Annotations/<image id>.xml`` from 1, exactly as the devkit's ``rec.objects(objid)``. Each
person is one sample: its box is the crop, its labels are one column per action (0 where
an action file does not list the person). VOC2012 test labels were never released, so the
protocol here trains on ``train`` and tests on ``val``.

``read_voc_objects`` parses a VOC-style annotation XML; the Stanford 40 and Visual Phrases
readers use it too.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
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
from transferlab.errors import AnnotationError, TransferlabError

ACTIONS = [
    "jumping", "phoning", "playinginstrument", "reading", "ridingbike",
    "ridinghorse", "running", "takingphoto", "usingcomputer", "walking",
]  # fmt: skip
SETS = {"train": "train", "test": "val"}


@dataclass
class VocObject:
    """One ``<object>`` of a VOC annotation file; ``box`` is 0-based (x1, y1, x2, y2)."""

    name: str
    box: Box | None
    actions: dict[str, int] = field(default_factory=dict)


def read_voc_objects(path: Path, one_based: bool = True) -> list[VocObject]:
    """All ``<object>`` elements in file order. VOC boxes are 1-based and inclusive, so
    ``(xmin - 1, ymin - 1, xmax, ymax)`` covers exactly the annotated pixels; pass
    ``one_based=False`` for files whose boxes are already 0-based."""
    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        raise AnnotationError(path, "file not found") from None
    except ET.ParseError as exc:
        raise AnnotationError(path, f"malformed XML ({exc})", line=exc.position[0]) from None
    objects = []
    for index, element in enumerate(tree.getroot().iter("object"), start=1):
        name = (element.findtext("name") or "").strip()
        box = None
        bndbox = element.find("bndbox")
        if bndbox is not None:
            try:
                x1, y1, x2, y2 = (
                    float(bndbox.findtext(tag) or "") for tag in ("xmin", "ymin", "xmax", "ymax")
                )
            except ValueError:
                raise AnnotationError(
                    path, "bndbox needs numeric xmin, ymin, xmax, ymax", key=f"object {index}"
                ) from None
            offset = 1.0 if one_based else 0.0
            box = (x1 - offset, y1 - offset, x2, y2)
        actions = {}
        actions_element = element.find("actions")
        if actions_element is not None:
            for child in actions_element:
                text = (child.text or "").strip() or "0"
                try:
                    actions[child.tag] = int(float(text))
                except ValueError:
                    raise AnnotationError(
                        path,
                        f"action {child.tag}: expected 0 or 1, got {text!r}",
                        key=f"object {index}",
                    ) from None
        objects.append(VocObject(name, box, actions))
    return objects


def read_voc2012_actions(root: Path | None, *, problems: Problems | None = None) -> TaskData:
    """One sample per annotated person: train = the ``train`` lists, test = the ``val`` lists."""
    problems = problems if problems is not None else Problems()
    root = require_root(root, "voc2012_actions", "the folder holding VOCdevkit/VOC2012")
    voc = (
        root
        if (root / "ImageSets" / "Action").is_dir()
        else find_under(root, ["VOCdevkit/VOC2012", "VOC2012"], "VOC2012 devkit folder")
    )
    action_dir = voc / "ImageSets" / "Action"
    task = TaskData(
        name="voc2012_actions", kind="multilabel", classes=list(ACTIONS), splits={}, root=str(voc)
    )
    task.notes.append(
        "VOC2012 test labels are not public: train = ImageSets/Action *_train.txt, test = *_val.txt"
    )
    cache: dict[str, list[VocObject] | None] = {}
    for split_name, set_name in SETS.items():
        rows: dict[tuple[str, int], np.ndarray] = {}
        where: dict[tuple[str, int], tuple[Path, int]] = {}
        for k, action in enumerate(ACTIONS):
            list_file = action_dir / f"{action}_{set_name}.txt"
            lines = problems.lines(list_file, task.source_files)
            if lines is None:
                continue
            for number, line in lines:
                parts = line.split()
                if len(parts) != 3 or not parts[1].isdigit() or parts[2] not in ("1", "-1", "0"):
                    problems.annotation(
                        list_file,
                        f"expected '<image id> <object index> <1|-1>', got {line.strip()!r}",
                        line=number,
                    )
                    continue
                key = (parts[0], int(parts[1]))
                if key not in rows:
                    rows[key] = np.zeros(len(ACTIONS), dtype=np.int8)
                    where[key] = (list_file, number)
                rows[key][k] = int(parts[2])
        keys = sorted(rows)
        paths, boxes = [], []
        for key in keys:
            box = _person_box(voc, key, where[key], cache, problems)
            paths.append(str(voc / "JPEGImages" / f"{key[0]}.jpg"))
            boxes.append(box)
        labels = (
            np.stack([rows[key] for key in keys])
            if keys
            else np.zeros((0, len(ACTIONS)), dtype=np.int8)
        )
        split = Split(split_name, paths, labels, boxes)
        task.splits[split_name] = split
        for k in map(int, np.flatnonzero(~(labels == 1).any(axis=0))):
            problems.annotation(
                action_dir / f"{ACTIONS[k]}_{set_name}.txt",
                f"action {ACTIONS[k]} has no positive person",
            )
        check_images_exist(sorted(set(paths)), problems, action_dir)
    return task


def _person_box(
    voc: Path,
    key: tuple[str, int],
    listed_at: tuple[Path, int],
    cache: dict[str, list[VocObject] | None],
    problems: Problems,
) -> Box | None:
    image_id, object_index = key
    if image_id not in cache:
        try:
            cache[image_id] = read_voc_objects(voc / "Annotations" / f"{image_id}.xml")
        except TransferlabError as exc:
            problems.report(exc)
            cache[image_id] = None
    objects = cache[image_id]
    if objects is None:
        return None
    if not 1 <= object_index <= len(objects) or objects[object_index - 1].box is None:
        problems.annotation(
            listed_at[0],
            f"{image_id}.xml has no object {object_index} with a bndbox",
            line=listed_at[1],
        )
        return None
    return objects[object_index - 1].box


register(
    TaskSpec(
        name="voc2012_actions",
        title="PASCAL VOC 2012 actions",
        group=4,
        distance=10,
        kind="multilabel",
        metric="map",
        layout="VOCdevkit/VOC2012/{ImageSets/Action/<action>_{train,val}.txt, Annotations/, JPEGImages/}",
        reader=read_voc2012_actions,
        protocol="one sample per person box; train on train, test on val (test labels unreleased); 10 actions; mAP",
    )
)
