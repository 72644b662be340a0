"""Decoding cost per image by photo size: the extractor's full decode against --jpeg-draft
(libjpeg DCT-domain downscaling), one thread, best of several runs, with how far the
resulting pixels move. Photos: scikit-image's astronaut resized to each size, JPEG q92.

    .venv/bin/python benchmarks/bench_decode.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from transferlab.atomic import atomic_write_text
from transferlab.data.images import read_image
from transferlab.sources.preprocessing import Preprocessing

SIZES = [(500, 375), (1024, 768), (2048, 1536), (3264, 2448)]


def best_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "decode.json"))
    args = parser.parse_args()

    from skimage import data

    pre = Preprocessing()  # EfficientNet-Lite0 / ImageNet geometry: short side 256, crop 224
    photo = Image.fromarray(data.astronaut()).convert("RGB")
    folder = Path(tempfile.mkdtemp(prefix="bench-decode-"))
    rows = []
    for width, height in SIZES:
        path = str(folder / f"photo_{width}x{height}.jpg")
        photo.resize((width, height), Image.Resampling.BICUBIC).save(path, quality=92)
        full_ms = best_ms(lambda path=path: pre.to_pixels(read_image(path)), args.repeat)
        draft_ms = best_ms(lambda path=path: pre.to_pixels(read_image(path, draft_short_side=pre.resize_size)),
                           args.repeat)
        full = pre.to_pixels(read_image(path)).astype(int)
        draft_image = read_image(path, draft_short_side=pre.resize_size)
        difference = np.abs(full - pre.to_pixels(draft_image).astype(int))
        rows.append({"size": [width, height], "full_ms": full_ms, "draft_ms": draft_ms,
                     "speedup": full_ms / draft_ms, "decoded_at": list(draft_image.size),
                     "mean_abs_diff": float(difference.mean()), "max_abs_diff": int(difference.max())})
        print(f"{width}x{height}: full {full_ms:.1f} ms, --jpeg-draft {draft_ms:.1f} ms "
              f"(x{full_ms / draft_ms:.1f}, decoded at {draft_image.width}x{draft_image.height}), "
              f"pixels off by {difference.mean():.2f} on average (max {difference.max()}) of 255")
    atomic_write_text(args.out, json.dumps({"preprocessing": pre.to_dict(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
