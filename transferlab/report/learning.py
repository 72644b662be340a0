"""The report's learning-factor section: the sources a study trained (own validation
accuracy, parameters, images), the paper's source-task table in miniature (object / scene /
Hybrid / Concat x target tasks), the early-stopping figure (transfer vs the snapshot's own
source validation accuracy), width/depth, diversity vs density and fine-tuning tables.

Every cell is a result row at the standard setting of the study (``finetune = off`` unless
the table is about fine-tuning): test value, with its 95% interval ``[low, high]`` when the
row carries one. Sources whose own validation accuracy is within a few points of chance
are marked and left out of every reading. Registers itself in ``transferlab.report.sections``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from typing import Any

from transferlab.report.formatting import embed_png, fmt_value
from transferlab.report.tables import higher_better
from transferlab.results.factors import learning_factors

esc = html.escape
KIND_ORDER = ("object", "scene", "hybrid", "concat")
KIND_TITLES = {"object": "object (≈ ImageNet)", "scene": "scene (≈ Places)", "hybrid": "Hybrid (union of labels)",
               "concat": "Concat (object ⊕ scene features)"}
# which source kind each built-in target task is near (the paper's reading is about these)
TARGET_NEAR = {"fashion_mnist": "object", "fashion_upper": "object", "scene_categories": "scene",
               "indoor_layouts": "scene"}
KEEPS_MOST = 0.5  # a combined source "keeps most of both" when it recovers >= half the single-source gap


# ------------------------------------------------------------------------------ helpers
def cell_text(row: dict[str, Any]) -> str:
    """``82.0 [75.1, 88.3]`` when the row has an interval, else the bare value."""
    text = fmt_value(row["metric"], row.get("value"))
    low, high = row.get("low"), row.get("high")
    if low is not None and high is not None and all(math.isfinite(v) for v in (low, high)):
        text += f" [{fmt_value(row['metric'], low)}, {fmt_value(row['metric'], high)}]"
    return text


def _plain_rows(rows: Iterable[dict[str, Any]], finetune: str = "off") -> list[dict[str, Any]]:
    """Rows of learning-factor sources at the standard setting (the only one they are run at)."""
    return [r for r in rows if "source_task" in r["factors"] and r["factors"].get("finetune", "off") == finetune
            and r["factors"].get("sweep", "sweep") != "optimal"]


def _task_order(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    tasks = meta.get("tasks") or {}
    names = list(dict.fromkeys(r["task"] for r in rows))
    near = {"object": 0, "scene": 1}
    return sorted(names, key=lambda t: (tasks.get(t, {}).get("distance", 10**6),
                                        near.get(TARGET_NEAR.get(t, ""), 2), t))


def _records(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return meta.get("trained_sources") or {}


def _flag(record: dict[str, Any] | None) -> str:
    return ' <span class="warn" title="own validation accuracy within a few points of chance">‡ near chance</span>' \
        if record and record.get("near_chance") else ""


def _acc(record: dict[str, Any] | None) -> str:
    value = (record or {}).get("val_accuracy")
    return "n/a" if value is None else f"{100 * value:.1f}"


def _table(header: list[str], body: list[list[str]], css: str = "learning") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    rows = "".join("<tr>" + "".join(body_row) + "</tr>" for body_row in body)
    return (f'<div class="table-wrap"><table class="{css}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table></div>")


def _grid(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: r.get("created") or 0):
        out[(r["source"], r["task"])] = r
    return out


def _best_in_column(cells: list[dict[str, Any] | None]) -> set[int]:
    present = [(i, c) for i, c in enumerate(cells) if c is not None and c.get("value") is not None
               and math.isfinite(c["value"])]
    if not present:
        return set()
    pick = max if higher_better(present[0][1]["metric"]) else min
    top = pick(c["value"] for _, c in present)
    return {i for i, c in present if c["value"] == top}


def _value_table(sources: list[tuple[str, str]], tasks: list[str], grid: dict, records: dict,
                 extra: dict[str, list[str]] | None = None, extra_header: list[str] | None = None) -> str:
    """Rows = (source name, row label), columns = tasks; bold = best in the column."""
    columns = {t: _best_in_column([grid.get((s, t)) for s, _ in sources]) for t in tasks}
    body = []
    for i, (source, label) in enumerate(sources):
        cells = [f'<th class="rowhead">{label}{_flag(records.get(source))}</th>']
        cells += [f'<td class="num">{c}</td>' for c in (extra or {}).get(source, [])]
        for t in tasks:
            row = grid.get((source, t))
            css = "num best" if i in columns[t] else "num"
            cells.append(f'<td class="{css}">{cell_text(row)}</td>' if row else '<td class="missing">—</td>')
        body.append(cells)
    return _table(["source", *(extra_header or []), *[esc(t) for t in tasks]], body)


# ------------------------------------------------------------------------------ sections
def trained_sources_table(meta: dict[str, Any]) -> str:
    records = _records(meta)
    if not records:
        return ""
    order = {name: i for i, name in enumerate(meta.get("sources") or [])}
    body = []
    for name, r in sorted(records.items(), key=lambda item: (order.get(item[0], len(order)), item[0])):
        tasks = "+".join(r.get("source_task") or [])
        body.append([
            f'<th class="rowhead">{esc(name)}{_flag(r)}</th>', f"<td>{esc(str(r.get('kind')))}</td>",
            f"<td>{esc(tasks)}</td>", f"<td>{esc(str(r.get('arch')))}-{esc(str(r.get('width')))}</td>",
            f'<td class="num">{esc(str(r.get("snapshot")))}</td>',
            f'<td class="num">{esc(str(r.get("images")))}</td>', f'<td class="num">{esc(str(r.get("classes")))}</td>',
            f'<td class="num">{_params(r.get("parameters"))}</td>',
            f'<td class="num">{_acc(r)}</td>',
            f'<td class="num">{_percent(r.get("chance"))}</td>',
        ])
    flagged = [n for n, r in records.items() if r.get("near_chance")]
    warn = (f'<p class="warn">Near chance on their own validation split, so left out of every reading below: '
            f"{esc(', '.join(flagged))}. Their rows still show (‡) but say nothing about transfer.</p>"
            if flagged
            else '<p class="note">Every trained source is well above chance on its own validation split.</p>')
    return ("<h3>Trained sources</h3>"
            '<p class="caption">Each source network trained by the study, at the snapshot used; source val acc = '
            "top-1 accuracy of its own classifier on the held-out val split of its source task(s) (never a target "
            "task); chance = 1/classes. A Concat row gives the lower of its members' accuracies.</p>"
            + _table(["source", "kind", "source task(s)", "network", "epoch", "images", "classes", "parameters",
                      "source val acc", "chance"], body) + warn)


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _params(value: Any) -> str:
    if not value:
        return "n/a"
    return f"{value / 1e6:.2f}M" if value >= 1e5 else f"{value / 1e3:.0f}k"


def source_kind_of(factors: dict[str, Any]) -> str:
    from transferlab.data.builtin.scenes import SOURCE_KINDS

    task = str(factors.get("source_task", ""))
    if task.startswith("concat:"):
        return "concat"
    if "+" in task:
        return "hybrid"
    return SOURCE_KINDS.get(task, task)


def _final_sources(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """source -> its learning factors, for sources at the last snapshot of their training."""
    factors: dict[str, dict[str, Any]] = {}
    for r in rows:
        factors.setdefault(r["source"], r["factors"])
    latest: dict[tuple, Any] = {}
    for f in factors.values():
        key = _family(f, "snapshot")
        latest[key] = max(latest.get(key, -1), _int(f.get("snapshot")))
    return {name: f for name, f in factors.items() if _int(f.get("snapshot")) == latest[_family(f, "snapshot")]}


def _int(value: Any) -> int:
    try:
        return int(str(value).split("+")[0])
    except ValueError:
        return -1


def _family(factors: dict[str, Any], without: str | set[str]) -> tuple:
    skip = {without} if isinstance(without, str) else set(without)
    keys = [k for k in learning_factors() if k != "source"]  # the source's name differs per member
    return tuple(str(factors.get(k)) for k in keys if k not in skip)


def source_task_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The paper's Table (ImageNet / Places / Hybrid / Concat) in miniature, with a reading."""
    plain = _plain_rows(rows)
    final = _final_sources(plain)
    candidates: dict[str, list[str]] = {}
    for name, f in final.items():
        candidates.setdefault(source_kind_of(f), []).append(name)
    if sum(1 for k in KIND_ORDER if candidates.get(k)) < 2:
        return ""

    # one network per kind: the (architecture, width, subset) most kinds share, then the shortest name
    def arch(name: str) -> str:
        f = final[name]
        return f"{f.get('arch')}-{f.get('width')}"

    counts: dict[str, int] = {}
    for kind in KIND_ORDER:
        for a in {arch(n) for n in candidates.get(kind, []) if str(final[n].get("classes")) == "all"}:
            counts[a] = counts.get(a, 0) + 1
    if not counts:
        return ""
    common = max(counts, key=lambda a: (counts[a], a))
    records = _records(meta)
    chosen = []
    for kind in KIND_ORDER:
        names = [n for n in candidates.get(kind, []) if arch(n) == common and str(final[n].get("classes")) == "all"]
        # a source named after its kind (object@4), else the one trained on the most images
        names.sort(key=lambda n: (not n.startswith(kind), -((records.get(n) or {}).get("images") or 0), len(n), n))
        if names:
            chosen.append((kind, names[0]))
    tasks = _task_order([r for r in plain if r["source"] in {n for _, n in chosen}], meta)
    grid = _grid(plain)
    sources = [(n, f"{esc(KIND_TITLES.get(k, k))}<br><small>{esc(n)}</small>") for k, n in chosen]
    header_tasks = tasks
    table = _value_table(sources, header_tasks, grid, records, extra={n: [_acc(records.get(n))] for _, n in chosen},
                         extra_header=["source val acc"])
    near = " ".join(f"{esc(t)}: near {TARGET_NEAR[t]}." for t in tasks if t in TARGET_NEAR)
    return ("<h3>Source task (object / scene / Hybrid / Concat)</h3>"
            '<p class="caption">The paper\'s source-task table in miniature: the same network (' + esc(common) + ") "
            "trained on an object-centric source (Fashion-MNIST), a scene-centric one (drawn scene layouts), "
            "their union (Hybrid), and the object and scene features concatenated (Concat); columns are target "
            "tasks by distance, cells the test metric with its 95% interval; bold = best in the column. "
            + near + "</p>" + table
            + '<p class="reading"><strong>Reading:</strong> '
            + f"{esc(source_task_reading(dict(chosen), tasks, grid, records))}</p>")


