"""Extraction speed: one-pass overhead, one pass vs naive per-(layer, pooling) passes,
end-to-end throughput from JPEG files on disk, and (``--vs-timm``) whole-process wall time of
``transferlab extract`` against the plain timm loop (benchmarks/plain_timm_loop.py) at several
image counts. Ratios are measured in one run, interleaved round by round (ABBA) so machine
noise hits both sides alike.

    .venv/bin/python benchmarks/bench_extract.py [--images 96] [--rounds 3]
    .venv/bin/python benchmarks/bench_extract.py --vs-timm [--sizes 128,256,512] [--rounds 2]
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

import numpy as np
import torch
from PIL import Image

from transferlab.atomic import atomic_write_text
from transferlab.data.base import Split
from transferlab.data.images import decode_threads
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


def decode_costs(paths, pre) -> dict[str, float]:
    """Milliseconds per image, one thread, best of 3: the plain torchvision-style eval
    transform on PIL (decode, resize the whole image, crop) against the extractor's own path."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    from transferlab.data.images import read_image

    def plain(path):
        with Image.open(path) as handle:
            image = handle.convert("RGB")
        image = F.resize(image, pre.resize_size, interpolation=InterpolationMode.BICUBIC)
        return F.pil_to_tensor(F.center_crop(image, [pre.input_size] * 2))

    def ours(path):
        return pre.to_pixels(read_image(str(path)))

    costs = {}
    for name, fn in (("pil_resize_then_crop", plain), ("extractor", ours)):
        costs[name] = min(timed(lambda fn=fn: [fn(p) for p in paths]) for _ in range(3)) / len(paths) * 1000
    return costs


