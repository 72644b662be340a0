"""Oxford-IIIT Pets (Parkhi et al. 2012), read from ``annotations.tar.gz`` and ``images.tar.gz``.

``annotations/trainval.txt`` and ``annotations/test.txt`` hold ``<image> <class id> <species>
<breed id>`` per line (``#`` lines are comments, as in ``list.txt``); class ids run 1..37 and
the breed name is the image name without its trailing ``_<number>``. Images are
``images/<image>.jpg``.
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

NUM_CLASSES = 37
LISTS = {"train": "trainval.txt", "test": "test.txt"}


def read_pets(root: Path | None, *, problems: Problems | None = None) -> TaskData:
    """Official split: trainval (3680) for training, test (3669) for testing; 37 breeds."""
    problems = problems if problems is not None else Problems()
    root = require_root(root, "pets", "the folder holding images/ and annotations/")
    images = find_under(root, ["images"], "Pets image folder images/")
    annotations = find_under(root, ["annotations"], "Pets annotation folder annotations/")
    task = TaskData(
        name="pets", kind="single", classes=[""] * NUM_CLASSES, splits={}, root=str(root)
    )
    for split_name, list_name in LISTS.items():
        list_file = annotations / list_name
        lines = problems.lines(list_file, task.source_files)
        if lines is None:
            continue
        paths, labels = [], []
        for number, line in lines:
            if line.lstrip().startswith("#"):
                continue
            parts = line.split()
            if (
                len(parts) != 4
                or not all(p.isdigit() for p in parts[1:])
                or not 1 <= int(parts[1]) <= NUM_CLASSES
            ):
                problems.annotation(
                    list_file,
                    f"expected '<image> <class id 1..37> <species> <breed id>', got {line.strip()!r}",
                    line=number,
                )
                continue
            name, class_id = parts[0], int(parts[1])
            breed = name.rsplit("_", 1)[0]
            if task.classes[class_id - 1] and task.classes[class_id - 1] != breed:
                problems.annotation(
                    list_file,
                    f"class id {class_id} is {task.classes[class_id - 1]} elsewhere but {breed} here",
                    line=number,
                )
                continue
            task.classes[class_id - 1] = breed
            paths.append(str(images / f"{name}.jpg"))
            labels.append(class_id - 1)
        split = Split(split_name, paths, np.array(labels, dtype=np.int64))
        task.splits[split_name] = split
        counts = np.bincount(split.labels, minlength=NUM_CLASSES)
        for k in np.flatnonzero(counts == 0):
            problems.annotation(list_file, f"class id {k + 1} has no image")
        check_images_exist(split.paths, problems, list_file)
    task.classes = [name or f"class_{k + 1}" for k, name in enumerate(task.classes)]
    task.notes.append("breed names taken from the image names (e.g. Abyssinian_100 -> Abyssinian)")
    return task


register(
    TaskSpec(
        name="pets",
        title="Oxford-IIIT Pets",
        group=3,
        distance=7,
        kind="single",
        metric="mean_class_accuracy",
        layout="images/<name>.jpg, annotations/{trainval,test}.txt",
        reader=read_pets,
        protocol="official split trainval (3680) / test (3669), 37 breeds; mean class accuracy",
    )
)