def _distinct(a: dict[str, Any], b: dict[str, Any]) -> bool | None:
    """a better than b beyond the intervals (None: no intervals to tell)."""
    if a.get("low") is None or b.get("high") is None:
        return None
    if higher_better(a["metric"]):
        return a["low"] > b["high"]
    return a["high"] < b["low"]


def source_task_reading(chosen: dict[str, str], tasks: list[str], grid: dict, records: dict) -> str:
    """Whether each single source is best near its own kind, and whether Hybrid/Concat keep
    at least ``KEEPS_MOST`` of the gap between the single sources on those tasks."""
    bad = [n for n in chosen.values() if records.get(n, {}).get("near_chance")]
    if bad:
        return (f"no reading: {', '.join(bad)} did not learn its source task (near chance on its own validation "
                "split), so its column says nothing about transfer.")
    if "object" not in chosen or "scene" not in chosen:
        return "no reading: the study lacks an object or a scene source."
    near = [t for t in tasks if TARGET_NEAR.get(t) in ("object", "scene")]
    if not near:
        return "no reading: no target task near the object or the scene source (e.g. fashion_mnist, scene_categories)."
    wins: list[str] = []
    losses: list[str] = []
    ties: list[str] = []
    keeps: dict[str, list[str]] = {}
    misses: dict[str, list[str]] = {}
    for t in near:
        own, other = chosen[TARGET_NEAR[t]], chosen["scene" if TARGET_NEAR[t] == "object" else "object"]
        a, b = grid.get((own, t)), grid.get((other, t))
        if not a or not b:
            continue
        sign = 1 if higher_better(a["metric"]) else -1
        distinct = _distinct(a, b)
        if sign * (a["value"] - b["value"]) > 0 and distinct is not False:
            (wins if distinct in (True, None) else ties).append(t)
        elif distinct is False or a["value"] == b["value"]:
            ties.append(t)
        else:
            losses.append(t)
        pair = (a["value"], b["value"])
        better, worse = (max(pair), min(pair)) if sign > 0 else (min(pair), max(pair))
        for kind in ("hybrid", "concat"):
            c = grid.get((chosen.get(kind, ""), t))
            if c is None:
                continue
            ok = sign * (c["value"] - (worse + KEEPS_MOST * (better - worse))) >= 0
            (keeps if ok else misses).setdefault(kind, []).append(t)
    parts = []
    untested = not any(grid.get((n, t), {}).get("low") is not None for n in chosen.values() for t in near)
    if wins and not losses and not ties:
        parts.append(f"each single source is best on the tasks near its own kind ({', '.join(wins)}): "
                     "the paper's pattern shows")
    elif wins and not losses:
        parts.append(f"each single source is best on the tasks near its own kind ({', '.join(wins)}), too close "
                     f"to call on {', '.join(ties)}: the paper's pattern shows in part, nothing contradicts it")
    elif losses:
        parts.append(f"the paper's pattern does not show: the source of the other kind is better on {', '.join(losses)}"
                     + (f" (own kind better on {', '.join(wins)})" if wins else ""))
    else:
        parts.append("the paper's pattern does not show: object and scene sources are within each other's intervals "
                     f"on {', '.join(ties) or 'every near task'}")
    for kind in ("hybrid", "concat"):
        if kind not in chosen:
            continue
        kept, missed = keeps.get(kind, []), misses.get(kind, [])
        title = "Hybrid" if kind == "hybrid" else "Concat"
        if kept and not missed:
            parts.append(f"{title} keeps most of both (at least half the single-source gap on {', '.join(kept)})")
        elif missed:
            parts.append(f"{title} does not keep most of both (below half the gap on {', '.join(missed)})")
    reading = "; ".join(parts) + "."
    return f"(no intervals in these rows: differences are not tested) {reading}" if untested else reading


