"""Train a source ConvNet from scratch (the paper's learning factors) into a ``trained:`` folder.

``train_source`` trains an AlexNet-like or VGG16-like network (``sources.architectures``) on
the train split of one task, or on the union of several (Hybrid: label spaces concatenated),
optionally on a seeded subset (``classes`` x ``images_per_class``: diversity vs density;
``sources.train_data``). The folder's format is owned by ``sources.trained``, which loads it
back as the source ``trained:OUT`` (final weights) or ``trained:OUT@E`` (snapshot of epoch E).

The epochs run on the shared training loop (``transferlab.training``): SGD, cosine (per step)
or step schedule, a checkpoint after every epoch, resume, divergence detection. Images are
decoded once at the training resolution into a uint8 array; augmentation (random crop with
padding, horizontal flip) runs on whole batches. Epoch ``e`` draws its shuffle, crops, flips
and dropout masks from ``seed`` and ``e`` alone, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferlab.atomic import atomic_write_bytes
from transferlab.data.base import TaskData
from transferlab.errors import TransferlabError
from transferlab.sources.architectures import ArchSpec, build_network, count_parameters
from transferlab.sources.base import probe_layers
from transferlab.sources.preprocessing import Preprocessing
from transferlab.sources.train_data import (
    MEMORY_CACHE_BYTES,
    decode_images,
    gather_decoded,
    union_tasks,
)
from transferlab.sources.train_data import channel_stats as channel_stats
from transferlab.sources.trained import CHANCE_MARGIN as CHANCE_MARGIN
from transferlab.sources.trained import (
    MODEL_FILE,
    TrainRecord,
    as_source,
    read_json,
    write_source_json,
)
from transferlab.sources.trained import near_chance as near_chance
from transferlab.training.checkpoint import check_settings, cpu_state, load_checkpoint
from transferlab.training.loop import (
    EpochResult,
    StepResult,
    TrainingDiverged,
    TrainingLoop,
    Validation,
)
from transferlab.training.schedule import SCHEDULES, Schedule

CHECKPOINT = "checkpoint.pt"
KIND = "train-source"  # the checkpoint kind
# No dropout by default: AlexNet's 0.5 after fc6/fc7 kept these narrow networks far below their
# accuracy on short schedules (alexnet-tiny, scene_source quick, 3 epochs: val 0.296 vs 0.756).
DEFAULT_DROPOUT = 0.0
TRAIN_THREADS = 1  # torch threads while training on CPU, unless train_source(threads=...) says otherwise
CHECK_EVERY = 20  # steps between loss finiteness checks (each check syncs the device)
# Settings a resumed run may change (more epochs continue the run; the device may change too).
RESUMABLE = ("epochs", "snapshots")


def default_lr(batch_norm: bool) -> float:
    """SGD learning rate (any batch size): 0.02 with BatchNorm, 0.01 without (plain AlexNet/VGG)."""
    return 0.02 if batch_norm else 0.01


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


def _param_groups(model: nn.Module, weight_decay: float, lr: float) -> list[dict]:
    """Weight decay on conv/linear weights only, not on biases and BatchNorm parameters."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    plain = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay, "base_lr": lr},
            {"params": plain, "weight_decay": 0.0, "base_lr": lr}]


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

    ``callback(row)`` is called after each finished epoch (checkpoint already written) with
    that epoch's history row. A non-finite loss stops training with a TransferlabError; the
    last finished epoch stays in ``checkpoint.pt`` and earlier snapshots stay usable.
    ``threads``: torch intra-op threads while training on CPU (default ``TRAIN_THREADS``):
    these small 32 px networks gain little from more, and on a busy machine OpenMP threads
    waiting for each other made every step several times slower."""
    if threads is not None and threads < 1:
        raise TransferlabError(f"--threads must be at least 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads or TRAIN_THREADS)
    try:
        return _train_source(arch, width, tasks, Path(out), resolution=resolution, epochs=epochs,
                             snapshots=snapshots, classes=classes, images_per_class=images_per_class, seed=seed,
                             lr=lr, momentum=momentum, weight_decay=weight_decay, schedule=schedule,
                             batch_size=batch_size, batch_norm=batch_norm, dropout=dropout, device=device,
                             workers=workers, progress=progress, callback=callback)
    finally:
        torch.set_num_threads(before)


def _train_source(arch: str, width: str, tasks: Sequence[TaskData], out: Path, *, resolution: int, epochs: int,
                  snapshots: Sequence[int], classes: int | None, images_per_class: int | None, seed: int,
                  lr: float | None, momentum: float, weight_decay: float, schedule: str, batch_size: int,
                  batch_norm: bool, dropout: float, device: str, workers: int | None, progress: bool,
                  callback: Callable[[dict], None] | None) -> TrainRecord:
    from transferlab.device import resolve_device

    ArchSpec(arch, width, resolution, num_classes=2, batch_norm=batch_norm, dropout=dropout)  # checks
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
    probe = as_source(model, spec, pre, name=f"trained:{out}", weights_id="training", class_names=data.class_names)
    layers = [layer.to_dict() for layer in probe_layers(probe, keep_all=True)]
    model.to(dev)
    model.to(memory_format=torch.channels_last)  # ~1.5x faster convs on CPU too (oneDNN)
    optimizer = torch.optim.SGD(_param_groups(model, weight_decay, lr), lr=lr, momentum=momentum)
    n = len(data.train)
    steps = math.ceil(n / batch_size)
    loop: TrainingLoop[tuple[torch.Tensor, torch.Tensor]] = TrainingLoop(
        {"model": model}, optimizer, kind=KIND, checkpoint=out / CHECKPOINT, settings=settings,
        schedule=Schedule(schedule, epochs, steps), lr=lr, seed_of=lambda e: seed * 1_000_003 + e - 1,
        device=dev, check_every=CHECK_EVERY, desc=f"{arch}-{width} epoch", progress=progress)
    record = TrainRecord(str(out), arch, width, resolution, spec.num_classes, data.class_names, settings,
                         parameters=count_parameters(model), train_images=n,
                         val_images=len(data.val) if data.val else 0, device=str(dev))
    if checkpoint is not None:
        loop.resume(checkpoint=checkpoint)
    record.history = loop.state.history  # the loop appends each epoch's row
    start = loop.state.epoch
    record.snapshots = _existing_snapshots(out, start)
    previous = read_json(out / "source.json")
    if previous and previous.get("training", {}).get("final") and (out / MODEL_FILE).is_file():
        record.final = previous["training"]["final"]
        record.final_epoch = previous["training"].get("final_epoch")
    if start >= epochs:  # nothing left to train (an earlier run of this length, or a longer one cut short)
        if record.final_epoch != epochs:
            record.final = _save_weights(cpu_state(model.state_dict()), out / MODEL_FILE, out)
            record.final_epoch = epochs
        record.status = "finished"
        write_source_json(out, spec, pre, layers, record)
        return record

    train_x = (torch.from_numpy(train_pixels) if isinstance(train_pixels, np.ndarray)
               and not isinstance(train_pixels, np.memmap) else train_pixels)
    if dev.type == "cuda" and isinstance(train_x, torch.Tensor) and train_x.numel() < MEMORY_CACHE_BYTES:
        train_x = train_x.to(dev)
    train_y = torch.from_numpy(np.asarray(data.train.labels, dtype=np.int64)).to(dev)
    mean_t = torch.tensor(mean, device=dev).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=dev).view(1, 3, 1, 1)

    def batches(epoch: int, epoch_seed: int):
        generator = torch.Generator().manual_seed(epoch_seed)  # shuffle, crops and flips
        order = torch.randperm(n, generator=generator)
        for step in range(steps):
            idx = order[step * batch_size: (step + 1) * batch_size]
            if len(idx) < 2:  # a 1-image batch gives BatchNorm no statistics
                return
            pixels = _gather(train_x, idx, dev)
            x = augment(_normalise(pixels, mean_t, std_t), generator).contiguous(memory_format=torch.channels_last)
            yield x, train_y[idx.to(train_y.device)]

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> StepResult:
        x, y = batch
        with _autocast(dev):
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), y)
        return StepResult(loss, len(y), (logits.detach().argmax(1) == y).sum(), len(y))

    def validate(epoch: int) -> Validation:
        assert val_pixels is not None and data.val is not None
        return Validation(evaluate(model, val_pixels, data.val.labels, mean_t, std_t, dev))

    def end_epoch(result: EpochResult) -> dict:
        number = result.epoch
        state = cpu_state(model.state_dict())
        if number in wanted_snapshots:
            record.snapshots[number] = _save_weights(state, out / "snapshots" / f"epoch_{number:03d}.safetensors", out)
        if number == epochs:
            record.final = _save_weights(state, out / MODEL_FILE, out)
            record.final_epoch = number
            record.status = "finished"
        return {
            "epoch": number, "lr": result.lr, "train_loss": result.train_loss,
            "train_accuracy": result.train_accuracy,
            "val_accuracy": result.validation.score if result.validation is not None else None,
            "seconds": round(result.seconds, 3), "images_seen": result.images_seen,
            "images_per_second": round(result.images_seen / result.seconds, 1) if result.seconds > 0 else None,
        }

    def after_checkpoint(result: EpochResult, row: dict) -> None:
        write_source_json(out, spec, pre, layers, record)
        if callback is not None:
            callback(dict(row))

    try:
        loop.run(batches=batches, step=step, validate=validate if val_pixels is not None else None,
                 end_epoch=end_epoch, after_checkpoint=after_checkpoint)
    except TrainingDiverged as exc:
        where = f"epoch {exc.epoch}" + (f", step {exc.step}" if exc.what == "loss" else f" (non-finite {exc.what})")
        record.status = f"diverged at {where}"
        write_source_json(out, spec, pre, layers, record)
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


def _autocast(dev: torch.device):
    return (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
            else torch.autocast("cpu", enabled=False))


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
    for start in range(0, len(y), batch_size):
        pixels = torch.from_numpy(np.ascontiguousarray(images[start: start + batch_size])).to(dev)
        with _autocast(dev):
            logits = model(_normalise(pixels, mean, std))
        correct += int((logits.float().argmax(1).cpu() == y[start: start + batch_size]).sum())
    model.train()
    return correct / max(1, len(y))


# ------------------------------------------------------------------------------ files
def _save_weights(state: dict[str, torch.Tensor], path: Path, out: Path) -> str:
    from safetensors.torch import save

    atomic_write_bytes(path, save(state))
    return str(path.relative_to(out))


def _read_checkpoint(out: Path, settings: dict) -> dict | None:
    """The checkpoint of an earlier run into ``out``, after checking it was the same run."""
    path = out / CHECKPOINT
    if not path.is_file():
        if (out / MODEL_FILE).is_file() or (out / "snapshots").is_dir():
            raise TransferlabError(
                f"{out} holds trained weights but no checkpoint.pt to resume from; use a new --out"
            )
        return None
    checkpoint = load_checkpoint(path, KIND)
    check_settings(checkpoint["settings"], settings, path, resumable=RESUMABLE,
                   advice="resume with the checkpoint's settings or train into a new --out")
    if int(checkpoint["epoch"]) > settings["epochs"]:
        raise TransferlabError(
            f"{path} is already at epoch {checkpoint['epoch']}, beyond --epochs {settings['epochs']}; "
            f"use a snapshot (trained:{out}@EPOCH) or a new --out"
        )
    return checkpoint


def _finished_record(out: Path, checkpoint: dict | None, epochs: int) -> TrainRecord | None:
    """The stored record when ``out`` already holds this run trained to ``epochs`` epochs."""
    if checkpoint is None or int(checkpoint["epoch"]) != epochs or not (out / MODEL_FILE).is_file():
        return None
    meta = read_json(out / "source.json") or {}
    training = meta.get("training") or {}
    if training.get("final_epoch") != epochs or training.get("status") != "finished":
        return None
    return TrainRecord.from_dict(training)


def _existing_snapshots(out: Path, up_to: int) -> dict[int, str]:
    found: dict[int, str] = {}
    folder = out / "snapshots"
    if folder.is_dir():
        for path in folder.glob("epoch_*.safetensors"):
            digits = path.name[len("epoch_"): -len(".safetensors")]
            if digits.isdigit() and int(digits) <= up_to:
                found[int(digits)] = str(path.relative_to(out))
    return found


def _remove_cache(out: Path) -> None:
    folder = out / ".cache"
    if folder.is_dir():
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
