"""Fashion-MNIST tasks: ``fashion_mnist`` (all 10 classes) and ``fashion_upper`` (the four
upper-body garments, a fine-grained task: T-shirt/top, Pullover, Coat, Shirt).

The IDX files come from the Debian package ``dataset-fashion-mnist``
(/usr/share/datasets/fashion-mnist) or from a user folder. Train and val images are drawn
from the official training file, test images from the official t10k file, class-balanced and
seeded. The images are saved as 28x28 RGB PNGs in the image-folder layout.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from transferlab.data.base import TaskData
from transferlab.data.builtin._materialise import balanced_subset, materialise, write_image_folder
from transferlab.data.generic import read_image_folder
from transferlab.errors import AnnotationError, TransferlabError

VERSION = 1
SYSTEM_ROOT = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "apt-get install dataset-fashion-mnist"

# Label order of the IDX files; folder-safe names (sorted again by the image-folder reader).
CLASS_NAMES = [
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]
UPPER_BODY = [0, 2, 4, 6]  # T-shirt/top, Pullover, Coat, Shirt

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

# Images per class: (train, val) from the training file, test from t10k.
SIZES = {
    "fashion_mnist": {False: {"train": 50, "val": 10, "test": 30}, True: {"train": 10, "val": 5, "test": 5},
                      "demo": {"train": 10, "val": 5, "test": 30}},
    "fashion_upper": {False: {"train": 150, "val": 25, "test": 100}, True: {"train": 30, "val": 10, "test": 15},
                      "demo": {"train": 30, "val": 10, "test": 100}},
}
# quick: "demo" = the quick train/val splits with the full test split (300 or 400 test images): the
# demo's answer needs test sets that can tell configurations apart, its time budget small trains.


def size_suffix(quick: bool | str) -> str:
    """The cache-folder suffix of a size: '', '-quick' or '-<name>'."""
    if quick is True:
        return "-quick"
    return f"-{quick}" if quick else ""
SEEDS = {"fashion_mnist": 101, "fashion_upper": 103}


def find_files(root: Path | None) -> dict[str, Path]:
    """The four IDX files (``.gz`` or uncompressed) in ``root`` or one folder below it."""
    base = SYSTEM_ROOT if root is None else Path(root)
    folders = [base] + (sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else [])
    found: dict[str, Path] = {}
    for key, name in FILES.items():
        for folder in folders:
            for candidate in (folder / f"{name}.gz", folder / name):
                if candidate.is_file():
                    found[key] = candidate
                    break
            if key in found:
                break
    missing = [f"{FILES[k]}.gz" for k in FILES if k not in found]
    if missing:
        if root is None:
            raise TransferlabError(
                f"Fashion-MNIST not found in {SYSTEM_ROOT} (missing {', '.join(missing)}); "
                f"run `{INSTALL_HINT}` or pass root=<folder with the IDX files>"
            )
        raise TransferlabError(
            f"Fashion-MNIST IDX files missing under {base}: {', '.join(missing)} "
            f"(or `{INSTALL_HINT}` and use no root)"
        )
    return found


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzip-compressed if it ends in .gz)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise AnnotationError(path, f"cannot decompress ({exc})") from None
    if len(data) < 4:
        raise AnnotationError(path, "file too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise AnnotationError(path, f"bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise AnnotationError(path, "truncated IDX header")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise AnnotationError(
            path, f"IDX size mismatch: header says {'x'.join(map(str, dims))} ({expected} bytes), file has {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_arrays(files: dict[str, Path]) -> dict[str, np.ndarray]:
    """Images (n, 28, 28) and labels (n,) of both official splits, checked for consistency."""
    arrays = {}
    for split in ("train", "test"):
        images = read_idx(files[f"{split}_images"], IMAGES_MAGIC)
        labels = read_idx(files[f"{split}_labels"], LABELS_MAGIC)
        if len(images) != len(labels):
            raise AnnotationError(
                files[f"{split}_labels"],
                f"{len(labels)} labels for {len(images)} images in {files[f'{split}_images']}",
            )
        if labels.size and labels.max() >= len(CLASS_NAMES):
            raise AnnotationError(files[f"{split}_labels"], f"label {labels.max()} out of range 0..9")
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays


def fingerprint(files: dict[str, Path]) -> str:
    """Content hash of the IDX files, so a different source never reuses another's cache."""
    digest = hashlib.sha1()
    for key in sorted(files):
        with open(files[key], "rb") as handle:
            for block in iter(functools.partial(handle.read, 1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def _build(task: str, files: dict[str, Path], classes: list[int], quick: bool | str, folder: Path) -> None:
    arrays = load_arrays(files)
    sizes = SIZES[task][quick]
    rng = np.random.default_rng(SEEDS[task])
    train_sizes = {"train": sizes["train"], "val": sizes["val"]}
    picked = balanced_subset(arrays["train_labels"], classes, train_sizes, rng, str(files["train_labels"]))
    picked.update(
        balanced_subset(arrays["test_labels"], classes, {"test": sizes["test"]}, rng, str(files["test_labels"]))
    )
    items = []
    for split, pairs in picked.items():
        source, prefix = ("test", "t10k") if split == "test" else ("train", "train")
        for cls, index in pairs:
            image = arrays[f"{source}_images"][index]
            items.append((split, CLASS_NAMES[cls], f"{prefix}-{index:05d}.png", image))
    write_image_folder(folder, items)


def _load(task: str, classes: list[int], root: Path | None, quick: bool | str) -> TaskData:
    if quick not in SIZES[task]:
        raise TransferlabError(f"task {task}: option quick must be true, false or one of "
                               f"{', '.join(k for k in SIZES[task] if isinstance(k, str))}; got {quick!r}")
    files = find_files(root)
    key = f"{task}-v{VERSION}{size_suffix(quick)}-{fingerprint(files)}"

    def read(folder: Path) -> TaskData:
        data = read_image_folder(folder)
        data.name = task
        data.source_files = [str(files[k]) for k in sorted(files)]
        data.notes.append(f"built-in task materialised in {folder}")
        return data

    return materialise(key, lambda folder: _build(task, files, classes, quick, folder), read)


def read_fashion_mnist(root: Path | None = None, quick: bool | str = False) -> TaskData:
    """All ten Fashion-MNIST classes, class-balanced subset."""
    return _load("fashion_mnist", list(range(len(CLASS_NAMES))), root, quick)


def read_fashion_upper(root: Path | None = None, quick: bool | str = False) -> TaskData:
    """The four upper-body garments only: T-shirt/top, Pullover, Coat, Shirt."""
    return _load("fashion_upper", UPPER_BODY, root, quick)
