"""UKBench (Nister & Stewenius 2006): ``ukbench00000.jpg`` ... ``ukbench10199.jpg``, in
``full/`` as the archive ships them, or flat.

No annotation file exists: images ``4k .. 4k+3`` show one object. Every image is a query
against all images; its positives are its group of 4, itself included, and the N-S score
(``ukb_score``) counts how many of the 4 are in the top 4.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from transferlab.data.base import Query, Split, TaskData
from transferlab.data.readers._util import Problems, find_under, require_root
from transferlab.data.readers.oxford import MissingImages, reject_unknown_options
from transferlab.data.tasks import TaskSpec, register
from transferlab.errors import TransferlabError

OFFICIAL_IMAGES = 10200
GROUP = 4


def ukbench_name(number: int) -> str:
    return f"ukbench{number:05d}.jpg"


def read_ukbench(
    root: Path | None, *, problems: Problems | None = None, n_images: int = OFFICIAL_IMAGES, **options
) -> TaskData:
    """``n_images`` (a multiple of 4) reads only the first images, for a quick subset run."""
    reject_unknown_options("ukbench", options, ["n_images"])
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images <= 0 or n_images % GROUP:
        raise TransferlabError(f"ukbench: n_images must be a positive multiple of {GROUP}, got {n_images!r}")
    problems = problems if problems is not None else Problems()
    root = require_root(root, "ukbench", "the folder holding full/ukbench00000.jpg ...")
    first = find_under(
        root, [f"full/{ukbench_name(0)}", ukbench_name(0)], f"UKBench image {ukbench_name(0)}", max_depth=4
    )
    folder = first.parent
    on_disk = {e.name for e in os.scandir(folder)}
    missing = MissingImages(problems, str(folder))
    numbers = []
    for number in range(n_images):
        if ukbench_name(number) in on_disk:
            numbers.append(number)
        else:
            missing.add(folder / ukbench_name(number), None, ukbench_name(number))
    missing.finish()

    paths = [str(folder / ukbench_name(n)) for n in numbers]
    index = {n: i for i, n in enumerate(numbers)}
    queries = []
    for i, number in enumerate(numbers):
        start = number - number % GROUP
        group = [index[n] for n in range(start, start + GROUP) if n in index]
        queries.append(
            Query(path=paths[i], positives=np.array(group, dtype=np.int64), name=f"ukbench{number:05d}", db_index=i)
        )
    notes = [f"images: {folder}", f"ukbench: {len(paths)} images = queries (official: {OFFICIAL_IMAGES})"]
    extra = sum(1 for n in range(n_images, OFFICIAL_IMAGES) if ukbench_name(n) in on_disk)
    if n_images < OFFICIAL_IMAGES:
        notes.append(f"n_images={n_images}: a subset; {extra} further images on disk were not used")
    return TaskData(
        name="ukbench",
        kind="retrieval",
        classes=[],
        splits={"db": Split("db", paths, np.full(len(paths), -1, dtype=np.int64))},
        queries=queries,
        root=str(root),
        source_files=[],
        notes=notes,
    )


register(
    TaskSpec(
        name="ukbench",
        title="UKBench (Nister & Stewenius)",
        group=5,
        distance=14,
        kind="retrieval",
        metric="ukb_score",
        layout="full/ukbench00000.jpg .. ukbench10199.jpg (or the same files flat in the root)",
        reader=read_ukbench,
        options={"n_images": OFFICIAL_IMAGES},
        protocol="each of the 10200 images queries all 10200; its group is the 4 images 4k..4k+3 (itself included); "
        "N-S score = mean number of the group in the top 4, 0..4",
    )
)
