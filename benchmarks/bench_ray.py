"""The Ray executor's speed, as ratios measured in one run with alternating sides (ABBA):

1. extraction: a study's extraction wall time on a two-raylet local cluster (1 CPU each)
   over the same on a one-raylet cluster of 1 CPU (target <= 0.65); both clusters are real
   `ray start` clusters on this machine, each measurement from an empty FeatureStore,
   worker start-up included;
2. overhead: a small study end to end with `--executor ray` (a private Ray on this machine)
   over the local executor;
3. demo: `transferlab demo [--quick]` with `--executor ray` over local (target <= 1.2), the
   built-in datasets and trained sources cached, the FeatureStore empty each time.

    .venv/bin/python benchmarks/bench_ray.py [--parts extraction,overhead,demo] [--rounds 1] [--demo quick|full]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXTRACTION_STUDY = {  # ~1600 real forwards of EfficientNet-Lite0 at 224 px, 6 shards
    "name": "bench-ray-extraction", "sources": ["efficientnet_lite0"], "tasks": ["digits", "shape_attributes"],
    "quick": False, "optimal": False, "factors": {"layers": [-1, -2], "pooling": ["avg", "max"]},
    "execution": {"batch_size": 32},
}
SMALL_STUDY = {
    "name": "bench-ray-small", "sources": ["efficientnet_lite0"], "tasks": ["digits", "photo_copies"],
    "quick": True, "factors": {"layers": [-1, -2], "pooling": ["avg", "max"], "pca_dims": [0, 16]},
    "probe": {"Cs": [0.1, 1.0, 10.0]}, "execution": {"batch_size": 32},
}


def _extract_once() -> None:
    """(In a subprocess, connected to a cluster by RAY_ADDRESS.) Time the extraction of
    every pending pair of the study in argv[2] into the store argv[3]; print JSON."""
    from transferlab.study.config import load_config
    from transferlab.study.executors import RayExecutor
    from transferlab.study.plan import make_plan
    from transferlab.study.run import _extractions_needed, extract_pair

    config = load_config(sys.argv[2])
    plan = make_plan(config)
    execution = {**config.execution.model_dump(), "progress": False}
    executor = RayExecutor(address="auto")
    requests = _extractions_needed(plan, set(), sys.argv[3], execution)
    start = time.perf_counter()
    executor.extract_ahead(extract_pair, requests)
    seconds = time.perf_counter() - start
    forwarded = sum(executor._forwarded.values())
    executor.shutdown()
    print(json.dumps({"seconds": seconds, "forwarded": forwarded}))


def _run(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _abba(rounds: int, a, b) -> tuple[list[float], list[float]]:
    """A B B A per round: a slow spell of the shared machine hits both sides."""
    times_a, times_b = [], []
    for _ in range(rounds):
        times_a.append(a())
        times_b.append(b())
        times_b.append(b())
        times_a.append(a())
    return times_a, times_b


def extraction(work: Path, rounds: int) -> dict:
    from transferlab.study.ray_local_cluster import LocalCluster

    config = work / "extraction.yaml"
    config.write_text(yaml.safe_dump(EXTRACTION_STUDY))
    counter = [0]
    extra = {"PYTHONPATH": os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)}
    with LocalCluster([1, 1], extra_env=extra) as two, LocalCluster([1], extra_env=extra) as one:
        def measure(cluster) -> float:
            counter[0] += 1
            store = work / f"store-extraction-{counter[0]}"
            done = subprocess.run([sys.executable, __file__, "--extract-once", str(config), str(store)],
                                  env=cluster.env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"extraction failed:\n{done.stderr[-3000:]}")
            shutil.rmtree(store, ignore_errors=True)
            return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]

        measure(one)  # warm-up: the first start of a Ray worker reads every library from disk
        times_two, times_one = _abba(rounds, lambda: measure(two), lambda: measure(one))
    return {"two_nodes_seconds": times_two, "one_node_seconds": times_one,
            "two_over_one": statistics.mean(times_two) / statistics.mean(times_one), "target": 0.65}


def _study_command(config: Path, executor: str, out: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "transferlab.cli", "study", str(config), "--executor", executor, "--out", str(out),
            "--cache", str(store), "--no-report", "--no-progress"]


def overhead(work: Path, rounds: int, env: dict) -> dict:
    config = work / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL_STUDY))
    counter = [0]

    def measure(executor: str) -> float:
        counter[0] += 1
        out, store = work / f"small-{counter[0]}", work / f"store-small-{counter[0]}"
        seconds = _run(_study_command(config, executor, out, store), env)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(store, ignore_errors=True)
        return seconds

    measure("local")  # warm-up (datasets materialised, files in the page cache)
    times_ray, times_local = _abba(rounds, lambda: measure("ray"), lambda: measure("local"))
    return {"ray_seconds": times_ray, "local_seconds": times_local,
            "ray_over_local": statistics.mean(times_ray) / statistics.mean(times_local),
            "ray_minus_local_seconds": statistics.mean(times_ray) - statistics.mean(times_local)}


def demo(work: Path, rounds: int, env: dict, variant: str) -> dict:
    counter = [0]
    features = Path(env["TRANSFERLAB_CACHE"]) / "features"
    flags = ["--quick"] if variant == "quick" else []

    def measure(executor: str) -> float:
        counter[0] += 1
        out = work / f"demo-{counter[0]}"
        shutil.rmtree(features, ignore_errors=True)
        seconds = _run([sys.executable, "-m", "transferlab.cli", "demo", *flags, "--executor", executor,
                        "--out", str(out), "--no-progress"], env)
        shutil.rmtree(out, ignore_errors=True)
        return seconds

    measure("local")  # warm-up: materialises the datasets and trains the demo's small sources once
    times_ray, times_local = _abba(rounds, lambda: measure("ray"), lambda: measure("local"))
    return {"variant": variant, "ray_seconds": times_ray, "local_seconds": times_local,
            "ray_over_local": statistics.mean(times_ray) / statistics.mean(times_local), "target": 1.2}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--extract-once":
        _extract_once()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="extraction,overhead,demo")
    parser.add_argument("--rounds", type=int, default=1, help="ABBA rounds per comparison")
    parser.add_argument("--demo", choices=["quick", "full"], default="quick")
    parser.add_argument("--out", default=str(HERE / "results" / "ray.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    env = {**os.environ, "TRANSFERLAB_CACHE": os.environ.get("TRANSFERLAB_CACHE") or str(work / "cache"),
           "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)}
    os.environ["TRANSFERLAB_CACHE"] = env["TRANSFERLAB_CACHE"]
    result: dict = {"machine": f"{os.cpu_count()} cores, shared with other jobs: ratios are within one run (ABBA)"}
    previous = Path(args.out)
    if previous.exists():
        result = {**json.loads(previous.read_text()), **result}
    try:
        for part in args.parts.split(","):
            if part == "extraction":
                result["extraction"] = extraction(work, args.rounds)
            elif part == "overhead":
                result["overhead"] = overhead(work, args.rounds, env)
            elif part == "demo":
                result[f"demo_{args.demo}"] = demo(work, args.rounds, env, args.demo)
            else:
                raise SystemExit(f"unknown part {part!r}")
            print(json.dumps({part: result.get(part) or result.get(f"demo_{args.demo}")}, indent=2), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from transferlab.atomic import atomic_write_text

    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
