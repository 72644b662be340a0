"""Readers for the paper's benchmarks in their publishers' native layouts.

Importing this package registers every benchmark task (see transferlab.data.tasks).
"""

from __future__ import annotations

import importlib

_MODULES = [
    "voc2007",
    "mit67",
    "sun397",
    "sun_attributes",
    "apascal",
    "h3d",
    "pets",
    "cub",
    "flowers",
    "voc2012_actions",
    "stanford40",
    "visual_phrases",
    "holidays",
    "ukbench",
    "oxford",
    "revisited",
]

for _name in _MODULES:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:  # a reader not written yet
        if _exc.name != f"{__name__}.{_name}":
            raise
