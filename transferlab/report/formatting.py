"""How the report and the CLI print numbers: values, intervals, differences, figures, names.

One place, so ``report.html``, ``transferlab results`` and the text summary agree.
"""

from __future__ import annotations

import base64
import html
import math
from datetime import datetime, timezone
from typing import Any

from transferlab.errors import TransferlabError
from transferlab.report.tables import (
    TaskInfo,
    config_of,
    value_key,
    value_label,
)

esc = html.escape




def embed_png(png: bytes, alt: str) -> str:
    """An <img> holding the PNG itself, so the page needs no other file."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def fmt_value(metric: str, value: float | None) -> str:
    """Scores in [0, 1] as percentages with one decimal (the paper's style), others with two."""
    if value is None or not math.isfinite(value):
        return "n/a"
    from transferlab.evaluate import metric_range

    try:
        low, high = metric_range(metric)
    except TransferlabError:
        return f"{value:.3f}"
    return f"{100 * value:.1f}" if (low, high) == (0.0, 1.0) else f"{value:.2f}"


def fmt_interval(metric: str, value: float | None, low: float | None, high: float | None) -> str:
    """``82.0 [75.1, 88.3]``: the value and its 95% bootstrap interval (value alone without one)."""
    text = fmt_value(metric, value)
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return text
    return f"{text} [{fmt_value(metric, low)}, {fmt_value(metric, high)}]"


def fmt_row(metric: str, row: dict[str, Any] | None) -> str:
    return "n/a" if row is None else fmt_interval(metric, row["value"], row.get("low"), row.get("high"))


def fmt_difference(metric: str, diff: Any) -> str:
    """``+4.2 [1.0, 7.5]`` in the metric's points, or "no measurable difference (...)"."""
    if diff is None or not math.isfinite(diff.value):
        return "n/a"
    scale = 100.0 if _unit_metric(metric) else 1.0
    digits = 1 if scale == 100.0 else 2
    body = f"{scale * diff.value:+.{digits}f}"
    if math.isfinite(diff.low) and math.isfinite(diff.high):
        body += f" [{scale * diff.low:+.{digits}f}, {scale * diff.high:+.{digits}f}]"
    else:
        return f"{body} (no interval)"
    if not diff.paired:
        body += " (unpaired)"
    return body if diff.measurable else f"no measurable difference ({body})"


def _unit_metric(metric: str) -> bool:
    from transferlab.evaluate import metric_range

    try:
        return metric_range(metric) == (0.0, 1.0)
    except TransferlabError:
        return False


def fmt_reduction(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def study_name(meta: dict[str, Any], fallback: str) -> str:
    for key in ("name", "study_name", "study"):
        if isinstance(meta.get(key), str) and meta[key].strip():
            return meta[key].strip()
    config = meta.get("config")
    if isinstance(config, dict) and isinstance(config.get("name"), str):
        return config["name"]
    if isinstance(config, str):
        for line in config.splitlines():
            if line.startswith("name:") and line[5:].strip():
                return line[5:].strip().strip("'\"")
    return fallback


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _factor_text(row: dict[str, Any], factor: str) -> str:
    """A factor's value; the layer also shows its module name when known."""
    value = config_of(row).get(factor)
    text = value_label(value)
    if factor == "layer" and row["factors"].get("layer_name") not in (None, "", value):
        text += f" ({row['factors']['layer_name']})"
    return text


def _changes(standard: dict[str, Any] | None, optimal: dict[str, Any], keys: list[str]) -> str:
    """How the optimal configuration differs from the standard one (without a standard: the
    optimal's values of the factors that vary, ``keys``)."""
    if standard is None:
        return ", ".join(f"{k}={_factor_text(optimal, k)}" for k in keys if k in config_of(optimal)) or "—"
    std, opt = config_of(standard), config_of(optimal)
    diffs = []
    for key in [k for k in keys if k in std or k in opt] + sorted(set(std) | set(opt) - set(keys)):
        if value_key(std.get(key)) != value_key(opt.get(key)):
            before = _factor_text(standard, key) if key in std else "—"
            after = _factor_text(optimal, key) if key in opt else "—"
            diffs.append(f"{key}: {before} → {after}")
    text = "; ".join(dict.fromkeys(diffs)) or "same as Deep Standard"
    if optimal["factors"].get("sweep") == "optimal":
        text += " [the combined best-per-factor setting]"
    return text


def _task_header(tasks: list[TaskInfo], metric_of: dict[str, str], first: str) -> str:
    """Two header rows: group names spanning their tasks, then the tasks with their metrics."""
    groups: list[list[Any]] = []  # [group number, group name, task count]
    for t in tasks:
        if groups and groups[-1][0] == t.group:
            groups[-1][2] += 1
        else:
            groups.append([t.group, t.group_name, 1])
    top = "".join(f'<th class="group" colspan="{n}">{esc(g)}</th>' for _, g, n in groups)
    cells = "".join(
        f'<th class="task" title="{esc(t.title)}">{esc(t.name)}<br><small>{esc(metric_of[t.name])}</small></th>'
        for t in tasks
    )
    return f'<thead><tr><th rowspan="2">{esc(first)}</th>{top}</tr><tr>{cells}</tr></thead>'


