"""Fine-tuning a source on one or several target tasks; the result is itself a source.

Protocol (what every number in the result means):
- Each task gets a new linear head on the pooled top representation (pooled as the source's
  own head pools it: global average of a ConvNet map, the class token of a ViT, timm's
  pre-logits vector where its head does more; vector tops as they are), standardised per dimension
  with the mean and standard deviation of up to 512 training images under the starting
  network. The standardisation stays fixed, so it is only a reparametrisation of the linear
  head (folded into it when saved) that lets one learning rate serve networks whose feature
  scales differ by orders of magnitude (MAE's linear probe uses a BatchNorm without affine
  parameters for the same reason). Loss: cross-entropy for single-label tasks; binary
  cross-entropy with logits for multi-label ones, unknown (0) labels masked, averaged over
  a sample's known labels. With several tasks (joint
  fine-tuning) the training sets are pooled and shuffled together and each sample's loss
  uses only its own task's head; the batch loss is the mean over its samples.
- What trains: the whole network (``blocks=None``), its top K blocks (``blocks=K``, see
  ``finetune_blocks`` for the rule) or only the heads (``blocks=0``), always plus the heads
  (learning rate x ``head_lr_scale``). BatchNorm of frozen parts stays in eval mode.
- SGD (momentum 0.9) or AdamW; cosine decay per step from ``lr`` to 0 over all epochs;
  train-time augmentation: random-resized crop (scale 0.35-1) + horizontal flip
  (``Preprocessing.to_train_tensor``); evaluation uses the source's eval transform. On CUDA
  the forward pass runs under bf16 autocast, on the CPU in float32.
- After every epoch: the task's own metric on its validation split ('val', else a seeded
  10% of train held out); with several tasks their mean. The best epoch's weights are kept;
  training stops early after ``patience`` epochs without improvement. The reported test
  numbers are those of the best epoch on the 'test' split (``evaluate_classification``).
- The epochs run on the shared training loop (``transferlab.training``): a checkpoint is
  written atomically after every epoch; rerunning with the same ``out`` resumes. A loss,
  weight or validation score that becomes NaN/inf stops the run with ``TrainingDiverged`` (a
  TransferlabError); the last good checkpoint stays on disk.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferlab.data.base import TaskData
from transferlab.errors import TransferlabError
from transferlab.heads.finetune_blocks import apply_plan, plan_blocks
from transferlab.heads.finetune_data import (
    FinetuneTask,
    TaskImages,
    check_batch,
    make_loader,
    prepare_task,
    split_fingerprint,
)
from transferlab.heads.finetune_heads import (
    STANDARDISE_IMAGES,
    FinetunePasses,
    TaskHeads,
    joint_loss,
)
from transferlab.heads.finetune_store import CHECKPOINT, remove_stale_temps, write_finetuned
from transferlab.sources.base import Source
from transferlab.sources.finetuned import load_finetuned
from transferlab.training.loop import (
    EpochResult,
    NonFinite,
    StepResult,
    TrainingDiverged,
    TrainingLoop,
    Validation,
)
from transferlab.training.schedule import Schedule

OPTIMIZERS = ("sgd", "adamw")
DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-4}
DEFAULT_WEIGHT_DECAY = {"sgd": 1e-4, "adamw": 0.01}
# The heads' learning rate is lr x this. Their input is standardised, so SGD's lr suits them;
# AdamW's 1e-4 suits pretrained layers but leaves new heads barely moving (1e-3 works).
DEFAULT_HEAD_LR_SCALE = {"sgd": 1.0, "adamw": 10.0}
AUGMENTATION = "random-resized-crop (scale 0.35-1, ratio 3/4-4/3) + horizontal flip"

KIND = "finetune"  # the checkpoint kind
# Settings that may differ when a run is resumed: more epochs extend training (the cosine
# schedule is stretched to the new length from the current step); the device may change.
RESUMABLE_SETTINGS = ("epochs",)
__all__ = ["TrainingDiverged", "EpochReport", "FinetuneResult", "TaskHeads", "finetune", "joint_loss"]


@dataclass
class EpochReport:
    """Passed to ``on_epoch_end`` after the epoch's checkpoint is on disk. ``model`` and
    ``heads`` are the live modules being trained (for logging); raising stops the run."""

    epoch: int
    epochs: int
    train_loss: float
    train_accuracy: float | None  # over single-label samples; None without any
    val: dict[str, float]
    val_score: float
    lr: float
    seconds: float
    best_epoch: int
    model: nn.Module = field(repr=False)
    heads: TaskHeads = field(repr=False)

    def entry(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "train_loss": self.train_loss, "train_accuracy": self.train_accuracy,
            "val": dict(self.val), "val_score": self.val_score, "lr": self.lr,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class FinetuneResult:
    """Test metrics of the best epoch per task (``evaluate_classification`` dicts; empty
    for a task without a test split) and how they were obtained."""

    out: Path
    metrics: dict[str, dict[str, Any]]
    val: dict[str, float]
    best_epoch: int
    epochs_completed: int
    resumed_from: int
    stopped_early: bool
    history: list[dict[str, Any]]
    settings: dict[str, Any]
    blocks: str
    trainable_parameters: int
    device: str
    precision: str

    def load_source(self) -> Source:
        return load_finetuned(str(self.out))

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "source": f"finetuned:{self.out}",
            "metrics": self.metrics,
            "val": self.val,
            "best_epoch": self.best_epoch,
            "epochs_completed": self.epochs_completed,
            "resumed_from": self.resumed_from,
            "stopped_early": self.stopped_early,
            "config": {**self.settings, "trained": self.blocks,
                       "trainable_parameters": self.trainable_parameters,
                       "device": self.device, "precision": self.precision},
            "history": self.history,
        }


# ------------------------------------------------------------------------------ training
def finetune(
    source: Source,
    tasks: TaskData | Sequence[TaskData],
    out: str | Path,
    *,
    blocks: int | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float | None = None,
    optimizer: str = "sgd",
    weight_decay: float | None = None,
    momentum: float = 0.9,
    head_lr_scale: float | None = None,
    patience: int | None = 3,
    val_fraction: float = 0.1,
    input_size: int | None = None,
    device: str = "auto",
    num_workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
    on_epoch_end: Callable[[EpochReport], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``source`` on ``tasks`` (several = joint fine-tuning, one head each) and save
    the result in ``out`` as a source (``finetuned:OUT``); resumes from ``out/checkpoint.pt``.

    ``lr`` defaults to 0.01 (SGD) / 1e-4 (AdamW), ``weight_decay`` to 1e-4 / 0.01, the heads'
    learning rate to ``lr x head_lr_scale`` with ``head_lr_scale`` 1 (SGD) / 10 (AdamW).
    ``input_size`` overrides the source's input size (train and eval, and the saved source's
    preprocessing), e.g. to fine-tune small images fast. ``patience=None`` disables early
    stopping. The given ``source`` is not modified (a copy is trained).
    """
    from transferlab.data.images import default_workers
    from transferlab.device import resolve_device

    task_list = [tasks] if isinstance(tasks, TaskData) else list(tasks)
    lr, weight_decay, head_lr_scale = _check_options(task_list, optimizer, lr, weight_decay, epochs,
                                                     batch_size, patience, head_lr_scale, input_size)
    infos = [prepare_task(task, seed, val_fraction) for task in task_list]
    work = _training_copy(source, input_size)
    plan = plan_blocks(work, blocks)
    dim = work.layers[-1].channels
    torch.manual_seed(seed)
    heads = TaskHeads(dim, [info.n_outputs for info in infos])
    settings = _settings(source, work, infos, blocks, epochs, batch_size, lr, optimizer, weight_decay,
                         momentum, head_lr_scale, patience, val_fraction, seed)

    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    dev = resolve_device(device)
    precision = "bf16-autocast" if dev.type == "cuda" else "fp32"
    workers = default_workers(dev) if num_workers is None else int(num_workers)
    trainable = apply_plan(work.model, plan)
    model = work.model.to(dev)
    heads.to(dev)
    opt = _make_optimizer(optimizer, trainable, list(heads.parameters()), lr, weight_decay, momentum, head_lr_scale)
    train_set = TaskImages(infos, [info.train for info in infos], work.preprocessing, train=True)
    if len(train_set) < 2:
        raise TransferlabError("fine-tuning needs at least 2 training images (BatchNorm needs batches of 2)")
    steps_per_epoch = len(make_loader(train_set, batch_size, True, 0, drop_single=True))
    ckpt_path = out / CHECKPOINT
    loop: TrainingLoop[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = TrainingLoop(
        {"model": model, "heads": heads}, opt, kind=KIND, checkpoint=ckpt_path, settings=settings,
        schedule=Schedule("cosine", epochs, steps_per_epoch), lr=lr, seed_of=lambda e: seed * 100_003 + e,
        device=dev, patience=patience, keep_best=True, desc="finetune", progress=progress)
    state = loop.resume(resumable=RESUMABLE_SETTINGS, advice=f"use another --out, or delete {CHECKPOINT} to start over")
    if state.epoch:
        _say(progress, f"resuming {ckpt_path} after epoch {state.epoch}"
             + (" (it had stopped early)" if state.stopped_early else ""))
    resumed_from = state.epoch
    runner = FinetunePasses(work, model, heads, infos, plan, dev, batch_size, workers, progress)
    if state.epoch == 0:
        heads.fit_standardisation(runner.features_sample(train_set, STANDARDISE_IMAGES, seed))

    def batches(epoch: int, epoch_seed: int):
        # the same data order and crops whether resumed or not
        loader = make_loader(train_set, batch_size, True, workers, seed=epoch_seed, pin=dev.type == "cuda",
                             drop_single=True)
        for images, task_ids, labels, indices, reasons in loader:
            check_batch(train_set, indices, reasons)
            yield images, task_ids, labels

    def step(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> StepResult:
        images, task_ids, labels = batch
        features = runner.features(images)
        loss, right, single = joint_loss(features, heads, task_ids.to(dev), labels.to(dev), infos)
        return StepResult(loss, int(images.shape[0]), right, single)

    def validate(epoch: int) -> Validation:
        val = {info.name: runner.score(t, info.val, "val")[info.metric] for t, info in enumerate(infos)}
        return Validation(_mean_score(val), val)

    def end_epoch(result: EpochResult) -> dict[str, Any]:
        assert result.validation is not None
        return {"epoch": result.epoch, "train_loss": result.train_loss, "train_accuracy": result.train_accuracy,
                "val": dict(result.validation.details), "val_score": result.validation.score, "lr": result.lr,
                "seconds": round(result.seconds, 3)}

    def after_checkpoint(result: EpochResult, row: dict[str, Any]) -> None:
        best = int(result.best_epoch or result.epoch)
        _say(progress, f"epoch {result.epoch}/{epochs}: loss {result.train_loss:.4f}, val "
             + ", ".join(f"{k} {infos[i].metric} {v:.4f}" for i, (k, v) in enumerate(row["val"].items()))
             + f" (best epoch {best})")
        if on_epoch_end is not None:
            on_epoch_end(EpochReport(result.epoch, epochs, result.train_loss, result.train_accuracy, row["val"],
                                     row["val_score"], result.lr, result.seconds, best, model, heads))
        if loop.state.stopped_early:
            _say(progress, f"early stop after epoch {result.epoch}: no validation improvement for {patience} "
                 f"epochs; best epoch {best}")

    def advice(good: int) -> str:
        if good:
            return (f"rerun with --epochs {good} and the same --out to export its best weights, or lower "
                    "--lr with a new --out.")
        return "lower --lr (or use AdamW) and rerun."

    state = loop.run(batches=batches, step=step, validate=validate, train_mode=runner.train_mode,
                     end_epoch=end_epoch, after_checkpoint=after_checkpoint, advice=advice)
    if state.best is None:
        raise TransferlabError(f"{ckpt_path}: no trained epoch to export (epochs={epochs})")
    loop.restore_best()
    try:
        metrics = {info.name: runner.score(t, info.test, "test") if info.test is not None else {}
                   for t, info in enumerate(infos)}
    except NonFinite as exc:
        raise TransferlabError(f"{exc} (best epoch {state.best['epoch']})") from None
    result = FinetuneResult(
        out=out, metrics=metrics, val=dict(state.best["val"]), best_epoch=int(state.best["epoch"]),
        epochs_completed=state.epoch, resumed_from=resumed_from, stopped_early=state.stopped_early,
        history=state.history, settings=settings, blocks=plan.describe(),
        trainable_parameters=sum(p.numel() for p in [*trainable, *heads.parameters()]),
        device=str(dev), precision=precision,
    )
    write_finetuned(out, model.state_dict(), heads.folded(), _meta(source, work, infos, result))
    return result


def _mean_score(val: dict[str, float]) -> float:
    values = [v for v in val.values() if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(f"transferlab finetune: {message}", file=sys.stderr)


def _check_options(tasks, optimizer, lr, weight_decay, epochs, batch_size, patience, head_lr_scale,
                   input_size) -> tuple[float, float, float]:
    if not tasks:
        raise TransferlabError("fine-tuning needs at least one task")
    names = [task.name for task in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TransferlabError(f"task {dupes[0]} is given twice; joint fine-tuning needs distinct tasks")
    if optimizer not in OPTIMIZERS:
        raise TransferlabError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    lr = DEFAULT_LR[optimizer] if lr is None else float(lr)
    weight_decay = DEFAULT_WEIGHT_DECAY[optimizer] if weight_decay is None else float(weight_decay)
    if not (math.isfinite(lr) and lr > 0):
        raise TransferlabError(f"learning rate must be a positive number, got {lr}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise TransferlabError(f"weight decay must be >= 0, got {weight_decay}")
    if int(epochs) < 1:
        raise TransferlabError(f"epochs must be >= 1, got {epochs}")
    if int(batch_size) < 2:
        raise TransferlabError(f"batch size must be >= 2 (BatchNorm trains on batches), got {batch_size}")
    if patience is not None and int(patience) < 1:
        raise TransferlabError(f"patience must be >= 1 (or None to disable early stopping), got {patience}")
    head_lr_scale = DEFAULT_HEAD_LR_SCALE[optimizer] if head_lr_scale is None else float(head_lr_scale)
    if not (math.isfinite(head_lr_scale) and head_lr_scale > 0):
        raise TransferlabError(f"head_lr_scale must be positive, got {head_lr_scale}")
    if input_size is not None and int(input_size) < 8:
        raise TransferlabError(f"input size must be >= 8 pixels, got {input_size}")
    return lr, weight_decay, head_lr_scale


def _training_copy(source: Source, input_size: int | None) -> Source:
    """A copy of the source to train (the caller's model is left as it was), optionally at
    another input size."""
    model = copy.deepcopy(source.model).cpu()
    if input_size is None or int(input_size) == source.preprocessing.input_size:
        return dataclasses.replace(source, model=model)
    pre = dataclasses.replace(source.preprocessing, input_size=int(input_size))
    work = dataclasses.replace(source, model=model, preprocessing=pre, _layers=None)
    try:
        work.layers  # noqa: B018  (one dry forward at the new size)
    except RuntimeError as exc:
        raise TransferlabError(
            f"source {source.name} cannot run at input size {input_size}: {str(exc).splitlines()[0]}"
        ) from None
    return work


def _make_optimizer(name: str, backbone: list[nn.Parameter], heads: list[nn.Parameter], lr: float,
                    weight_decay: float, momentum: float, head_lr_scale: float) -> torch.optim.Optimizer:
    """One group for the network, one for the heads; ``base_lr`` is each group's peak of the
    cosine schedule, ``lr_scale`` its factor over ``lr``."""
    groups = [{"params": heads, "lr": lr * head_lr_scale, "base_lr": lr * head_lr_scale, "lr_scale": head_lr_scale}]
    if backbone:
        groups.insert(0, {"params": backbone, "lr": lr, "base_lr": lr, "lr_scale": 1.0})
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def _settings(source, work, infos, blocks, epochs, batch_size, lr, optimizer, weight_decay, momentum,
              head_lr_scale, patience, val_fraction, seed) -> dict[str, Any]:
    """Everything that decides the numbers (a checkpoint resumes only an identical run)."""
    return {
        "source": source.name,
        "arch": source.arch,
        "weights": source.weights_id,
        "preprocessing": work.preprocessing.to_dict(),
        "tasks": [
            {"name": info.name, "kind": info.kind, "classes": info.n_outputs, "metric": info.metric,
             "train_images": len(info.train), "train": split_fingerprint(info.train),
             "val_split": info.val_source, "val_images": len(info.val), "val": split_fingerprint(info.val)}
            for info in infos
        ],
        "blocks": blocks,
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "optimizer": optimizer,
        "lr": lr,
        "head_lr_scale": float(head_lr_scale),
        "weight_decay": weight_decay,
        "momentum": float(momentum) if optimizer == "sgd" else None,
        "schedule": "cosine per step to 0",
        "augmentation": AUGMENTATION,
        "patience": patience,
        "val_fraction": float(val_fraction),
        "seed": int(seed),
    }


def _build_num_classes(source: Source) -> int | None:
    """The classifier size to rebuild the architecture with (so the state dict fits)."""
    if source.arch.startswith("timm:"):
        value = getattr(source.model, "num_classes", None)
        return int(value) if value is not None else None
    return int(source.num_classes) or None


def _meta(source: Source, work: Source, infos: list[FinetuneTask], result: FinetuneResult) -> dict[str, Any]:
    return {
        "arch": source.arch,
        "build_num_classes": _build_num_classes(work),
        "base": {"name": source.name, "arch": source.arch, "weights": source.weights_id},
        "preprocessing": work.preprocessing.to_dict(),
        "layer_names": list(work.layer_names),
        "layers": [layer.to_dict() for layer in work.layers],
        "tasks": [
            {"name": info.name, "head": t, "kind": info.kind, "classes": info.classes, "metric": info.metric,
             "val_split": info.val_source, "val": result.val.get(info.name),
             "test": {k: v for k, v in result.metrics[info.name].items() if k != "per_class"}}
            for t, info in enumerate(infos)
        ],
        "trained": result.blocks,
        "trainable_parameters": result.trainable_parameters,
        "best_epoch": result.best_epoch,
        "epochs_completed": result.epochs_completed,
        "stopped_early": result.stopped_early,
        "settings": result.settings,
        "device": result.device,
        "precision": result.precision,
        "history": result.history,
    }
