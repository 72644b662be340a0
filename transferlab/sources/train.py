"""Train a source ConvNet from scratch (the paper's learning factors) and load it back.

``train_source`` trains an AlexNet-like or VGG16-like network (``sources.architectures``) on
the train split of one task, or on the union of several (Hybrid: label spaces concatenated),
optionally on a seeded subset (``classes`` x ``images_per_class``: diversity vs density).
Everything lands in one folder::

    OUT/source.json                      architecture, preprocessing, layers, classes, training record
    OUT/model.safetensors                final weights          -> source ``trained:OUT``
    OUT/snapshots/epoch_003.safetensors  weights after epoch 3  -> source ``trained:OUT@3``
    OUT/checkpoint.pt                    last finished epoch (weights_only-loadable), for resuming

Images are decoded once, at the training resolution, into a uint8 array (in memory, or a
memory-mapped file in OUT/.cache when large); augmentation (random crop with padding,
horizontal flip) runs on whole batches. Epoch ``e`` draws its shuffle, crops, flips and
dropout masks from ``seed`` and ``e`` alone, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferlab.atomic import atomic_write, atomic_write_bytes, atomic_write_text
from transferlab.data.base import Split, TaskData
from transferlab.errors import BadImageError, TransferlabError
from transferlab.sources.architectures import (
    ArchSpec,
    build_network,
    count_parameters,
    forward_features,
    forward_head,
    representation_layers,
)
from transferlab.sources.base import Source, probe_layers
from transferlab.sources.preprocessing import Preprocessing

FORMAT = "transferlab-trained-source"
FORMAT_VERSION = 1
SCHEDULES = ("cosine", "step")
MEMORY_CACHE_BYTES = 2 << 30  # decoded images above this go to a memory-mapped file
STEP_MILESTONES = (0.5, 0.75)  # step schedule: lr x0.1 after half and three quarters of the epochs
# No dropout by default: AlexNet's 0.5 after fc6/fc7 kept these narrow networks far below their
# accuracy on short schedules (alexnet-tiny, scene_source quick, 3 epochs: val 0.296 vs 0.756).
DEFAULT_DROPOUT = 0.0
TRAIN_THREADS = 1  # torch threads while training on CPU, unless train_source(threads=...) says otherwise
CHECK_EVERY = 20  # steps between loss finiteness checks (each check syncs the device)
# Settings a resumed run must share with its checkpoint (epochs, snapshots, device may change).
RESUME_KEYS = ("arch", "width", "resolution", "batch_norm", "dropout", "tasks", "classes",
               "images_per_class", "seed", "lr", "momentum", "weight_decay", "schedule",
               "batch_size", "data")


CHANCE_MARGIN = 0.05  # a source within 5 points of 1/classes on its own val split has not learnt


def near_chance(val_accuracy: float | None, classes: int) -> bool | None:
    """True when a source's own validation accuracy is within ``CHANCE_MARGIN`` of chance
    (1/classes); None without a validation split."""
    if val_accuracy is None or classes < 1:
        return None
    return val_accuracy < 1.0 / classes + CHANCE_MARGIN


def default_lr(batch_norm: bool) -> float:
    """SGD learning rate (any batch size): 0.02 with BatchNorm, 0.01 without (plain AlexNet/VGG)."""
    return 0.02 if batch_norm else 0.01


# ------------------------------------------------------------------------------ record
@dataclass
class TrainRecord:
    """What a training run did; stored in ``source.json`` under ``training``."""

    out: str
    arch: str
    width: str
    resolution: int
    num_classes: int
    class_names: list[str]
    settings: dict
    parameters: int = 0
    train_images: int = 0
    val_images: int = 0
    history: list[dict] = field(default_factory=list)
    snapshots: dict[int, str] = field(default_factory=dict)
    final: str | None = None
    final_epoch: int | None = None
    status: str = "running"
    device: str = "cpu"

    @property
    def epochs_done(self) -> int:
        return self.history[-1]["epoch"] if self.history else 0

    def val_accuracy_at(self, epoch: int | None = None) -> float | None:
        """The source's own validation accuracy after ``epoch`` (default: the last one done)."""
        rows = [r for r in self.history if epoch is None or r["epoch"] == epoch]
        return rows[-1].get("val_accuracy") if rows else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["snapshots"] = {str(k): v for k, v in sorted(self.snapshots.items())}
        data["epochs_done"] = self.epochs_done
        val = self.val_accuracy_at()
        data["val_accuracy"] = val
        data["chance"] = round(1.0 / self.num_classes, 6) if self.num_classes else None
        data["near_chance"] = near_chance(val, self.num_classes)
        seconds = sum(r.get("seconds") or 0.0 for r in self.history)
        data["train_seconds"] = round(seconds, 1)
        seen = sum(r.get("images_seen") or 0 for r in self.history)
        data["images_per_second"] = round(seen / seconds, 1) if seconds > 0 and seen else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainRecord:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["snapshots"] = {int(k): v for k, v in data.get("snapshots", {}).items()}
        return cls(**fields)


