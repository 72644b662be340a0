"""SUN Attribute database (Patterson & Hays 2012), read from ``SUNAttributeDB.tar.gz`` and
``SUNAttributeDB_Images.tar.gz``.

``images.mat`` (``images``: 14340 image names like ``a/abbey/sun_aaaxxx.jpg``, relative to
the ``images/`` folder), ``attributes.mat`` (``attributes``: 102 names) and
``attributeLabels_continuous.mat`` (``labels_cv``: 14340 x 102, the fraction of the 3 AMT
workers who saw the attribute: 0, 1/3, 2/3 or 1).

Labels: present (1) when at least 2 of the 3 workers voted for it (``labels_cv >= 2/3``),
as in the dataset's own experiments; otherwise absent (-1), or with
``ambiguous="ignore"`` a single vote becomes 0 (ignored in training and scoring).

Split: the release has no official train/test split. This reader splits every scene
category (the image folder) in half at random with ``seed`` (default 0), so both halves
cover all 717 categories; the split is reproducible, not the paper's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transferlab.data.base import Split, TaskData
from transferlab.data.readers._util import Problems, check_images_exist, find_under, require_root
from transferlab.data.readers.flowers import load_mat
from transferlab.data.tasks import TaskSpec, register
from transferlab.errors import AnnotationError, TransferlabError

MAT_FILES = {
    "images.mat": "images",
    "attributes.mat": "attributes",
    "attributeLabels_continuous.mat": "labels_cv",
}
PRESENT_AT = 2 / 3


def read_sun_attributes(
    root: Path | None,
    *,
    problems: Problems | None = None,
    seed: int = 0,
    train_fraction: float = 0.5,
    ambiguous: str = "negative",
) -> TaskData:
    """Attributes with ``labels_cv >= 2/3`` are positive; a seeded per-category split."""
    problems = problems if problems is not None else Problems()
    root = require_root(root, "sun_attributes", "the folder holding SUNAttributeDB/ and images/")
    if ambiguous not in ("negative", "ignore"):
        raise TransferlabError(
            f"sun_attributes: ambiguous must be 'negative' or 'ignore', got {ambiguous!r}"
        )
    if not 0 < train_fraction < 1:
        raise TransferlabError(
            f"sun_attributes: train_fraction must be in (0, 1), got {train_fraction!r}"
        )
    task = TaskData(name="sun_attributes", kind="attributes", classes=[], splits={}, root=str(root))
    arrays = {}
    for file_name, key in MAT_FILES.items():
        try:
            path = find_under(
                root, [f"SUNAttributeDB/{file_name}", file_name], f"SUN Attributes {file_name}"
            )
            arrays[key] = (path, load_mat(path, [key])[key])
        except TransferlabError as exc:
            problems.report(exc)
            continue
        task.source_files.append(str(path))
    if len(arrays) < len(MAT_FILES):
        return task
    try:
        names = cell_strings(*arrays["images"], "images")
        task.classes = cell_strings(*arrays["attributes"], "attributes")
        votes = _votes(*arrays["labels_cv"], (len(names), len(task.classes)))
        images = find_under(
            root,
            ["images", "SUNAttributeDB/images", "SUNAttributeDB_Images/images"],
            "SUN Attributes images/ folder",
        )
    except TransferlabError as exc:
        problems.report(exc)
        return task
    labels = np.where(votes >= PRESENT_AT - 1e-6, 1, -1).astype(np.int8)
    if ambiguous == "ignore":
        labels[(votes > 1e-6) & (votes < PRESENT_AT - 1e-6)] = 0
    train_rows, test_rows = _split_by_category(names, seed, train_fraction)
    for split_name, rows in (("train", train_rows), ("test", test_rows)):
        split = Split(split_name, [str(images / names[i].lstrip("/")) for i in rows], labels[rows])
        task.splits[split_name] = split
        empty = [task.classes[k] for k in np.flatnonzero(~(split.labels == 1).any(axis=0))]
        if empty:
            task.notes.append(f"{split_name}: no positive image for {', '.join(empty)}")
        check_images_exist(split.paths, problems, arrays["images"][0])
    task.notes.append(
        "positive = at least 2 of 3 votes (labels_cv >= 2/3); "
        f"single votes are {'ignored (0)' if ambiguous == 'ignore' else 'negative'}"
    )
    task.notes.append(
        f"no official split: each scene category is split {train_fraction:g}/{1 - train_fraction:g} "
        f"at random, seed {seed}"
    )
    return task


def cell_strings(path: Path, value: np.ndarray, key: str) -> list[str]:
    """The strings of a MATLAB cell array of char vectors (as scipy.io.loadmat returns it)."""
    array = np.asarray(value)
    if array.dtype != object or array.ndim != 2 or min(array.shape) != 1:
        raise AnnotationError(
            path,
            f"expected an n x 1 cell array of strings, got {array.dtype} {array.shape}",
            key=key,
        )
    out = []
    for i, cell in enumerate(array.ravel()):
        inner = np.asarray(cell).ravel()
        if inner.size != 1 or not isinstance(inner[0], str):
            raise AnnotationError(path, f"cell {i + 1} is not a string", key=key)
        out.append(str(inner[0]).strip())
    return out


def _votes(path: Path, value: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    votes = np.asarray(value)
    if votes.shape != shape:
        raise AnnotationError(
            path,
            f"expected shape {shape} (images x attributes), got {votes.shape}",
            key="labels_cv",
        )
    if (
        not np.issubdtype(votes.dtype, np.number)
        or np.isnan(votes).any()
        or votes.min() < 0
        or votes.max() > 1
    ):
        raise AnnotationError(path, "expected vote fractions in [0, 1]", key="labels_cv")
    return votes.astype(np.float64)


def _split_by_category(
    names: list[str], seed: int, train_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of train and test: each category (image folder) split at random."""
    rng = np.random.default_rng(seed)
    by_category: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        by_category.setdefault(name.rsplit("/", 1)[0], []).append(i)
    train, test = [], []
    for category in sorted(by_category):
        rows = np.asarray(by_category[category])
        rows = rows[rng.permutation(len(rows))]
        n_train = int(round(len(rows) * train_fraction))
        train.extend(rows[:n_train].tolist())
        test.extend(rows[n_train:].tolist())
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(test), dtype=np.int64)


register(
    TaskSpec(
        name="sun_attributes",
        title="SUN Attributes",
        group=2,
        distance=4,
        kind="attributes",
        metric="map",
        layout="SUNAttributeDB/{images.mat, attributes.mat, attributeLabels_continuous.mat}, "
        "images/<letter>/<category>/...",
        reader=read_sun_attributes,
        options={"seed": 0, "train_fraction": 0.5, "ambiguous": "negative"},
        repeats="redeal",
        protocol="102 attributes, positive at >= 2/3 votes; "
        "no official split: seeded half/half per scene category; mAP",
    )
)
