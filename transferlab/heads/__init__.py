"""Heads on top of a representation: linear probes, retrieval, fine-tuning."""

from __future__ import annotations

from typing import Any

__all__ = ["LinearProbe", "finetune", "retrieval"]


def __getattr__(name: str) -> Any:  # lazy, so importing transferlab.heads stays cheap
    if name == "LinearProbe":
        from transferlab.heads.probe import LinearProbe

        return LinearProbe
    if name == "finetune":
        from transferlab.heads.finetune import finetune

        return finetune
    if name == "retrieval":
        import importlib

        return importlib.import_module("transferlab.heads.retrieval")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
