"""The study report: `build_report(run_dir)` writes RUN_DIR/report.html and RUN_DIR/results.csv.

Extra report sections (e.g. the factor-vs-distance analysis) plug in without touching this
package: append a callable ``(rows, meta) -> html_fragment | None`` to ``sections``. ``rows``
are ``ResultStore.rows()`` dicts; ``meta`` is ``ResultStore.meta()`` with ``meta["tasks"]``
resolved for every task in the results (name, distance, group, group_name, metric, protocol,
title). A fragment should start with its own ``<h2>``; use
``transferlab.report.formatting.embed_png(transferlab.report.plots.to_png(fig), alt)`` for figures.
A section that raises shows an error box in the report instead of stopping it. Modules named
in ``section_modules`` are imported first (when they exist), so a module such as
``transferlab/report/factor_sections.py`` can register itself at import.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

sections: list[Callable[[list[dict[str, Any]], dict[str, Any]], str | None]] = []
section_modules: list[str] = ["transferlab.report.factor_sections", "transferlab.report.learning"]


def build_report(run_dir: str | Path) -> Path:
    """Write the self-contained report.html and results.csv of a run directory; return the HTML path."""
    from transferlab.report.html import build_report as _build

    return _build(run_dir)


__all__ = ["build_report", "section_modules", "sections"]
