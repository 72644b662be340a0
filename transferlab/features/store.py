"""FeatureStore: content-addressed, sharded, atomically written pooled features on disk.

Layout under ``ROOT`` (``$TRANSFERLAB_CACHE/features`` by default)::

    <group>/meta.json                       what the group is (human-readable)
    <group>/<shard>/<layer>__<pool>.npy     rows of one shard (SHARD_SIZE images)
    <group>/<shard>/bad.json                images of that shard that could not be read

A *group* is one (source + weights hash, preprocessing, view, dataset-split fingerprint).
Each ``.npy`` is written to a temp file and renamed, so a killed extraction leaves either a
whole file or none; a rerun computes only the shards/outputs that are missing. Shards make
that resume fine-grained: at most one shard of work is lost.

Reads are verified: beside each ``.npy`` a ``.npy.check`` records its size, CRC-32 and row
count. A file without its record (a write killed in between) counts as missing; one whose
size, checksum or rows disagree (a damaged disk, a copy cut short) is reported, renamed to
``*.damaged`` (kept for inspection) and counted as missing, so the extractor recomputes it.
Only folders that are FeatureStore groups (a digest name with a ``meta.json`` naming that
digest, or the group structure) are ever removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferlab.atomic import atomic_write_bytes, atomic_write_text
from transferlab.errors import TransferlabError

SHARD_SIZE = 512
FORMAT_VERSION = 1
CHECK_SUFFIX = ".check"  # <output>.npy.check: {"bytes", "crc32", "rows"} of the .npy beside it
DAMAGED_SUFFIX = ".damaged"
_GROUP_NAME = re.compile(r"[0-9a-f]{24}")
_SHARD_NAME = re.compile(r"[0-9]{5}")


def _crc32_of_file(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            crc = zlib.crc32(block, crc)
    return crc


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
        self.damaged: list[dict] = []  # entries found damaged and set aside by this instance
        self._verified: set[tuple] = set()  # (path, size, mtime_ns, inode) checked already

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
            bad = self._shard_bad(key, shard)
            absent = [o for o in outputs if bad is None or not self._verified_file(key, shard, o, bad)]
            if absent:
                todo[shard] = absent
        return todo

    def has(self, key: GroupKey, output: str) -> bool:
        return not self.missing(key, [output])

    # -- writes -----------------------------------------------------------------------
    def write_meta(self, key: GroupKey, description: dict) -> None:
        path = self.group_dir(key) / "meta.json"
        if not path.exists() or self._read_meta(path)[1] is not None:
            payload = {"format": FORMAT_VERSION, "created": time.time(), "key": key.__dict__, **description}
            atomic_write_text(path, json.dumps(payload, indent=2))

    def write_shard(self, key: GroupKey, shard: int, arrays: dict[str, np.ndarray], bad: Sequence[int] = ()) -> None:
        """Write one shard's outputs; ``bad`` are in-shard positions that were skipped
        (arrays then hold only the good rows, in order)."""
        folder = self.group_dir(key) / f"{shard:05d}"
        if bad or not (folder / "bad.json").exists():
            atomic_write_text(folder / "bad.json", json.dumps(sorted(int(b) for b in bad)))
        for output, array in arrays.items():
            path = self._shard_file(key, shard, output)
            array = np.ascontiguousarray(array, dtype=np.float32)
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=False)
            data = buffer.getvalue()
            # the record goes second: a kill in between leaves a file without one = not done
            atomic_write_bytes(path, data)
            record = {"bytes": len(data), "crc32": zlib.crc32(data), "rows": int(array.shape[0])}
            atomic_write_text(path.with_name(path.name + CHECK_SUFFIX), json.dumps(record))

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
            start, _ = self.shard_range(key, shard)
            out.extend(start + i for i in self._shard_bad(key, shard) or [])
        return out

    def load(self, key: GroupKey, output: str) -> np.ndarray:
        """All rows of one output (good images only), shards memory-mapped then joined."""
        parts = []
        for shard in range(self.shard_count(key)):
            path = self._shard_file(key, shard, output)
            before = len(self.damaged)
            bad = self._shard_bad(key, shard)
            if bad is None or not self._verified_file(key, shard, output, bad):
                if len(self.damaged) > before:
                    entry = self.damaged[-1]
                    raise TransferlabError(f"cache entry {entry['path']} is damaged ({entry['reason']}); it was "
                                           f"set aside as {entry['set_aside']}; rerun to recompute it")
                raise TransferlabError(f"feature {output} of group {key.digest} is incomplete (shard {shard}); "
                                       "rerun the extraction to compute it")
            parts.append(np.load(path, mmap_mode="r"))
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts, axis=0)

    # -- verification -----------------------------------------------------------------
    def _shard_bad(self, key: GroupKey, shard: int) -> list[int] | None:
        """In-shard positions skipped as unreadable; [] when none were; None when bad.json is
        damaged (the shard was then set aside and must be recomputed)."""
        folder = self.group_dir(key) / f"{shard:05d}"
        path = folder / "bad.json"
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return []  # not written yet (other OS errors, e.g. permissions, are the caller's to see)
        except UnicodeDecodeError:
            self._set_aside_shard(folder, "bad.json is not text")
            return None
        start, stop = self.shard_range(key, shard)
        try:
            value = json.loads(text)
        except ValueError:
            self._set_aside_shard(folder, "bad.json is not valid JSON")
            return None
        if not isinstance(value, list) or not all(isinstance(i, int) and 0 <= i < stop - start for i in value):
            self._set_aside_shard(folder, "bad.json is not a list of in-shard positions")
            return None
        return value

    def _verified_file(self, key: GroupKey, shard: int, output: str, bad: Sequence[int]) -> bool:
        """True when the shard file exists and matches its record (size, CRC-32, rows); a
        damaged one is reported and set aside, so the caller recomputes it."""
        path = self._shard_file(key, shard, output)
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return False
        identity = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if identity in self._verified:
            return True
        check = path.with_name(path.name + CHECK_SUFFIX)
        try:
            record = json.loads(check.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return False  # written but its record not yet: a killed write, simply not done
        except ValueError as exc:
            return self._set_aside(path, f"its checksum record {check.name} is unreadable ({type(exc).__name__})")
        start, stop = self.shard_range(key, shard)
        expected_rows = stop - start - len(bad)
        if not isinstance(record, dict) or not {"bytes", "crc32", "rows"} <= set(record):
            reason = f"its checksum record {check.name} is incomplete"
        elif stat.st_size != record["bytes"]:
            reason = f"{stat.st_size} bytes where {record['bytes']} were written"
        elif record["rows"] != expected_rows:
            reason = f"{record['rows']} rows where the shard has {expected_rows} images"
        elif _crc32_of_file(path) != record["crc32"]:
            reason = "checksum mismatch"
        else:
            self._verified.add(identity)
            return True
        return self._set_aside(path, reason)

    def _set_aside(self, path: Path, reason: str) -> bool:
        aside = path.with_name(path.name + DAMAGED_SUFFIX)
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, aside)
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + CHECK_SUFFIX).unlink()
        self._report(path, reason, aside)
        return False

    def _set_aside_shard(self, folder: Path, reason: str) -> None:
        aside = folder.with_name(folder.name + DAMAGED_SUFFIX)
        with contextlib.suppress(FileNotFoundError):
            if aside.exists():
                shutil.rmtree(aside, ignore_errors=True)
            os.replace(folder, aside)
        self._report(folder / "bad.json", reason, aside)
        return None

    def _report(self, path: Path, reason: str, aside: Path) -> None:
        self.damaged.append({"path": str(path), "reason": reason, "set_aside": str(aside)})
        print(f"transferlab: warning: damaged cache entry {path} ({reason}); set aside as {aside.name}, "
              "recomputing it", file=sys.stderr)

    @staticmethod
    def _read_meta(path: Path) -> tuple[dict, str | None]:
        """(meta, None) or ({}, why it is unreadable)."""
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}, "no meta.json"
        except (OSError, ValueError) as exc:
            return {}, f"meta.json unreadable ({type(exc).__name__})"
        if not isinstance(meta, dict):
            return {}, "meta.json is not an object"
        return meta, None

    def is_group(self, folder: Path) -> bool:
        """A FeatureStore group: a digest-named folder whose meta.json names that digest, or
        (meta.json damaged or absent) that holds nothing but shard folders and meta.json."""
        if not folder.is_dir() or folder.is_symlink() or not _GROUP_NAME.fullmatch(folder.name):
            return False
        meta, problem = self._read_meta(folder / "meta.json")
        if problem is None:
            try:
                return GroupKey(**meta["key"]).digest == folder.name
            except (KeyError, TypeError):
                return False
        entries = list(folder.iterdir())
        return bool(entries) and all(
            (e.name == "meta.json" and e.is_file())
            or (e.is_dir() and not e.is_symlink() and _SHARD_NAME.fullmatch(e.name.removesuffix(DAMAGED_SUFFIX)))
            for e in entries)

    def foreign_entries(self) -> list[str]:
        """Names under the root that are not groups (left alone by ``remove``)."""
        if not self.root.is_dir():
            return []
        return sorted(e.name for e in self.root.iterdir() if not self.is_group(e))

    # -- maintenance ------------------------------------------------------------------
    def groups(self) -> list[dict]:
        out: list[dict] = []
        if not self.root.exists():
            return out
        for folder in sorted(self.root.iterdir()):
            if not self.is_group(folder):
                continue
            meta, problem = self._read_meta(folder / "meta.json")
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            outputs = sorted({p.stem for p in folder.glob("*/*.npy")})
            entry = {"group": folder.name, "bytes": size, "outputs": outputs, **meta}
            if problem is not None:
                entry["damaged"] = problem
            out.append(entry)
        return out

    def remove(self, group: str | None = None) -> int:
        """Delete one group (by digest prefix) or every group; returns groups removed. Only
        folders recognised as groups (``is_group``) are touched: anything else under the
        root (a project folder given as --cache by mistake) stays (``foreign_entries``)."""
        if not self.root.is_dir():
            return 0
        victims = [f for f in self.root.iterdir()
                   if (group is None or f.name.startswith(group)) and self.is_group(f)]
        for folder in victims:
            shutil.rmtree(folder)
        return len(victims)
