"""Oxford Buildings 5k, Paris 6k and Sculptures 6k, read from the publishers' archives.

All three share the ground-truth format of Philbin et al.: per query ``<name>_query.txt``
(one line: image id and the query box ``x1 y1 x2 y2`` in pixels) and the lists
``<name>_{good,ok,junk}.txt`` (one image id per line). The database is every image of the
collection; positives are good + ok, junk is ignored in scoring (``compute_ap.cpp``). The
query image stays in the database, as in the official protocol (it is in its own good/ok list).

The helpers here (ground-truth parsing, image indexing, missing-image reporting) are reused
by the revisited Oxford/Paris reader.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferlab.data.base import Box, Query, Split, TaskData
from transferlab.data.readers._util import Problems, require_root
from transferlab.data.tasks import TaskSpec, register
from transferlab.errors import TransferlabError

QUERY_SUFFIX = "_query.txt"
LIST_KINDS = ("good", "ok", "junk")
OXFORD_QUERY_PREFIX = "oxc1_"  # Oxford query files name images "oxc1_<id>"; files are "<id>.jpg"
MISSING_LIMIT = 20

# The 20 Paris images that are not JPEGs in paris_1/2.tgz (HTML error pages). The publisher
# lists them in parisbuildings/corrupt.txt; standard practice drops them from the database
# (6412 - 20 = 6392 images). None of them appears in the paris_120310 ground truth.
PARIS_CORRUPT = frozenset(
    {
        "paris_louvre_000136", "paris_louvre_000146", "paris_moulinrouge_000422",
        "paris_museedorsay_001059", "paris_notredame_000188", "paris_pantheon_000284",
        "paris_pantheon_000960", "paris_pantheon_000974", "paris_pompidou_000195",
        "paris_pompidou_000196", "paris_pompidou_000201", "paris_pompidou_000467",
        "paris_pompidou_000640", "paris_sacrecoeur_000299", "paris_sacrecoeur_000330",
        "paris_sacrecoeur_000353", "paris_triomphe_000662", "paris_triomphe_000833",
        "paris_triomphe_000863", "paris_triomphe_000867",
    }
)  # fmt: skip


# ------------------------------------------------------------------ shared plumbing


def reject_unknown_options(task: str, options: dict, known: Iterable[str]) -> None:
    """Readers take options by keyword; a misspelt option must not be silently ignored."""
    if options:
        raise TransferlabError(
            f"task {task}: unknown option(s) {', '.join(sorted(options))} "
            f"(known: {', '.join(sorted(known)) or 'none'})"
        )


def natural_key(text: str) -> list:
    """Sort 'all_souls_10' after 'all_souls_9'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def walk_dirs(root: Path, max_depth: int) -> Iterable[Path]:
    """``root`` and its sub-folders down to ``max_depth`` levels, in sorted order."""
    base = len(root.parts)
    for dirpath, dirnames, _ in os.walk(root):
        depth = len(Path(dirpath).parts) - base
        dirnames.sort()
        if depth >= max_depth:
            dirnames[:] = []
        yield Path(dirpath)


def index_images(folder: Path, nested: bool, problems: Problems) -> dict[str, str]:
    """Map image id (file stem) -> path for the ``.jpg`` files of ``folder`` (or, when
    ``nested``, of its immediate sub-folders, as Paris' ``paris/<landmark>/``)."""
    dirs = sorted(p for p in folder.iterdir() if p.is_dir()) if nested else [folder]
    index: dict[str, str] = {}
    for d in dirs:
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() != ".jpg" or not entry.is_file():
                continue
            if stem in index:
                problems.report(TransferlabError(f"image {stem} is present twice: {index[stem]} and {entry.path}"))
                continue
            index[stem] = entry.path
    return index


