"""Oxford Flowers 102 (Nilsback & Zisserman 2008), read from the official ``.mat`` files.

``imagelabels.mat`` holds ``labels`` (1 x 8189, classes 1..102) and ``setid.mat`` holds
``trnid``, ``valid``, ``tstid`` (1-based image numbers; 1020 / 1020 / 6149). Image ``i`` is
``jpg/image_%05d.jpg``. The official protocol trains on ``trnid`` (10 per class), may tune
on ``valid`` and tests on ``tstid``.

``load_mat`` is also used by the other ``.mat``-based readers (SUN Attributes, Visual
Phrases): it turns every way a ``.mat`` file can be wrong into an AnnotationError naming
the file and the key.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from transferlab.data.base import Split, TaskData
from transferlab.data.readers._util import Problems, check_images_exist, find_under, require_root
from transferlab.data.tasks import TaskSpec, register
from transferlab.errors import AnnotationError, TransferlabError

NUM_CLASSES = 102


def load_mat(path: Path, keys: Iterable[str]) -> dict[str, np.ndarray]:
    """The named variables of a MATLAB v5 file; AnnotationError if unreadable or a key is missing."""
    import scipy.io

    try:
        data = scipy.io.loadmat(str(path))
    except FileNotFoundError:
        raise AnnotationError(path, "file not found") from None
    except NotImplementedError:
        raise AnnotationError(
            path, "MATLAB v7.3 (HDF5) files are not supported; save with -v7"
        ) from None
    except Exception as exc:  # scipy raises ValueError / MatReadError / TypeError on bad files
        raise AnnotationError(path, f"not a readable .mat file ({exc})") from None
    out = {}
    for key in keys:
        if key not in data:
            present = ", ".join(k for k in data if not k.startswith("__")) or "none"
            raise AnnotationError(path, f"missing variable (has: {present})", key=key)
        out[key] = data[key]
    return out


def mat_index_vector(path: Path, key: str, value: np.ndarray, low: int, high: int) -> np.ndarray:
    """A 1 x n (or n x 1) vector of integers in [low, high], as int64; AnnotationError otherwise."""
    array = np.asarray(value)
    if array.ndim != 2 or min(array.shape) != 1 or array.size == 0:
        raise AnnotationError(path, f"expected a 1 x n vector, got shape {array.shape}", key=key)
    if not np.issubdtype(array.dtype, np.number):
        raise AnnotationError(path, f"expected numbers, got {array.dtype}", key=key)
    vector = array.ravel()
    if not np.all(np.equal(np.mod(vector, 1), 0)):
        raise AnnotationError(path, "expected integers", key=key)
    vector = vector.astype(np.int64)
    bad = (vector < low) | (vector > high)
    if bad.any():
        raise AnnotationError(path, f"value {vector[bad][0]} outside {low}..{high}", key=key)
    return vector


def read_flowers(root: Path | None, *, problems: Problems | None = None) -> TaskData:
    """Official split: train = trnid, val = valid, test = tstid."""
    problems = problems if problems is not None else Problems()
    root = require_root(root, "flowers", "the folder holding jpg/, imagelabels.mat, setid.mat")
    task = TaskData(
        name="flowers",
        kind="single",
        classes=[f"{k:03d}" for k in range(1, NUM_CLASSES + 1)],
        splits={},
        root=str(root),
    )
    try:
        images = find_under(root, ["jpg", "102flowers/jpg"], "Flowers102 image folder jpg/")
        labels_file = find_under(root, ["imagelabels.mat"], "imagelabels.mat")
        setid_file = find_under(root, ["setid.mat"], "setid.mat")
        raw_labels = load_mat(labels_file, ["labels"])["labels"]
        labels = mat_index_vector(labels_file, "labels", raw_labels, 1, NUM_CLASSES) - 1
        task.source_files.append(str(labels_file))
        sets = load_mat(setid_file, ["trnid", "valid", "tstid"])
        task.source_files.append(str(setid_file))
    except TransferlabError as exc:
        problems.report(exc)
        return task
    task.notes.append(
        "classes are the 102 label numbers of imagelabels.mat (the release has no class-name file)"
    )
    seen: dict[int, str] = {}
    for split_name, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        try:
            ids = mat_index_vector(setid_file, key, sets[key], 1, len(labels))
        except TransferlabError as exc:
            problems.report(exc)
            continue
        shared = [int(i) for i in ids if int(i) in seen]
        if shared:
            problems.annotation(
                setid_file,
                f"{len(shared)} image(s) also in {seen[shared[0]]}, first {shared[0]}",
                key=key,
            )
        seen.update((int(i), key) for i in ids)
        split = Split(
            split_name, [str(images / f"image_{i:05d}.jpg") for i in ids], labels[ids - 1]
        )
        task.splits[split_name] = split
        counts = np.bincount(split.labels, minlength=NUM_CLASSES)
        for k in np.flatnonzero(counts == 0):
            problems.annotation(setid_file, f"class {k + 1} has no image in {split_name}", key=key)
        check_images_exist(split.paths, problems, setid_file)
    return task


register(
    TaskSpec(
        name="flowers",
        title="Oxford Flowers 102",
        group=3,
        distance=9,
        kind="single",
        metric="mean_class_accuracy",
        layout="jpg/image_%05d.jpg, imagelabels.mat, setid.mat",
        reader=read_flowers,
        protocol="official split: train trnid (1020) / val valid (1020) / test tstid (6149), 102 classes; "
        "mean class accuracy",
    )
)
