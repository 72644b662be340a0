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
- A checkpoint is written atomically after every epoch; rerunning with the same ``out``
  resumes. A loss that becomes NaN/inf stops the run with ``TrainingDiverged`` (a
  TransferlabError); the last good checkpoint stays on disk.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from transferlab.data.base import Split, TaskData
from transferlab.errors import TransferlabError
from transferlab.heads.finetune_blocks import BlockPlan, apply_plan, plan_blocks, set_train_mode
from transferlab.heads.finetune_data import (
    TaskImages,
    TaskInfo,
    check_batch,
    make_loader,
    prepare_task,
    split_fingerprint,
)
from transferlab.heads.finetune_store import (
    CHECKPOINT,
    check_settings,
    cpu_state,
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint,
    write_finetuned,
)
from transferlab.sources.base import Source
from transferlab.sources.finetuned import load_finetuned

OPTIMIZERS = ("sgd", "adamw")
DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-4}
DEFAULT_WEIGHT_DECAY = {"sgd": 1e-4, "adamw": 0.01}
# The heads' learning rate is lr x this. Their input is standardised, so SGD's lr suits them;
# AdamW's 1e-4 suits pretrained layers but leaves new heads barely moving (1e-3 works).
DEFAULT_HEAD_LR_SCALE = {"sgd": 1.0, "adamw": 10.0}
AUGMENTATION = "random-resized-crop (scale 0.35-1, ratio 3/4-4/3) + horizontal flip"

class TrainingDiverged(TransferlabError):
    """The training loss became NaN or infinite; ``checkpoint_epoch`` is the last good epoch
    on disk (0: none)."""

    def __init__(self, message: str, epoch: int, step: int, checkpoint_epoch: int):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.checkpoint_epoch = checkpoint_epoch


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


# ---------------------------------------------------------------------------- heads, losses
STANDARDISE_IMAGES = 512
EVAL_CACHE_BYTES = 1 << 30  # validation pixels kept decoded across epochs up to this size


class TaskHeads(nn.Module):
    """One linear head per task on the standardised pooled representation (see the module
    docstring); ``folded()`` gives plain linear heads on the raw pooled vector."""

    def __init__(self, dim: int, sizes: Sequence[int]):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("inv_std", torch.ones(dim))
        self.heads = nn.ModuleList([nn.Linear(dim, k) for k in sizes])

    def forward(self, t: int, features: torch.Tensor) -> torch.Tensor:
        return self.heads[t]((features - self.mean) * self.inv_std)

    @torch.no_grad()
    def fit_standardisation(self, features: torch.Tensor) -> None:
        """Per-dimension mean and 1/std; the variance is floored at 1% of the average one so
        a dead channel that comes alive during fine-tuning is not multiplied by a huge gain."""
        features = features.float()
        var = features.var(dim=0, unbiased=False) if len(features) > 1 else torch.ones_like(features[0])
        self.mean.copy_(features.mean(dim=0))
        self.inv_std.copy_(torch.rsqrt(var + 0.01 * var.mean() + 1e-12))

    @torch.no_grad()
    def folded(self) -> dict[str, torch.Tensor]:
        """``<t>.weight``/``<t>.bias`` with ``W x + b`` = this head on the raw pooled vector x."""
        out = {}
        for t, head in enumerate(self.heads):
            weight = head.weight * self.inv_std
            out[f"{t}.weight"] = weight.clone()
            out[f"{t}.bias"] = head.bias - weight @ self.mean
        return out


