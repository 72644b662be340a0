"""Heads on top of a representation: linear probes, retrieval, fine-tuning."""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_CS", "LinearProbe", "finetune", "retrieval"]

# The one default grid of the probe's C (LinearProbe, the study's `probe.Cs`, `probe --Cs`,
# `select --Cs`); a number with no imports so the config and the CLI read it cheaply.
DEFAULT_CS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)


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
