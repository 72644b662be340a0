"""The epoch loop shared by ``train-source`` and ``finetune``.

Per epoch ``e`` (1-based): the modules go to training mode, the torch RNG is seeded with
``seed_of(e)`` inside a forked RNG state (dropout masks, augmentation and data order depend
on the seed and the epoch alone, so a resumed run repeats an uninterrupted one), and every
batch from ``batches(e, seed)`` takes one optimizer step at the schedule's learning rate.
The loss is checked every ``check_every`` steps and on the last one (each check waits for
the device); after the epoch the weights must be finite, then ``validate(e)`` scores it.
With ``keep_best`` the best validation epoch's weights are kept (a NaN score, e.g. a
validation split without positives, counts as an improvement: the latest epoch wins);
``patience`` stops after that many epochs without improvement. Then the caller's
``end_epoch`` gives the epoch's history row (and may write its own files), the checkpoint
is written, and ``after_checkpoint`` runs (raising there stops the run; the epoch is kept).

A NaN/inf loss, weight or validation score stops the run with ``TrainingDiverged``: one line
naming what diverged, where, and the last good checkpoint (which stays on disk).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.training.checkpoint import (
    check_settings,
    cpu_optimizer_state,
    cpu_state,
    load_checkpoint,
    save_checkpoint,
)
from transferlab.training.schedule import Schedule

Batch = TypeVar("Batch")


@dataclass
class StepResult:
    """One batch's mean loss (with its graph) and counts for the running accuracy."""

    loss: torch.Tensor
    samples: int
    correct: int | torch.Tensor = 0  # right arg-max predictions among ``counted`` samples
    counted: int = 0


@dataclass
class Validation:
    """An epoch's validation ``score`` (higher is better; None without a validation split)
    and whatever the caller wants in its history row."""

    score: float | None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class EpochResult:
    epoch: int
    epochs: int
    train_loss: float
    train_accuracy: float | None  # None when no sample counted
    lr: float  # the nominal learning rate at the epoch's last step
    seconds: float
    images_seen: int
    validation: Validation | None
    best_epoch: int | None


class NonFinite(Exception):
    """Raised by a step or validation callback: the message says what became NaN/inf."""


class TrainingDiverged(TransferlabError):
    """The loss, the weights or the validation scores became NaN/inf. ``what`` is ``loss``,
    ``weights`` or ``scores``; ``checkpoint_epoch`` the last good epoch on disk (0: none)."""

    def __init__(self, message: str, *, what: str, epoch: int, step: int, loss: float,
                 checkpoint: Path, checkpoint_epoch: int):
        super().__init__(message)
        self.what, self.epoch, self.step, self.loss = what, epoch, step, loss
        self.checkpoint, self.checkpoint_epoch = checkpoint, checkpoint_epoch


@dataclass
class LoopState:
    """Progress a checkpoint carries besides the weights and the optimizer."""

    epoch: int = 0
    step: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    best: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_checkpoint(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "bad_epochs": self.bad_epochs,
                "stopped_early": self.stopped_early, "best": self.best, "history": self.history}

    @classmethod
    def restore(cls, ckpt: Mapping[str, Any]) -> LoopState:
        return cls(int(ckpt["epoch"]), int(ckpt.get("step") or 0), int(ckpt.get("bad_epochs") or 0),
                   bool(ckpt.get("stopped_early")), ckpt.get("best"), list(ckpt["history"]))


class _Diverging(Exception):
    def __init__(self, what: str, text: str, loss: float = float("nan")):
        self.what, self.text, self.loss = what, text, loss


