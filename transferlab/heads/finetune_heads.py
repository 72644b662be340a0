"""The model side of fine-tuning: one linear head per target task on the pooled top
representation (standardised, folded away when saved), the joint loss, and the forward passes
over a task's images (features, the standardisation sample, scoring with the task's metric).
See ``heads/finetune.py`` for the protocol.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from transferlab.data.base import Split
from transferlab.heads.finetune_blocks import BlockPlan, set_train_mode
from transferlab.heads.finetune_data import FinetuneTask, TaskImages, check_batch, make_loader
from transferlab.sources.base import Source
from transferlab.training.loop import NonFinite

STANDARDISE_IMAGES = 512
EVAL_CACHE_BYTES = 1 << 30  # validation pixels kept decoded across epochs up to this size


class TaskHeads(nn.Module):
    """One linear head per task on the standardised pooled representation (see the module
    docstring); ``folded()`` gives plain linear heads on the raw pooled vector."""

    mean: torch.Tensor  # buffers, typed for the checker
    inv_std: torch.Tensor

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
            assert isinstance(head, nn.Linear)
            weight = head.weight * self.inv_std
            out[f"{t}.weight"] = weight.clone()
            out[f"{t}.bias"] = head.bias - weight @ self.mean
        return out


def joint_loss(features: torch.Tensor, heads: Callable[[int, torch.Tensor], torch.Tensor],
               task_ids: torch.Tensor, labels: torch.Tensor,
               tasks: Sequence[FinetuneTask]) -> tuple[torch.Tensor, int, int]:
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



class FinetunePasses:
    """The forward passes of one fine-tuning run: pooled features, the standardisation
    sample, and scoring a split with a task's metric."""

    def __init__(self, source: Source, model: nn.Module, heads: TaskHeads, infos: list[FinetuneTask],
                 plan: BlockPlan, dev: torch.device, batch_size: int, workers: int, progress: bool):
        self.source, self.model, self.heads, self.infos = source, model, heads, infos
        self.plan, self.dev, self.batch_size, self.workers, self.progress = plan, dev, batch_size, workers, progress
        self._decoded: dict[int, torch.Tensor] = {}  # validation pixels by task, decoded once

    def _autocast(self):
        return torch.autocast(device_type=self.dev.type, dtype=torch.bfloat16, enabled=self.dev.type == "cuda")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.dev, non_blocking=True)
        with self._autocast():  # the top layer pooled as the model's head pools it (cls for ViTs)
            return self.source.head_vector(self.model, images).float()

    def train_mode(self) -> None:
        """The trained blocks and the heads in training mode; frozen BatchNorm stays in eval."""
        set_train_mode(self.model, self.plan)
        self.heads.train()

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
                chunks.append(self.features(images).float())
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
            chunks.append(self.heads(t, self.features(images)).float().cpu().numpy())
        scores = np.concatenate(chunks).astype(np.float64)
        if not np.isfinite(scores).all():
            raise NonFinite(f"the {'validation' if what == 'val' else what} scores of task {info.name} became NaN/inf")
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