def locate_image_folder(
    root: Path,
    probe: str,
    candidates: Iterable[str],
    what: str,
    landmark_of: Callable[[str], str] | None = None,
    max_depth: int = 4,
) -> tuple[Path, bool]:
    """Find the folder holding image ``<probe>.jpg`` (an image the ground truth names).

    Returns (folder, nested): nested when images sit in per-landmark sub-folders (the Paris
    archives' ``paris/<landmark>/``), recognised when ``landmark_of(probe)`` names the folder
    holding the probe. Tries ``candidates`` (relative to root) first, then searches.
    """
    filename = f"{probe}.jpg"
    tried = []
    for rel in candidates:
        folder = root / rel
        tried.append(rel)
        if (folder / filename).is_file():
            return folder, False
        if landmark_of is not None and (folder / landmark_of(probe) / filename).is_file():
            return folder, True
    for folder in walk_dirs(root, max_depth):
        if (folder / filename).is_file():
            if landmark_of is not None and folder.name == landmark_of(probe) and folder != root:
                return folder.parent, True
            return folder, False
    raise TransferlabError(
        f"{what} not found under {root}: no {filename} in {', '.join(tried)} "
        f"or in any folder up to {max_depth} levels down"
    )


class MissingImages:
    """Reports images named by the ground truth but absent from disk, each with its file and
    line, up to MISSING_LIMIT, then one summary line (strict mode raises on the first)."""

    def __init__(self, problems: Problems, where: str):
        self.problems = problems
        self.where = where
        self.count = 0

    def add(self, path: Path | str, line: int | None, name: str, role: str = "image") -> None:
        self.count += 1
        if self.count <= MISSING_LIMIT:
            self.problems.annotation(path, f"{role} {name} is not among the images in {self.where}", line=line)

    def finish(self) -> None:
        if self.count > MISSING_LIMIT:
            self.problems.report(
                TransferlabError(f"... {self.count - MISSING_LIMIT} more images named by the ground truth "
                                 f"are missing from {self.where}")
            )


def parse_box(fields: list[str]) -> Box | None:
    """Four finite numbers with x1 < x2 and y1 < y2, or None."""
    try:
        x1, y1, x2, y2 = (float(v) for v in fields)
    except ValueError:
        return None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2, y2)


def image_id(token: str) -> str:
    """An image id as the image file's stem: no ``oxc1_`` prefix, no ``.jpg``."""
    if token.startswith(OXFORD_QUERY_PREFIX):
        token = token[len(OXFORD_QUERY_PREFIX):]
    if token.lower().endswith(".jpg"):
        token = token[:-4]
    return token


# ------------------------------------------------------------------ Oxford-style ground truth


@dataclass
class GtQuery:
    """One query as written in the ground-truth folder, before matching to images."""

    name: str
    image: str
    box: Box
    query_file: Path
    lists: dict[str, list[tuple[str, int, Path]]] = field(default_factory=dict)  # kind -> (id, line, file)


def find_gt_dir(
    root: Path, candidates: Iterable[str], what: str, prefer: str | None = None, max_depth: int = 3
) -> Path:
    """The folder holding ``*_query.txt`` files: a candidate (relative to root), root itself
    (the Oxford gt archive extracts flat), or any folder below; ``prefer`` breaks ties."""
    tried = []
    for rel in [*candidates, "."]:
        folder = root / rel
        tried.append(rel)
        if folder.is_dir() and _has_query_files(folder):
            return folder
    found = [d for d in walk_dirs(root, max_depth) if _has_query_files(d)]
    if prefer is not None:
        preferred = [d for d in found if prefer in d.name]
        found = preferred or found
    if found:
        return found[0]
    raise TransferlabError(
        f"{what} not found under {root}: no *{QUERY_SUFFIX} in {', '.join(tried)} or below"
    )


def _has_query_files(folder: Path) -> bool:
    try:
        return any(e.name.endswith(QUERY_SUFFIX) and e.is_file() for e in os.scandir(folder))
    except OSError:
        return False