def early_stopping(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Per target task, transfer vs the snapshot's own source validation accuracy."""
    from transferlab.report import plots

    plain = _plain_rows(rows)
    records = _records(meta)
    families: dict[tuple, list[str]] = {}
    for name, f in {r["source"]: r["factors"] for r in plain}.items():
        if source_kind_of(f) != "concat":
            families.setdefault(_family(f, "snapshot"), []).append(name)
    families = {k: sorted(v, key=lambda n: _int(records.get(n, {}).get("snapshot", -1))) for k, v in families.items()
                if len(v) >= 2}
    if not families:
        return ""
    tasks = _task_order([r for r in plain if any(r["source"] in v for v in families.values())], meta)
    grid = _grid(plain)
    fig = plots.new_figure(min(16.0, 2.6 * len(tasks) + 1.0), 3.0)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks, strict=True):
        for i, (_key, names) in enumerate(sorted(families.items())):
            points = [(x, r, n) for n in names
                      if (x := records.get(n, {}).get("val_accuracy")) is not None
                      and (r := grid.get((n, task))) is not None]
            if not points:
                continue
            xs = [100 * x for x, _, _ in points]
            ys = [100 * r["value"] for _, r, _ in points]
            err = None
            if all(r.get("low") is not None and r.get("high") is not None for _, r, _ in points):
                err = [[100 * (r["value"] - r["low"]) for _, r, _ in points],
                       [100 * (r["high"] - r["value"]) for _, r, _ in points]]
            label = names[0].split("@")[0]
            ax.errorbar(xs, ys, yerr=err, color=plots.colour(i), marker="o", markersize=4, linewidth=1.3,
                        capsize=2, label=label)
            for (x, _, n), y in zip(points, ys, strict=True):
                ax.annotate(f"@{records.get(n, {}).get('snapshot')}", (100 * x, y), fontsize=6,
                            textcoords="offset points", xytext=(2, 3))
        ax.set_title(task, fontsize=8)
        ax.set_xlabel("source val accuracy (%)", fontsize=7)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("target test metric (x100)", fontsize=7)
    axes[0].legend(fontsize=6, loc="best")
    png = embed_png(plots.to_png(fig), "early stopping: transfer vs source validation accuracy")
    labels: list[tuple[str, str]] = []
    for names in families.values():
        for n in names:
            labels.append((n, f"{esc(n)}"))
    table = _value_table(labels, tasks, grid, records, extra={n: [_acc(records.get(n))] for n, _ in labels},
                         extra_header=["source val acc"])
    return ("<h3>Early stopping</h3><figure>" + png + "<figcaption>Snapshots of one training run (@epoch): x = the "
            "snapshot's own accuracy on its source validation split, y = transfer to each target task at the "
            "study's standard setting (error bars: 95% interval when the rows carry one). The paper found transfer "
            "rising with source accuracy and flattening near the end of training.</figcaption></figure>" + table
            + f'<p class="reading"><strong>Reading:</strong> {esc(early_reading(families, tasks, grid, records))}</p>')


