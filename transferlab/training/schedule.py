"""The learning-rate schedules of every trainer, as a factor of each parameter group's peak.

``cosine``: ``base * (1 + cos(pi * t)) / 2`` with ``t`` the fraction of all steps done, per
step, from ``base`` at the first step to 0 after the last; ``step``: ``base`` x0.1 from epoch
``ceil(0.5 E)`` and again from ``ceil(0.75 E)`` (0-based epochs, E epochs in all).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from transferlab.errors import TransferlabError

SCHEDULES = ("cosine", "step")
STEP_MILESTONES = (0.5, 0.75)  # step schedule: lr x0.1 after half and three quarters of the epochs


def cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine decay from ``base`` at step 0 to 0 at step ``total`` (and after it)."""
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(1, total)))


def step_lr(base: float, epoch: int, epochs: int) -> float:
    """``base`` x0.1 per milestone of ``STEP_MILESTONES`` reached by 0-based ``epoch``."""
    marks = [math.ceil(m * epochs) for m in STEP_MILESTONES]
    drops = sum(epoch >= mark for mark in marks if mark < epochs)
    return base * (0.1 ** drops)


@dataclass(frozen=True)
class Schedule:
    """``kind`` over ``epochs`` epochs of ``steps_per_epoch`` optimizer steps each. A longer
    run resumed from a shorter one's checkpoint stretches the cosine from where it stands."""

    kind: str
    epochs: int
    steps_per_epoch: int

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise TransferlabError(f"unknown schedule {self.kind!r}; choose from {', '.join(SCHEDULES)}")

    def lr(self, base: float, epoch: int, step: int) -> float:
        """Learning rate at 0-based ``epoch`` and 0-based ``step`` within it."""
        if self.kind == "cosine":
            return cosine_lr(base, epoch * self.steps_per_epoch + step, self.epochs * self.steps_per_epoch)
        return step_lr(base, epoch, self.epochs)


def lr_at(settings: Mapping[str, Any], epochs: int, epoch: int, step: int, steps: int) -> float:
    """``Schedule(settings["schedule"], epochs, steps).lr(settings["lr"], epoch, step)``."""
    return Schedule(settings["schedule"], epochs, steps).lr(settings["lr"], epoch, step)
