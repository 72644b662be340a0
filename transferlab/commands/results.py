"""`transferlab results RUN_DIR`: the results of a study as a table, CSV or JSON.

Reads ``RUN_DIR/results.sqlite`` (the ResultStore) without locking it, so it works while a
study is still writing.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "results",
        parents=[parent],
        help="print or export the results of a study run directory",
        description="Print the results stored in RUN_DIR/results.sqlite: a table (default; tasks nearest to "
        "the source first, only the factors that vary are shown; 'standard' marks the Deep Standard rows and "
        "'combined' the best-per-factor setting evaluated after a one-at-a-time sweep), CSV "
        "(--csv FILE, or --csv - for stdout) or JSON (--json: every field, NaN as null).",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the study's run directory")
    parser.add_argument("--csv", metavar="FILE", help="write CSV to FILE ('-' = stdout)")
    parser.add_argument("--json", action="store_true", help="print JSON (all fields, with provenance)")
    parser.add_argument("--task", help="only this task")
    parser.add_argument("--summary", action="store_true",
                        help="per task: Deep Standard, Deep Optimal (chosen on validation) and the oracle (best on "
                        "test), each with its 95%% interval, and optimal - standard with its paired interval")
    parser.add_argument("--all", action="store_true",
                        help="every row kept in the store, with its configuration hash (default: the rows of the "
                        "latest configuration run here)")
    parser.add_argument("--sources", action="store_true",
                        help="the run's trained sources instead: spec, source task(s), arch, width, snapshot, "
                        "images, classes and their own source validation accuracy (with --json: one entry each)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from transferlab.atomic import atomic_write_text
    from transferlab.results.store import ResultStore

    if getattr(args, "summary", False):
        return _summary(args)
    if getattr(args, "sources", False):
        return _print_sources(args)
    with ResultStore(args.run_dir, create=False) as store:
        current = not getattr(args, "all", False)
        if args.csv is not None:
            text = store.to_csv(current=current)
            if args.task:
                text = _filter_csv(text, args.task)
            if args.csv == "-":
                sys.stdout.write(text)
            else:
                atomic_write_text(args.csv, text)
                print(f"wrote {len(store.rows(args.task))} results to {args.csv}", file=sys.stderr)
            if not args.json:
                return 0
        if args.json:
            from transferlab.commands._common import print_json

            exported = store.export_rows(args.task)
            if current:
                from transferlab.results.rows import current_only

                exported = current_only(exported, store.meta())
            print_json(exported)
            return 0
        rows = store.current_rows(args.task) if current else store.rows(args.task)
        meta = store.meta()
        older = 0 if not current else len(store.rows(args.task)) - len(rows)
    if not rows:
        print(f"no results in {args.run_dir}" + (f" for task {args.task}" if args.task else ""))
        return 0
    _print_table(rows, meta, with_hash=not current)
    if older:
        print(f"{older} rows of earlier configurations not shown (--all lists them)")
    return 0


def _summary(args: argparse.Namespace) -> int:
    from transferlab.report.summary import summary_json, summary_table

    if args.json:
        from transferlab.commands._common import print_json

        tasks = summary_json(args.run_dir, current=not args.all)
        print_json([t for t in tasks if not args.task or t["task"] == args.task])
    else:
        print(summary_table(args.run_dir))
    return 0


def _role(row: dict[str, Any]) -> str:
    if row["standard"]:
        return "standard"
    return "combined" if row["factors"].get("sweep") == "optimal" else ""


def _filter_csv(text: str, task: str) -> str:
    import csv
    import io

    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    column = header.index("task")
    writer.writerows(r for r in reader if r[column] == task)
    return out.getvalue()


def _print_table(rows: list[dict[str, Any]], meta: dict[str, Any], with_hash: bool = False) -> None:
    from transferlab.report.formatting import fmt_interval, fmt_value
    from transferlab.report.tables import (
        config_of,
        fixed_factors,
        task_infos,
        value_label,
        varying_factors,
    )

    order = {t.name: i for i, t in enumerate(task_infos(rows, meta))}
    rows = sorted(rows, key=lambda r: (order[r["task"]], not r["standard"], r["created"]))
    varying = varying_factors(rows)
    fixed = fixed_factors(rows)
    if fixed:
        print("fixed: " + ", ".join(f"{k}={value_label(v)}" for k, v in fixed.items()))
    header = ["task", *varying, "metric", "value [95% interval]", "val", "row"] + (["config hash"] if with_hash else [])
    table = []
    for r in rows:
        config = config_of(r)
        cells = [value_label(config[k]) if k in config else "-" for k in varying]
        table.append([r["task"], *cells, r["metric"],
                      fmt_interval(r["metric"], r["value"], r.get("low"), r.get("high")),
                      fmt_value(r["metric"], r.get("val_value")), _role(r)]
                     + ([r.get("identity") or r.get("config_hash") or "-"] if with_hash else []))
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    numeric = {len(header) - (4 if with_hash else 3), len(header) - (3 if with_hash else 2)}
    for row in [header, *table]:
        line = "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        print(line.rstrip())
    print(f"{len(rows)} results; scores in [0, 1] shown x100")


SOURCE_COLUMNS = ("source", "kind", "arch", "width", "snapshot", "images", "classes", "val_accuracy")


def _print_sources(args: argparse.Namespace) -> int:
    """``--sources``: the trained sources' records stored by the study (meta ``trained_sources``)."""
    from transferlab.results.store import ResultStore

    with ResultStore(args.run_dir, create=False) as store:
        found = store.get_meta("trained_sources", {}) or {}
        order = {name: i for i, name in enumerate(store.get_meta("sources", []) or [])}
    records = [found[name] for name in sorted(found, key=lambda n: (order.get(n, len(order)), n))]
    if args.json:
        from transferlab.commands._common import print_json

        print_json(records)
        return 0
    if not records:
        print(f"no trained sources in {args.run_dir}")
        return 0
    table = [[_source_cell(r, c) for c in SOURCE_COLUMNS] for r in records]
    header = [*SOURCE_COLUMNS[:-1], "source val acc"]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    flagged = [r["source"] for r in records if r.get("near_chance")]
    if flagged:
        print(f"near chance on their own validation split (not learnt): {', '.join(flagged)}")
    return 0


def _source_cell(record: dict[str, Any], column: str) -> str:
    value = record.get(column)
    if column == "val_accuracy":
        if value is None:
            return "n/a"
        return f"{100 * value:.1f}" + (" (near chance)" if record.get("near_chance") else "")
    return "-" if value is None else str(value)