def early_reading(families: dict, tasks: list[str], grid: dict, records: dict) -> str:
    rises = total = 0
    for names in families.values():
        if any(records.get(n, {}).get("near_chance") for n in names[-1:]):
            continue
        for t in tasks:
            first, last = grid.get((names[0], t)), grid.get((names[-1], t))
            if first and last:
                total += 1
                sign = 1 if higher_better(last["metric"]) else -1
                rises += sign * (last["value"] - first["value"]) > 0
    if not total:
        return "no reading: the last snapshots are near chance or have no results."
    return (f"transfer is better at the last snapshot than at the first on {rises} of {total} (run, task) pairs"
            + (" — the paper's pattern (more source training, better transfer) shows." if rises > total / 2 else
               " — the paper's pattern does not show here."))


def factor_table(rows: list[dict[str, Any]], meta: dict[str, Any], vary: set[str], title: str, caption: str,
                 label) -> str:
    """Sources at their last snapshot that differ only in the factors ``vary``."""
    plain = _plain_rows(rows)
    final = {n: f for n, f in _final_sources(plain).items() if source_kind_of(f) != "concat"}
    groups: dict[tuple, list[str]] = {}
    for name, f in final.items():
        groups.setdefault(_family(f, vary | {"snapshot"}), []).append(name)
    groups = {k: v for k, v in groups.items() if len({_family(final[n], set()) for n in v}) >= 2}
    if not groups:
        return ""
    records = _records(meta)
    grid = _grid(plain)
    out = [f"<h3>{esc(title)}</h3><p class=\"caption\">{caption}</p>"]
    for names in groups.values():
        names = sorted(names, key=lambda n: label(final[n], records.get(n, {}))[1])
        tasks = _task_order([r for r in plain if r["source"] in names], meta)
        extra = {n: [esc(label(final[n], records.get(n, {}))[0]), _params((records.get(n) or {}).get("parameters")),
                     _acc(records.get(n))] for n in names}
        out.append(_value_table([(n, esc(n)) for n in names], tasks, grid, records, extra=extra,
                                extra_header=["setting", "parameters", "source val acc"]))
    return "".join(out)


