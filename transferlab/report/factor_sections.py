"""The report's "Factors versus distance" section: the paper's hypotheses tested on the study.

Importing this module appends ``factors_versus_distance`` to ``transferlab.report.sections``
(``build_report`` imports it through ``transferlab.report.section_modules``). Every number
comes from ``transferlab.report.factors.analyse``; each figure carries a one-line reading
generated from those numbers, saying where the study agrees or disagrees with the paper.
"""

from __future__ import annotations

import html
import math
from typing import Any

from transferlab.report import plots, sections
from transferlab.report.factors import SCORES, Analysis, Hypothesis, analyse
from transferlab.report.formatting import embed_png, fmt_value

esc = html.escape
TITLE = "Factors versus distance"


def study_distance(meta: dict[str, Any]) -> str:
    """The distance the study asked for (``distance:`` in its config), else the paper's ordering."""
    if isinstance(meta.get("distance"), str):
        return meta["distance"]
    config = meta.get("config")
    if isinstance(config, dict) and isinstance(config.get("distance"), str):
        return config["distance"]
    if isinstance(config, str):
        import yaml

        try:
            data = yaml.safe_load(config)
        except yaml.YAMLError:
            return "paper"
        if isinstance(data, dict) and isinstance(data.get("distance"), str):
            return data["distance"]
    return "paper"


