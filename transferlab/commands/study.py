"""`transferlab study CONFIG`: run (or --dry-run plan) a factor study."""

from __future__ import annotations

import argparse
import sys

from transferlab.commands._common import print_json


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "study", parents=[parent], help="run a factor study from a YAML config",
        description="Plan the fewest forward passes for the sources x tasks x factor values of "
        "CONFIG, run them (locally or on Ray), store every result in RUN_DIR/results.sqlite "
        "and write the report. A killed run resumes where it stopped.",
        epilog="example: transferlab study configs/offline.yaml --out runs/offline",
    )
    p.add_argument("config", help="study YAML (see configs/offline.yaml, configs/paper.yaml)")
    p.add_argument("--out", default=None, help="run directory [runs/<study name>]")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan; compute nothing")
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument("--address", help="Ray cluster address (auto or HOST:PORT); default: start a local Ray")
    p.add_argument("--cache", help="FeatureStore folder [$TRANSFERLAB_CACHE/features]")
    p.add_argument("--no-report", action="store_true", help="do not write report.html at the end")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the plan (--dry-run) or the run summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from transferlab.study.config import load_config
    from transferlab.study.plan import make_plan

    config = load_config(args.config)
    run_dir = Path(args.out) if args.out else default_run_dir(config.name, args.config)
    if args.dry_run:
        plan = make_plan(config)
        done = _done_keys(run_dir)
        summary = plan.summary(done)
        if args.json:
            print_json({"config": args.config, "run_dir": str(run_dir), **summary})
        else:
            print_plan(config.name, summary)
        return 0
    from transferlab.study.run import run_study

    result = run_study(config, run_dir, executor=args.executor, address=args.address, cache=args.cache,
                       progress=not args.no_progress)
    report = None
    if not args.no_report:
        from transferlab.report import build_report

        report = build_report(run_dir)
    if args.json:
        print_json({"run_dir": str(run_dir), "new_results": result.new_results, "skipped": result.skipped,
                    "forwarded_images": result.forwarded_images, "seconds": round(result.seconds, 2),
                    "failures": result.failures, "report": str(report) if report else None})
    else:
        print_run_summary(run_dir, result, report)
    return 1 if result.failures else 0


def default_run_dir(name: str, config_path: str):
    """runs/<name>; a name that would put the run elsewhere (absolute, or climbing with ..)
    is refused: a typo there must not write into, or lock, some other folder."""
    from pathlib import Path, PurePath

    from transferlab.errors import TransferlabError

    parts = PurePath(name).parts
    if not name.strip() or PurePath(name).is_absolute() or ".." in parts or "~" in name[:1]:
        raise TransferlabError(f"{config_path}: study name {name!r} is not a plain run name (it would write "
                               "outside runs/); give --out RUN_DIR, or a name without '..' "
                               "and not starting with '/' or '~'")
    return Path("runs") / name


def _done_keys(run_dir) -> set[str]:
    from transferlab.results.store import DB_NAME, ResultStore

    if not (run_dir / DB_NAME).exists():
        return set()
    with ResultStore(run_dir, create=False) as store:  # read only: a dry run never takes the write lock
        return store.done_keys()


def print_plan(name: str, s: dict) -> None:
    minutes = s["estimated_seconds_cpu"] / 60
    print(f"study {name!r}: {len(s['sources'])} sources x {len(s['tasks'])} tasks")
    print(f"  forward passes : {s['forward_groups']} (source, task) groups, {s['image_forwards']:,} image forwards")
    print(f"  probe fits     : {s['probe_fits']}")
    print(f"  retrieval evals: {s['retrieval_evaluations']}")
    print(f"  fine-tuning    : {s['finetune_runs']} runs")
    print(f"  jobs           : {s['jobs_total']} ({s['jobs_done']} already done) + Deep Optimal per (source, task)")
    print(f"  estimated time : ~{minutes:.1f} min on 2 CPU cores (much less on a GPU)")
    for note in s["notes"]:
        print(f"  note: {note}")


def print_run_summary(run_dir, result, report) -> None:
    from transferlab.report.summary import summary_table

    print(summary_table(run_dir))
    print(f"\n{result.new_results} new results, {result.skipped} already done, "
          f"{result.forwarded_images:,} images forwarded, {result.seconds:.0f} s")
    if result.failures:
        print(f"{len(result.failures)} jobs failed (see messages above)", file=sys.stderr)
    if report:
        print(f"report: {report}")