def _architecture(f: dict[str, Any], r: dict[str, Any]) -> tuple[str, tuple]:
    widths = {"tiny": 0, "small": 1, "medium": 2, "large": 3}
    depth = {"alexnet": 8, "vgg16": 16}.get(str(f.get("arch")), 0)
    return f"{f.get('arch')} ({depth} layers), {f.get('width')}", (depth, widths.get(str(f.get("width")), 9))


def _diversity(f: dict[str, Any], r: dict[str, Any]) -> tuple[str, tuple]:
    images = r.get("images")
    classes = r.get("classes") or f.get("classes")
    per = f.get("images_per_class")
    text = f"{classes} classes × {per} per class" + (f" = {images} images" if images else "")
    return text, (images or 0, -(_int(classes) if classes else 0))


def finetune_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Off-the-shelf vs fine-tuned per task for trained sources that were fine-tuned."""
    tuned = _plain_rows(rows, finetune="on")
    if not tuned:
        return ""
    grid_off, grid_on = _grid(_plain_rows(rows)), _grid(tuned)
    tasks_meta = meta.get("tasks") or {}
    out = ["<h3>Fine-tuning the trained source</h3><p class=\"caption\">Off-the-shelf features (linear probe on "
           "the frozen network) against the network fine-tuned on each target task's train split (the study's "
           "finetune settings; C and epochs chosen as for every probe), tasks by distance. gain = fine-tuned − "
           "off-the-shelf.</p>"]
    for source in dict.fromkeys(r["source"] for r in tuned):
        tasks = _task_order([r for r in tuned if r["source"] == source], meta)
        body, gains = [], []
        for t in tasks:
            off, on = grid_off.get((source, t)), grid_on.get((source, t))
            gain = None
            if off and on:
                sign = 1 if higher_better(on["metric"]) else -1
                gain = sign * (on["value"] - off["value"])
                gains.append((t, gain))
            body.append([f'<th class="rowhead">{esc(t)}</th>',
                         f'<td>{esc(_distance_text(tasks_meta.get(t, {}).get("distance")))}</td>',
                         f'<td class="num">{cell_text(off) if off else "—"}</td>',
                         f'<td class="num">{cell_text(on) if on else "—"}</td>',
                         f'<td class="num">{"—" if gain is None else f"{100 * gain:+.1f}"}</td>'])
        out.append(f"<p><strong>{esc(source)}</strong>{_flag(_records(meta).get(source))}</p>"
                   + _table(["task", "distance", "off-the-shelf", "fine-tuned", "gain"], body))
        out.append(f'<p class="reading"><strong>Reading:</strong> {esc(finetune_reading(source, gains))}</p>')
    return "".join(out)


def finetune_reading(source: str, gains: list[tuple[str, float]]) -> str:
    """Is the gain larger on the tasks not near the source's kind (the far ones)?"""
    if len(gains) < 2:
        return "no reading: fewer than two tasks with both results."
    near = [g for t, g in gains if TARGET_NEAR.get(t) == "object"]
    far = [g for t, g in gains if TARGET_NEAR.get(t) != "object"]
    helped = sum(g > 0 for _, g in gains)
    text = f"fine-tuning helps on {helped} of {len(gains)} tasks"
    if near and far:
        mn, mf = sum(near) / len(near), sum(far) / len(far)
        text += (f"; mean gain {100 * mn:+.1f} on tasks near the object source, {100 * mf:+.1f} on the others — "
                 + ("fine-tuning helps more for far tasks, as in the paper." if mf > mn else
                    "the paper's 'helps more for far tasks' does not show here."))
    return text


