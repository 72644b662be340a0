"""``digits``: scikit-learn's handwritten digits (UCI optdigits test set, 1797 images of 8x8).

Group 3 (fine-grained): all ten classes are one kind of object, a handwritten numeral, told
apart by small differences in stroke shape (3 vs 8, 1 vs 7) as bird species are told apart by
parts; no ImageNet class resembles them, and at 8x8 they are the farthest from natural images
of the classification tasks. Pixels 0..16 are scaled to 0..255 and upscaled 4x with nearest
neighbour to 32x32 (blocky on purpose: no invented detail), white ink on black, saved as RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transferlab.data.base import TaskData
from transferlab.data.builtin._materialise import balanced_subset, materialise, write_image_folder
from transferlab.data.generic import read_image_folder
from transferlab.errors import TransferlabError

VERSION = 1
SEED = 104
UPSCALE = 4
SIZES = {False: {"train": 50, "val": 10, "test": 30}, True: {"train": 10, "val": 5, "test": 5},
         "demo": {"train": 10, "val": 5, "test": 30}}  # demo: quick train/val, the full test split


def to_pixels(image: np.ndarray) -> np.ndarray:
    """An 8x8 array of 0..16 as a (32, 32) uint8 image, nearest-neighbour upscaled."""
    grey = np.rint(np.asarray(image, dtype=np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return np.kron(grey, np.ones((UPSCALE, UPSCALE), dtype=np.uint8))


def _build(quick: bool | str, folder: Path) -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, labels = bunch.images, bunch.target
    rng = np.random.default_rng(SEED)
    picked = balanced_subset(labels, range(10), SIZES[quick], rng, "load_digits")
    write_image_folder(
        folder,
        (
            (split, str(cls), f"{index:04d}.png", to_pixels(images[index]))
            for split, pairs in picked.items()
            for cls, index in pairs
        ),
    )


def read_digits(root: Path | None = None, quick: bool | str = False) -> TaskData:
    """Ten digit classes, class-balanced seeded subset."""
    if root is not None:
        raise TransferlabError("task digits is built in (scikit-learn's load_digits) and takes no root")
    if quick not in SIZES:
        raise TransferlabError(f"task digits: option quick must be true, false or demo; got {quick!r}")
    key = f"digits-v{VERSION}{'-quick' if quick is True else (f'-{quick}' if quick else '')}"

    def read(folder: Path) -> TaskData:
        data = read_image_folder(folder)
        data.name = "digits"
        data.source_files = ["sklearn.datasets.load_digits"]
        data.notes.append(f"built-in task materialised in {folder}")
        return data

    return materialise(key, lambda folder: _build(quick, folder), read)
