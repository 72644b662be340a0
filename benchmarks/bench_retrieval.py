"""Time the retrieval head at benchmark sizes; print the figures and write benchmarks/results/retrieval.json.

    .venv/bin/python benchmarks/bench_retrieval.py [--device auto|cpu|cuda] [--repeat N] [--quick]

Cases (random float32 data, so only the timing is meaningful):
- rank, cosine, 5000 x 5000 x 2048: full ranking and top-100;
- spatial search at Oxford5k size: 55 queries x 28 windows vs 5063 images x 28 windows x 512.
``--quick`` divides every size by 10 (a smoke run, not a figure to report).
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
import torch

from transferlab.atomic import atomic_write_text
from transferlab.device import resolve_device
from transferlab.heads.ranking import rank
from transferlab.heads.spatial import spatial_search_distances

RESULTS = Path(__file__).resolve().parent / "results" / "retrieval.json"


def _best_of(repeat: int, fn: Any) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the best is kept")
    parser.add_argument("--quick", action="store_true", help="sizes / 10, a smoke run")
    parser.add_argument("--out", type=Path, default=None, help=f"default {RESULTS} (not for --quick)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    scale = 10 if args.quick else 1
    rng = np.random.default_rng(0)

    n, dim = 5000 // scale, 2048 // scale
    queries = rng.standard_normal((n, dim), dtype=np.float32)
    database = rng.standard_normal((n, dim), dtype=np.float32)
    n_q, n_db, windows, wdim = 55, 5063 // scale, 28, 512 // scale
    q_windows = rng.standard_normal((n_q, windows, wdim), dtype=np.float32)
    db_windows = rng.standard_normal((n_db, windows, wdim), dtype=np.float32)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    cases = {
        f"rank_cosine_full_{n}x{n}x{dim}": lambda: (rank(queries, database, device=device), sync()),
        f"rank_cosine_top100_{n}x{n}x{dim}": lambda: (
            rank(queries, database, top_k=100, device=device),
            sync(),
        ),
        f"spatial_search_{n_q}x{windows}_vs_{n_db}x{windows}x{wdim}": lambda: (
            spatial_search_distances(q_windows, db_windows, device=device),
            sync(),
        ),
    }
    results = {}
    for name, fn in cases.items():
        seconds = _best_of(args.repeat, fn)
        results[name] = round(seconds, 3)
        print(f"{name}: {seconds:.2f} s")

    payload = {
        "command": "python benchmarks/bench_retrieval.py"
        + (f" --device {args.device}" if args.device != "auto" else "")
        + (f" --repeat {args.repeat}" if args.repeat != 1 else "")
        + (" --quick" if args.quick else ""),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "seconds": results,
    }
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        _write_atomic(out, payload)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
