"""`transferlab report RUN_DIR`: write RUN_DIR/report.html (self-contained) and results.csv."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "report",
        parents=[parent],
        help="write the HTML report (tables, factor plots) of a study run directory",
        description="Write RUN_DIR/report.html, one self-contained page (images embedded, no JavaScript): "
        "Deep Standard vs Deep Optimal with the error reduction per task, the best factor values per task, "
        "one plot and table per factor with tasks ordered by distance, and the protocol behind each "
        "number; also RUN_DIR/results.csv. Works while the study is still running.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the study's run directory")
    parser.add_argument("--json", action="store_true",
                        help='print {"report", "csv", "tasks", "results", "older_results"} as JSON '
                        "(results: the current configuration's rows, the ones the report shows)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from transferlab.report import build_report
    from transferlab.report.html import CSV_NAME
    from transferlab.results.store import ResultStore

    path = build_report(args.run_dir)
    if args.json:
        from transferlab.commands._common import print_json

        with ResultStore(args.run_dir, create=False) as store:
            rows = store.current_rows()  # what the report shows: the current configuration's rows
            older = store.count() - len(rows)
        print_json(
            {
                "report": str(path),
                "csv": str(path.with_name(CSV_NAME)),
                "tasks": len({r["task"] for r in rows}),
                "results": len(rows),
                "older_results": older,
            }
        )
    else:
        print(path)
    return 0
