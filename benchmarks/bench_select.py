"""Time `transferlab select`'s scoring against full probing and measure their rank agreement;
print the figures and write benchmarks/results/select.json.

    .venv/bin/python benchmarks/bench_select.py [--tasks digits,fashion_upper,shape_relations]
        [--sources efficientnet_lite0,mobilenet_v2] [--cache DIR] [--device auto] [--smoke]

Per built-in task (quick sizes): features of every (source, layer -1..-4, pooling avg/max/grid2)
are extracted once (timed separately, a FeatureStore hit when already cached), then every
candidate is scored with LogME, leave-one-out 1-NN and H-score on its L2-normalised train
features, and probed with the study's linear probe (C on val, the task's metric on test).
Reported: seconds (wall, and CPU time of the process, which a busy machine inflates less)
to score all candidates vs to probe all, and per score the Spearman
correlation of score vs probe over the candidates, whether the top-scored candidate is the
probe's best (top-1), how many of the top 3 by score are among the top 3 by probe, and the
regret of ``select --confirm 3``: the best probe value overall minus the best among the top 3
by score.
``--smoke``: one task, one source, two layers (checks the script, not a figure to report).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.atomic import atomic_write_text
from transferlab.data.tasks import get_task, load_task
from transferlab.features.store import FeatureStore
from transferlab.results.encoding import finite_or_none
from transferlab.study.config import ProbeConfig
from transferlab.study.select import (
    Candidate,
    agreement,
    candidates_of,
    extract_sources,
    probe_candidates,
    score_candidates,
)

RESULTS = Path(__file__).resolve().parent / "results" / "select.json"
SCORES = ("logme", "knn1", "hscore")


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def _name(c: Candidate) -> str:
    return f"{c.source} {c.layer} {c.pooling}"


def warm_up() -> None:
    """Run each score and one probe on tiny data first, so imports and first-call costs are not timed."""
    from transferlab.heads.probe import LinearProbe
    from transferlab.study.select import score_features

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 8)), np.repeat(np.arange(4), 10)
    for score in SCORES:
        score_features(x, y, score)
    LinearProbe(Cs=np.array([1.0])).fit(x.astype(np.float32), y)


def bench_task(name: str, sources: list[str], layers: list[int], poolings: list[str], store: FeatureStore,
               device: str, probe: ProbeConfig, weights: str | None = None) -> dict[str, Any]:
    spec = get_task(name)
    task = load_task(name, quick=True)
    start = time.perf_counter()
    features, forwarded, notes = extract_sources(task, sources, layers, poolings, store=store, device=device,
                                                 weights=weights)
    extract_seconds = time.perf_counter() - start
    candidates, more = candidates_of(features, poolings)
    notes += more
    scored: dict[str, dict[str, Any]] = {}
    for score in SCORES:
        copies = [Candidate(c.source, c.layer, c.layer_name, c.pooling) for c in candidates]
        start, cpu = time.perf_counter(), time.process_time()
        notes += score_candidates(task, features, copies, score)
        scored[score] = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
                         "values": [c.score for c in copies]}
    start, cpu = time.perf_counter(), time.process_time()
    probe_candidates(task, spec.metric, features, candidates, probe)
    probe_seconds, probe_cpu = time.perf_counter() - start, time.process_time() - cpu
    values = [c.probe for c in candidates]
    best = max(range(len(candidates)), key=lambda i: values[i])
    out: dict[str, Any] = {
        "task": name, "metric": spec.metric, "candidates": len(candidates), "classes": len(task.classes),
        "n_train": int(len(task.splits["train"])),
        "extract_seconds": extract_seconds, "forwarded_images": forwarded,
        "probe_seconds": probe_seconds, "probe_cpu_seconds": probe_cpu,
        # each probe row also stores LogME and 1-NN of its features (evaluate_probe_job): take that out
        "probe_seconds_without_stored_scores": probe_seconds - scored["logme"]["seconds"] - scored["knn1"]["seconds"],
        "best_by_probe": {"candidate": _name(candidates[best]), "value": values[best]},
        "scores": {}, "notes": notes,
    }  # fmt: skip
    for score, found in scored.items():
        top = int(np.nanargmax(found["values"]))
        out["scores"][score] = {
            "seconds": found["seconds"], "cpu_seconds": found["cpu_seconds"],
            "speedup_vs_probing": out["probe_seconds_without_stored_scores"] / found["seconds"],
            "agreement": agreement(found["values"], values),
            "best_by_score": {"candidate": _name(candidates[top]), "score": found["values"][top],
                              "probe_value": values[top]},
        }  # fmt: skip
    out["points"] = [{"candidate": _name(c), "probe": c.probe, **{s: scored[s]["values"][i] for s in SCORES}}
                     for i, c in enumerate(candidates)]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="digits,fashion_upper,shape_relations")
    parser.add_argument("--sources", default="efficientnet_lite0,mobilenet_v2")
    parser.add_argument("--layers", default="-1,-2,-3,-4")
    parser.add_argument("--pool", default="avg,max,grid2")
    parser.add_argument("--cache", help="FeatureStore folder [$TRANSFERLAB_CACHE/features]")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", help="weights for every source (e.g. none), as in transferlab select")
    parser.add_argument("--smoke", action="store_true", help="one task, one source, two layers")
    parser.add_argument("--out", type=Path, default=None, help=f"default {RESULTS} (not for --smoke)")
    args = parser.parse_args()
    tasks, sources = args.tasks.split(","), args.sources.split(",")
    layers = [int(x) for x in args.layers.split(",")]
    poolings = args.pool.split(",")
    if args.smoke:
        tasks, sources, layers = tasks[:1], sources[:1], layers[:2]
    store = FeatureStore(args.cache) if args.cache else FeatureStore()
    probe = ProbeConfig()
    warm_up()
    results = []
    for name in tasks:
        r = bench_task(name, sources, layers, poolings, store, args.device, probe, args.weights)
        results.append(r)
        print(f"{name} ({r['metric']}): {r['candidates']} candidates; extraction {r['extract_seconds']:.1f} s "
              f"({r['forwarded_images']} images forwarded); probing all {r['probe_seconds']:.1f} s "
              f"({r['probe_seconds_without_stored_scores']:.1f} s without the stored scores); "
              f"best by probe: {r['best_by_probe']['candidate']} = {r['best_by_probe']['value']:.4f}")
        for score, s in r["scores"].items():
            a = s["agreement"]
            print(f"  {score:<7} scoring all {s['seconds']:6.2f} s ({s['speedup_vs_probing']:5.1f}x faster); "
                  f"Spearman {a['spearman']:+.2f} (p = {a['p_value']:.2g}); "
                  f"top-1 {'hit' if a['top1_hit'] else 'miss'}; "
                  f"top-3 overlap {a['top3_overlap']}/3; best by score: {s['best_by_score']['candidate']} "
                  f"(probe {s['best_by_score']['probe_value']:.4f}); best of its top 3 {a['confirmed_best']:.4f} "
                  f"(regret {a['regret']:.4f})")
    summary = {}
    for score in SCORES:
        seconds = sum(r["scores"][score]["seconds"] for r in results)
        probing = sum(r["probe_seconds_without_stored_scores"] for r in results)
        rhos = [r["scores"][score]["agreement"]["spearman"] for r in results]
        summary[score] = {
            "score_seconds": seconds, "probe_seconds": probing, "speedup": probing / seconds,
            "mean_spearman": float(np.nanmean(rhos)),
            "top1_hits": sum(r["scores"][score]["agreement"]["top1_hit"] for r in results),
            "top3_overlap_mean": float(np.mean([r["scores"][score]["agreement"]["top3_overlap"] for r in results])),
            "mean_regret": float(np.mean([r["scores"][score]["agreement"]["regret"] for r in results])),
            "tasks": len(results),
        }  # fmt: skip
        s = summary[score]
        print(f"{score:<7} over {len(results)} tasks: scoring {seconds:.1f} s vs probing {probing:.1f} s "
              f"({s['speedup']:.1f}x); mean Spearman {s['mean_spearman']:+.2f}; top-1 {s['top1_hits']}/{len(results)}; "
              f"mean top-3 overlap {s['top3_overlap_mean']:.1f}/3; mean regret of --confirm 3 {s['mean_regret']:.4f}")
    payload = finite_or_none({
        "command": "benchmarks/bench_select.py " + " ".join(f"--{k}={v}" for k, v in vars(args).items()
                                                             if v not in (None, False) and k != "out"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "sources": sources, "layers": layers, "poolings": poolings, "probe_Cs": list(probe.Cs),
        "summary": summary, "tasks": results,
    })  # fmt: skip
    if not args.smoke or args.out:
        out = args.out or RESULTS
        _write_atomic(out, payload)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
