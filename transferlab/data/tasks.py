"""Task registry: one entry per target task (benchmark or built-in), with its reader.

Readers live in ``transferlab.data.readers`` (benchmarks in their publishers' layouts) and
``transferlab.data.builtin`` (the offline suite); each module calls ``register`` at import.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferlab.data.base import TaskData, TaskKind
from transferlab.errors import TransferlabError

GROUPS = {
    1: "image classification",
    2: "attribute detection",
    3: "fine-grained recognition",
    4: "compositional",
    5: "instance retrieval",
}


@dataclass(frozen=True)
class TaskSpec:
    """What transferlab knows about a task before reading it.

    ``distance`` is the paper's hand ordering by distance from ImageNet (1 = nearest); tasks
    of one group share the group's rank range. ``metric`` names the protocol (see
    ``transferlab.evaluate``). ``reader(root, **options)`` returns a TaskData; built-in tasks
    accept ``root=None``.
    """

    name: str
    title: str
    group: int
    distance: int
    kind: TaskKind
    metric: str
    layout: str
    reader: Callable[..., TaskData]
    builtin: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    protocol: str = ""
    # How ``execution.repeats`` gets more splits: "redeal" (no official split: pool the images
    # and deal them out again, seeded), "partitions" (the reader's official alternative
    # partitions, through its ``extra_partitions`` option), "" (one fixed split).
    repeats: str = ""

    @property
    def repeat_mode(self) -> str:
        if self.repeats:
            return self.repeats
        return "redeal" if self.builtin and self.kind != "retrieval" else ""

    @property
    def group_name(self) -> str:
        return GROUPS[self.group]


TASKS: dict[str, TaskSpec] = {}
_LOADED = False


def register(spec: TaskSpec) -> TaskSpec:
    """Add a task; a name is registered once (a second registration is an error naming both
    readers, never a silent overwrite)."""
    if spec.group not in GROUPS:
        raise ValueError(f"task {spec.name}: group must be one of {sorted(GROUPS)}")
    if spec.name in TASKS and TASKS[spec.name] is not spec:
        first = TASKS[spec.name].reader
        raise TransferlabError(f"task {spec.name} is registered twice: by {first.__module__}.{first.__qualname__} "
                               f"and by {spec.reader.__module__}.{spec.reader.__qualname__}")
    TASKS[spec.name] = spec
    return spec


def _ensure_loaded() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib

    for module in ("transferlab.data.readers", "transferlab.data.builtin"):
        importlib.import_module(module)  # both exist: a failure is a real error, not a missing task


def all_tasks() -> list[TaskSpec]:
    """Every task, nearest to ImageNet first."""
    _ensure_loaded()
    return sorted(TASKS.values(), key=lambda t: (t.distance, t.builtin, t.name))


def get_task(name: str) -> TaskSpec:
    _ensure_loaded()
    if name not in TASKS:
        known = ", ".join(sorted(TASKS))
        raise TransferlabError(f"unknown task {name!r}; known tasks: {known}")
    return TASKS[name]


def load_task(name: str, root: str | Path | None = None, **options: Any) -> TaskData:
    """Read a task from its folder (``root``) or, for built-in tasks, from the offline data."""
    spec = get_task(name)
    if root is None and not spec.builtin:
        raise TransferlabError(f"task {name} needs --root: the folder holding {spec.layout}")
    if root is not None and not Path(root).exists():
        raise TransferlabError(f"task {name}: root folder {root} does not exist")
    merged = {**spec.options, **options}
    check_options(spec, merged)
    return spec.reader(Path(root).resolve() if root is not None else None, **merged)


def check_options(spec: TaskSpec, options: dict[str, Any]) -> None:
    """One clean error for an option the task's reader does not take (not a TypeError from
    inside it); readers taking ``**options`` check their own."""
    accepted = reader_options(spec.reader)
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        known = ", ".join(sorted((accepted or set()) - {"problems"})) or "none"
        raise TransferlabError(f"task {spec.name}: unknown option(s) {', '.join(unknown)} (accepted: {known})")


def reader_options(reader: Callable[..., Any]) -> set[str] | None:
    """Option names a reader takes by keyword; None if it takes any (``**options``, and then
    checks them itself)."""
    params = list(inspect.signature(reader).parameters.values())[1:]  # the first is root
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