def learning_section(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str | None:
    """The whole section, or None when the study trained no source."""
    if not any("source_task" in r["factors"] for r in rows) and not _records(meta):
        return None
    parts = [
        trained_sources_table(meta),
        source_task_table(rows, meta),
        early_stopping(rows, meta),
        factor_table(rows, meta, {"arch", "width"}, "Width and depth (equal training budget)",
                     "The 8-layer (AlexNet-like) and 16-layer (VGG-like) families at several widths, trained on the "
                     "same images for the same epochs; parameters = all weights of the network.", _architecture),
        factor_table(rows, meta, {"classes", "images_per_class"}, "Diversity vs density of the source",
                     "The same network trained on seeded subsets of its source task: fewer classes with more images "
                     "each at the same total (diversity vs density, Huh et al. 2016), and more images per class at "
                     "fixed classes. Rows sorted by total images.", _diversity),
        finetune_table(rows, meta),
    ]
    body = "".join(p for p in parts if p)
    return ('<h2>Learning factors</h2><p class="caption">Factors decided while training the source network '
            "(source task, width and depth, early stopping, diversity/density), from networks this study trained "
            "itself; every trained source is compared at the study's standard post-learning setting.</p>" + body)


def _register() -> None:
    from transferlab import report

    if learning_section not in report.sections:
        report.sections.append(learning_section)


_register()


def _distance_text(distance: object) -> str:
    """A task's distance rank as written in the task table (101, not 101.0; '' when unknown)."""
    if isinstance(distance, float) and distance.is_integer():
        return str(int(distance))
    return "" if distance is None else str(distance)
