"""`transferlab demo`: the offline study end to end on the built-in default."""

from __future__ import annotations

import argparse

SMOKE_TEST = ("a smoke test: its test sets (5-15 images per class, 10 retrieval queries reported) are too small "
              "to tell configurations apart; run `transferlab demo` for an answer")


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "demo", parents=[parent], help="run the built-in offline study and write its report",
        description="Run configs/offline.yaml (built-in ImageNet sources, built-in offline tasks) "
        "end to end, print a summary table and write report.html. Nothing is downloaded.",
    )
    p.add_argument("--quick", action="store_true",
                   help="one source, fewer factor values, small test sets: a ~30 s smoke test")
    p.add_argument("--out", default="runs/demo", help="run directory [runs/demo, runs/demo-quick with --quick]")
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from transferlab.commands.study import print_run_summary
    from transferlab.report import build_report
    from transferlab.study.config import load_config
    from transferlab.study.demo import offline_config_path, quick_variant
    from transferlab.study.run import run_study

    config = load_config(offline_config_path())
    out = args.out
    if args.quick:
        config = quick_variant(config)
        out = out if out != "runs/demo" else "runs/demo-quick"
    print(f"transferlab demo: study {config.name!r} -> {out} (rerun to resume; results are kept)")
    result = run_study(config, out, executor=args.executor, progress=not args.no_progress)
    if args.quick:
        from transferlab.results.store import ResultStore

        with ResultStore(out) as store:  # the report and the summary say it plainly
            store.set_meta("smoke_test", SMOKE_TEST)
        print(f"transferlab demo --quick: {SMOKE_TEST}")
    report = build_report(out)
    print_run_summary(out, result, report)
    return 1 if result.failures else 0
