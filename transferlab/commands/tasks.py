"""`transferlab tasks`: list the target tasks nearest-first, or check one dataset folder.

``tasks show NAME --root DIR`` reads the folder the way every other command will, but with
problems collected instead of raised, so a user fixing a download sees every missing file
and bad line at once; it exits non-zero while any problem remains.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from transferlab.commands._common import print_json


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "tasks",
        parents=[parent],
        help="list target tasks (nearest to ImageNet first) or check a dataset folder",
        description="List every target task with its group, distance rank, kind, metric and expected "
        "folder layout, nearest to ImageNet first; `tasks show NAME --root DIR` checks a dataset folder.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    actions = parser.add_subparsers(dest="tasks_action", metavar="ACTION")
    show = actions.add_parser(
        "show",
        parents=[parent],
        help="read a task's folder and report split sizes, classes and every problem",
        description="Read a task's dataset folder with problems collected; print split sizes, classes, "
        "queries, files used and every problem. Exit status 1 if there is any problem.",
    )
    show.add_argument("name", help="task name (see `transferlab tasks`)")
    show.add_argument(
        "--root", help="folder holding the extracted dataset (not needed for built-in tasks)"
    )
    show.add_argument(
        "-o", "--option", action="append", default=[], metavar="KEY=VALUE",
        help="reader option, e.g. -o partition=2 or -o crop=true (repeatable)",
    )  # fmt: skip
    show.add_argument("--json", dest="show_json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    as_json = bool(getattr(args, "json", False) or getattr(args, "show_json", False))
    if getattr(args, "tasks_action", None) == "show":
        return _show(args.name, args.root, _parse_options(args.option), as_json)
    return _list(as_json)


def _list(as_json: bool) -> int:
    from transferlab.data.tasks import all_tasks

    specs = all_tasks()
    rows = [
        {
            "name": s.name,
            "title": s.title,
            "group": s.group,
            "group_name": s.group_name,
            "distance": s.distance,
            "kind": s.kind,
            "metric": s.metric,
            "builtin": s.builtin,
            "layout": s.layout,
            "options": s.options,
            "protocol": s.protocol,
        }
        for s in specs
    ]
    if as_json:
        print_json(rows)
        return 0
    header = ("rank", "name", "group", "kind", "metric", "expected layout under --root")
    table: list[tuple[str, ...]] = [(str(r["distance"]), str(r["name"]), f'{r["group"]} {r["group_name"]}',
              str(r["kind"]), str(r["metric"]),
              "built-in (no --root)" if r["builtin"] else str(r["layout"])) for r in rows]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header) - 1)]
    for row in [header, *table]:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True))
            + "  "
            + row[-1]
        )
    return 0


def _show(name: str, root: str | None, options: dict[str, Any], as_json: bool) -> int:
    from transferlab.data.readers._util import Problems
    from transferlab.data.tasks import check_options, get_task, load_task, reader_options
    from transferlab.errors import TransferlabError

    spec = get_task(name)
    check_options(spec, options)
    accepted = reader_options(spec.reader)
    problems = Problems(collect=True)
    if accepted is None or "problems" in accepted:
        options = {**options, "problems": problems}
    task = None
    try:
        task = load_task(name, root, **options)
    except TransferlabError as exc:
        if root is None and not spec.builtin:
            raise
        problems.items.append(str(exc))
    summary = {
        "task": name,
        "root": task.root if task is not None else root,
        "kind": spec.kind,
        "metric": spec.metric,
        "splits": {k: len(v) for k, v in task.splits.items()} if task is not None else {},
        "classes": len(task.classes) if task is not None else 0,
        "queries": len(task.queries) if task is not None and task.queries is not None else 0,
        "source_files": list(task.source_files) if task is not None else [],
        "notes": list(task.notes) if task is not None else [],
        "problems": list(problems.items),
    }
    if as_json:
        print_json(summary)
    else:
        _print_summary(summary)
    return 1 if problems.items else 0


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"task     {summary['task']} ({summary['kind']}, metric {summary['metric']})")
    print(f"root     {summary['root']}")
    splits = ", ".join(f"{k} {v}" for k, v in summary["splits"].items()) or "none read"
    print(f"splits   {splits}")
    print(f"classes  {summary['classes']}")
    if summary["queries"]:
        print(f"queries  {summary['queries']}")
    for label, key in (("files used", "source_files"), ("notes", "notes")):
        if summary[key]:
            print(f"{label}:")
            for item in summary[key]:
                print(f"  {item}")
    if summary["problems"]:
        print(f"{len(summary['problems'])} problem(s):")
        for item in summary["problems"]:
            print(f"  {item}")
    else:
        print("no problems")


def _parse_options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are read as JSON (numbers, true/false, lists) or kept as text."""
    from transferlab.errors import TransferlabError

    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise TransferlabError(f"option {item!r}: expected KEY=VALUE")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = {"True": True, "False": False}.get(text, text)
        options[key.strip()] = value
    return options
