"""Stanford 40 Actions (Yao et al. 2011), read from the three official zips.

``ImageSplits/<action>_{train,test}.txt`` list one image file name per line (the release
has CRLF endings); ``ImageSplits/actions.txt`` (a header line, then ``<action> <number of
images>``) gives the class order; images are ``JPEGImages/<name>``; with ``crop=True`` the
person box comes from ``XMLAnnotations/<stem>.xml``. As in the paper, each action is scored
by AP (one-vs-rest), so labels are a one-hot matrix of 1 / -1.
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
from transferlab.data.readers.voc2012_actions import read_voc_objects
from transferlab.data.tasks import TaskSpec, register
from transferlab.errors import TransferlabError


def read_stanford40(
    root: Path | None, *, problems: Problems | None = None, crop: bool = False
) -> TaskData:
    """Official split: 100 train images per action (4000), the rest (5532) for test."""
    problems = problems if problems is not None else Problems()
    root = require_root(root, "stanford40", "the folder holding ImageSplits/ and JPEGImages/")
    splits_dir = find_under(
        root, ["ImageSplits", "Stanford40/ImageSplits"], "Stanford40 ImageSplits/ folder"
    )
    images = find_under(
        root, ["JPEGImages", "Stanford40/JPEGImages"], "Stanford40 JPEGImages/ folder"
    )
    xml_dir = (
        find_under(
            root,
            ["XMLAnnotations", "Stanford40/XMLAnnotations"],
            "Stanford40 XMLAnnotations/ folder",
        )
        if crop
        else None
    )
    task = TaskData(
        name="stanford40", kind="multilabel", classes=[], splits={}, root=str(splits_dir.parent)
    )
    declared = _declared_actions(splits_dir / "actions.txt", problems, task)
    if declared is None:
        task.classes = sorted(p.name[: -len("_train.txt")] for p in splits_dir.glob("*_train.txt"))
        task.notes.append("no actions.txt: actions are the sorted *_train.txt file names")
    else:
        task.classes = list(declared)
    if not task.classes:
        problems.report(TransferlabError(f"{splits_dir}: no <action>_train.txt files"))
        return task
    totals = np.zeros(len(task.classes), dtype=np.int64)
    for split_name in ("train", "test"):
        names: list[str] = []
        label_rows: list[int] = []
        for k, action in enumerate(task.classes):
            list_file = splits_dir / f"{action}_{split_name}.txt"
            lines = problems.lines(list_file, task.source_files)
            if lines is None:
                continue
            before = len(names)
            for number, line in lines:
                name = line.strip()
                if len(name.split()) != 1 or "." not in name:
                    problems.annotation(
                        list_file, f"expected one image file name, got {name!r}", line=number
                    )
                    continue
                names.append(name)
                label_rows.append(k)
            if len(names) == before:
                problems.annotation(list_file, f"action {action} has no {split_name} image")
        labels = -np.ones((len(names), len(task.classes)), dtype=np.int8)
        labels[np.arange(len(names)), label_rows] = 1
        totals += np.bincount(np.asarray(label_rows, dtype=np.int64), minlength=len(task.classes))
        boxes = (
            [_person_box(xml_dir, name, problems) for name in names]
            if xml_dir is not None
            else None
        )
        split = Split(split_name, [str(images / name) for name in names], labels, boxes)
        task.splits[split_name] = split
        check_images_exist(split.paths, problems, splits_dir)
    if declared is not None:
        for k, action in enumerate(task.classes):
            if declared[action] != totals[k]:
                problems.annotation(
                    splits_dir / "actions.txt",
                    f"{action}: {declared[action]} images declared, {totals[k]} listed in its split files",
                )
    task.notes.append(
        "labels one-hot in {1, -1}, scored per action by AP"
        + ("; person boxes from XMLAnnotations" if crop else "")
    )
    return task


def _declared_actions(path: Path, problems: Problems, task: TaskData) -> dict[str, int] | None:
    """``{action: number of images}`` from actions.txt in file order, or None if absent."""
    if not path.is_file():
        return None
    lines = problems.lines(path)
    if lines is None:
        return None
    declared: dict[str, int] = {}
    for number, line in lines:
        parts = line.split()
        if number == 1 and len(parts) == 2 and not parts[1].isdigit():
            continue  # the header "action_name number_of_images"
        if len(parts) != 2 or not parts[1].isdigit():
            problems.annotation(
                path, f"expected '<action> <number of images>', got {line.strip()!r}", line=number
            )
            continue
        declared[parts[0]] = int(parts[1])
    task.source_files.append(str(path))
    return declared


def _person_box(xml_dir: Path, name: str, problems: Problems) -> Box | None:
    try:
        objects = read_voc_objects(xml_dir / f"{Path(name).stem}.xml")
    except TransferlabError as exc:
        problems.report(exc)
        return None
    boxes = [obj.box for obj in objects if obj.box is not None]
    if not boxes:
        problems.annotation(xml_dir / f"{Path(name).stem}.xml", "no <object> with a <bndbox>")
        return None
    return boxes[0]


register(
    TaskSpec(
        name="stanford40",
        title="Stanford 40 Actions",
        group=4,
        distance=11,
        kind="multilabel",
        metric="map",
        layout="ImageSplits/<action>_{train,test}.txt [+ actions.txt], JPEGImages/, [XMLAnnotations/]",
        reader=read_stanford40,
        options={"crop": False},
        protocol="official split 4000 train / 5532 test, 40 actions; mAP over one-vs-rest APs; "
        "crop=True uses the person box",
    )
)
