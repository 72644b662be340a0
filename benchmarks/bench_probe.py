"""LinearProbe against scikit-learn over a matrix of (n train rows, d dims, classes) cells.

For every cell both losses are timed against their like-for-like scikit-learn baseline:
``LinearProbe(loss="squared_hinge")`` vs ``LinearSVC`` (one-vs-rest) and
``LinearProbe(loss="logistic")`` vs ``OneVsRestClassifier(LogisticRegression)``. Protocol, the
same for all four: C grid 0.01 ... 100 (7 values); train on the n training rows, score accuracy on
the validation rows (n / 4); the best C (first maximum) is refit on train + val; test accuracy on
held-out rows; the wall time covers the whole selection + refit. Features are L2-normalised.

Features: real ConvNet features where the built-in data has them (EfficientNet-Lite0 on the
built-in ``fashion_mnist``: 500 train / 100 val / 300 test, layer ``blocks.5`` avg = 192-d and
the last layer avg = 1280-d, extracted through the package's own FeatureStore), synthetic ones
elsewhere (ReLU of a random projection of Gaussian class clusters). Inside a cell the order of
the two sides alternates from cell to cell (ABBA), as the machine may be shared, and each side
starts after ``SETTLE`` seconds of quiet: numpy's OpenBLAS workers spin ~0.1-0.3 s after a
threaded matmul (data generation, the other side's scoring), and whichever side ran in that window
would share the cores with them (a 600 x 192 probe fit measured 0.15 s instead of 0.075).

    .venv/bin/python benchmarks/bench_probe.py            # a subset of cells, a few minutes
    .venv/bin/python benchmarks/bench_probe.py --full     # n {500,2000,8000} x d {192,1280,4096} x {10,100}
    .venv/bin/python benchmarks/bench_probe.py --cells 2000x4096x100,500x1280x10
    .venv/bin/python benchmarks/bench_probe.py --scaling  # per-row cost at three n (one d, classes)
    .venv/bin/python benchmarks/bench_probe.py --matmul   # X~ V layouts for thin V (Design.margins)

Cells run smallest first (n * d * classes) and the results file is rewritten after each one, so an
interrupted run keeps what it measured and a rerun with ``--cells`` adds the rest.
Writes benchmarks/results/probe_matrix.json (``--out``), merging cells measured by earlier runs
(benchmarks/results/probe.json is the older 10k x 1280 measurement quoted in the README).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.svm import LinearSVC

from transferlab.atomic import atomic_write_text
from transferlab.features.postprocess import build_postprocess
from transferlab.heads.cpu_threads import idle_cores, torch_threads
from transferlab.heads.probe import LinearProbe, stack_validation

RESULTS = Path(__file__).resolve().parent / "results" / "probe_matrix.json"
CS = np.logspace(-2, 2, 7)
FULL = [(n, d, k) for n in (500, 2000, 8000) for d in (192, 1280, 4096) for k in (10, 100)]
SUBSET = [(500, 192, 10), (500, 1280, 10), (500, 4096, 100), (2000, 1280, 10), (2000, 4096, 100),
          (2000, 192, 100)]
REAL = {(500, 192, 10): "blocks.5", (500, 1280, 10): "features"}  # fashion_mnist, EfficientNet-Lite0
N_TEST = 1000
SETTLE = 0.5  # seconds of quiet before each timed side (thread pools of the previous work asleep)


def synthetic(n: int, d: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed + 7919 * d + k)
    n_all = n + n // 4 + N_TEST
    means = rng.standard_normal((k, 128)) * 0.3
    y = np.concatenate([np.arange(k), rng.integers(0, k, n_all - k)])  # every class in training
    y[:n] = rng.permutation(y[:n])
    Z = means[y] + rng.standard_normal((n_all, 128))
    X = np.maximum(Z @ (rng.standard_normal((128, d)) / np.sqrt(128)), 0).astype(np.float32)
    cut = (n, n + n // 4)
    parts = (X[: cut[0]], X[cut[0] : cut[1]], X[cut[1] :])
    labels = (y[: cut[0]], y[cut[0] : cut[1]], y[cut[1] :])
    return parts, labels, "synthetic: Gaussian class clusters (128-d) -> ReLU(random projection)"


def real(layer: str):
    from transferlab.data.tasks import load_task
    from transferlab.features.extract import extract
    from transferlab.sources import load_source

    source = load_source("efficientnet_lite0")
    task = load_task("fashion_mnist")
    # every real cell's layer in one forward pass: the store then serves the other cell's layer
    layers = [spec for spec in source.resolve_layers([-1, -2, -3, -4]) if spec.name in REAL.values()]
    chosen = next(spec for spec in layers if spec.name == layer)
    parts, labels = [], []
    for name in ("train", "val", "test"):
        split = task.split(name)
        features = extract(source, split, layers, ["avg"], progress=False)
        parts.append(features.get(chosen, "avg"))
        labels.append(np.asarray(split.labels)[features.kept])
    return tuple(parts), tuple(labels), f"real: EfficientNet-Lite0 {layer} avg on built-in fashion_mnist"


def time_probe(loss: str, data) -> dict:
    (Xtr, Xva, Xte), (ytr, yva, yte) = data
    time.sleep(SETTLE)
    start = time.perf_counter()
    X, y, split = stack_validation(Xtr, ytr, Xva, yva)  # C chosen on val, refit on train + val
    probe = LinearProbe(loss=loss, Cs=CS, device="cpu", cv=split).fit(X, y)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "C": probe.C_, "val_accuracy": [round(float(s), 4) for s in probe.cv_scores_],
            "test_accuracy": round(probe.score(Xte, yte), 4), **probe.solver_stats_}


def time_sklearn(loss: str, data) -> dict:
    (Xtr, Xva, Xte), (ytr, yva, yte) = data

    def model(C):
        if loss == "squared_hinge":
            return LinearSVC(C=C)
        return OneVsRestClassifier(LogisticRegression(C=C, max_iter=1000))

    time.sleep(SETTLE)
    start = time.perf_counter()
    val = [model(C).fit(Xtr, ytr).score(Xva, yva) for C in CS]
    best = int(np.argmax(val))
    final = model(CS[best]).fit(np.concatenate([Xtr, Xva]), np.concatenate([ytr, yva]))
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "C": float(CS[best]), "val_accuracy": [round(float(s), 4) for s in val],
            "test_accuracy": round(final.score(Xte, yte), 4)}


def measure_cell(n: int, d: int, k: int, index: int, logistic_max: float = math.inf,
                 hinge_max: float = math.inf) -> dict:
    if (n, d, k) in REAL:
        parts, labels, origin = real(REAL[(n, d, k)])
    else:
        parts, labels, origin = synthetic(n, d, k)
    l2 = build_postprocess("l2")
    parts = tuple(l2.fit_transform(p) for p in parts)
    data = (parts, labels)
    row = {"n": n, "d": d, "classes": k, "features": origin, "n_val": len(parts[1]), "n_test": len(parts[2]),
           "load_before": [round(x, 2) for x in os.getloadavg()], "idle_cores_before": round(idle_cores(0.2), 2)}
    for loss, baseline in (("squared_hinge", "linearsvc"), ("logistic", "ovr_logistic_regression")):
        limit, flag = (logistic_max, "--logistic-max") if loss == "logistic" else (hinge_max, "--hinge-max")
        if n * d * k > limit:  # bounded cell: recorded as not run, never extrapolated
            row[loss] = {"skipped": f"not run: n*d*classes > {flag} {limit:g}"}
            print(f"  {n}x{d}x{k} {loss:13s} not run ({flag} {limit:g})", flush=True)
            continue
        sides = [("probe", lambda loss=loss: time_probe(loss, data)),
                 ("sklearn", lambda loss=loss: time_sklearn(loss, data))]
        if index % 2:  # ABBA across cells
            sides.reverse()
        timings = {name: fn() for name, fn in sides}
        row[loss] = {"probe": timings["probe"], baseline: timings["sklearn"],
                     "speedup": round(timings["sklearn"]["seconds"] / timings["probe"]["seconds"], 2)}
        print(f"  {n}x{d}x{k} {loss:13s} probe {timings['probe']['seconds']:7.2f} s (C={timings['probe']['C']:g}, "
              f"test {timings['probe']['test_accuracy']:.4f})  {baseline} {timings['sklearn']['seconds']:7.2f} s "
              f"(C={timings['sklearn']['C']:g}, test {timings['sklearn']['test_accuracy']:.4f})  "
              f"x{row[loss]['speedup']}", flush=True)
    row["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return row


def scaling(d: int, k: int, sizes=(2000, 4000, 8000)) -> list[dict]:
    """Per-row cost of the probe (squared hinge, the full selection + refit) at three n."""
    rows = []
    for n in sizes:
        parts, labels, origin = synthetic(n, d, k)
        parts = tuple(build_postprocess("l2").fit_transform(p) for p in parts)
        result = time_probe("squared_hinge", (parts, labels))
        rows.append({"n": n, "d": d, "classes": k, "seconds": result["seconds"],
                     "ms_per_row": round(1000 * result["seconds"] / (n + n // 4), 3)})
        print(f"  scaling n={n} d={d} k={k}: {result['seconds']:.2f} s = {rows[-1]['ms_per_row']:.3f} ms/row",
              flush=True)
    return rows


def matmul_layouts(shapes=((625, 193), (2500, 1281)), widths=(1, 3, 5, 8, 16, 30, 100)) -> list[dict]:
    """Microseconds of X~ V three ways, one thread, best of 5 x 50: why ``Design.margins``
    reads a contiguous A^T for thin V (the transposed view is 4-8x slower at 2-7 columns)."""
    rows = []
    with torch_threads(1):
        for n, p in shapes:
            A = torch.randn(n, p)
            AT = A.T.contiguous()
            for h in widths:
                V = torch.randn(p, h)
                ways = {"(V^T A^T)^T view": lambda A=A, V=V: (V.T @ A.T).T, "A V": lambda A=A, V=V: A @ V,
                        "(V^T A^T)^T contiguous": lambda AT=AT, V=V: (V.T @ AT).T}
                row = {"n": n, "p": p, "columns": h}
                for name, fn in ways.items():
                    best = math.inf
                    for _ in range(5):
                        start = time.perf_counter()
                        for _ in range(50):
                            fn()
                        best = min(best, (time.perf_counter() - start) / 50)
                    row[name] = round(best * 1e6, 1)
                rows.append(row)
                print("  " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return rows


def _baseline(pair: dict) -> dict:
    """The scikit-learn side of a measured pair (LinearSVC or OvR LogisticRegression)."""
    return next(v for key, v in pair.items() if key not in ("probe", "speedup"))


def summary(cells: list[dict]) -> dict:
    out = {}
    for loss in ("squared_hinge", "logistic"):
        done = [c for c in cells if "speedup" in c.get(loss, {})]
        speedups = [c[loss]["speedup"] for c in done]
        if speedups:
            out[loss] = {"cells": len(speedups), "min": min(speedups),
                         "geomean": round(math.exp(np.mean(np.log(speedups))), 2),
                         "max_test_accuracy_gap": max(
                             abs(c[loss]["probe"]["test_accuracy"] - _baseline(c[loss])["test_accuracy"])
                             for c in done)}
    return out


def markdown_table(result: dict) -> str:
    """The README's table of a results file: one row per cell, both losses."""

    def short(x: float) -> str:
        return f"{x:.0f}" if x >= 100 else f"{x:.3g}"

    def pair(row: dict, loss: str, baseline: str) -> list[str]:
        entry = row.get(loss, {})
        if "probe" not in entry:
            why = "not run (" + entry.get("skipped", "not run").removeprefix("not run: ") + ")"
            return [why, "", ""] if loss == "logistic" else [why, "", "", ""]
        ours, theirs = entry["probe"], entry[baseline]
        same_C = ours["C"] == theirs["C"]
        times = f"{short(ours['seconds'])} s vs {short(theirs['seconds'])} s"
        accuracy = (f"{ours['test_accuracy']:.3f}" if same_C and ours["test_accuracy"] == theirs["test_accuracy"]
                    else f"{ours['test_accuracy']:.3f} / {theirs['test_accuracy']:.3f}")
        if loss == "logistic":
            if not same_C:
                accuracy += f" (C {short(ours['C'])} / {short(theirs['C'])})"
            return [times, f"**{entry['speedup']}×**", accuracy]
        C = short(ours["C"]) if same_C else f"{short(ours['C'])} / {short(theirs['C'])}"
        return [times, f"**{entry['speedup']}×**", C, accuracy]

    lines = ["| n × d × classes | features | squared hinge: LinearProbe vs LinearSVC | speed-up | "
             "C (probe / LinearSVC) | test acc. | logistic: LinearProbe vs OvR(LogisticRegression) | speed-up | "
             "test acc. |", "|---|---|---|---|---|---|---|---|---|"]
    for row in result["cells"]:
        origin = row["features"].split(":")[0]
        if origin == "real":
            origin = "real (Lite0 " + row["features"].split("Lite0 ")[1].split(" ")[0] + ")"
        cells = [f"{row['n']} × {row['d']} × {row['classes']}", origin,
                 *pair(row, "squared_hinge", "linearsvc"), *pair(row, "logistic", "ovr_logistic_regression")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_cells(text: str) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in cell.lower().split("x")) for cell in text.split(",") if cell.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--full", action="store_true", help="all 18 cells (hours on 2 shared cores: LinearSVC)")
    group.add_argument("--cells", type=parse_cells, help="comma-separated NxDxK cells")
    group.add_argument("--quick", action="store_true", help="one small cell, nothing written")
    parser.add_argument("--scaling", action="store_true", help="also the per-row cost at n = 2000, 4000, 8000")
    parser.add_argument("--logistic-max", type=float, default=None,
                        help="skip the logistic pair where n*d*classes exceeds this (OvR LogisticRegression "
                             "is the slowest baseline by far) [none with --full, else 3e7]")
    parser.add_argument("--hinge-max", type=float, default=math.inf,
                        help="bound long runs: skip the squared-hinge pair (LinearSVC) where n*d*classes exceeds "
                             "this; the cell is recorded as not run [no bound]")
    parser.add_argument("--matmul", action="store_true", help="only time the layouts of X~ V (thin V), nothing written")
    parser.add_argument("--table", action="store_true", help="only print the README table of --out, nothing run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(args.out.read_text())))
        return 0
    if args.matmul:
        matmul_layouts()
        return 0
    if args.full:
        cells = FULL
    elif args.cells or args.quick:
        cells = args.cells or [(500, 192, 10)]
    else:
        cells = [] if args.scaling else SUBSET  # --scaling alone: only the per-row cost
    previous = json.loads(args.out.read_text()) if args.out.exists() and not args.quick else {}
    measured = {(c["n"], c["d"], c["classes"]): c for c in previous.get("cells", []) if "n" in c}
    command = previous.get("command") if not cells else " ".join(["python", "benchmarks/bench_probe.py",
                                                                    *sys.argv[1:]])

    def report() -> dict:
        ordered = [measured[key] for key in sorted(measured)]
        return {
            "command": command,  # of the latest run; each cell also names the run that measured it
            "Cs": [float(c) for c in CS],
            "selection": "accuracy on the validation split (n/4 rows), first maximum; refit on train + val",
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                        "note": "2-core development machine; load and idle cores are recorded per cell"},
            "cells": ordered,
            "summary": summary(ordered),
            "scaling": scaled if scaled is not None else previous.get("scaling"),
        }

    scaled = None
    logistic_max = args.logistic_max if args.logistic_max is not None else (math.inf if args.full else 3e7)
    for index, (n, d, k) in enumerate(sorted(cells, key=math.prod)):
        measured[(n, d, k)] = {**measure_cell(n, d, k, index, logistic_max, args.hinge_max), "command": command}
        if not args.quick:  # after every cell: an interrupted run keeps what it measured
            atomic_write_text(args.out, json.dumps(report(), indent=2) + "\n")
    if args.scaling:
        scaled = scaling(1280, 10)
    final = report()
    print(json.dumps(final["summary"], indent=2))
    if not args.quick:
        atomic_write_text(args.out, json.dumps(final, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