class TrainingLoop(Generic[Batch]):
    """Train ``modules`` (name -> module, each saved under its name) with ``optimizer`` for
    ``schedule.epochs`` epochs, checkpointing to ``checkpoint`` (see the module docstring).

    Every optimizer group's peak learning rate is its ``base_lr`` (default: its ``lr``);
    ``lr`` is the run's nominal one, reported in rows and messages."""

    def __init__(self, modules: Mapping[str, nn.Module], optimizer: torch.optim.Optimizer, *, kind: str,
                 checkpoint: Path, settings: Mapping[str, Any], schedule: Schedule, lr: float,
                 seed_of: Callable[[int], int], device: torch.device, patience: int | None = None,
                 keep_best: bool = False, check_every: int = 1, desc: str = "training", progress: bool = True):
        self.modules, self.optimizer, self.kind = dict(modules), optimizer, kind
        self.checkpoint, self.settings, self.schedule, self.lr = Path(checkpoint), dict(settings), schedule, lr
        self.seed_of, self.device, self.patience, self.keep_best = seed_of, device, patience, keep_best
        self.check_every, self.desc, self.progress = max(1, check_every), desc, progress
        self.base_lrs = [float(group.get("base_lr", group["lr"])) for group in optimizer.param_groups]
        self.state = LoopState()
        self._at = 0  # 1-based step within the current epoch (for messages)

    # ------------------------------------------------------------------ resume
    def resume(self, *, resumable: Sequence[str] = ("epochs",), advice: str = "use another --out",
               checkpoint: Mapping[str, Any] | None = None) -> LoopState:
        """Continue from the checkpoint when there is one (only the run that wrote it:
        ``check_settings``); ``checkpoint`` is one the caller has read already."""
        if checkpoint is None:
            if not self.checkpoint.is_file():
                return self.state
            checkpoint = load_checkpoint(self.checkpoint, self.kind)
            check_settings(checkpoint["settings"], self.settings, self.checkpoint, resumable=resumable,
                           advice=advice)
        for name, module in self.modules.items():
            module.load_state_dict(checkpoint[name])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["base_lr"] = base
        self.state = LoopState.restore(checkpoint)
        return self.state

    def restore_best(self) -> None:
        """Load the best epoch's weights (``keep_best``) into the modules."""
        if self.state.best is not None and all(name in self.state.best for name in self.modules):
            for name, module in self.modules.items():
                module.load_state_dict(self.state.best[name])

    # ------------------------------------------------------------------ run
    def run(self, *, batches: Callable[[int, int], Iterable[Batch]], step: Callable[[Batch], StepResult],
            end_epoch: Callable[[EpochResult], dict[str, Any]],
            validate: Callable[[int], Validation] | None = None,
            train_mode: Callable[[], None] | None = None,
            after_checkpoint: Callable[[EpochResult, dict[str, Any]], None] | None = None,
            advice: Callable[[int], str] | None = None) -> LoopState:
        """Train the epochs left after ``resume``; returns the final state."""
        state, epochs = self.state, self.schedule.epochs
        for epoch in range(state.epoch + 1, epochs + 1):
            if state.stopped_early:
                break
            try:
                result = self._epoch(epoch, batches, step, validate, train_mode)
            except _Diverging as exc:
                raise self._diverged(exc, epoch, advice) from None
            row = end_epoch(result)
            state.history.append(row)
            state.epoch = epoch
            save_checkpoint(self.checkpoint, self.kind, {
                **state.to_checkpoint(), "settings": self.settings,
                **{name: cpu_state(module.state_dict()) for name, module in self.modules.items()},
                "optimizer": cpu_optimizer_state(self.optimizer),
                "schedule": {"kind": self.schedule.kind, "steps_per_epoch": self.schedule.steps_per_epoch},
            })
            if after_checkpoint is not None:
                after_checkpoint(result, row)
        return state

    def _epoch(self, epoch: int, batches: Callable[[int, int], Iterable[Batch]],
               step: Callable[[Batch], StepResult], validate: Callable[[int], Validation] | None,
               train_mode: Callable[[], None] | None) -> EpochResult:
        from tqdm.auto import tqdm

        state, epochs = self.state, self.schedule.epochs
        dev = self.device
        devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
        loss_sum: torch.Tensor | float = 0.0
        correct: int | torch.Tensor = 0
        counted = seen = 0
        lr = self.schedule.lr(self.lr, epoch - 1, 0)
        started = time.perf_counter()
        bar = tqdm(total=self.schedule.steps_per_epoch, unit="batch", desc=f"{self.desc} {epoch}/{epochs}",
                   disable=not self.progress, file=sys.stderr, dynamic_ncols=True)
        try:
            with torch.random.fork_rng(devices=devices):
                seed = self.seed_of(epoch)
                torch.manual_seed(seed)
                if train_mode is not None:
                    train_mode()
                else:
                    for module in self.modules.values():
                        module.train()
                self._at = 0
                for index, batch in enumerate(batches(epoch, seed)):
                    self._at = index + 1
                    for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                        group["lr"] = self.schedule.lr(base, epoch - 1, index)
                    lr = self.schedule.lr(self.lr, epoch - 1, index)
                    try:
                        out = step(batch)
                    except NonFinite as exc:
                        raise _Diverging("loss", str(exc)) from None
                    loss_sum = loss_sum + out.loss.detach() * out.samples
                    correct = correct + out.correct
                    counted += out.counted
                    seen += out.samples
                    last = index + 1 == self.schedule.steps_per_epoch
                    if (index + 1) % self.check_every == 0 or last:
                        value, total = float(out.loss.detach()), float(loss_sum)
                        if not (math.isfinite(value) and math.isfinite(total)):
                            name = "NaN" if math.isnan(value) or math.isnan(total) else "infinite"
                            raise _Diverging("loss", f"the training loss became {name}", value)
                        postfix = {"loss": f"{total / seen:.4f}", "lr": f"{lr:.3g}"}
                        if counted:
                            postfix["acc"] = f"{float(correct) / counted:.3f}"
                        bar.set_postfix(postfix, refresh=False)
                    self.optimizer.zero_grad(set_to_none=True)
                    out.loss.backward()
                    self.optimizer.step()
                    state.step += 1
                    bar.update(1)
        finally:
            bar.close()
        total = float(loss_sum) / max(1, seen)
        if not math.isfinite(total):
            raise _Diverging("loss", "the training loss became NaN" if math.isnan(total) else
                             "the training loss became infinite", total)
        if not all(torch.isfinite(t).all() for module in self.modules.values()
                   for t in module.state_dict().values() if t.is_floating_point()):
            raise _Diverging("weights", "the weights became NaN/inf")
        seconds = time.perf_counter() - started
        validation = None
        if validate is not None:
            try:
                validation = validate(epoch)
            except NonFinite as exc:
                raise _Diverging("scores", str(exc)) from None
        best_epoch = self._track_best(epoch, validation)
        return EpochResult(epoch, epochs, total, float(correct) / counted if counted else None, lr,
                           seconds, seen, validation, best_epoch)

    def _track_best(self, epoch: int, validation: Validation | None) -> int | None:
        state = self.state
        score = validation.score if validation is not None else None
        if score is None:
            state.best = {"epoch": epoch, "score": None, "val": {}}
            if self.keep_best:
                state.best.update({name: cpu_state(m.state_dict()) for name, m in self.modules.items()})
            return epoch
        if math.isnan(score):
            warnings.warn(f"epoch {epoch}: the validation score is undefined (NaN; e.g. no positive of any "
                          "class in the validation split); the latest epoch counts as the best", stacklevel=3)
        if state.best is None or state.best.get("score") is None or math.isnan(score) or score > state.best["score"]:
            state.best = {"epoch": epoch, "score": score, "val": dict(validation.details) if validation else {}}
            if self.keep_best:
                state.best.update({name: cpu_state(m.state_dict()) for name, m in self.modules.items()})
            state.bad_epochs = 0
        else:
            state.bad_epochs += 1
        state.stopped_early = (self.patience is not None and state.bad_epochs >= self.patience
                               and epoch < self.schedule.epochs)
        return int(state.best["epoch"])

    def _diverged(self, exc: _Diverging, epoch: int, advice: Callable[[int], str] | None) -> TrainingDiverged:
        good = self.state.epoch
        step = self._at
        where = f"{exc.text} at epoch {epoch}, step {step} (lr {self.lr:.3g}); training stopped. "
        if good:
            keep = f"The last good checkpoint is {self.checkpoint} (epoch {good})"
        else:
            keep = "No epoch finished, so nothing was saved"
        tail = advice(good) if advice is not None else "lower the learning rate and rerun"
        return TrainingDiverged(f"{where}{keep}; {tail}", what=exc.what, epoch=epoch, step=step,
                                loss=exc.loss, checkpoint=self.checkpoint, checkpoint_epoch=good)
