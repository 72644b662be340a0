"""Study cost: a 4 layers x 3 poolings x 3 PCA dims sweep (36 probe fits, full grid) against
a single-configuration run of the same task, each from an empty FeatureStore; and a rerun
of the finished sweep against its first run. Ratios measured in one run.

    .venv/bin/python benchmarks/bench_study.py [--task fashion_mnist] [--source efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def timed_study(config: dict, run_dir: Path, cache: Path) -> tuple[float, object]:
    from transferlab.study.config import parse_config
    from transferlab.study.run import run_study

    start = time.perf_counter()
    summary = run_study(parse_config(config), run_dir, cache=str(cache), progress=False)
    return time.perf_counter() - start, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="fashion_mnist")
    parser.add_argument("--source", default="efficientnet_lite0")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "study.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-study-"))
    os.environ.setdefault("TRANSFERLAB_CACHE", str(work / "cache"))
    base = {"name": "bench", "sources": [args.source], "tasks": [args.task], "optimal": False,
            "probe": {"Cs": [0.01, 0.1, 1.0, 10.0]}}
    sweep = {**base, "sweep": "grid",
             "factors": {"layers": [-1, -2, -3, -4], "pooling": ["avg", "max", "grid2"], "pca_dims": [0, 64, 256]}}
    from transferlab.atomic import atomic_write_text
    from transferlab.data.tasks import load_task

    load_task(args.task)  # materialise the built-in images outside the timings
    # a throwaway run first: lazy imports, first forward and first probe would otherwise all be
    # charged to the single-configuration baseline and flatter the ratio
    timed_study(base, work / "warm-up", work / "store-warm-up")
    # the single configuration before and after the sweep, so a slow spell hits both sides
    t_before, single = timed_study(base, work / "single", work / "store-single")
    t_sweep, swept = timed_study(sweep, work / "sweep", work / "store-sweep")
    t_after, _ = timed_study(base, work / "single-again", work / "store-single-again")
    t_single = (t_before + t_after) / 2
    t_rerun, rerun = timed_study(sweep, work / "sweep", work / "store-sweep")
    result = {
        "task": args.task, "source": args.source,
        "single_seconds": t_single, "single_seconds_before_after": [t_before, t_after],
        "sweep_seconds": t_sweep, "rerun_seconds": t_rerun,
        "sweep_jobs": swept.new_results, "single_jobs": single.new_results,
        "images_forwarded": swept.forwarded_images,
        "sweep_over_single": t_sweep / t_single, "rerun_over_first": t_rerun / t_sweep,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"{args.source} on {args.task}: {swept.forwarded_images} images forwarded once")
    print(f"  single configuration : {t_single:.1f} s (1 probe fit)")
    print(
        f"  4x3x3 grid sweep     : {t_sweep:.1f} s ({swept.new_results} probe fits) = "
        f"x{t_sweep / t_single:.2f} (target <= 1.3)"
    )
    print(f"  rerun of the sweep   : {t_rerun:.1f} s = {t_rerun / t_sweep:.1%} of the first run (target < 10%)")


if __name__ == "__main__":
    main()