# ------------------------------------------------------------------------------ data
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
            val = task.splits["val"]
            val_boxes = val.boxes if val.boxes is not None else [None] * len(val)
            val_parts.append((val.paths, np.asarray(val.labels, dtype=np.int64) + offset, val_boxes))
            whole_val.append(val)
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
    val = None
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
        for whole in whole_val:
            if whole is None:
                continue
            local = np.flatnonzero(v_labels[start:start + len(whole)] >= 0)  # classes kept
            val_split_parts.append((whole, local))
            start += len(whole)
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
        array = np.lib.format.open_memmap(cache_file, mode="w+", dtype=np.uint8, shape=shape)
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


def channel_stats(images: np.ndarray, limit: int = 10000) -> tuple[tuple[float, ...], tuple[float, ...]]:
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
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


# ------------------------------------------------------------------------------ training
def lr_at(settings: dict, epochs: int, epoch: int, step: int, steps: int) -> float:
    """Learning rate for 0-based ``epoch`` and ``step`` of ``steps`` per epoch.

    cosine: base * (1 + cos(pi * t)) / 2 with t the fraction of all steps done;
    step: base x0.1 from epoch ceil(0.5 E) and again from ceil(0.75 E) (0-based)."""
    base = settings["lr"]
    if settings["schedule"] == "cosine":
        t = (epoch * steps + step) / max(1, epochs * steps)
        return base * 0.5 * (1.0 + math.cos(math.pi * t))
    drops = sum(epoch >= math.ceil(m * epochs) for m in STEP_MILESTONES if math.ceil(m * epochs) < epochs)
    return base * (0.1 ** drops)


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the zero-padded (= mean after normalisation) batch, pad R/8, and a
    horizontal flip with probability 1/2, drawn per image from ``generator``."""
    n, _, size, _ = batch.shape
    pad = max(1, size // 8)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    padded = nn.functional.pad(batch, (pad, pad, pad, pad))
    device = batch.device
    ar = torch.arange(size, device=device)
    rows = (oy.to(device)[:, None] + ar)[:, :, None]
    cols = (ox.to(device)[:, None] + ar)[:, None, :]
    cols = torch.where(flip.to(device)[:, None, None], cols.flip(-1), cols)
    index = torch.arange(n, device=device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2).contiguous()


def _normalise(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (pixels.float().div_(255.0) - mean) / std


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only, not on biases and BatchNorm parameters."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    plain = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


class _Diverged(Exception):
    def __init__(self, epoch: int, step: int, loss: float):
        self.epoch, self.step, self.loss = epoch, step, loss


def train_source(
    arch: str,
    width: str,
    tasks: Sequence[TaskData],
    out: str | Path,
    *,
    resolution: int = 32,
    epochs: int = 10,
    snapshots: Sequence[int] = (),
    classes: int | None = None,
    images_per_class: int | None = None,
    seed: int = 0,
    lr: float | None = None,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "cosine",
    batch_size: int = 64,
    batch_norm: bool = True,
    dropout: float = DEFAULT_DROPOUT,
    device: str = "auto",
    workers: int | None = None,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
    threads: int | None = None,
) -> TrainRecord:
    """Train (or resume training) a source network into ``out``; see the module docstring.

    ``threads``: torch intra-op threads while training on CPU (default ``TRAIN_THREADS``):
    these small 32 px networks gain little from more, and on a busy machine OpenMP threads
    waiting for each other made every step several times slower."""
    if threads is not None and threads < 1:
        raise TransferlabError(f"--threads must be at least 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads or TRAIN_THREADS)
    try:
        return _train_source(arch, width, tasks, out, resolution=resolution, epochs=epochs, snapshots=snapshots,
                             classes=classes, images_per_class=images_per_class, seed=seed, lr=lr,
                             momentum=momentum, weight_decay=weight_decay, schedule=schedule,
                             batch_size=batch_size, batch_norm=batch_norm, dropout=dropout, device=device,
                             workers=workers, progress=progress, callback=callback)
    finally:
        torch.set_num_threads(before)


def _train_source(
    arch: str,
    width: str,
    tasks: Sequence[TaskData],
    out: str | Path,
    *,
    resolution: int,
    epochs: int,
    snapshots: Sequence[int],
    classes: int | None,
    images_per_class: int | None,
    seed: int,
    lr: float | None,
    momentum: float,
    weight_decay: float,
    schedule: str,
    batch_size: int,
    batch_norm: bool,
    dropout: float,
    device: str,
    workers: int | None,
    progress: bool,
    callback: Callable[[dict], None] | None,
) -> TrainRecord:
    """The body of ``train_source``.

    ``callback(row)`` is called after each finished epoch (checkpoint already written) with
    that epoch's history row. A non-finite loss stops training with a TransferlabError; the
    last finished epoch stays in ``checkpoint.pt`` and earlier snapshots stay usable."""
    from transferlab.device import resolve_device

    spec_check = ArchSpec(arch, width, resolution, num_classes=2, batch_norm=batch_norm, dropout=dropout)
    del spec_check  # validates arch / width / resolution before any data is read
    if epochs < 1:
        raise TransferlabError(f"--epochs must be at least 1, got {epochs}")
    if batch_size < 2:
        raise TransferlabError(f"--batch-size must be at least 2, got {batch_size}")
    if schedule not in SCHEDULES:
        raise TransferlabError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    wanted_snapshots = sorted({int(e) for e in snapshots})
    bad = [e for e in wanted_snapshots if e < 1 or e > epochs]
    if bad:
        raise TransferlabError(f"snapshot epochs {bad} are outside 1..{epochs} (--epochs {epochs})")
    lr = default_lr(batch_norm) if lr is None else float(lr)
    if not lr > 0 or not math.isfinite(lr):
        raise TransferlabError(f"--lr must be a positive number, got {lr}")

    data = union_tasks(tasks, classes, images_per_class, seed)
    settings = {
        "arch": arch, "width": width, "resolution": int(resolution), "batch_norm": bool(batch_norm),
        "dropout": float(dropout), "tasks": data.tasks, "classes": classes,
        "images_per_class": images_per_class, "data": data.fingerprint, "seed": int(seed), "lr": lr,
        "momentum": float(momentum), "weight_decay": float(weight_decay), "schedule": schedule,
        "batch_size": int(batch_size), "epochs": int(epochs), "snapshots": wanted_snapshots,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = _read_checkpoint(out, settings)
    dev = resolve_device(device)
    done = _finished_record(out, checkpoint, epochs)
    if done is not None:
        return done

    spec = ArchSpec(arch, width, resolution, len(data.class_names), batch_norm, dropout)
    pre = Preprocessing(input_size=resolution, crop_pct=1.0, interpolation="bilinear")
    size_bytes = len(data.train) * 3 * resolution * resolution
    if data.train_parts and size_bytes <= MEMORY_CACHE_BYTES:  # decoded once per task split, in memory
        train_pixels = gather_decoded(data.train_parts, pre, workers, progress)
        val_pixels = gather_decoded(data.val_parts, pre, workers, progress) if data.val else None
    else:
        train_pixels = decode_images(data.train, pre, out / ".cache" / f"train_{resolution}.npy", workers, progress)
        val_pixels = (decode_images(data.val, pre, out / ".cache" / f"val_{resolution}.npy", workers, progress)
                      if data.val else None)
    mean, std = channel_stats(train_pixels)
    pre = Preprocessing(input_size=resolution, crop_pct=1.0, interpolation="bilinear", mean=mean, std=std)

    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left alone
        torch.manual_seed(seed)  # initial weights; each epoch seeds its own generators
        model = build_network(spec)
    probe = _as_source(model, spec, pre, name=f"trained:{out}", weights_id="training", class_names=data.class_names)
    layers = [layer.to_dict() for layer in probe_layers(probe, keep_all=True)]
    optimizer = torch.optim.SGD(_param_groups(model, weight_decay), lr=lr, momentum=momentum)
    record = TrainRecord(str(out), arch, width, resolution, spec.num_classes, data.class_names, settings,
                         parameters=count_parameters(model), train_images=len(data.train),
                         val_images=len(data.val) if data.val else 0, device=str(dev))
    start = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        record.history = list(checkpoint["history"])
        start = int(checkpoint["epoch"])
    record.snapshots = _existing_snapshots(out, start)
    previous = _read_json(out / "source.json")
    if previous and previous.get("training", {}).get("final") and (out / "model.safetensors").is_file():
        record.final = previous["training"]["final"]
        record.final_epoch = previous["training"].get("final_epoch")
    meta = {"spec": spec, "pre": pre, "layers": layers}
    if start >= epochs:  # nothing left to train (an earlier run of this length, or a longer one cut short)
        if record.final_epoch != epochs:
            state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            record.final = _save_weights(state, out / "model.safetensors", out)
            record.final_epoch = epochs
        record.status = "finished"
        _write_source_json(out, meta, record)
        return record

    model.to(dev)
    model.to(memory_format=torch.channels_last)  # ~1.5x faster convs on CPU too (oneDNN)
    if dev.type == "cuda":
        for state in optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    state[key] = value.to(dev)
    train_x = torch.from_numpy(train_pixels) if isinstance(train_pixels, np.ndarray) and not isinstance(train_pixels, np.memmap) else train_pixels
    if dev.type == "cuda" and isinstance(train_x, torch.Tensor) and train_x.numel() < MEMORY_CACHE_BYTES:
        train_x = train_x.to(dev)
    train_y = torch.from_numpy(np.asarray(data.train.labels, dtype=np.int64)).to(dev)
    mean_t = torch.tensor(mean, device=dev).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=dev).view(1, 3, 1, 1)
    try:
        for epoch in range(start, epochs):
            row = _train_epoch(model, optimizer, train_x, train_y, settings, epochs, epoch, dev, mean_t,
                               std_t, progress)
            if val_pixels is not None:
                row["val_accuracy"] = evaluate(model, val_pixels, data.val.labels, mean_t, std_t, dev)
            if not all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()):
                raise _Diverged(epoch + 1, -1, float("nan"))
            record.history.append(row)
            number = epoch + 1
            state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
            if number in wanted_snapshots:
                record.snapshots[number] = _save_weights(state, out / "snapshots" / f"epoch_{number:03d}.safetensors", out)
            if number == epochs:
                record.final = _save_weights(state, out / "model.safetensors", out)
                record.final_epoch = number
                record.status = "finished"
            _save_checkpoint(out, number, settings, state, optimizer, record.history)
            _write_source_json(out, meta, record)
            if callback is not None:
                callback(dict(row))
    except _Diverged as exc:
        where = f"epoch {exc.epoch}" + (f", step {exc.step}" if exc.step >= 0 else " (non-finite weights)")
        record.status = f"diverged at {where}"
        _write_source_json(out, meta, record)
        kept = record.epochs_done
        good = sorted(e for e in record.snapshots if e <= kept)
        keep_text = (f"snapshots kept: {', '.join(f'trained:{out}@{e}' for e in good)}" if good
                     else "no snapshot was saved before it")
        ckpt_text = f"checkpoint.pt holds epoch {kept}" if kept else "no epoch finished"
        raise TransferlabError(
            f"training diverged at {where}: loss {exc.loss}; {keep_text}; {ckpt_text}. "
            f"Lower --lr (was {lr:g}) and train into a new --out"
        ) from None
    _remove_cache(out)
    return record


def _train_epoch(model, optimizer, images, labels, settings, epochs, epoch, dev, mean, std, progress) -> dict:
    from tqdm.auto import tqdm

    n = len(labels)
    batch = settings["batch_size"]
    steps = math.ceil(n / batch)
    epoch_seed = settings["seed"] * 1_000_003 + epoch
    generator = torch.Generator().manual_seed(epoch_seed)
    order = torch.randperm(n, generator=generator)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev, dtype=torch.long)
    seen = 0
    started = time.perf_counter()
    model.train()
    bar = tqdm(total=n, unit="img", desc=f"{settings['arch']}-{settings['width']} epoch {epoch + 1}/{epochs}",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    lr = settings["lr"]
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(epoch_seed)  # dropout masks
            for step in range(steps):
                idx = order[step * batch: (step + 1) * batch]
                if len(idx) < 2:  # a 1-image batch gives BatchNorm no statistics
                    break
                pixels = _gather(images, idx, dev)
                x = augment(_normalise(pixels, mean, std), generator).contiguous(memory_format=torch.channels_last)
                y = labels[idx.to(labels.device)]
                lr = lr_at(settings, epochs, epoch, step, steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast:
                    logits = model(x)
                loss = nn.functional.cross_entropy(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(idx)
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(idx)
                if (step + 1) % CHECK_EVERY == 0 or step == steps - 1:
                    value = float(loss.detach())
                    if not math.isfinite(value) or not math.isfinite(float(loss_sum)):
                        raise _Diverged(epoch + 1, step + 1, value)
                    bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", acc=f"{float(correct) / seen:.3f}",
                                    lr=f"{lr:.3g}", refresh=False)
                bar.update(len(idx))
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    return {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": float(loss_sum) / max(1, seen),
        "train_accuracy": float(correct) / max(1, seen),
        "val_accuracy": None,
        "seconds": round(seconds, 3),
        "images_seen": seen,
        "images_per_second": round(seen / seconds, 1) if seconds > 0 else None,
    }


def _gather(images, idx: torch.Tensor, dev: torch.device) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images[idx.to(images.device)].to(dev, non_blocking=True)
    order = np.sort(idx.numpy())  # memory-mapped: read rows in file order, then restore the draw
    rows = torch.from_numpy(np.ascontiguousarray(images[order]))
    position = torch.from_numpy(np.searchsorted(order, idx.numpy()))
    return rows[position].to(dev, non_blocking=True)


@torch.inference_mode()
def evaluate(model: nn.Module, images, labels: np.ndarray, mean: torch.Tensor, std: torch.Tensor,
             dev: torch.device, batch_size: int = 256) -> float:
    """Top-1 accuracy of the source classifier on decoded images (no augmentation)."""
    model.eval()
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    correct = 0
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    for start in range(0, len(y), batch_size):
        pixels = torch.from_numpy(np.ascontiguousarray(images[start: start + batch_size])).to(dev)
        with autocast:
            logits = model(_normalise(pixels, mean, std))
        correct += int((logits.float().argmax(1).cpu() == y[start: start + batch_size]).sum())
    model.train()
    return correct / max(1, len(y))


# ------------------------------------------------------------------------------ files
def _save_weights(state: dict[str, torch.Tensor], path: Path, out: Path) -> str:
    from safetensors.torch import save

    atomic_write_bytes(path, save(state))
    return str(path.relative_to(out))


def _save_checkpoint(out: Path, epoch: int, settings: dict, state: dict, optimizer, history: list[dict]) -> None:
    packed = optimizer.state_dict()  # its inner dicts are the live state: copy, never mutate
    optim_state = {
        "state": {index: {key: value.detach().to("cpu") if isinstance(value, torch.Tensor) else value
                          for key, value in values.items()}
                  for index, values in packed["state"].items()},
        "param_groups": packed["param_groups"],
    }
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "epoch": epoch, "settings": settings,
               "model": state, "optimizer": optim_state, "history": history}
    atomic_write(out / "checkpoint.pt", lambda handle: torch.save(payload, handle))


def _read_checkpoint(out: Path, settings: dict) -> dict | None:
    """The checkpoint of an earlier run into ``out``, after checking it was the same run."""
    path = out / "checkpoint.pt"
    if not path.is_file():
        if (out / "model.safetensors").is_file() or (out / "snapshots").is_dir():
            raise TransferlabError(
                f"{out} holds trained weights but no checkpoint.pt to resume from; use a new --out"
            )
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TransferlabError(f"{path}: unreadable checkpoint ({str(exc).splitlines()[0]}); "
                               "delete it to start over") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise TransferlabError(f"{path}: not a transferlab train-source checkpoint")
    saved = checkpoint["settings"]
    differ = [key for key in RESUME_KEYS if saved.get(key) != settings.get(key)]
    if differ:
        shown = "; ".join(
            f"{key}: {_show(settings.get(key))} here, {_show(saved.get(key))} in the checkpoint"
            if key != "data" else "data: the training images/labels differ from the checkpoint's"
            for key in differ
        )
        raise TransferlabError(
            f"{path} was trained with other settings ({shown}); resume with the checkpoint's "
            "settings or train into a new --out"
        )
    if int(checkpoint["epoch"]) > settings["epochs"]:
        raise TransferlabError(
            f"{path} is already at epoch {checkpoint['epoch']}, beyond --epochs {settings['epochs']}; "
            f"use a snapshot (trained:{out}@EPOCH) or a new --out"
        )
    return checkpoint


def _finished_record(out: Path, checkpoint: dict | None, epochs: int) -> TrainRecord | None:
    """The stored record when ``out`` already holds this run trained to ``epochs`` epochs."""
    if checkpoint is None or int(checkpoint["epoch"]) != epochs or not (out / "model.safetensors").is_file():
        return None
    meta = _read_json(out / "source.json") or {}
    training = meta.get("training") or {}
    if training.get("final_epoch") != epochs or training.get("status") != "finished":
        return None
    return TrainRecord.from_dict(training)


def _show(value) -> str:
    return "none" if value is None else ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _existing_snapshots(out: Path, up_to: int) -> dict[int, str]:
    found: dict[int, str] = {}
    folder = out / "snapshots"
    if folder.is_dir():
        for path in folder.glob("epoch_*.safetensors"):
            epoch = _snapshot_epoch(path)
            if epoch is not None and epoch <= up_to:
                found[epoch] = str(path.relative_to(out))
    return found


def _snapshot_epoch(path: Path) -> int | None:
    digits = path.name[len("epoch_"): -len(".safetensors")]
    return int(digits) if digits.isdigit() else None


def _write_source_json(out: Path, meta: dict, record: TrainRecord) -> None:
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "architecture": meta["spec"].to_dict(),
        "preprocessing": meta["pre"].to_dict(),
        "class_names": record.class_names,
        "layers": meta["layers"],
        "training": record.to_dict(),
    }
    text = json.dumps(payload, indent=2)
    atomic_write_text(out / "source.json", text + "\n")


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TransferlabError(f"{path}: unreadable ({exc})") from None


def _remove_cache(out: Path) -> None:
    folder = out / ".cache"
    if folder.is_dir():
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


# ------------------------------------------------------------------------------ loading
def parse_trained_spec(arg: str) -> tuple[Path, int | None]:
    """``DIR`` -> (DIR, None); ``DIR@7`` -> (DIR, 7)."""
    text = arg.strip()
    if not text:
        raise TransferlabError("trained: needs a folder, e.g. trained:runs/alexnet-tiny or trained:runs/alexnet-tiny@5")
    head, sep, tail = text.rpartition("@")
    if sep and tail.isdigit():
        return Path(head), int(tail)
    if sep and not Path(text).exists():
        raise TransferlabError(f"trained:{text}: the part after '@' must be an epoch number")
    return Path(text), None


def load_trained_source(arg: str, weights: str | None = None) -> Source:
    """The ``trained:DIR[@EPOCH]`` source kind: final weights or the snapshot of EPOCH."""
    from transferlab.sources.weights import file_sha256, fit_state_dict, load_state_dict_file

    if weights not in (None, "", "builtin"):
        raise TransferlabError("trained: sources load their weights from their folder; drop --weights")
    directory, epoch = parse_trained_spec(arg)
    meta_path = directory / "source.json"
    meta = _read_json(meta_path)
    if meta is None:
        raise TransferlabError(f"{meta_path} not found: {directory} is not a folder written by `transferlab train-source`")
    try:
        spec = ArchSpec.from_dict(meta["architecture"])
        pre = Preprocessing.from_dict(meta["preprocessing"])
        training = meta.get("training", {})
    except (KeyError, TypeError, ValueError) as exc:
        raise TransferlabError(f"{meta_path}: missing or bad field ({exc})") from None
    snapshots = {int(k): v for k, v in training.get("snapshots", {}).items()}
    final_epoch = training.get("final_epoch")
    if epoch is None:
        if not training.get("final") or not (directory / "model.safetensors").is_file():
            raise TransferlabError(
                f"{directory}: training has not finished (status: {training.get('status', '?')}, "
                f"{training.get('epochs_done', 0)} epochs done); snapshots: {_list_snapshots(directory, snapshots)}; "
                "use trained:DIR@EPOCH or resume the training"
            )
        path = directory / "model.safetensors"
    elif epoch in snapshots:
        path = directory / snapshots[epoch]
    elif epoch == final_epoch:
        path = directory / "model.safetensors"
    else:
        raise TransferlabError(
            f"{directory} has no snapshot of epoch {epoch}; available: {_list_snapshots(directory, snapshots, final_epoch)}"
        )
    model = build_network(spec)
    fit_state_dict(model, load_state_dict_file(path), path)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    source = _as_source(model, spec, pre, name=f"trained:{arg.strip()}",
                        weights_id=f"{path.name}:{file_sha256(path)[:16]}",
                        class_names=list(meta.get("class_names") or []) or None)
    source.info = {"epoch": epoch if epoch is not None else final_epoch, "folder": str(directory),
                   "tasks": training.get("settings", {}).get("tasks"), "status": training.get("status")}
    source._layers = probe_layers(source, keep_all=True)
    return source


def _list_snapshots(directory: Path, snapshots: dict[int, str], final_epoch: int | None = None) -> str:
    epochs = sorted(set(snapshots) | ({final_epoch} if final_epoch else set()))
    return ", ".join(f"@{e}" for e in epochs) if epochs else "none"


def _as_source(model: nn.Module, spec: ArchSpec, pre: Preprocessing, *, name: str, weights_id: str,
               class_names: list[str] | None) -> Source:
    """Wrap a network as a Source. Every representation layer is kept (AlexNet's conv3 and
    conv4 have the same shape, which the generic stage-end heuristic would merge)."""
    source = Source(
        name=name, model=model, preprocessing=pre, layer_names=representation_layers(spec.arch),
        forward_features=forward_features, forward_head=forward_head, weights_id=weights_id,
        arch=f"{spec.arch}-{spec.width}-{spec.resolution}px", num_classes=spec.num_classes,
        class_names=class_names,
    )
    return source


def _register() -> None:
    from transferlab.sources.registry import register_source_kind

    register_source_kind(
        "trained", load_trained_source,
        "a network trained by `transferlab train-source`: trained:DIR (final) or trained:DIR@EPOCH (snapshot)",
    )


_register()
