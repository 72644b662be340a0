"""Readers for the paper's benchmarks in their publishers' native layouts.

Importing this package registers every benchmark task (see transferlab.data.tasks). Each
reader is imported by name: a broken reader is an import error, never a silently missing task.
"""

from __future__ import annotations

from transferlab.data.readers import (  # noqa: F401 - imported to register their tasks
    apascal,
    cub,
    flowers,
    h3d,
    holidays,
    mit67,
    oxford,
    pets,
    revisited,
    stanford40,
    sun397,
    sun_attributes,
    ukbench,
    visual_phrases,
    voc2007,
    voc2012_actions,
)
