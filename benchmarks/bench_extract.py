"""Extraction speed: one-pass overhead, one pass vs naive per-(layer, pooling) passes, and
end-to-end throughput from JPEG files on disk. Ratios are measured in one run, interleaved
round by round so machine noise hits both sides alike.

    .venv/bin/python benchmarks/bench_extract.py [--images 96] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transferlab.data.base import Split
from transferlab.features.extract import PooledForward, extract
from transferlab.features.pooling import default_windows
from transferlab.features.store import FeatureStore
from transferlab.sources import load_source

LAYERS = [-1, -2, -3, -4]
POOLINGS = ["avg", "max", "grid2"]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "extract.json"))
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).parent))
    from _images import write_jpegs

    torch.manual_seed(0)
    source = load_source(args.source)
    model = source.model.eval().to(memory_format=torch.channels_last)
    layers = source.resolve_layers(LAYERS)
    by_layer = {layer.name: list(POOLINGS) for layer in layers}
    folder = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    paths = write_jpegs(folder, args.images)
    tensors = torch.stack([source.preprocessing.to_tensor(Image.open(p).convert("RGB")) for p in paths])
    batches = [tensors[i:i + args.batch_size].contiguous(memory_format=torch.channels_last)
               for i in range(0, len(tensors), args.batch_size)]
    pooled = PooledForward(source, model, by_layer, default_windows())

    def bare():
        with torch.inference_mode():
            for x in batches:
                model(x)

    def one_pass():
        with torch.inference_mode():
            for x in batches:
                {k: v.numpy() for k, v in pooled(x).items()}

    def naive():
        with torch.inference_mode():
            for layer in layers:
                for p in POOLINGS:
                    single = PooledForward(source, model, {layer.name: [p]}, default_windows())
                    for x in batches:
                        single(x)[f"{layer.name}__{p}"].numpy()
                    single.close()

    def end_to_end():
        split = Split("bench", [str(p) for p in paths], np.zeros(len(paths), dtype=np.int64))
        store = FeatureStore(tempfile.mkdtemp(prefix="bench-store-"))
        extract(source, split, layers, POOLINGS, store=store, batch_size=args.batch_size, progress=False)

    bare()  # warm-up
    rounds = []
    for _ in range(args.rounds):
        t_bare = timed(bare)
        t_one = timed(one_pass)
        t_e2e = timed(end_to_end)
        rounds.append({"bare": t_bare, "one_pass": t_one, "e2e": t_e2e})
    t_naive = timed(naive)
    t_bare_naive = timed(bare)
    pooled.close()

    n = len(paths)
    overhead = statistics.median(r["one_pass"] / r["bare"] for r in rounds)
    e2e_fraction = statistics.median(r["bare"] / r["e2e"] for r in rounds)
    naive_speedup = t_naive / statistics.median(r["one_pass"] for r in rounds + [{"one_pass": t_bare_naive * overhead}])
    result = {
        "source": args.source,
        "images": n,
        "batch_size": args.batch_size,
        "layers": LAYERS,
        "poolings": POOLINGS,
        "bare_img_per_s": n / statistics.median(r["bare"] for r in rounds),
        "one_pass_img_per_s": n / statistics.median(r["one_pass"] for r in rounds),
        "e2e_img_per_s": n / statistics.median(r["e2e"] for r in rounds),
        "one_pass_overhead": overhead,
        "naive_over_one_pass": naive_speedup,
        "e2e_fraction_of_bare": e2e_fraction,
        "rounds": rounds,
        "naive_seconds": t_naive,
        "threads": torch.get_num_threads(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{args.source}, {n} JPEGs 500x375, batch {args.batch_size}, {len(LAYERS)} layers x {len(POOLINGS)} poolings")
    print(f"  bare model(x):           {result['bare_img_per_s']:.1f} img/s")
    print(f"  one pass, 12 outputs:    {result['one_pass_img_per_s']:.1f} img/s  overhead x{overhead:.3f} (target <= 1.15)")
    print(f"  naive 12 passes:         x{naive_speedup:.1f} slower than one pass (target >= 8)")
    print(f"  end to end from JPEG:    {result['e2e_img_per_s']:.1f} img/s = {e2e_fraction:.2f} of bare (target >= 0.85)")


if __name__ == "__main__":
    main()