def factors_versus_distance(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str | None:
    """The section's HTML: hypotheses table, three figures with their readings, two tables."""
    if not rows:
        return None
    analysis = analyse(rows, meta, study_distance(meta))
    groups = {t["task"]: t["group"] for t in analysis.tasks}
    parts = [f"<h2>{TITLE}</h2>", _intro(analysis), _hypotheses_table(analysis)]
    layer, pooling = analysis.hypothesis("layer"), analysis.hypothesis("pooling")
    parts.append(_figure(
        _best_factor_figure([layer, pooling], groups, analysis.distance),
        "best layer depth and pooling fineness versus task distance", [layer.reading, pooling.reading]))
    optimal, tuned = analysis.hypothesis("optimal"), analysis.hypothesis("finetune")
    parts.append(_figure(
        _gain_figure(optimal, tuned, groups, analysis.distance),
        "gain versus task distance", [optimal.reading, tuned.reading]))
    parts.append(_best_values_table(analysis))
    parts.append(_transferability(analysis))
    if analysis.notes:
        parts.append('<p class="note">' + esc(" ".join(n[0].upper() + n[1:] + "." for n in analysis.notes)) + "</p>")
    return "".join(parts)


# --------------------------------------------------------------------------- text


def _distance_label(distance: str) -> str:
    return {
        "paper": "the paper's ordering of the tasks by distance from the source task (rank, 1 = nearest)",
        "source_prediction": "the source-prediction distance (1 − I/log C of the source classifier's softmax on "
        "the task's images; 0 = near)",
    }.get(distance, f"the {distance} distance")


def _intro(analysis: Analysis) -> str:
    return (
        '<p class="caption">Azizpour et al. found that the best choice of each factor moves with the distance '
        "of the target task from the source task. Each hypothesis below is tested as Spearman's rank "
        f"correlation ρ between a per-task value and {esc(_distance_label(analysis.distance))}, with scipy's "
        "two-sided p-value (t approximation; rough for few tasks) and a 95% percentile interval from 2000 "
        "seeded bootstrap resamples of the tasks. Best values (chosen on validation, never on test) come from "
        "the factor slices of the sections "
        "above (other factors at Deep Standard where the study ran them so); tied best values are averaged. "
        "Fewer than 3 tasks, or no variation, gives no correlation (n/a) rather than a number.</p>"
    )


def _num(value: float | None, fmt: str = "{:+.2f}") -> str:
    return "n/a" if value is None or not math.isfinite(value) else fmt.format(value)


def _hypotheses_table(analysis: Analysis) -> str:
    body = []
    for h in analysis.hypotheses:
        c = h.correlation
        ci = f"{c.low:+.2f} … {c.high:+.2f}" if c.ok else "n/a"
        colour = {"agrees": "#1e6b2e", "disagrees": "#a3231f"}.get(h.verdict, "#444")
        body.append(
            f'<tr><th class="rowhead">{esc(h.claim)}</th><td>{esc(h.measure)} (expected ρ &gt; 0)</td>'
            f'<td class="num">{c.n}</td><td class="num">{_num(c.rho)}</td>'
            f'<td class="num">{_num(c.p_value, "{:.2g}")}</td><td class="num">{ci}</td>'
            f'<td style="color:{colour}">{esc(h.verdict if c.ok else c.status + ": " + c.note)}</td></tr>'
        )
    return (
        '<div class="table-wrap"><table class="hypotheses"><thead><tr><th>the paper\'s hypothesis</th>'
        "<th>per-task value</th><th>tasks</th><th>ρ</th><th>p</th><th>95% CI</th><th>this study</th></tr>"
        f"</thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _figure(png: bytes, alt: str, readings: list[str]) -> str:
    lines = "".join(f"<li>{esc(r)}</li>" for r in readings)
    return (f'<figure>{embed_png(png, alt)}<figcaption><ul style="margin:4px 0;padding-left:18px">{lines}</ul>'
            "</figcaption></figure>")


def _best_values_table(analysis: Analysis) -> str:
    tasks = [t["task"] for t in analysis.tasks]
    factors = list(dict.fromkeys(b["factor"] for b in analysis.best_values))
    if not factors:
        return ""
    cells = {(b["factor"], b["task"]): b for b in analysis.best_values}
    head = "".join(f'<th class="task">{esc(t)}<br><small>{_num(d["distance"], "{:g}")}</small></th>'
                   for t, d in zip(tasks, analysis.tasks, strict=True))
    body = []
    for factor in factors:
        row = []
        for task in tasks:
            b = cells.get((factor, task))
            if b is None:
                row.append('<td class="missing">—</td>')
                continue
            gain_text = _gain_text(b)
            changed = ' class="changed"' if b["standard"] is not None and b["standard"] not in b["best"] else ""
            row.append(f"<td{changed}>{esc(' = '.join(b['best']))}{gain_text}</td>")
        body.append(f'<tr><th class="rowhead">{esc(factor)}</th>{"".join(row)}</tr>')
    return (
        "<h3>Best value of each factor per task</h3>"
        '<p class="caption">Per factor and task, the value(s) with the best score in the factor\'s slice (ties '
        "joined by =) and, in brackets, its gain over the Deep Standard value of that factor in the task's metric "
        "(×100 for scores in [0, 1]) with its paired 95% bootstrap interval; \"no measurable difference\" when the "
        "interval contains 0. The best value is the one with the best <em>validation</em> score; the numbers are "
        "test scores. Highlighted: the best value is not the standard one. Column headers give "
        "the task's distance.</p>"
        f'<div class="table-wrap"><table class="factor-distance"><thead><tr><th>factor</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _gain_text(b: dict[str, Any]) -> str:
    """The gain over the standard value with its paired 95% interval, in the table's words."""
    gain = b["gain"]
    if gain is None:
        return ""
    text = f"{'+' if gain >= 0 else '−'}{fmt_value(b['metric'], abs(gain))}"
    low, high = b.get("gain_low"), b.get("gain_high")
    if low is None or high is None:
        return f" <small>({text})</small>"
    if low == high == 0.0 and gain == 0:
        return ""
    bounds = f"{'+' if low >= 0 else '−'}{fmt_value(b['metric'], abs(low))}, " \
             f"{'+' if high >= 0 else '−'}{fmt_value(b['metric'], abs(high))}"
    if low <= 0 <= high:
        return f" <small>(no measurable difference: {text} [{bounds}])</small>"
    return f" <small>({text} [{bounds}])</small>"


def _transferability(analysis: Analysis) -> str:
    if not analysis.transferability:
        return (
            "<h3>Transferability scores versus measured results</h3>"
            '<p class="note">No result row carries a transferability score (they are stored with single-label '
            "probe rows without flip augmentation, by transferlab versions that compute them); nothing to compare."
            "</p>"
        )
    readings = [s.reading for s in analysis.score_summaries]
    figure = _figure(_score_figure(analysis), "transferability score versus measured metric", readings)
    by_task: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in analysis.transferability:
        by_task.setdefault(entry["task"], {})[entry["score"]] = entry
    scores = [s for s in SCORES if any(s in v for v in by_task.values())]
    head = "".join(f"<th>{esc(SCORES[s])}: ρ</th><th>top-1</th>" for s in scores)
    body = []
    for task, entries in by_task.items():
        first = next(iter(entries.values()))
        cells = []
        for s in scores:
            e = entries.get(s)
            if e is None:
                cells.append('<td class="missing">—</td><td class="missing">—</td>')
                continue
            rho = (f'{_num(e["rho"])} <small>[{_num(e["low"])}, {_num(e["high"])}]</small>' if e["status"] == "ok"
                   else f'n/a <small>({esc(e["note"])})</small>')
            hit = {True: "yes", False: "no", None: "—"}[e["top1_hit"]]
            cells.append(f'<td class="num">{rho}</td><td>{hit}</td>')
        body.append(f'<tr><th class="rowhead">{esc(task)}</th><td>{esc(first["metric"])}</td>'
                    f'<td class="num">{first["rows"]}</td>{"".join(cells)}</tr>')
    return (
        "<h3>Transferability scores versus measured results</h3>"
        '<p class="caption">The scores stored with each probe row, computed on its L2-normalised training '
        "features before the probe is fitted, against the probe's test metric. Compared within each task over "
        "the rows that differ from Deep Standard only in source, layer and pooling (the candidates "
        "<code>transferlab select</code> ranks); ρ with its 95% bootstrap interval over those rows; top-1 = the "
        "best-scored row is (one of) the best measured; the mean ρ in the readings carries a bootstrap interval "
        "over the tasks. "
        "Multi-label, retrieval and flip-augmented rows carry no score.</p>"
        f'{figure}<div class="table-wrap"><table><thead><tr><th>task</th><th>metric</th><th>rows</th>{head}</tr>'
        f"</thead><tbody>{''.join(body)}</tbody></table></div>"
    )


# --------------------------------------------------------------------------- figures


def _style(ax: Any) -> None:
    ax.grid(color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)


def _distance_axis(ax: Any, distance: str, tasks: list[str], xs: list[float]) -> None:
    ax.set_xlabel("distance from the source task (paper's rank)" if distance == "paper"
                  else f"{distance} distance", fontsize=9)
    if distance == "paper" and xs:
        ticks = sorted(set(xs))
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{x:g}" for x in ticks], fontsize=8)


def _scatter_tasks(ax: Any, h: Hypothesis, groups: dict[str, int], y_scale: float = 1.0) -> None:
    """One point per task, coloured by the paper's task group and labelled with its name."""
    for task, x, y in zip(h.tasks, h.distances, h.values, strict=True):
        ax.scatter([x], [y * y_scale], s=46, color=plots.GROUP_COLOURS.get(groups.get(task, 0), "#7f7f7f"),
                   edgecolor="white", linewidth=0.6, zorder=3)
        ax.annotate(task, (x, y * y_scale), textcoords="offset points", xytext=(5, 4), fontsize=8, color="#333")


def _title(h: Hypothesis) -> str:
    c = h.correlation
    stat = f"ρ = {c.rho:+.2f}, p = {c.p_value:.2g}" if c.ok else c.status
    return f"{h.measure} ({stat})"


def _best_factor_figure(hs: list[Hypothesis], groups: dict[str, int], distance: str) -> bytes:
    fig = plots.new_figure(11.5, 3.8)
    axes = fig.subplots(1, len(hs))
    for ax, h in zip(axes, hs, strict=True):
        _scatter_tasks(ax, h, groups)
        _distance_axis(ax, distance, h.tasks, h.distances)
        _style(ax)
        ax.set_title(_title(h), fontsize=10)
        if h.key == "layer":
            ax.set_ylabel("depth from the top (1 = last layer)", fontsize=9)
            top = max([4.0, *h.values]) if h.values else 4.0
            ax.set_ylim(0.5, top + 0.5)
            ax.invert_yaxis()  # later layers on top, as "later" reads
        else:
            ax.set_ylabel("fineness (1 = global, 2 = 2x2, 3 = 3x3 / multi-region)", fontsize=9)
            ax.set_ylim(0.5, 3.5)
        ax.set_yticks(range(1, int(ax.get_ylim()[0 if h.key == "layer" else 1]) + 1))
        if not h.tasks:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="#999")
    return plots.to_png(fig)


def _gain_figure(optimal: Hypothesis, tuned: Hypothesis, groups: dict[str, int], distance: str) -> bytes:
    shown = [h for h in (optimal, tuned) if h.tasks]
    fig = plots.new_figure(11.5 if len(shown) > 1 else 7.0, 3.8)
    axes = fig.subplots(1, max(1, len(shown)), squeeze=False)[0]
    if not shown:
        axes[0].text(0.5, 0.5, "no task has a gain to show", transform=axes[0].transAxes, ha="center", color="#999")
        axes[0].set_axis_off()
    for ax, h in zip(axes, shown, strict=False):
        _scatter_tasks(ax, h, groups, y_scale=100.0)
        _distance_axis(ax, distance, h.tasks, h.distances)
        _style(ax)
        ax.axhline(0, color="#888", linewidth=0.8)
        ax.set_title(_title(h), fontsize=10)
        ax.set_ylabel("relative error reduction (%)" if h.key == "optimal"
                      else "error(off) − error(on) (points)", fontsize=9)
    return plots.to_png(fig)


def _score_figure(analysis: Analysis) -> bytes:
    """Small multiples: one panel per (score, task); colour = source, marker = pooling, label = layer."""
    from matplotlib.ticker import MaxNLocator

    entries = analysis.transferability
    scores = [s for s in SCORES if any(e["score"] == s for e in entries)]
    tasks = list(dict.fromkeys(e["task"] for e in entries))
    metric_of = {e["task"]: e["metric"] for e in entries}
    sources = list(dict.fromkeys(p["source"] for e in entries for p in e["points"]))
    poolings = list(dict.fromkeys(str(p["pooling"]) for e in entries for p in e["points"]))
    markers = dict(zip(poolings, "os^DvP*X", strict=False))
    cols = len(tasks)
    fig = plots.new_figure(min(12.0, 2.9 * cols + 1.0), 2.7 * len(scores) + 0.5)
    axes = fig.subplots(len(scores), cols, squeeze=False)
    lookup = {(e["score"], e["task"]): e for e in entries}
    for i, score in enumerate(scores):
        for j, task in enumerate(tasks):
            ax = axes[i][j]
            e = lookup.get((score, task))
            _style(ax)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.yaxis.set_major_locator(MaxNLocator(5))
            if e is None:
                ax.set_axis_off()
                continue
            groups: dict[tuple[str, str], list[dict]] = {}  # one scatter per (source, pooling)
            for p in e["points"]:
                groups.setdefault((p["source"], str(p["pooling"])), []).append(p)
            for (source, pooling), points in groups.items():
                ax.scatter([p["score"] for p in points], [p["value"] for p in points], s=30,
                           color=plots.colour(sources.index(source)), marker=markers.get(pooling, "o"),
                           edgecolor="white", linewidth=0.5, zorder=3)
            for p in e["points"]:
                ax.annotate(str(p["layer"]), (p["score"], p["value"]), textcoords="offset points", xytext=(3, 2),
                            fontsize=6.5, color="#555")
            stat = f"ρ = {e['rho']:+.2f}" if e["status"] == "ok" else e["status"]
            ax.set_title(f"{task}: {stat}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{metric_of[task]}", fontsize=8)
            ax.set_xlabel(SCORES[score], fontsize=8)
    handles = [plots_handle("o", plots.colour(k), s) for k, s in enumerate(sources)]
    handles += [plots_handle(markers[p], "#666666", f"pooling {p}") for p in poolings]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    return plots.to_png(fig)


def plots_handle(marker: str, colour: str, label: str) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], marker=marker, linestyle="", color=colour, markersize=6, label=label)


# Register once; a reload of this module replaces its earlier function instead of adding a second.
sections[:] = [
    s for s in sections
    if not (getattr(s, "__name__", "") == "factors_versus_distance" and getattr(s, "__module__", "") == __name__)
]
sections.append(factors_versus_distance)
