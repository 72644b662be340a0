"""LinearProbe vs scikit-learn LinearSVC (one-vs-rest) with the same C grid and selection.

Features are 1280-dim, like a ConvNet layer: ReLU of a fixed random projection of real
Fashion-MNIST pixels (10 classes, when /usr/share/datasets/fashion-mnist exists) and of
Gaussian class clusters (100 classes), L2-normalised as in the paper. Protocol for both
methods: for every C of the grid, train on the 10k training features and score accuracy on
the 2k validation features; take the best C (first maximum); refit on train + val; report test
accuracy on 5k held-out features and the wall time of the whole selection + refit.

Run: .venv/bin/python benchmarks/bench_probe.py            (writes benchmarks/results/probe.json)
     .venv/bin/python benchmarks/bench_probe.py --quick    (a small smoke run, not written)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.svm import LinearSVC

from transferlab.atomic import atomic_write_text
from transferlab.data.builtin.fashion import SYSTEM_ROOT, find_files, load_arrays
from transferlab.features.postprocess import build_postprocess
from transferlab.heads.probe import LinearProbe, _default_threads

RESULTS = Path(__file__).resolve().parent / "results" / "probe.json"
CS = np.logspace(-2, 2, 7)


def relu_features(Z: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    projection = rng.standard_normal((Z.shape[1], dim)).astype(np.float32) / np.sqrt(Z.shape[1])
    return np.maximum(Z.astype(np.float32) @ projection, 0)


def fashion_features(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    rng = np.random.default_rng(seed)
    arrays = load_arrays(find_files(None))  # the package's own reader, with its checks
    images = arrays["train_images"].reshape(-1, 784)
    labels = arrays["train_labels"].astype(np.int64)
    pick = rng.permutation(len(images))[:n]
    return relu_features(images[pick] / 255.0, dim, rng), labels[pick], "fashion-mnist pixels -> ReLU(random projection)"


def cluster_features(n: int, n_classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    rng = np.random.default_rng(seed)
    latent = 128
    means = rng.standard_normal((n_classes, latent)) * 0.3
    y = rng.integers(0, n_classes, n)
    Z = means[y] + rng.standard_normal((n, latent))
    return relu_features(Z, dim, rng), y, "Gaussian class clusters (128-d) -> ReLU(random projection)"


def run_probe(splits, n_threads: int | None, device: str) -> dict:
    (Xtr, ytr), (Xva, yva), (Xte, yte) = splits
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    probe = LinearProbe(Cs=CS, device=device, n_threads=n_threads).fit(Xtr, ytr, Xva, yva)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 2),
        "C": probe.C_,
        "val_accuracy": [round(float(s), 4) for s in probe.cv_scores_],
        "test_accuracy": round(probe.score(Xte, yte), 4),
        "newton_iterations": probe.solver_stats_.get("newton", 0),
        "cg_iterations": probe.solver_stats_.get("cg", 0),
        "threads": n_threads if n_threads is not None else _default_threads(),
        "device": device,
    }


def run_linearsvc(splits) -> dict:
    (Xtr, ytr), (Xva, yva), (Xte, yte) = splits
    start = time.perf_counter()
    val = [LinearSVC(C=C).fit(Xtr, ytr).score(Xva, yva) for C in CS]
    best = int(np.argmax(val))
    final = LinearSVC(C=CS[best]).fit(np.concatenate([Xtr, Xva]), np.concatenate([ytr, yva]))
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 2),
        "C": float(CS[best]),
        "val_accuracy": [round(float(s), 4) for s in val],
        "test_accuracy": round(final.score(Xte, yte), 4),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, nothing written")
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    n_train, n_val, n_test, dim = (2000, 500, 1000, 256) if args.quick else (10000, 2000, 5000, 1280)
    n = n_train + n_val + n_test
    runs = []
    for n_classes in args.classes:
        if n_classes == 10 and SYSTEM_ROOT.exists():
            X, y, source = fashion_features(n, dim, seed=0)
        else:
            X, y, source = cluster_features(n, n_classes, dim, seed=0)
        X = build_postprocess("l2").fit_transform(X)
        cut = np.cumsum([n_train, n_val])
        splits = ((X[: cut[0]], y[: cut[0]]), (X[cut[0] : cut[1]], y[cut[0] : cut[1]]), (X[cut[1] :], y[cut[1] :]))
        row = {"classes": n_classes, "features": source, "n_train": n_train, "n_val": n_val, "n_test": n_test, "dim": dim}
        row["load_before"] = load_average()
        row["probe"] = run_probe(splits, None, "cpu")
        print(f"{n_classes} classes  LinearProbe (default threads): {row['probe']}", flush=True)
        all_threads = os.cpu_count() or 1
        row["probe_all_threads"] = run_probe(splits, all_threads, "cpu")
        print(f"{n_classes} classes  LinearProbe ({all_threads} threads): {row['probe_all_threads']}", flush=True)
        if torch.cuda.is_available():
            run_probe(splits, None, "cuda")  # warm-up: CUDA context and kernels
            row["probe_cuda"] = run_probe(splits, None, "cuda")
            print(f"{n_classes} classes  LinearProbe (cuda): {row['probe_cuda']}", flush=True)
        row["linearsvc"] = run_linearsvc(splits)
        print(f"{n_classes} classes  LinearSVC OvR: {row['linearsvc']}", flush=True)
        row["load_after"] = load_average()
        row["speedup"] = round(row["linearsvc"]["seconds"] / row["probe"]["seconds"], 1)
        row["speedup_all_threads"] = round(row["linearsvc"]["seconds"] / row["probe_all_threads"]["seconds"], 1)
        print(
            f"{n_classes} classes  speed-up x{row['speedup']} ({all_threads} threads: x{row['speedup_all_threads']}); test accuracy "
            f"probe {row['probe']['test_accuracy']:.4f} vs LinearSVC {row['linearsvc']['test_accuracy']:.4f}",
            flush=True,
        )
        runs.append(row)
    report = {
        "command": "python benchmarks/bench_probe.py" + (" --quick" if args.quick else ""),
        "Cs": [float(c) for c in CS],
        "selection": "accuracy on the validation split, first maximum; refit on train + val",
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "note": "shared development machine: other processes were running (see load averages)",
        },
        "runs": runs,
    }
    if not args.quick:
        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
