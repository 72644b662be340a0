"""What one result is: ``ResultRow`` (a finished job with everything that explains it) and
``job_key_of``, the one key the planner, every executor and the store agree on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from transferlab.results.encoding import dumps


def job_key_of(source: str, task: str, factors: dict[str, Any], identity: str | None = None) -> str:
    """The one key of a result, used by the planner (``Job.key``), every executor and the store:
    a stable hash of (source, task, factor values) and ``identity``, the hash of everything
    else that made the result (plan.result_identity: source weights, task data fingerprint,
    evaluation settings, split seed). Equal inputs give equal keys in any run."""
    payload: dict[str, Any] = {"source": source, "task": task, "factors": factors}
    if identity:
        payload["identity"] = identity
    text = dumps(payload)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class ResultRow:
    """One finished job: the primary metric plus everything needed to explain it."""

    source: str
    task: str
    factors: dict[str, Any]
    metric: str
    value: float
    metrics: dict[str, Any] = field(default_factory=dict)
    standard: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    job_key: str = ""
    val_value: float | None = None  # the selection score (task's metric on validation data)
    selection: str = ""  # "val", "3-fold", "queries 50%", or "none: why"
    low: float | None = None  # 95% bootstrap interval of value over test images / queries
    high: float | None = None
    identity: str = ""  # plan.result_identity (shown with `results --all` as the configuration hash)
    items: dict[str, Any] | None = None  # per-item test data + bootstrap replicates (not in rows())
    # where it ran: {"extracted": [{node_id, hostname, device, shards}], "evaluated": {node_id, hostname}}
    placement: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.job_key and isinstance(self.factors, dict):
            try:
                self.job_key = job_key_of(self.source, self.task, self.factors, self.identity or None)
            except TypeError:
                pass  # add() reports the unserialisable value with the row's name

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResultRow:
        """Back from a ``ResultStore.rows()`` dict (provenance fields are dropped)."""
        names = ("source", "task", "factors", "metric", "value", "metrics", "standard", "seconds", "extra", "job_key",
                 "val_value", "selection", "low", "high", "identity", "placement")
        return cls(**{k: data[k] for k in names if k in data})


def current_only(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows whose key the latest study planned or evaluated (all rows if it recorded none)."""
    keys = meta.get("current_keys")
    if not isinstance(keys, list):
        return rows
    wanted = set(keys)
    return [r for r in rows if r["job_key"] in wanted]