def read_gt_dir(gt_dir: Path, problems: Problems, source_files: list[str]) -> list[GtQuery]:
    """Parse every ``<name>_query.txt`` and its good/ok/junk lists (queries in natural order)."""
    query_files = sorted(
        (p for p in gt_dir.iterdir() if p.name.endswith(QUERY_SUFFIX)), key=lambda p: natural_key(p.name)
    )
    queries = []
    for query_file in query_files:
        name = query_file.name[: -len(QUERY_SUFFIX)]
        parsed = _read_query_file(query_file, problems)
        lists: dict[str, list[tuple[str, int, Path]]] = {}
        for kind in LIST_KINDS:
            list_file = gt_dir / f"{name}_{kind}.txt"
            entries = _read_list_file(list_file, problems)
            if entries is not None:
                source_files.append(str(list_file))
                lists[kind] = entries
        if parsed is None or len(lists) != len(LIST_KINDS):
            continue
        source_files.append(str(query_file))
        queries.append(GtQuery(name=name, image=parsed[0], box=parsed[1], query_file=query_file, lists=lists))
    return queries


def _read_query_file(path: Path, problems: Problems) -> tuple[str, Box] | None:
    lines = problems.lines(path)
    if lines is None:
        return None
    if len(lines) != 1:
        problems.annotation(path, f"expected one line '<image> x1 y1 x2 y2', found {len(lines)} lines")
        return None
    number, line = lines[0]
    fields = line.split()
    box = parse_box(fields[1:]) if len(fields) == 5 else None
    if box is None:
        problems.annotation(
            path, f"expected '<image> x1 y1 x2 y2' with x1 < x2 and y1 < y2, got {line.strip()!r}", line=number
        )
        return None
    return image_id(fields[0]), box


def _read_list_file(path: Path, problems: Problems) -> list[tuple[str, int, Path]] | None:
    lines = problems.lines(path)  # the good lists of Paris are empty files: that is valid
    if lines is None:
        return None
    entries = []
    for number, line in lines:
        fields = line.split()
        if len(fields) != 1:
            problems.annotation(path, f"expected one image id per line, got {line.strip()!r}", line=number)
            continue
        entries.append((image_id(fields[0]), number, path))
    return entries


def build_retrieval_task(
    task: str,
    root: Path,
    gt_queries: list[GtQuery],
    images: dict[str, str],
    image_folder: Path,
    problems: Problems,
    allow_missing: bool,
    source_files: list[str],
    notes: list[str],
) -> TaskData:
    """Database = every indexed image (sorted by id); queries from the parsed ground truth."""
    names = sorted(images)
    index = {n: i for i, n in enumerate(names)}
    missing = MissingImages(problems, str(image_folder))
    dropped = 0
    queries = []
    for gq in gt_queries:
        if gq.image not in index:
            missing.add(gq.query_file, 1, f"{gq.image}.jpg", role="query image")
            continue
        found: dict[str, list[int]] = {kind: [] for kind in LIST_KINDS}
        for kind in LIST_KINDS:
            for name, line, path in gq.lists[kind]:
                if name in index:
                    found[kind].append(index[name])
                elif allow_missing:
                    dropped += 1
                else:
                    missing.add(path, line, f"{name}.jpg")
        positives = np.unique(np.array(found["good"] + found["ok"], dtype=np.int64))
        junk = np.setdiff1d(np.array(found["junk"], dtype=np.int64), positives)
        if positives.size == 0:
            problems.annotation(gq.query_file, f"query {gq.name} has no good or ok image in the database")
        queries.append(
            Query(
                path=images[gq.image],
                positives=positives,
                junk=junk,
                box=gq.box,
                name=gq.name,
                db_index=index[gq.image],
            )
        )
    missing.finish()
    if dropped:
        notes.append(
            f"allow_missing: {dropped} ground-truth entries name images absent from {image_folder}; "
            "they were dropped from the ground truth (compute_ap.cpp would count a missing positive as never retrieved)"
        )
    paths = [images[n] for n in names]
    return TaskData(
        name=task,
        kind="retrieval",
        classes=[],
        splits={"db": Split("db", paths, np.full(len(paths), -1, dtype=np.int64))},
        queries=queries,
        root=str(root),
        source_files=source_files,
        notes=notes,
    )


