"""Report figures as PNG bytes (matplotlib's Agg canvas; pyplot and its global state unused).

Tasks always run along the x axis nearest-to-source first, with their groups marked, so
every figure reads like the paper's: left = close to the source task, right = far.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transferlab.report.tables import TaskInfo

DPI = 100
_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]  # fmt: skip  (tab10)
GROUP_COLOURS = {1: "#4c72b0", 2: "#55a868", 3: "#c44e52", 4: "#8172b2", 5: "#ccb974", 0: "#7f7f7f"}


def colour(index: int) -> str:
    """Colour of the index-th value of a factor: the same in the plot and the table."""
    if index < len(_PALETTE):
        return _PALETTE[index]
    import matplotlib

    return matplotlib.colors.to_hex(matplotlib.colormaps["tab20b"](index % 20))


@dataclass
class Series:
    """One line: a factor value's relative metric per task (None = no result)."""

    label: str
    colour: str
    values: list[float | None]
    hollow: list[bool]  # marker drawn hollow: value from the best-over-others rule
    is_standard: bool = False
    errors: list[tuple[float, float] | None] | None = None  # 95% interval per task, same scale


def new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Any) -> bytes:
    """PNG bytes of a figure, for embedding (extra report sections can use this too)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


GROUP_SHORT = {
    "image classification": "classification",
    "attribute detection": "attributes",
    "fine-grained recognition": "fine-grained",
    "instance retrieval": "retrieval",
}


def _task_axis(ax: Any, tasks: Sequence[TaskInfo]) -> int:
    """Task names on x, a dotted line between groups and the group name above each group.

    Returns the number of text lines the group names take (for the title's padding)."""
    xs = range(len(tasks))
    ax.set_xticks(list(xs))
    ax.set_xticklabels([t.name for t in tasks], rotation=35, ha="right", fontsize=9)
    ax.set_xlim(-0.6, len(tasks) - 0.4)
    transform = ax.get_xaxis_transform()
    start, lines = 0, 1
    for i in range(1, len(tasks) + 1):
        if i == len(tasks) or tasks[i].group != tasks[start].group:
            if i < len(tasks):
                ax.axvline(i - 0.5, color="#999999", linestyle=":", linewidth=1)
            label = _group_label(tasks[start].group_name, i - start)
            lines = max(lines, label.count("\n") + 1)
            ax.text((start + i - 1) / 2, 1.02, label, transform=transform, ha="center", va="bottom",
                    fontsize=8, color="#444444", linespacing=1.0)  # fmt: skip
            start = i
    ax.set_xlabel("target task (nearest to the source task on the left)", fontsize=9)
    return lines


def _group_label(name: str, span: int) -> str:
    """Group name short enough for the tasks it spans: abbreviated, wrapped on words."""
    import textwrap

    name = GROUP_SHORT.get(name, name) if span < 3 else name
    return textwrap.fill(name, width=max(12, 13 * span), max_lines=2, placeholder="…", break_long_words=False)


def factor_plot(
    title: str, tasks: Sequence[TaskInfo], series: Sequence[Series], reference_label: str, legend_title: str = ""
) -> bytes:
    """Relative metric (1 = reference) per task, one line per factor value."""
    from matplotlib.lines import Line2D

    legend_width = 0.4 + 0.075 * max([len(s.label) + (11 if s.is_standard else 0) for s in series] + [8])
    fig = new_figure(min(16.0, max(7.5, 1.4 + 0.75 * len(tasks) + legend_width)), 4.2)
    ax = fig.add_subplot()
    ax.axhline(1.0, color="#333333", linewidth=1, linestyle="--", zorder=1)
    handles = []
    step = min(0.08, 0.5 / max(1, len(series)))  # dodge: equal values stay visible side by side
    for index, s in enumerate(series):
        offset = (index - (len(series) - 1) / 2) * step
        xs = [x + offset for x in range(len(tasks))]
        ys = [math.nan if v is None else v for v in s.values]
        width = 2.4 if s.is_standard else 1.4
        ax.plot(xs, ys, color=s.colour, linewidth=width, alpha=0.85, zorder=2)
        for x, y, err in zip(xs, ys, s.errors or [None] * len(xs), strict=True):
            if err is not None and math.isfinite(y):
                ax.errorbar([x], [y], yerr=[[max(0.0, y - err[0])], [max(0.0, err[1] - y)]], color=s.colour,
                            linewidth=1.0, capsize=2.5, alpha=0.8, zorder=2)
        for hollow in (False, True):
            points = [(x, y) for x, y, h in zip(xs, ys, s.hollow, strict=True) if h == hollow and math.isfinite(y)]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], "o", markersize=6, zorder=3,
                        color=s.colour, markerfacecolor="white" if hollow else s.colour)  # fmt: skip
        label = s.label + (" (standard)" if s.is_standard else "")
        handles.append(Line2D([0], [0], color=s.colour, linewidth=width, marker="o", markersize=6, label=label))
    lines = _task_axis(ax, tasks)
    ax.set_ylabel(f"metric / {reference_label}", fontsize=9)
    ax.grid(axis="y", color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.set_title(title, fontsize=11, pad=6 + 11 * lines)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9,
              handlelength=2.0, title=legend_title, title_fontsize=9, alignment="left")  # fmt: skip
    return to_png(fig)


def reduction_plot(tasks: Sequence[TaskInfo], reductions: Sequence[float | None],
                   intervals: Sequence[tuple[float, float] | None] | None = None) -> bytes:
    """Bar per task: relative error reduction of Deep Optimal over Deep Standard, in %, with
    error bars from the paired interval of the difference where known."""
    fig = new_figure(min(16.0, max(7.0, 1.6 + 0.75 * len(tasks))), 3.6)
    ax = fig.add_subplot()
    xs = list(range(len(tasks)))
    heights = [0.0 if r is None else 100.0 * r for r in reductions]
    bars = ax.bar(xs, heights, color=[GROUP_COLOURS.get(t.group, "#7f7f7f") for t in tasks], width=0.65)
    ends = [h for h in heights]
    for x, h, iv in zip(xs, heights, intervals or [None] * len(xs), strict=True):
        if iv is not None:
            low, high = 100.0 * iv[0], 100.0 * iv[1]
            ax.errorbar([x], [h], yerr=[[max(0.0, h - low)], [max(0.0, high - h)]], color="#222222",
                        linewidth=1.0, capsize=3)
            ends.extend([low, high])
    for bar, r in zip(bars, reductions, strict=True):
        text = "n/a" if r is None else f"{100 * r:.0f}%"
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), text, ha="center", va="bottom", fontsize=8)
    lines = _task_axis(ax, tasks)
    top = max([h for h in ends] + [1.0])
    ax.set_ylim(min(0.0, min(ends)) * 1.1, top * 1.18)
    ax.set_ylabel("error reduction (%)", fontsize=9)
    ax.set_title("Deep Optimal vs Deep Standard: relative error reduction per task", fontsize=11, pad=6 + 11 * lines)
    ax.grid(axis="y", color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    return to_png(fig)