def joint_loss(features: torch.Tensor, heads: Callable[[int, torch.Tensor], torch.Tensor],
               task_ids: torch.Tensor, labels: torch.Tensor, tasks: Sequence[TaskInfo]) -> tuple[torch.Tensor, int, int]:
    """Mean over the batch of each sample's loss on its own task's head (``heads(t, x)``);
    also the number of correct arg-max predictions and of single-label samples."""
    total = features.new_zeros(())
    correct = counted = 0
    for t, task in enumerate(tasks):
        rows = torch.nonzero(task_ids == t, as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        logits = heads(t, features[rows])
        y = labels[rows]
        if task.multilabel:
            y = y[:, : task.n_outputs]
            known = (y != 0).float()
            bce = F.binary_cross_entropy_with_logits(logits, (y == 1).float(), reduction="none")
            per_sample = (bce * known).sum(dim=1) / known.sum(dim=1).clamp(min=1.0)
        else:
            per_sample = F.cross_entropy(logits, y[:, 0], reduction="none")
            correct += int((logits.argmax(dim=1) == y[:, 0]).sum())
            counted += int(rows.numel())
        total = total + per_sample.sum()
    return total / max(1, features.shape[0]), correct, counted


def cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine decay from ``base`` at step 0 to 0 at step ``total``."""
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(1, total)))


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
    state = _State()
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        check_settings(ckpt["settings"], settings, ckpt_path)
        state = _State.restore(ckpt)
        model.load_state_dict(ckpt["model"])
        heads.load_state_dict(ckpt["heads"])
        opt.load_state_dict(ckpt["optimizer"])
        _say(progress, f"resuming {ckpt_path} after epoch {state.epoch}"
             + (" (it had stopped early)" if state.stopped_early else ""))
    resumed_from = state.epoch
    runner = _Runner(work, model, heads, infos, plan, dev, batch_size, workers, progress)
    if state.epoch == 0:
        heads.fit_standardisation(runner.features_sample(train_set, STANDARDISE_IMAGES, seed))
    total_steps = epochs * steps_per_epoch

    for epoch in range(state.epoch + 1, epochs + 1):
        if state.stopped_early:
            break
        start = time.perf_counter()
        loss, accuracy = runner.train_epoch(train_set, opt, state, epoch, epochs, total_steps, seed, ckpt_path)
        try:
            val = {info.name: runner.score(t, info.val, "val")[info.metric] for t, info in enumerate(infos)}
        except _NonFinite as exc:
            raise _diverged(f"the validation scores of task {exc} became NaN/inf", epoch, state, opt,
                            ckpt_path) from None
        score = _mean_score(val)
        if math.isnan(score):
            warnings.warn(f"epoch {epoch}: the validation metric is undefined (no positive of any class "
                          "in the validation split); the latest epoch counts as the best", stacklevel=2)
        if state.best is None or math.isnan(score) or score > state.best["score"]:
            state.best = {"epoch": epoch, "score": score, "val": val,
                          "model": cpu_state(model.state_dict()), "heads": cpu_state(heads.state_dict())}
            state.bad_epochs = 0
        else:
            state.bad_epochs += 1
        state.epoch = epoch
        state.stopped_early = patience is not None and state.bad_epochs >= patience and epoch < epochs
        report = EpochReport(epoch, epochs, loss, accuracy, val, score, opt.param_groups[-1]["lr"] / opt.param_groups[-1]["lr_scale"],
                             time.perf_counter() - start, state.best["epoch"], model, heads)
        state.history.append(report.entry())
        save_checkpoint(ckpt_path, {
            **state.to_checkpoint(), "settings": settings, "model": cpu_state(model.state_dict()),
            "heads": cpu_state(heads.state_dict()), "optimizer": opt.state_dict(),
            "scheduler": {"kind": "cosine", "step": state.step, "total_steps": total_steps},
        })
        _say(progress, f"epoch {epoch}/{epochs}: loss {loss:.4f}, val "
             + ", ".join(f"{k} {infos[i].metric} {v:.4f}" for i, (k, v) in enumerate(val.items()))
             + f" (best epoch {state.best['epoch']})")
        if on_epoch_end is not None:
            on_epoch_end(report)
        if state.stopped_early:
            _say(progress, f"early stop after epoch {epoch}: no validation improvement for {patience} "
                 f"epochs; best epoch {state.best['epoch']}")

    if state.best is None:
        raise TransferlabError(f"{ckpt_path}: no trained epoch to export (epochs={epochs})")
    model.load_state_dict(state.best["model"])
    heads.load_state_dict(state.best["heads"])
    metrics = {info.name: runner.score(t, info.test, "test") if info.test is not None else {}
               for t, info in enumerate(infos)}
    result = FinetuneResult(
        out=out, metrics=metrics, val=dict(state.best["val"]), best_epoch=int(state.best["epoch"]),
        epochs_completed=state.epoch, resumed_from=resumed_from, stopped_early=state.stopped_early,
        history=state.history, settings=settings, blocks=plan.describe(),
        trainable_parameters=sum(p.numel() for p in [*trainable, *heads.parameters()]),
        device=str(dev), precision=precision,
    )
    write_finetuned(out, model.state_dict(), heads.folded(), _meta(source, work, infos, result))
    return result


@dataclass
class _State:
    """Progress that a checkpoint carries besides the weights."""

    epoch: int = 0
    step: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    best: dict | None = None
    history: list = field(default_factory=list)

    def to_checkpoint(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "bad_epochs": self.bad_epochs,
                "stopped_early": self.stopped_early, "best": self.best, "history": self.history}

    @classmethod
    def restore(cls, ckpt: dict) -> _State:
        return cls(int(ckpt["epoch"]), int(ckpt["step"]), int(ckpt["bad_epochs"]), bool(ckpt["stopped_early"]),
                   ckpt["best"], list(ckpt["history"]))


class _Runner:
    """Training and scoring passes over the data for one fine-tuning run."""

    def __init__(self, source: Source, model: nn.Module, heads: TaskHeads, infos: list[TaskInfo],
                 plan: BlockPlan, dev: torch.device, batch_size: int, workers: int, progress: bool):
        self.source, self.model, self.heads, self.infos = source, model, heads, infos
        self.plan, self.dev, self.batch_size, self.workers, self.progress = plan, dev, batch_size, workers, progress
        self._decoded: dict[int, torch.Tensor] = {}  # validation pixels by task, decoded once

    def _autocast(self):
        return torch.autocast(device_type=self.dev.type, dtype=torch.bfloat16, enabled=self.dev.type == "cuda")

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.dev, non_blocking=True)
        with self._autocast():  # the top layer pooled as the model's head pools it (cls for ViTs)
            return self.source.head_vector(self.model, images).float()

    def train_epoch(self, dataset: TaskImages, opt: torch.optim.Optimizer, state: _State, epoch: int,
                    epochs: int, total_steps: int, seed: int, ckpt_path: Path) -> tuple[float, float | None]:
        from tqdm.auto import tqdm

        epoch_seed = seed * 100_003 + epoch  # the same data order and crops whether resumed or not
        torch.manual_seed(epoch_seed)
        loader = make_loader(dataset, self.batch_size, True, self.workers, seed=epoch_seed,
                             pin=self.dev.type == "cuda", drop_single=True)
        set_train_mode(self.model, self.plan)
        self.heads.train()
        loss_sum, seen, correct, counted = 0.0, 0, 0, 0
        bar = tqdm(total=len(loader), desc=f"finetune {epoch}/{epochs}", unit="batch",
                   disable=not self.progress, file=sys.stderr, dynamic_ncols=True)
        try:
            for images, task_ids, labels, indices, reasons in loader:
                check_batch(dataset, indices, reasons)
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(group["base_lr"], state.step, total_steps)
                features = self._features(images)
                loss, right, single = joint_loss(features, self.heads, task_ids.to(self.dev),
                                                 labels.to(self.dev), self.infos)
                if not torch.isfinite(loss):
                    what = "NaN" if torch.isnan(loss) else "infinite"
                    raise _diverged(f"the training loss became {what}", epoch, state, opt, ckpt_path)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                state.step += 1
                n = images.shape[0]
                loss_sum += float(loss.detach()) * n
                seen += n
                correct += right
                counted += single
                postfix = {"loss": f"{loss_sum / seen:.4f}"}
                if counted:
                    postfix["acc"] = f"{correct / counted:.3f}"
                bar.set_postfix(postfix)
                bar.update(1)
        finally:
            bar.close()
        return loss_sum / max(1, seen), (correct / counted if counted else None)

    @torch.no_grad()
    def features_sample(self, dataset: TaskImages, limit: int, seed: int) -> torch.Tensor:
        """Pooled features of up to ``limit`` seeded-random training images (eval transform,
        the network in its training mode, as the heads will first see it), for the heads'
        standardisation. BatchNorm running statistics are restored afterwards."""
        from torch.utils.data import Subset

        rows = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit]
        plain = TaskImages(self.infos, [info.train for info in self.infos], self.source.preprocessing, train=False)
        loader = make_loader(Subset(plain, rows.tolist()), self.batch_size, False, self.workers,
                             pin=self.dev.type == "cuda", drop_single=True)
        buffers = {name: buf.clone() for name, buf in self.model.named_buffers()}
        set_train_mode(self.model, self.plan)
        chunks = []
        try:
            for images, _tasks, _labels, indices, reasons in loader:
                check_batch(plain, indices, reasons)
                chunks.append(self._features(images).float())
        finally:
            for name, buf in self.model.named_buffers():
                buf.copy_(buffers[name])
            self.model.eval()
        return torch.cat(chunks)

    @torch.no_grad()
    def score(self, t: int, split: Split, what: str) -> dict[str, Any]:
        """Head ``t``'s scores on ``split`` through the task's metric protocol."""
        from transferlab.evaluate import evaluate_classification
        from transferlab.metrics import MetricWarning

        info = self.infos[t]
        pre = self.source.preprocessing
        self.model.eval()
        self.heads.eval()
        chunks = []
        for pixels in self._eval_pixels(t, split, what):
            images = pre.normalize(pixels.to(self.dev, non_blocking=True))
            chunks.append(self.heads(t, self._features(images)).float().cpu().numpy())
        scores = np.concatenate(chunks).astype(np.float64)
        if not np.isfinite(scores).all():
            raise _NonFinite(info.name)
        with warnings.catch_warnings():
            if what == "val":  # a small held-out split may lack positives of some class
                warnings.simplefilter("ignore", MetricWarning)
            return evaluate_classification(info.metric, np.asarray(split.labels), scores)


    def _eval_pixels(self, t: int, split: Split, what: str):
        """uint8 batches of ``split`` at the eval geometry. The validation split is scored
        every epoch with the same pixels: decoded once and kept while it fits in
        ``EVAL_CACHE_BYTES``; other splits are decoded as they are scored."""
        cached = self._decoded.get(t) if what == "val" else None
        if cached is not None:
            yield from cached.split(self.batch_size)
            return
        from transferlab.data.images import ImageListDataset, image_batches
        from transferlab.errors import BadImageError

        pre = self.source.preprocessing
        dataset = ImageListDataset(split.paths, split.boxes, pre, range(len(split)))
        keep = what == "val" and len(split) * pre.input_size**2 * 3 <= EVAL_CACHE_BYTES
        kept = []
        for pixels, indices, reasons in image_batches(dataset, self.batch_size, self.workers,
                                                      pin_memory=self.dev.type == "cuda"):
            for k, reason in enumerate(reasons):
                if reason:
                    raise BadImageError(split.paths[int(indices[k])], reason)
            if keep:
                kept.append(pixels)
            yield pixels
        if keep:
            self._decoded[t] = torch.cat(kept)


class _NonFinite(Exception):
    """Scores of a task (named in the message) are NaN/inf."""


def _diverged(what: str, epoch: int, state: _State, opt, ckpt_path: Path) -> TrainingDiverged:
    lr = opt.param_groups[-1]["base_lr"] / opt.param_groups[-1]["lr_scale"]
    good = state.epoch
    where = f"{what} at epoch {epoch}, step {state.step + 1} (lr {lr:.3g}); training stopped. "
    if good:
        keep = (f"The last good checkpoint is {ckpt_path} (epoch {good}); rerun with --epochs {good} and the "
                f"same --out to export its best weights, or lower --lr with a new --out.")
    else:
        keep = "No epoch completed, so nothing was saved; lower --lr (or use AdamW) and rerun."
    return TrainingDiverged(where + keep, epoch=epoch, step=state.step + 1, checkpoint_epoch=good)


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


def _meta(source: Source, work: Source, infos: list[TaskInfo], result: FinetuneResult) -> dict[str, Any]:
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
