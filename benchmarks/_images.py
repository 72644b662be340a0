"""Benchmark inputs: real scikit-image photos cut into VOC-sized JPEG files (~500x375)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def write_jpegs(folder: Path, count: int, seed: int = 0, size: tuple[int, int] = (500, 375)) -> list[Path]:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(np.asarray(getattr(data, n)())).convert("RGB") for n in PHOTOS]
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = photo.crop((x, y, x + cw, y + ch)).resize(size, Image.BICUBIC)
        path = folder / f"img_{i:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths
