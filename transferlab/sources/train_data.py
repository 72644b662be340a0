"""The training set of a source network: the union of its tasks' label spaces (Hybrid), the
seeded subset (diversity vs density), and the images decoded once at the training resolution.

Decoded pixels are uint8 (N, 3, R, R), kept per whole task split in
``$TRANSFERLAB_CACHE/decoded/`` (atomic .npy + SHA-256 sidecar, verified on read), so every
run on the same task split decodes nothing; splits too large for memory are decoded into a
memory-mapped file in the run's folder instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from transferlab.atomic import atomic_write
from transferlab.data.base import Split, TaskData
from transferlab.errors import BadImageError, TransferlabError
from transferlab.sources.preprocessing import Preprocessing

RGB = tuple[float, float, float]

MEMORY_CACHE_BYTES = 2 << 30  # decoded images above this go to a memory-mapped file

@dataclass
class SourceData:
    """The training set after union and subsetting: paths, labels in 0..K-1, class names."""

    tasks: list[str]
    class_names: list[str]
    train: Split
    val: Split | None
    fingerprint: str
    # (whole task split, rows of it in ``train`` / ``val`` order): decoded once per task split
    # and cached, so subsets and Hybrids of the same task never decode an image twice
    train_parts: list[tuple[Split, np.ndarray]] = field(default_factory=list)
    val_parts: list[tuple[Split, np.ndarray]] = field(default_factory=list)


def union_tasks(tasks: Sequence[TaskData], classes: int | None = None,
                images_per_class: int | None = None, seed: int = 0) -> SourceData:
    """Concatenate the label spaces of ``tasks`` (Hybrid) and draw the seeded subset."""
    if not tasks:
        raise TransferlabError("train-source needs at least one task")
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise TransferlabError(f"task given twice: {', '.join(names)}")
    paths: list[str] = []
    labels: list[np.ndarray] = []
    boxes: list = []
    val_parts: list[tuple[list[str], np.ndarray, list]] = []
    class_names: list[str] = []
    relative: list[str] = []
    whole_train: list[Split] = []
    whole_val: list[Split | None] = []
    for task in tasks:
        if task.kind != "single":
            raise TransferlabError(
                f"task {task.name} is {task.kind}; a source network is trained on single-label "
                "classification tasks"
            )
        train = task.split("train")
        whole_train.append(train)
        offset = len(class_names)
        class_names += [f"{task.name}/{c}" if len(tasks) > 1 else c for c in task.classes]
        paths += train.paths
        labels.append(np.asarray(train.labels, dtype=np.int64) + offset)
        boxes += train.boxes if train.boxes is not None else [None] * len(train)
        relative += [_relative(p, task.root) for p in train.paths]
        if "val" in task.splits and len(task.splits["val"]):
            task_val = task.splits["val"]
            val_boxes = task_val.boxes if task_val.boxes is not None else [None] * len(task_val)
            val_parts.append((task_val.paths, np.asarray(task_val.labels, dtype=np.int64) + offset, val_boxes))
            whole_val.append(task_val)
        else:
            whole_val.append(None)
    y = np.concatenate(labels)
    rng = np.random.default_rng(seed)
    total = len(class_names)
    if classes is not None:
        if classes < 2:
            raise TransferlabError(f"--classes must be at least 2, got {classes}")
        if classes > total:
            raise TransferlabError(
                f"--classes {classes} asks for more classes than the source has ({total} in "
                f"{'+'.join(names)})"
            )
        chosen = np.sort(rng.choice(total, size=classes, replace=False))
    else:
        chosen = np.arange(total)
    keep: list[np.ndarray] = []
    for k in chosen:
        members = np.flatnonzero(y == k)
        if images_per_class is not None:
            if images_per_class < 1:
                raise TransferlabError(f"--images-per-class must be at least 1, got {images_per_class}")
            if len(members) < images_per_class:
                counts = np.bincount(y, minlength=total)[chosen]
                raise TransferlabError(
                    f"{len(chosen)} classes x {images_per_class} images per class = "
                    f"{len(chosen) * images_per_class} training images asked of {'+'.join(names)}, but class "
                    f"{class_names[k]!r} has only {len(members)} (the classes have {counts.min()}-"
                    f"{counts.max()} each, {int(counts.sum())} in all)"
                )
            members = np.sort(rng.choice(members, size=images_per_class, replace=False))
        keep.append(members)
    rows = np.sort(np.concatenate(keep))
    remap = np.full(total, -1, dtype=np.int64)
    remap[chosen] = np.arange(len(chosen))
    if len(rows) < 2:
        raise TransferlabError(f"the source set has {len(rows)} training image(s); at least 2 are needed")
    train = Split("train", [paths[i] for i in rows], remap[y[rows]], [boxes[i] for i in rows])
    missing = [class_names[k] for k in chosen if not np.any(train.labels == remap[k])]
    if missing:
        raise TransferlabError(f"classes without training images: {', '.join(missing[:5])}")
    val: Split | None = None
    if val_parts:
        v_paths = [p for part in val_parts for p in part[0]]
        v_labels = remap[np.concatenate([part[1] for part in val_parts])]
        v_boxes = [b for part in val_parts for b in part[2]]
        keep_val = np.flatnonzero(v_labels >= 0)
        if len(keep_val):
            val = Split("val", [v_paths[i] for i in keep_val], v_labels[keep_val], [v_boxes[i] for i in keep_val])
    digest = hashlib.sha256()
    for i in rows:
        digest.update(f"{relative[i]}\t{remap[y[i]]}\t{boxes[i]}\n".encode())
    train_parts, start = [], 0
    for whole in whole_train:
        local = rows[(rows >= start) & (rows < start + len(whole))] - start
        train_parts.append((whole, local))
        start += len(whole)
    val_split_parts = []
    if val is not None:
        start = 0
        for whole_v in whole_val:
            if whole_v is None:
                continue
            local = np.flatnonzero(v_labels[start:start + len(whole_v)] >= 0)  # classes kept
            val_split_parts.append((whole_v, local))
            start += len(whole_v)
    return SourceData(names, [class_names[k] for k in chosen], train, val, digest.hexdigest()[:16],
                      train_parts, val_split_parts)


def _relative(path: str, root: str) -> str:
    if root:
        try:
            return os.path.relpath(path, root)
        except ValueError:
            pass
    return path


class _DecodeDataset(torch.utils.data.Dataset):
    """Decode + resize + centre crop to uint8 (3, R, R): the eval transform minus scaling."""

    def __init__(self, split: Split, preprocessing: Preprocessing):
        self.split = split
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        from transferlab.data.images import read_image

        pre = self.preprocessing
        try:
            box = self.split.boxes[index] if self.split.boxes is not None else None
            image = read_image(self.split.paths[index], box)
            image = F.resize(image, pre.resize_size, interpolation=InterpolationMode.BILINEAR)
            image = F.center_crop(image, [pre.input_size, pre.input_size])
            return F.pil_to_tensor(image), index, ""
        except Exception as exc:  # reported by the main process with the file name
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            size = pre.input_size
            return torch.zeros(3, size, size, dtype=torch.uint8), index, reason or "unreadable"


def decode_images(split: Split, preprocessing: Preprocessing, cache_file: Path | None = None,
                  workers: int | None = None, progress: bool = False) -> np.ndarray:
    """All images of ``split`` as uint8 (N, 3, R, R); memory-mapped to ``cache_file`` when
    larger than ``MEMORY_CACHE_BYTES``. An unreadable image stops with its path."""
    from tqdm.auto import tqdm

    size = preprocessing.input_size
    shape = (len(split), 3, size, size)
    if cache_file is not None and math.prod(shape) > MEMORY_CACHE_BYTES:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        array: np.ndarray = np.lib.format.open_memmap(cache_file, mode="w+", dtype=np.uint8, shape=shape)
    else:
        array = np.empty(shape, dtype=np.uint8)
    if workers is None:
        workers = 0 if len(split) < 2000 else min(8, max(1, (os.cpu_count() or 1) - 1))
    loader = torch.utils.data.DataLoader(_DecodeDataset(split, preprocessing), batch_size=64,
                                         num_workers=workers, shuffle=False)
    with tqdm(total=len(split), unit="img", desc=f"decoding {split.name}", disable=not progress,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for pixels, index, reasons in loader:
            for k, reason in enumerate(reasons):
                if reason:
                    raise BadImageError(split.paths[int(index[k])], reason)
            array[int(index[0]): int(index[-1]) + 1] = pixels.numpy()
            bar.update(len(index))
    return array


DECODED_FORMAT = 1  # bump when decoding changes (resize, crop, colour conversion)


def decoded_key(split: Split, preprocessing: Preprocessing) -> str:
    """Cache key of a split's decoded pixels: every file's path, size and mtime, its crop box
    and the decoding settings; an edited image or another resolution is another key."""
    digest = hashlib.sha256(f"v{DECODED_FORMAT}\t{preprocessing.input_size}\t{preprocessing.resize_size}\t"
                            f"{preprocessing.interpolation}\n".encode())
    boxes = split.boxes if split.boxes is not None else [None] * len(split)
    for path, box in zip(split.paths, boxes, strict=True):
        try:
            stat = os.stat(path)
            stamp = f"{stat.st_size}\t{stat.st_mtime_ns}"
        except OSError:
            stamp = "missing"  # decode_images names the file
        digest.update(f"{path}\t{stamp}\t{box}\n".encode())
    return digest.hexdigest()[:24]


def decode_cached(split: Split, preprocessing: Preprocessing, workers: int | None = None,
                  progress: bool = False) -> np.ndarray:
    """``decode_images`` of a whole split, kept in ``$TRANSFERLAB_CACHE/decoded/`` (an .npy
    written atomically, with its SHA-256 in a sidecar checked on read), so every training run
    on the same task split decodes nothing. Splits above ``MEMORY_CACHE_BYTES`` are decoded
    each time (into a memory-mapped file by the caller)."""
    from transferlab.atomic import atomic_write_text
    from transferlab.paths import cache_dir

    size = preprocessing.input_size
    if len(split) * 3 * size * size > MEMORY_CACHE_BYTES:
        return decode_images(split, preprocessing, None, workers, progress)
    folder = cache_dir("decoded")
    key = decoded_key(split, preprocessing)
    array_path, info_path = folder / f"{key}.npy", folder / f"{key}.json"
    if array_path.is_file() and info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
            array = np.load(array_path, allow_pickle=False)
            if (list(array.shape) == info.get("shape") and array.dtype == np.uint8
                    and hashlib.sha256(array.tobytes()).hexdigest() == info.get("sha256")):
                return array
        except (OSError, ValueError, json.JSONDecodeError):
            pass  # unreadable or torn: decode again and overwrite
    array = decode_images(split, preprocessing, None, workers, progress)
    atomic_write(array_path, lambda handle: np.save(handle, array, allow_pickle=False))
    atomic_write_text(info_path, json.dumps({"shape": list(array.shape), "images": len(split),
                                             "sha256": hashlib.sha256(array.tobytes()).hexdigest()}) + "\n")
    return array


def gather_decoded(parts: Sequence[tuple[Split, np.ndarray]], preprocessing: Preprocessing,
                   workers: int | None = None, progress: bool = False) -> np.ndarray:
    """The selected rows of each whole task split, decoded (cached), concatenated in order."""
    chunks = [decode_cached(whole, preprocessing, workers, progress)[rows] for whole, rows in parts]
    return np.ascontiguousarray(np.concatenate(chunks)) if len(chunks) > 1 else chunks[0]


def channel_stats(images: np.ndarray, limit: int = 10000) -> tuple[RGB, RGB]:
    """Per-channel mean and std (in [0, 1] units) of at most ``limit`` evenly spaced images,
    accumulated in float64 a chunk at a time (never a float copy of the whole sample)."""
    step = max(1, math.ceil(len(images) / limit))
    picked = np.arange(0, len(images), step)
    total = np.zeros(images.shape[1])
    squares = np.zeros(images.shape[1])
    for start in range(0, len(picked), 256):
        chunk = np.asarray(images[picked[start:start + 256]], dtype=np.float64) / 255.0
        total += chunk.sum(axis=(0, 2, 3))
        squares += np.square(chunk).sum(axis=(0, 2, 3))
    count = len(picked) * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares - count * mean**2, 0.0) / max(1, count - 1))  # unbiased, as torch.std
    std = np.maximum(std, 1e-3)
    if len(mean) != 3:
        raise TransferlabError(f"channel statistics need 3-channel images, got {len(mean)} channels")
    m0, m1, m2 = (round(float(v), 6) for v in mean)
    s0, s1, s2 = (round(float(v), 6) for v in std)
    return (m0, m1, m2), (s0, s1, s2)

