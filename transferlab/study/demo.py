"""The built-in offline study used by `transferlab demo` and `make demo`."""

from __future__ import annotations

from pathlib import Path

from transferlab.results.factors import config_factors
from transferlab.study.config import StudyConfig

# The smoke test keeps two layers and two poolings, the first value of every other factor,
# and never fine-tunes (each factor of the table's ``factors`` block, by config key).
QUICK_KEEP = {"layer": 2, "pooling": 2}
QUICK_DEFAULT = {"finetune"}


def offline_config_path() -> Path:
    return Path(__file__).resolve().parent.parent / "configs" / "offline.yaml"


def quick_variant(config: StudyConfig) -> StudyConfig:
    """The ~30 s smoke test: the standard source only, two layers and two poolings, small test sets."""
    update = {}
    for factor in config_factors():
        listed = config.factors.values_of(factor.name)
        key = factor.config_key or factor.name
        update[key] = [factor.default] if factor.name in QUICK_DEFAULT else listed[:QUICK_KEEP.get(factor.name, 1)]
    factors = config.factors.model_copy(update=update)
    tasks = [t.model_copy(update={"options": {k: v for k, v in t.options.items() if k != "quick"}})
             for t in config.tasks]  # the small versions throughout: a smoke test, not an answer
    return config.model_copy(update={
        "name": f"{config.name}-quick", "quick": True, "sources": config.sources[:1], "factors": factors,
        "tasks": tasks,
        "retrieval": config.retrieval.model_copy(update={"qe": config.retrieval.qe[:1]}), "train": [],
    })
