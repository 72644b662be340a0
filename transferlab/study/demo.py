"""The built-in offline study used by `transferlab demo` and `make demo`."""

from __future__ import annotations

from pathlib import Path

from transferlab.study.config import StudyConfig


def offline_config_path() -> Path:
    return Path(__file__).resolve().parent.parent / "configs" / "offline.yaml"


def quick_variant(config: StudyConfig) -> StudyConfig:
    """The ~30 s smoke test: the standard source only, two layers and two poolings, small test sets."""
    factors = config.factors.model_copy(update={
        "layers": config.factors.layers[:2],
        "pooling": config.factors.pooling[:2],
        "normalisation": config.factors.normalisation[:1],
        "pca_dims": config.factors.pca_dims[:1],
        "views": config.factors.views[:1],
        "finetune": ["off"],
    })
    tasks = [t.model_copy(update={"options": {k: v for k, v in t.options.items() if k != "quick"}})
             for t in config.tasks]  # the small versions throughout: a smoke test, not an answer
    return config.model_copy(update={
        "name": f"{config.name}-quick", "quick": True, "sources": config.sources[:1], "factors": factors,
        "tasks": tasks,
        "retrieval": config.retrieval.model_copy(update={"qe": config.retrieval.qe[:1]}), "train": [],
    })