def vs_timm(args) -> None:
    """Whole-process wall times, fresh cache and output folder every run, alternating sides."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _images import write_jpegs

    work = Path(tempfile.mkdtemp(prefix="bench-vs-timm-"))
    source = load_source(args.source)
    weights = work / "weights.pth"
    torch.save(source.model.state_dict(), weights)  # timm naming: what the plain loop loads
    arch = source.arch.split(":", 1)[1]
    width, height = (int(v) for v in args.size.lower().split("x"))
    cli = shutil.which("transferlab", path=str(Path(sys.executable).parent)) or "transferlab"
    sizes = [int(v) for v in args.sizes.split(",")]
    rows = []
    for n in sizes:
        images = work / f"images{n}"
        for k, split in enumerate(("train", "test")):  # transferlab's image-folder layout, ImageFolder per split
            for c in range(2):
                write_jpegs(images / split / f"class{c}", n // 4, seed=2 * k + c, size=(width, height))
        commands = {
            "timm": [sys.executable, str(Path(__file__).parent / "plain_timm_loop.py"), str(weights), str(images),
                     "OUT", "--arch", arch],
            "transferlab": [cli, "extract", "--source", args.source, "--data", str(images), "--layers=-1,-2,-3,-4",
                            "--pool", "avg,max,grid2", "--out", "OUT", "--no-progress"],
        }
        times: dict[str, list[float]] = {"timm": [], "transferlab": []}
        outs: dict[str, Path] = {}
        for r in range(args.rounds):
            order = ["timm", "transferlab"] if r % 2 == 0 else ["transferlab", "timm"]
            for side in order:
                out = work / f"out-{side}-{n}-{r}"
                env = {**os.environ, "TRANSFERLAB_CACHE": str(work / f"cache-{side}-{n}-{r}")}  # fresh
                command = [str(out) if part == "OUT" else part for part in commands[side]]
                start = time.perf_counter()
                subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
                times[side].append(time.perf_counter() - start)
                outs[side] = out
                print(f"  {n} images, round {r}: {side:11s} {times[side][-1]:6.2f} s", flush=True)
        rows.append({"images": n, "seconds": times, "ratio_of_totals": sum(times["timm"]) / sum(times["transferlab"]),
                     "max_abs_difference": output_difference(outs["timm"], outs["transferlab"])})
        print(f"{n} images: plain timm loop / transferlab extract = x{rows[-1]['ratio_of_totals']:.2f}", flush=True)
        write_vs_timm(args, rows, width, height)  # after every size: a long run keeps what it measured
    shutil.rmtree(work, ignore_errors=True)


def write_vs_timm(args, rows, width, height) -> None:
    # per-image cost and start-up: least squares over the sizes (both sides grow linearly)
    fits = {}
    for side in ("timm", "transferlab"):
        xs = [row["images"] for row in rows for _ in row["seconds"][side]]
        ys = [t for row in rows for t in row["seconds"][side]]
        slope, intercept = np.polyfit(xs, ys, 1) if len(set(xs)) > 1 else (float("nan"), float("nan"))
        fits[side] = {"ms_per_image": 1000 * slope, "startup_seconds": intercept}
    command = f"python benchmarks/bench_extract.py --vs-timm --sizes {args.sizes} --rounds {args.rounds}"
    result = {"command": command,
              "source": args.source, "jpeg_size": [width, height], "rows": rows, "linear_fit": fits,
              "threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
              "note": "shared 2-core machine; sides alternate ABBA; fresh TRANSFERLAB_CACHE per run"}
    out = Path(args.out).with_name("extract_vs_timm.json")
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    for side, fit in fits.items():
        print(f"  {side:11s} {fit['ms_per_image']:.1f} ms/image + {fit['startup_seconds']:.2f} s start-up")
    print(f"wrote {out}")


def output_difference(timm_out: Path, ours: Path) -> dict[str, float]:
    """Largest |difference| per output between the two sides, relative to the output's largest
    value (the two decode and resize differently, so this is small but not float rounding)."""
    diffs = {}
    for path in sorted(timm_out.rglob("*.npy")):
        mine = ours / path.relative_to(timm_out)
        if mine.exists():
            a, b = np.load(path), np.load(mine)
            if a.shape == b.shape:
                diffs[str(path.relative_to(timm_out))] = float(np.abs(a - b).max() / max(1e-12, np.abs(a).max()))
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", default="500x375", help="JPEG width x height [500x375, VOC-like]")
    parser.add_argument("--jpeg-draft", action="store_true", help="end to end with reduced-scale JPEG decoding")
    parser.add_argument("--compile", action="store_true", help="end to end with torch.compile (compiled in warm-up)")
    parser.add_argument("--vs-timm", action="store_true",
                        help="only the whole-process comparison with the plain timm loop")
    parser.add_argument("--sizes", default="128,256,512", help="--vs-timm: image counts [128,256,512]")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "extract.json"))
    args = parser.parse_args()
    if args.vs_timm:
        args.rounds = max(2, args.rounds)
        return vs_timm(args)

    sys.path.insert(0, str(Path(__file__).parent))
    from _images import write_jpegs

    torch.manual_seed(0)
    source = load_source(args.source)
    model = source.model.eval().to(memory_format=torch.channels_last)
    layers = source.resolve_layers(LAYERS)
    by_layer = {layer.name: list(POOLINGS) for layer in layers}
    folder = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    width, height = (int(v) for v in args.size.lower().split("x"))
    paths = write_jpegs(folder, args.images, size=(width, height))
    tensors = torch.stack([source.preprocessing.to_tensor(Image.open(p).convert("RGB")) for p in paths])
    batches = [tensors[i:i + args.batch_size].contiguous(memory_format=torch.channels_last)
               for i in range(0, len(tensors), args.batch_size)]

    def bare():
        with torch.inference_mode():
            for x in batches:
                model(x)

    def one_pass():
        # hooks live only while this runs, so bare() times the network alone
        pooled = PooledForward(source, model, by_layer, default_windows())
        with torch.inference_mode():
            for x in batches:
                {k: v.numpy() for k, v in pooled(x).items()}
        pooled.close()

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
        extract(source, split, layers, POOLINGS, store=store, batch_size=args.batch_size, progress=False,
                jpeg_draft=args.jpeg_draft, compile_model=args.compile)

    def channels_last_timed(fn) -> float:
        # extract() hands the source's model back in the default memory format; bare and
        # one-pass loops time the channels_last model the extractor itself runs
        model.to(memory_format=torch.channels_last)
        return timed(fn)

    bare()  # warm-up
    end_to_end()
    rounds = []
    for r in range(args.rounds):
        # alternate the order (ABBA) so a slow spell of the shared machine hits both sides
        order = ["bare", "one_pass", "e2e"] if r % 2 == 0 else ["e2e", "one_pass", "bare"]
        fns = {"bare": bare, "one_pass": one_pass, "e2e": end_to_end}
        rounds.append({name: channels_last_timed(fns[name]) for name in order})
    decode_ms = decode_costs(paths, source.preprocessing)
    # naive is long: bracket it by one-pass runs so the ratio compares neighbours in time
    t_one_before = channels_last_timed(one_pass)
    t_naive = channels_last_timed(naive)
    t_one_after = channels_last_timed(one_pass)

    n = len(paths)
    overhead = statistics.median(r["one_pass"] / r["bare"] for r in rounds)
    e2e_fraction = statistics.median(r["bare"] / r["e2e"] for r in rounds)
    e2e_fraction_of_totals = sum(r["bare"] for r in rounds) / sum(r["e2e"] for r in rounds)
    naive_speedup = t_naive / ((t_one_before + t_one_after) / 2)
    result = {
        "source": args.source,
        "images": n,
        "batch_size": args.batch_size,
        "jpeg_size": [width, height],
        "jpeg_draft": args.jpeg_draft,
        "compile": args.compile,
        "layers": LAYERS,
        "poolings": POOLINGS,
        "bare_img_per_s": n / statistics.median(r["bare"] for r in rounds),
        "one_pass_img_per_s": n / statistics.median(r["one_pass"] for r in rounds),
        "e2e_img_per_s": n / statistics.median(r["e2e"] for r in rounds),
        "one_pass_overhead": overhead,
        "naive_over_one_pass": naive_speedup,
        "e2e_fraction_of_bare": e2e_fraction,
        "e2e_fraction_of_totals": e2e_fraction_of_totals,
        "decode_threads": decode_threads(),
        "rounds": rounds,
        "naive_seconds": t_naive,
        "one_pass_seconds_around_naive": [t_one_before, t_one_after],
        "threads": torch.get_num_threads(),
        "decode_ms_per_image_one_thread": decode_ms,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    flags = (" (--jpeg-draft)" if args.jpeg_draft else "") + (" (--compile)" if args.compile else "")
    print(f"{args.source}, {n} JPEGs {width}x{height}{flags}, batch {args.batch_size}, "
          f"{len(LAYERS)} layers x {len(POOLINGS)} poolings")
    print(f"  bare model(x):           {result['bare_img_per_s']:.1f} img/s")
    print(f"  one pass, 12 outputs:    {result['one_pass_img_per_s']:.1f} img/s  "
          f"overhead x{overhead:.3f} (target <= 1.15)")
    print(f"  naive 12 passes:         x{naive_speedup:.1f} slower than one pass (target >= 8)")
    print(f"  end to end from JPEG:    {result['e2e_img_per_s']:.1f} img/s = {e2e_fraction:.2f} of bare "
          "(target >= 0.85; "
          f"{e2e_fraction_of_totals:.2f} over all rounds' totals)")
    print("  per round e2e/bare:      " + " ".join(f"{r['bare'] / r['e2e']:.2f}" for r in rounds))
    print(f"  decode+resize, 1 thread: {decode_ms['pil_resize_then_crop']:.2f} ms/img PIL decode + resize then crop, "
          f"{decode_ms['extractor']:.2f} ms/img the extractor's path ({decode_threads()} threads share a batch)")


if __name__ == "__main__":
    main()