def _count_note(task: str, data: TaskData, n_images: int, n_queries: int) -> str:
    got = f"{len(data.split('db'))} database images, {len(data.queries or [])} queries"
    official = f"official: {n_images} images, {n_queries} queries"
    return f"{task}: {got} ({official})"


def _start(task: str, root: Path | None) -> Path:
    root = require_root(root, task, "the folder holding the extracted archives")
    if not root.is_dir():
        raise TransferlabError(f"task {task}: root folder {root} does not exist")
    return root


# ------------------------------------------------------------------ the three tasks


def read_oxford5k(
    root: Path | None, *, problems: Problems | None = None, allow_missing: bool = False, **options
) -> TaskData:
    """Oxford Buildings: ``oxbuild_images.tgz`` (5063 jpgs) and ``gt_files_170407.tgz``
    (55 queries), each extracted flat into root or into a folder of its own."""
    reject_unknown_options("oxford5k", options, ["allow_missing"])
    problems = problems if problems is not None else Problems()
    root = _start("oxford5k", root)
    gt_dir = find_gt_dir(root, ["gt_files_170407", "gt_files", "oxford5k/gt_files_170407"],
                         "Oxford ground truth (gt_files_170407)")
    source_files: list[str] = []
    gt_queries = read_gt_dir(gt_dir, problems, source_files)
    if not gt_queries:
        raise TransferlabError(f"oxford5k: no readable query in {gt_dir}")
    folder, _ = locate_image_folder(
        root, gt_queries[0].image, ["oxbuild_images", "images", "jpg", "oxford5k/oxbuild_images", "."],
        "Oxford images (oxbuild_images)",
    )
    images = index_images(folder, nested=False, problems=problems)
    notes = [f"ground truth: {gt_dir}", f"images: {folder}", "query images stay in the database (official protocol)"]
    data = build_retrieval_task("oxford5k", root, gt_queries, images, folder, problems, allow_missing,
                                source_files, notes)
    notes.append(_count_note("oxford5k", data, 5063, 55))
    return data


def paris_landmark(image: str) -> str:
    """paris_defense_000605 -> defense (the sub-folder of paris_1/2.tgz holding it)."""
    parts = image.split("_")
    return parts[1] if len(parts) >= 3 else ""


def read_paris6k(
    root: Path | None,
    *,
    problems: Problems | None = None,
    allow_missing: bool = False,
    drop_corrupt: bool = True,
    **options,
) -> TaskData:
    """Paris: ``paris_1.tgz`` + ``paris_2.tgz`` (``paris/<landmark>/*.jpg``, 6412 files) and
    ``paris_120310.tgz`` (55 queries). The 20 corrupt files are dropped unless
    ``drop_corrupt=False``."""
    reject_unknown_options("paris6k", options, ["allow_missing", "drop_corrupt"])
    problems = problems if problems is not None else Problems()
    root = _start("paris6k", root)
    gt_dir = find_gt_dir(root, ["paris_120310", "gt_files", "paris6k/paris_120310"],
                         "Paris ground truth (paris_120310)")
    source_files: list[str] = []
    gt_queries = read_gt_dir(gt_dir, problems, source_files)
    if not gt_queries:
        raise TransferlabError(f"paris6k: no readable query in {gt_dir}")
    folder, nested = locate_image_folder(
        root, gt_queries[0].image, ["paris", "jpg", "images", "paris6k/paris", "."],
        "Paris images (paris/<landmark>/ from paris_1.tgz and paris_2.tgz)", landmark_of=paris_landmark,
    )
    images = index_images(folder, nested=nested, problems=problems)
    notes = [f"ground truth: {gt_dir}", f"images: {folder}{'/<landmark>/' if nested else ''}"]
    if drop_corrupt:
        present = sorted(PARIS_CORRUPT & images.keys())
        for name in present:
            del images[name]
        notes.append(
            f"dropped {len(present)} of the 20 known corrupt images (parisbuildings/corrupt.txt) from the database"
        )
    notes.append("query images stay in the database (official protocol)")
    data = build_retrieval_task("paris6k", root, gt_queries, images, folder, problems, allow_missing,
                                source_files, notes)
    notes.append(_count_note("paris6k", data, 6392, 55))
    return data


