"""Revisited Oxford and Paris (Radenovic et al., CVPR 2018), read from the revisitop layout:
``gnd_roxford5k.pkl`` / ``gnd_rparis6k.pkl`` next to ``jpg/<name>.jpg``. The original
``oxbuild_images/`` and ``paris/<landmark>/`` folders are accepted too.

The pickle holds ``imlist`` (database ids: 4993 for ROxford, 6322 for RParis), ``qimlist``
(70 query ids, not in ``imlist``) and ``gnd``: per query a dict ``bbx`` (x1, y1, x2, y2),
``easy``, ``hard``, ``junk`` (indices into ``imlist``). Public code handles them as plain
Python lists (``info['easy'] + info['hard']``); numpy arrays are accepted as well.

A pickle can run code when loaded, so it is read with an Unpickler that refuses every global
except the numpy array/scalar reconstructors: plain dicts, lists, tuples, strings and
numbers need no global at all.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.data.base import Box, Query, Split, TaskData
from transferlab.data.readers._util import Problems, find_under, require_root
from transferlab.data.readers.oxford import (
    MissingImages,
    index_images,
    locate_image_folder,
    paris_landmark,
    reject_unknown_options,
)
from transferlab.data.tasks import TaskSpec, register
from transferlab.errors import AnnotationError

OFFICIAL = {"roxford5k": (4993, 70), "rparis6k": (6322, 70)}
GND_KEYS = ("easy", "hard", "junk")

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_BUILTIN_GLOBALS = {"list", "dict", "tuple", "set", "frozenset", "str", "int", "float", "bytes", "bool"}


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list (it could run code)."""


