"""FeatureStore: content-addressed, sharded, atomically written pooled features on disk.

Layout under ``ROOT`` (``$TRANSFERLAB_CACHE/features`` by default)::

    <group>/meta.json                       what the group is (human-readable)
    <group>/<shard>/<layer>__<pool>.npy     rows of one shard (SHARD_SIZE images)
    <group>/<shard>/bad.json                images of that shard that could not be read

A *group* is one (source + weights hash, preprocessing, view, dataset-split fingerprint).
Each ``.npy`` is written to a temp file and renamed, so a killed extraction leaves either a
whole file or none; a rerun computes only the shards/outputs that are missing. Shards make
that resume fine-grained: at most one shard of work is lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferlab.atomic import atomic_save_npy, atomic_write_text
from transferlab.errors import TransferlabError

SHARD_SIZE = 512
FORMAT_VERSION = 1


def default_store_root() -> Path:
    from transferlab.paths import cache_root

    return cache_root() / "features"


def dataset_fingerprint(paths: Sequence[str], boxes: Sequence | None = None) -> str:
    """Hash of the ordered image list with each file's size and mtime (and crop boxes)."""
    digest = hashlib.sha256()
    for i, path in enumerate(paths):
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        except OSError:
            digest.update(f"{path}\0missing\0".encode())
        if boxes is not None and boxes[i] is not None:
            digest.update(("box" + ",".join(f"{v:.2f}" for v in boxes[i])).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class GroupKey:
    """Identity of one forward-pass group; its hash names the folder."""

    source: str
    weights_id: str
    preprocessing: str  # JSON of the Preprocessing
    view: str
    dataset: str  # dataset_fingerprint
    n_images: int

    @property
    def digest(self) -> str:
        text = json.dumps([FORMAT_VERSION, self.source, self.weights_id, self.preprocessing, self.view,
                           self.dataset, self.n_images, SHARD_SIZE])
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def output_name(layer: str, pooling: str) -> str:
    return f"{layer}__{pooling}"


class FeatureStore:
    """Pooled features by (group, layer, pooling), sharded and resumable."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_store_root()

    # -- layout -----------------------------------------------------------------------
    def group_dir(self, key: GroupKey) -> Path:
        return self.root / key.digest

    def shard_count(self, key: GroupKey) -> int:
        return max(1, -(-key.n_images // SHARD_SIZE))

    def shard_range(self, key: GroupKey, shard: int) -> tuple[int, int]:
        start = shard * SHARD_SIZE
        return start, min(key.n_images, start + SHARD_SIZE)

    def _shard_file(self, key: GroupKey, shard: int, output: str) -> Path:
        return self.group_dir(key) / f"{shard:05d}" / f"{output}.npy"

    # -- queries ----------------------------------------------------------------------
    def missing(self, key: GroupKey, outputs: Iterable[str]) -> dict[int, list[str]]:
        """Shard -> outputs not yet on disk."""
        outputs = list(outputs)
        todo: dict[int, list[str]] = {}
        for shard in range(self.shard_count(key)):
            absent = [o for o in outputs if not self._shard_file(key, shard, o).exists()]
            if absent:
                todo[shard] = absent
        return todo

    def has(self, key: GroupKey, output: str) -> bool:
        return not self.missing(key, [output])

    # -- writes -----------------------------------------------------------------------
    def write_meta(self, key: GroupKey, description: dict) -> None:
        path = self.group_dir(key) / "meta.json"
        if not path.exists():
            payload = {"format": FORMAT_VERSION, "created": time.time(), "key": key.__dict__, **description}
            atomic_write_text(path, json.dumps(payload, indent=2))

    def write_shard(self, key: GroupKey, shard: int, arrays: dict[str, np.ndarray], bad: Sequence[int] = ()) -> None:
        """Write one shard's outputs; ``bad`` are in-shard positions that were skipped
        (arrays then hold only the good rows, in order)."""
        folder = self.group_dir(key) / f"{shard:05d}"
        if bad or not (folder / "bad.json").exists():
            atomic_write_text(folder / "bad.json", json.dumps(sorted(int(b) for b in bad)))
        for output, array in arrays.items():
            atomic_save_npy(self._shard_file(key, shard, output), np.ascontiguousarray(array, dtype=np.float32))

    def write_provenance(self, key: GroupKey, shard: int, record: dict) -> None:
        """Who extracted a shard (node, host, device): ``<shard>/provenance.json``."""
        atomic_write_text(self.group_dir(key) / f"{shard:05d}" / "provenance.json", json.dumps(record, sort_keys=True))

    def provenance(self, key: GroupKey) -> dict[int, dict | None]:
        """Shard -> its provenance record (None where none was written, e.g. an older run)."""
        out: dict[int, dict | None] = {}
        for shard in range(self.shard_count(key)):
            path = self.group_dir(key) / f"{shard:05d}" / "provenance.json"
            try:
                out[shard] = json.loads(path.read_text())
            except (OSError, ValueError):
                out[shard] = None
        return out

    # -- reads ------------------------------------------------------------------------
    def bad_indices(self, key: GroupKey) -> list[int]:
        """Dataset indices that were skipped as unreadable (absolute positions)."""
        out: list[int] = []
        for shard in range(self.shard_count(key)):
            path = self.group_dir(key) / f"{shard:05d}" / "bad.json"
            if path.exists():
                start, _ = self.shard_range(key, shard)
                out.extend(start + i for i in json.loads(path.read_text()))
        return out

    def load(self, key: GroupKey, output: str) -> np.ndarray:
        """All rows of one output (good images only), shards memory-mapped then joined."""
        parts = []
        for shard in range(self.shard_count(key)):
            path = self._shard_file(key, shard, output)
            if not path.exists():
                raise TransferlabError(f"feature {output} of group {key.digest} is incomplete (shard {shard})")
            parts.append(np.load(path, mmap_mode="r"))
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts, axis=0)

    # -- maintenance ------------------------------------------------------------------
    def groups(self) -> list[dict]:
        out = []
        if not self.root.exists():
            return out
        for folder in sorted(self.root.iterdir()):
            meta_path = folder / "meta.json"
            if not folder.is_dir():
                continue
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            outputs = sorted({p.stem for p in folder.glob("*/*.npy")})
            out.append({"group": folder.name, "bytes": size, "outputs": outputs, **meta})
        return out

    def remove(self, group: str | None = None) -> int:
        """Delete one group (by digest prefix) or everything; returns groups removed."""
        if not self.root.exists():
            return 0
        victims = [f for f in self.root.iterdir() if f.is_dir() and (group is None or f.name.startswith(group))]
        for folder in victims:
            shutil.rmtree(folder, ignore_errors=True)
        return len(victims)
