"""SUN397 (Xiao et al. 2010), read from the official ten partitions.

``Partitions/Training_0N.txt`` / ``Testing_0N.txt`` (N = 01..10) list 50 + 50 images per
class as paths like ``/a/abbey/sun_aqswjsnjlrfzzhiz.jpg``, relative to the ``SUN397/``
image folder; the class is the path's folder (``/a/apartment_building/outdoor``).
``ClassName.txt`` (397 such folders) fixes the class order when present; otherwise the
classes are the sorted folders found in the partition files.

``extra_partitions=K`` (what a study's ``execution.repeats: K+1`` asks for) also reads the K
partitions after ``partition`` (wrapping after 10) as splits ``train_p02``/``test_p02``...:
the study's repeat r is partition r after the first, the official protocol's other splits.
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
from transferlab.errors import TransferlabError


def partition_split(split: str, partition: int) -> str:
    """The name of an extra partition's split: ``train_p02``."""
    return f"{split}_p{partition:02d}"


def extra_partition_numbers(partition: int, extra: int) -> list[int]:
    """The ``extra`` partitions after ``partition``, wrapping after 10."""
    return [(partition - 1 + k) % 10 + 1 for k in range(1, extra + 1)]


def read_sun397(
    root: Path | None, *, problems: Problems | None = None, partition: int = 1, extra_partitions: int = 0
) -> TaskData:
    """Read one of the ten official train/test partitions (``partition`` 1..10), plus
    ``extra_partitions`` more as ``train_pNN``/``test_pNN`` splits (for repeats)."""
    problems = problems if problems is not None else Problems()
    root = require_root(root, "sun397", "the folder holding SUN397/ and Partitions/")
    if not isinstance(partition, int) or isinstance(partition, bool) or not 1 <= partition <= 10:
        raise TransferlabError(f"sun397: partition must be an integer 1..10, got {partition!r}")
    if not isinstance(extra_partitions, int) or isinstance(extra_partitions, bool) or not 0 <= extra_partitions <= 9:
        raise TransferlabError(f"sun397: extra_partitions must be an integer 0..9, got {extra_partitions!r}")
    images = find_under(root, ["SUN397"], "SUN397 image folder SUN397/")
    partitions = find_under(
        root, ["Partitions", "SUN397/Partitions"], "SUN397 partition folder Partitions/"
    )
    task = TaskData(name="sun397", kind="single", classes=[], splits={}, root=str(root))
    task.notes.append(f"partition {partition:02d} of 10; images under {images}")

    class_file = _find_optional(root, partitions)
    declared: list[str] | None = None
    lines = problems.lines(class_file) if class_file is not None else None
    if class_file is not None and lines is not None:
        declared = []
        for number, line in lines:
            name = line.strip()
            if not name.startswith("/"):
                problems.annotation(
                    class_file,
                    f"expected a class folder like '/a/abbey', got {name!r}",
                    line=number,
                )
                continue
            declared.append(name)
        task.source_files.append(str(class_file))

    entries: dict[str, tuple[Path, list[tuple[str, str]]]] = {}
    wanted = [("train", "Training", partition), ("test", "Testing", partition)]
    for number in extra_partition_numbers(partition, extra_partitions):
        wanted += [(partition_split("train", number), "Training", number),
                   (partition_split("test", number), "Testing", number)]
    if extra_partitions:
        task.notes.append(
            "repeats: partitions "
            f"{', '.join(f'{n:02d}' for n in extra_partition_numbers(partition, extra_partitions))} as well"
        )
    for split_name, prefix, number in wanted:
        list_file = partitions / f"{prefix}_{number:02d}.txt"
        lines = problems.lines(list_file, task.source_files)
        if lines is None:
            continue
        rows = []
        for number, line in lines:
            rel = line.strip()
            cls = rel.rsplit("/", 1)[0]
            if not rel.startswith("/") or cls.count("/") < 2:
                problems.annotation(
                    list_file,
                    f"expected a path like '/a/abbey/sun_x.jpg', got {rel!r}",
                    line=number,
                )
                continue
            rows.append((cls, rel))
        entries[split_name] = (list_file, rows)

    found = sorted({cls for _, rows in entries.values() for cls, _ in rows})
    if class_file is not None and declared is not None:
        task.classes = declared
        task.notes.append(f"class order from {class_file.name}")
    else:
        task.classes = found
        task.notes.append(
            "no ClassName.txt: classes are the sorted folders named in the partition files"
        )
    index = {cls: k for k, cls in enumerate(task.classes)}
    for split_name, (list_file, rows) in entries.items():
        kept = [(cls, rel) for cls, rel in rows if cls in index]
        for cls in sorted({cls for cls, _ in rows} - set(index)):
            problems.annotation(list_file, f"class {cls} is not listed in {class_file}")
        labels = np.array([index[cls] for cls, _ in kept], dtype=np.int64)
        split = Split(split_name, [str(images / rel.lstrip("/")) for _, rel in kept], labels)
        task.splits[split_name] = split
        counts = np.bincount(labels, minlength=len(task.classes))
        for k in np.flatnonzero(counts == 0):
            problems.annotation(list_file, f"class {task.classes[k]} has no image")
        check_images_exist(split.paths, problems, list_file)
    return task


def _find_optional(root: Path, partitions: Path) -> Path | None:
    """ClassName.txt beside the partition lists or above them; no search of the tree below,
    which holds SUN397's ~100k images, for a file that is optional."""
    for candidate in (partitions / "ClassName.txt", partitions.parent / "ClassName.txt", root / "ClassName.txt"):
        if candidate.is_file():
            return candidate
    return None


register(
    TaskSpec(
        name="sun397",
        title="SUN397 scenes",
        group=1,
        distance=3,
        kind="single",
        metric="accuracy",
        layout="SUN397/<letter>/<class>/..., Partitions/{Training,Testing}_0N.txt [, ClassName.txt]",
        reader=read_sun397,
        options={"partition": 1, "extra_partitions": 0},
        protocol="official partition N (default 1): 50 train / 50 test images per class, 397 classes; accuracy;"
        " repeats: the next official partitions",
        repeats="partitions",
    )
)