class _SafeUnpickler(pickle.Unpickler):
    """Allows only containers, strings, numbers and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _BUILTIN_GLOBALS:
            return super().find_class("builtins", name)
        if (module, name) in _NUMPY_GLOBALS:
            if module == "numpy.core.multiarray":  # numpy >= 2 moved it; avoid the deprecation shim
                module = "numpy._core.multiarray" if hasattr(np, "_core") else module
            return super().find_class(module, name)
        raise _RefusedGlobal(f"refused to load global {module}.{name}")


def load_pickle_safely(path: Path) -> Any:
    """Load a ground-truth pickle without running code; any failure is an AnnotationError."""
    try:
        with open(path, "rb") as handle:
            return _SafeUnpickler(handle, encoding="latin1").load()
    except FileNotFoundError:
        raise AnnotationError(path, "file not found") from None
    except _RefusedGlobal as exc:
        raise AnnotationError(
            path, f"not a safe ground-truth pickle ({exc}); "
            "only lists, dicts, strings, numbers and numpy arrays are accepted"
        ) from None
    except Exception as exc:  # truncated or not a pickle at all: UnpicklingError, EOFError, ...
        raise AnnotationError(path, f"cannot read pickle ({type(exc).__name__}: {exc})") from None


def _as_index_list(value: Any) -> list[int] | None:
    if isinstance(value, np.ndarray):
        if value.ndim > 1 or (value.size and value.dtype.kind not in "iu"):
            return None
        return [int(v) for v in value.ravel()]
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
            return None
        return [int(v) for v in value]
    return None


def _as_box(value: Any) -> Box | None:
    if isinstance(value, np.ndarray):
        value = value.ravel().tolist()
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    if not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value):
        return None
    x1, y1, x2, y2 = (float(v) for v in value)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2, y2)


def _names(cfg: dict, key: str, path: Path) -> list[str]:
    value = cfg.get(key)
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise AnnotationError(path, "expected a list of image names (str)", key=key)
    return list(value)


def parse_gnd(path: Path, cfg: Any, problems: Problems) -> tuple[list[str], list[str], list[dict | None]]:
    """Check the pickle's structure; returns (imlist, qimlist, gnd) with gnd entries
    normalised to {'bbx': Box, 'easy'/'hard'/'junk': list[int]}, or None for bad entries."""
    if not isinstance(cfg, dict):
        raise AnnotationError(path, f"expected a dict with keys imlist, qimlist, gnd; got {type(cfg).__name__}")
    for key in ("imlist", "qimlist", "gnd"):
        if key not in cfg:
            raise AnnotationError(path, "missing key", key=key)
    imlist = _names(cfg, "imlist", path)
    qimlist = _names(cfg, "qimlist", path)
    gnd = cfg["gnd"]
    if not isinstance(gnd, (list, tuple)):
        raise AnnotationError(path, "expected a list with one dict per query", key="gnd")
    if len(gnd) != len(qimlist):
        raise AnnotationError(path, f"{len(gnd)} entries for {len(qimlist)} queries in qimlist", key="gnd")
    entries: list[dict | None] = []
    for q, entry in enumerate(gnd):
        where = f"gnd[{q}]"
        if not isinstance(entry, dict):
            problems.annotation(path, f"expected a dict, got {type(entry).__name__}", key=where)
            entries.append(None)
            continue
        fields: dict = {}
        parsed: dict | None = fields
        for key in GND_KEYS:
            indices = _as_index_list(entry.get(key)) if key in entry else None
            if indices is None:
                problems.annotation(path, "missing" if key not in entry else "expected a list of integer indices",
                                    key=f"{where}['{key}']")
                parsed = None
                break
            bad = [i for i in indices if not 0 <= i < len(imlist)]
            if bad:
                problems.annotation(path, f"index {bad[0]} outside imlist (0..{len(imlist) - 1})",
                                    key=f"{where}['{key}']")
                parsed = None
                break
            fields[key] = indices
        if parsed is not None:
            box = _as_box(entry.get("bbx"))
            if box is None:
                problems.annotation(path,
                                    f"expected [x1, y1, x2, y2] with x1 < x2 and y1 < y2, got {entry.get('bbx')!r}",
                                    key=f"{where}['bbx']")
                parsed = None
            else:
                parsed["bbx"] = box
        entries.append(parsed)
    return imlist, qimlist, entries


def _read_revisited(
    task: str, root: Path | None, problems: Problems | None, allow_missing: bool, options: dict
) -> TaskData:
    reject_unknown_options(task, options, ["allow_missing"])
    problems = problems if problems is not None else Problems()
    root = require_root(root, task, f"the folder holding gnd_{task}.pkl and jpg/")
    pkl_name = f"gnd_{task}.pkl"
    pkl = find_under(
        root, [pkl_name, f"{task}/{pkl_name}", f"data/datasets/{task}/{pkl_name}"],
        f"revisited ground truth {pkl_name}",
        max_depth=4,
    )
    imlist, qimlist, gnd = parse_gnd(pkl, load_pickle_safely(pkl), problems)
    if not imlist and not qimlist:
        raise AnnotationError(pkl, "imlist and qimlist are empty")
    probe = (imlist or qimlist)[0]
    base = pkl.parent
    rel = [str(base.relative_to(root) / "jpg") if base != root else "jpg", "jpg"]
    if task == "roxford5k":
        folder, nested = locate_image_folder(root, probe, [*rel, "oxbuild_images", "."], "ROxford images (jpg/)")
    else:
        folder, nested = locate_image_folder(
            root, probe, [*rel, "paris", "."], "RParis images (jpg/ or paris/<landmark>/)", landmark_of=paris_landmark
        )
    images = index_images(folder, nested=nested, problems=problems)

    missing = MissingImages(problems, str(folder))
    keep = []
    for i, name in enumerate(imlist):
        if name in images:
            keep.append(i)
        elif not allow_missing:
            missing.add(pkl, None, f"{name}.jpg", role=f"imlist[{i}]")
    new_index = {old: new for new, old in enumerate(keep)}
    db_paths = [images[imlist[i]] for i in keep]
    db_position = {imlist[old]: new for old, new in new_index.items()}
    queries = []
    for q, (qname, entry) in enumerate(zip(qimlist, gnd, strict=True)):
        if qname not in images:
            missing.add(pkl, None, f"{qname}.jpg", role=f"qimlist[{q}]")
            continue
        if entry is None:
            continue
        parts = {k: np.array(sorted({new_index[i] for i in entry[k] if i in new_index}), dtype=np.int64)
                 for k in GND_KEYS}
        queries.append(
            Query(
                path=images[qname],
                positives=np.union1d(parts["easy"], parts["hard"]),
                junk=parts["junk"],
                box=entry["bbx"],
                name=qname,
                easy=parts["easy"],
                hard=parts["hard"],
                db_index=db_position.get(qname),
            )
        )
    missing.finish()
    notes = [
        f"ground truth: {pkl}",
        f"images: {folder}{'/<landmark>/' if nested else ''}",
        "positives = easy + hard (Medium); revisited_map also scores Easy (hard as junk) and Hard (easy as junk)",
    ]
    if len(keep) < len(imlist):
        notes.append(f"allow_missing: {len(imlist) - len(keep)} imlist images absent from {folder} were dropped "
                     "and the ground truth re-indexed")
    n_db, n_q = OFFICIAL[task]
    notes.append(f"{task}: {len(db_paths)} database images, {len(queries)} queries (official: {n_db}, {n_q})")
    return TaskData(
        name=task,
        kind="retrieval",
        classes=[],
        splits={"db": Split("db", db_paths, np.full(len(db_paths), -1, dtype=np.int64))},
        queries=queries,
        root=str(root),
        source_files=[str(pkl)],
        notes=notes,
    )


def read_roxford5k(
    root: Path | None, *, problems: Problems | None = None, allow_missing: bool = False, **options
) -> TaskData:
    """Revisited Oxford: ``gnd_roxford5k.pkl`` and ``jpg/`` (or ``oxbuild_images/``)."""
    return _read_revisited("roxford5k", root, problems, allow_missing, options)


def read_rparis6k(
    root: Path | None, *, problems: Problems | None = None, allow_missing: bool = False, **options
) -> TaskData:
    """Revisited Paris: ``gnd_rparis6k.pkl`` and ``jpg/`` (or ``paris/<landmark>/``)."""
    return _read_revisited("rparis6k", root, problems, allow_missing, options)


for _name, _title, _distance, _reader, _layout in (
    ("roxford5k", "Revisited Oxford 5k", 16, read_roxford5k,
     "gnd_roxford5k.pkl and jpg/*.jpg (revisitop layout; oxbuild_images/ also accepted)"),
    ("rparis6k", "Revisited Paris 6k", 18, read_rparis6k,
     "gnd_rparis6k.pkl and jpg/*.jpg (revisitop layout; paris/<landmark>/ also accepted)"),
):
    register(
        TaskSpec(
            name=_name,
            title=_title,
            group=5,
            distance=_distance,
            kind="retrieval",
            metric="revisited_map",
            layout=_layout,
            reader=_reader,
            options={"allow_missing": False},
            protocol=f"{OFFICIAL[_name][1]} queries cropped to bbx against {OFFICIAL[_name][0]} database images "
            "(queries not in it); mAP Easy / Medium (headline) / Hard of revisitop compute_map, junk ignored",
        )
    )
