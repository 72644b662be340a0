"""Token-layer extraction cost: one pass with hooks on 4 transformer layers x 3 poolings
(cls, avg, grid2) against a bare forward of the same ViT, batches from memory.

Both sides run the same batches of the same random-init model; rounds alternate their order
(ABBA) so a slow spell of a shared machine hits both alike, and the figure is the median of
per-round ratios.

    .venv/bin/python benchmarks/bench_tokens.py [--images 64] [--rounds 6] [--source timm:vit_small_patch16_224]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from transferlab.atomic import atomic_write_text
from transferlab.features.extract import PooledForward, layer_poolings
from transferlab.features.pooling import default_windows
from transferlab.sources import load_source

LAYERS = [-1, -2, -3, -4]
POOLINGS = ["cls", "avg", "grid2"]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="timm:vit_small_patch16_224")
    parser.add_argument("--resolution", type=int, help="input px [the model's native size]")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tokens.json"))
    args = parser.parse_args()

    source = load_source(args.source, "none", resolution=args.resolution)
    model = source.model.eval()
    layers = source.resolve_layers(LAYERS)
    wanted = layer_poolings([(layer, p) for layer in layers for p in POOLINGS])
    size = source.preprocessing.input_size
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(min(args.batch_size, args.images - i), 3, size, size, generator=generator)
               for i in range(0, args.images, args.batch_size)]

    def bare():
        with torch.inference_mode():
            for x in batches:
                model(x)

    def one_pass():
        # hooks live only while this runs, so bare() times the network alone
        pooled = PooledForward(source, model, wanted, default_windows())
        with torch.inference_mode():
            for x in batches:
                outputs = {k: v.numpy() for k, v in pooled(x).items()}
        pooled.close()
        assert len(outputs) == len(layers) * len(POOLINGS)

    # the added work alone: pooling 4 captured activations x 3 poolings per batch, no forward
    captured = []
    with torch.inference_mode():
        for x in batches:
            grab = {}
            handles = [source.model.get_submodule(layer.name).register_forward_hook(
                lambda _m, _i, out, name=layer.name, grab=grab: grab.__setitem__(name, out))
                for layer in layers if layer.name != "features"]
            grab["features"] = source.forward_features(model, x)
            for handle in handles:
                handle.remove()
            captured.append(dict(grab))
    probe = PooledForward(source, model, wanted, default_windows())
    probe.close()  # its hooks are not needed: pool the captured outputs directly

    def pool_only():
        with torch.inference_mode():
            for grab in captured:
                probe.captured = {}
                for name, out in grab.items():
                    probe._pool(name, out)
                {k: v.numpy() for k, v in probe.captured.items()}

    bare()  # warm-up
    one_pass()
    rounds = []
    for r in range(args.rounds):
        order = ["bare", "one_pass", "pool_only"] if r % 2 == 0 else ["pool_only", "one_pass", "bare"]
        fns = {"bare": bare, "one_pass": one_pass, "pool_only": pool_only}
        rounds.append({name: timed(fns[name]) for name in order})
    ratios = [r["one_pass"] / r["bare"] for r in rounds]
    bare_ips = statistics.median(args.images / r["bare"] for r in rounds)
    result = {
        "source": source.name, "input_px": size, "images": args.images, "batch_size": args.batch_size,
        "layers": [layer.name for layer in layers], "poolings": POOLINGS,
        "outputs_per_pass": len(layers) * len(POOLINGS),
        "one_pass_over_bare_median": statistics.median(ratios),
        "one_pass_over_bare_rounds": ratios,
        "bare_images_per_second": bare_ips,
        "pooling_only_over_bare_median": statistics.median(r["pool_only"] / r["bare"] for r in rounds),
        "target": 1.05,
        "rounds": rounds,
        "machine": {"cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "note": "shared development machine; ratios within one run"},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out), json.dumps(result, indent=2))
    print(f"{source.name} at {size} px, {args.images} images, batch {args.batch_size}, {args.rounds} rounds (ABBA)")
    print(f"one pass, {len(layers)} layers x {len(POOLINGS)} poolings = {result['outputs_per_pass']} outputs / "
          f"bare model(x): median {result['one_pass_over_bare_median']:.3f}x "
          f"(rounds {min(ratios):.3f}-{max(ratios):.3f}; target <= 1.05)")
    print(f"pooling the 12 outputs alone (captured activations, no forward) / bare: "
          f"{result['pooling_only_over_bare_median']:.4f}")
    print(f"bare forward: {bare_ips:.1f} images/s; results in {args.out}")


if __name__ == "__main__":
    main()
