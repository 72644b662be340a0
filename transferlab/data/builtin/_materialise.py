"""Write a built-in task's images once into the cache, atomically, and read them back.

A task folder ``$TRANSFERLAB_CACHE/datasets/<key>/`` is trusted only if it holds the
completion marker ``.complete`` whose key and file count match. It is built in a private temp
folder next to it and moved into place with one ``os.replace``, so a killed or concurrent
build never leaves a half folder under the final name; leftovers of killed builds are removed
once they are old.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from transferlab.data.base import TaskData
from transferlab.errors import TransferlabError
from transferlab.paths import cache_dir, cache_root

MARKER = ".complete"
STALE_TEMP_SECONDS = 3600.0  # a build takes seconds; an older temp folder belongs to a dead one


def dataset_folder(key: str) -> Path:
    """Where the task with this cache key lives (the folder may not exist yet)."""
    return cache_dir("datasets") / key


def count_files(folder: Path) -> int:
    """Number of non-hidden files below ``folder`` (the marker is hidden)."""
    total = 0
    for _, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        total += sum(1 for f in filenames if not f.startswith("."))
    return total


def is_complete(folder: Path, key: str) -> bool:
    marker = folder / MARKER
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("key") == key and info.get("files") == count_files(folder)


def materialise(
    key: str,
    build: Callable[[Path], None],
    read: Callable[[Path], TaskData],
) -> TaskData:
    """Return ``read(folder)`` for the task folder of ``key``, first running ``build(tmp)`` to
    write it unless a complete folder is already there."""
    try:
        datasets = cache_dir("datasets")
    except OSError as exc:
        raise TransferlabError(
            f"cannot create the dataset cache under {cache_root()} ({exc.strerror or exc}); "
            f"set TRANSFERLAB_CACHE to a writable folder"
        ) from None
    final = datasets / key
    if is_complete(final, key):
        return read(final)
    _remove_leftovers(datasets, key)
    if final.exists() or final.is_symlink():
        _discard(final, datasets, key)
        if is_complete(final, key):  # a concurrent build landed meanwhile
            return read(final)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=datasets))
    except OSError as exc:
        raise TransferlabError(f"cannot write into {datasets} ({exc.strerror or exc})") from None
    try:
        try:
            build(tmp)
        except OSError as exc:  # disk full, permissions: something the user can fix
            raise TransferlabError(f"building {key} in {datasets} failed: {exc}") from None
        info = {"key": key, "files": count_files(tmp)}
        (tmp / MARKER).write_text(json.dumps(info, sort_keys=True) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished the same build first; its folder is as good as ours.
            if not is_complete(final, key):
                raise TransferlabError(
                    f"cannot move built dataset into {final}: the path is occupied by something "
                    f"that is not a complete {key} dataset; remove it and retry"
                ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return read(final)


def _discard(final: Path, datasets: Path, key: str) -> None:
    """Move an untrusted folder (no marker, wrong count) aside, then delete it. If what was
    moved turns out complete (a concurrent build replaced it after our check), put it back."""
    aside = Path(tempfile.mkdtemp(prefix=f".{key}.stale-", dir=datasets))
    moved = aside / "old"
    try:
        os.replace(final, moved)
    except FileNotFoundError:
        pass  # someone else moved it already
    else:
        if is_complete(moved, key):
            try:
                os.replace(moved, final)
            except OSError:
                pass
    shutil.rmtree(aside, ignore_errors=True)


def _remove_leftovers(datasets: Path, key: str) -> None:
    now = time.time()
    for path in datasets.glob(f".{key}.*"):
        try:
            old = now - path.stat().st_mtime > STALE_TEMP_SECONDS
        except FileNotFoundError:
            continue
        if ".stale-" in path.name or old:
            shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# writing helpers


def to_rgb_image(pixels: np.ndarray | Image.Image) -> Image.Image:
    """A uint8 grey (H, W) or colour (H, W, 3/4) array, or a PIL image, as an RGB image."""
    if isinstance(pixels, Image.Image):
        image = pixels
    else:
        array = np.asarray(pixels)
        if array.dtype != np.uint8:
            raise ValueError(f"expected uint8 pixels, got {array.dtype}")
        image = Image.fromarray(array)
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def save_png(pixels: np.ndarray | Image.Image, path: Path) -> None:
    """Save as RGB PNG (deterministic bytes: no timestamps, fast fixed compression: encoding dominates build time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    to_rgb_image(pixels).save(path, format="PNG", compress_level=1)


def write_image_folder(
    root: Path, items: Iterable[tuple[str, str, str, np.ndarray | Image.Image]]
) -> None:
    """Write ``(split, class_name, file_name, pixels)`` as ``root/split/class/file_name``."""
    for split, class_name, file_name, pixels in items:
        save_png(pixels, root / split / class_name / file_name)


def write_csv(path: Path, column: str, rows: Iterable[tuple[str, str]]) -> None:
    """Write a generic-layout split CSV (header ``path,<column>``)."""
    lines = [f"path,{column}"] + [f"{rel},{value}" for rel, value in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def balanced_subset(
    labels: np.ndarray,
    classes: Iterable[int],
    counts: dict[str, int],
    rng: np.random.Generator,
    source: str = "labels",
) -> dict[str, list[tuple[int, int]]]:
    """Pick ``counts[split]`` distinct indices per class (seeded, disjoint across splits).

    Returns ``{split: [(class, index), ...]}`` sorted by class then index."""
    out: dict[str, list[tuple[int, int]]] = {split: [] for split in counts}
    need = sum(counts.values())
    for cls in classes:
        pool = np.flatnonzero(labels == cls)
        if len(pool) < need:
            raise TransferlabError(f"{source}: class {cls} has {len(pool)} images, {need} needed")
        chosen = rng.permutation(pool)[:need]
        start = 0
        for split, n in counts.items():
            out[split].extend((int(cls), int(i)) for i in sorted(chosen[start : start + n]))
            start += n
    return out