def read_sculptures6k(
    root: Path | None,
    *,
    problems: Problems | None = None,
    split: str = "test",
    allow_missing: bool = False,
    **options,
) -> TaskData:
    """Sculptures 6k (Arandjelovic & Zisserman 2011): images ``sculptures6k/{train,test}/``
    and Oxford-format ground truth (``*_query.txt`` + good/ok/junk lists) for ``split``.
    The ground-truth folder name is not confirmed (see docs/tasks_retrieval.md); the reader
    takes the folder of ``*_query.txt`` files whose name contains ``split``, else the first."""
    reject_unknown_options("sculptures6k", options, ["allow_missing", "split"])
    if split not in ("train", "test"):
        raise TransferlabError(f"sculptures6k: split must be 'train' or 'test', got {split!r}")
    problems = problems if problems is not None else Problems()
    root = _start("sculptures6k", root)
    gt_dir = find_gt_dir(root, [f"gt_{split}", f"gt_files_{split}", f"{split}_gt"],
                         f"Sculptures 6k ground truth ({split})", prefer=split)
    source_files: list[str] = []
    gt_queries = read_gt_dir(gt_dir, problems, source_files)
    if not gt_queries:
        raise TransferlabError(f"sculptures6k: no readable query in {gt_dir}")
    folder, _ = locate_image_folder(
        root, gt_queries[0].image, [f"sculptures6k/{split}", split, "images", "."], f"Sculptures 6k {split} images"
    )
    images = index_images(folder, nested=False, problems=problems)
    notes = [
        f"ground truth: {gt_dir}",
        f"images: {folder} (split {split})",
        "layout of the Sculptures 6k ground truth is not confirmed from a public copy; see docs/tasks_retrieval.md",
    ]
    data = build_retrieval_task("sculptures6k", root, gt_queries, images, folder, problems, allow_missing,
                                source_files, notes)
    notes.append(f"sculptures6k: {len(data.split('db'))} database images, {len(data.queries or [])} queries")
    return data


register(
    TaskSpec(
        name="oxford5k",
        title="Oxford Buildings 5k",
        group=5,
        distance=15,
        kind="retrieval",
        metric="oxford_map",
        layout="oxbuild_images/*.jpg (oxbuild_images.tgz) and gt_files_170407/*_{query,good,ok,junk}.txt "
        "(gt_files_170407.tgz); either may be extracted flat into the root",
        reader=read_oxford5k,
        options={"allow_missing": False},
        protocol="55 queries cropped to their box, 5063 database images (queries included); "
        "positives good+ok, junk ignored; mAP of compute_ap.cpp",
    )
)
register(
    TaskSpec(
        name="paris6k",
        title="Paris 6k",
        group=5,
        distance=17,
        kind="retrieval",
        metric="oxford_map",
        layout="paris/<landmark>/*.jpg (paris_1.tgz + paris_2.tgz) and paris_120310/*_{query,good,ok,junk}.txt",
        reader=read_paris6k,
        options={"allow_missing": False, "drop_corrupt": True},
        protocol="55 queries cropped to their box, 6392 database images (6412 minus the 20 corrupt ones); "
        "positives good+ok, junk ignored; mAP of compute_ap.cpp",
    )
)
register(
    TaskSpec(
        name="sculptures6k",
        title="Oxford Sculptures 6k",
        group=5,
        distance=19,
        kind="retrieval",
        metric="oxford_map",
        layout="sculptures6k/{train,test}/*.jpg and a folder of Oxford-format *_{query,good,ok,junk}.txt "
        "for the split (folder name unconfirmed)",
        reader=read_sculptures6k,
        options={"split": "test", "allow_missing": False},
        protocol="queries of the chosen split (test by default) against that split's images; "
        "positives good+ok, junk ignored; mAP as Oxford",
    )
)

