"""INRIA Holidays (Jegou et al. 2008), read from ``jpg1.tar.gz`` + ``jpg2.tar.gz`` (``jpg/``)
and, when present, ``eval_holidays.tgz`` (``eval_holidays/holidays_images.dat``).

The ground truth is implied by the file names, exactly as ``holidays_map.py`` builds it:
image ``NNNNNN.jpg`` belongs to group ``NNNNNN // 100``; the image whose number is divisible
by 100 is the group's query; the other images of the group are its positives. Every image,
queries included, is in the database; ``holidays_map`` removes the query from its own
ranking (``Query.db_index``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from transferlab.data.base import Query, Split, TaskData
from transferlab.data.readers._util import Problems, find_under, require_root
from transferlab.data.readers.oxford import MissingImages, reject_unknown_options
from transferlab.data.tasks import TaskSpec, register
from transferlab.errors import TransferlabError

NAME = re.compile(r"^(\d+)\.jpg$")
OFFICIAL_IMAGES = 1491
OFFICIAL_QUERIES = 500


def read_holidays(
    root: Path | None, *, problems: Problems | None = None, image_folder: str = "jpg", **options
) -> TaskData:
    """``image_folder`` lets a user point at a copy with the rotated images fixed (e.g.
    ``jpg_rotated``); the names, and so the ground truth, are the same."""
    reject_unknown_options("holidays", options, ["image_folder"])
    problems = problems if problems is not None else Problems()
    root = require_root(root, "holidays", "the folder holding jpg/ (and eval_holidays/)")
    folder = find_under(root, [image_folder, f"holidays/{image_folder}"], f"Holidays image folder {image_folder}/")
    if not folder.is_dir():
        raise TransferlabError(f"holidays: {folder} is not a folder")
    on_disk = {e.name for e in os.scandir(folder) if e.is_file()}
    task = TaskData(name="holidays", kind="retrieval", classes=[], splits={}, root=str(root))
    task.notes.append(f"images: {folder}")

    list_file = _find_list_file(root)
    listed = problems.lines(list_file) if list_file is not None else None
    numbers: dict[int, str] = {}
    if list_file is not None and listed is not None:
        task.source_files.append(str(list_file))
        task.notes.append(f"image list: {list_file} (as holidays_map.py)")
        missing = MissingImages(problems, str(folder))
        for line_no, line in listed:
            name = line.strip()
            match = NAME.match(name)
            if match is None:
                problems.annotation(list_file, f"expected an image name like 100000.jpg, got {name!r}", line=line_no)
                continue
            number = int(match.group(1))
            if number in numbers:
                problems.annotation(list_file, f"{name} is listed twice", line=line_no)
                continue
            if name not in on_disk:
                missing.add(list_file, line_no, name)
                continue
            numbers[number] = name
        missing.finish()
    else:
        task.notes.append("no usable holidays_images.dat: the image list is the folder's *.jpg files")
        for name in sorted(on_disk):
            match = NAME.match(name)
            if match is not None:
                numbers[int(match.group(1))] = name
        ignored = len(on_disk) - len(numbers)
        if ignored:
            task.notes.append(f"ignored {ignored} files in {folder} not named <number>.jpg")
    if not numbers:
        raise TransferlabError(f"holidays: no image named <number>.jpg in {folder}")

    ordered = sorted(numbers)
    paths = [str(folder / numbers[n]) for n in ordered]
    task.splits["db"] = Split("db", paths, np.full(len(paths), -1, dtype=np.int64))
    task.queries = _queries(ordered, paths, problems, list_file or folder)
    task.notes.append(
        f"holidays: {len(paths)} database images, {len(task.queries)} queries "
        f"(official: {OFFICIAL_IMAGES} images, {OFFICIAL_QUERIES} queries)"
    )
    task.notes.append(
        "some Holidays images are stored rotated by 90 degrees (no EXIF fix); published numbers differ with "
        "and without manually rotated copies; pass image_folder=<folder of rotated copies> to use them"
    )
    return task


def _find_list_file(root: Path) -> Path | None:
    try:
        return find_under(root, ["eval_holidays/holidays_images.dat", "holidays_images.dat"], "holidays_images.dat")
    except TransferlabError:
        return None



def _queries(ordered: list[int], paths: list[str], problems: Problems, source: Path) -> list[Query]:
    groups: dict[int, list[int]] = {}
    for index, number in enumerate(ordered):
        groups.setdefault(number // 100, []).append(index)
    queries = []
    for group, members in groups.items():
        heads = [i for i in members if ordered[i] % 100 == 0]  # at most one: number == group * 100
        if not heads:
            problems.annotation(source, f"group {group} has no query image {group * 100:06d}.jpg")
            continue
        query = heads[0]
        positives = np.array([i for i in members if i != query], dtype=np.int64)
        if positives.size == 0:
            problems.annotation(source, f"query {group * 100:06d}.jpg has no other image in its group")
            continue
        queries.append(
            Query(path=paths[query], positives=positives, name=f"{ordered[query]:06d}", db_index=query)
        )
    return queries


register(
    TaskSpec(
        name="holidays",
        title="INRIA Holidays",
        group=5,
        distance=13,
        kind="retrieval",
        metric="holidays_map",
        layout="jpg/*.jpg (jpg1.tar.gz + jpg2.tar.gz), optionally eval_holidays/holidays_images.dat",
        reader=read_holidays,
        options={"image_folder": "jpg"},
        protocol="500 queries (image number divisible by 100) against all 1491 images; "
        "the query is removed from its own ranking; positives = rest of its group (number // 100); "
        "mAP of holidays_map.py",
    )
)
