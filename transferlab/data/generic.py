"""Readers for the two generic layouts any user can produce, and ``load_dataset``.

Image folder::

    ROOT/train/<class>/<image>      (required)
    ROOT/val/<class>/<image>        (optional)
    ROOT/test/<class>/<image>       (required)

CSV (paths relative to ROOT)::

    ROOT/train.csv, ROOT/val.csv (optional), ROOT/test.csv
    header ``path,label``  -> single-label
    header ``path,labels`` -> multi-label, names separated by ``;`` (an empty field = no positive)

Both readers list files and labels only; pixels are decoded later. Every problem raises a
TransferlabError / AnnotationError that names the folder, file and (CSV) line.

Probes and studies need train and test. Extraction (``load_dataset(..., any_layout=True)``)
takes any subset of the splits, and also two layouts without splits: class folders
``ROOT/<class>/<image>`` and a flat folder of photos ``ROOT/<image>`` (no labels), each read
as one split named ``images`` in sorted path order.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.data.base import Split, TaskData
from transferlab.errors import AnnotationError, TransferlabError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
)
SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "test")
ALL_IMAGES_SPLIT = "images"  # the one split of a folder without split folders
# Files operating systems drop into folders; never images, never an error.
_OS_JUNK = frozenset({"thumbs.db", "desktop.ini"})


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in _OS_JUNK


def _check_name(name: str, folder: Path | str) -> None:
    """File names are written to items.csv and manifests as UTF-8; one that is not valid
    UTF-8 (bytes from another locale) is refused, escaped so the message itself prints."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise TransferlabError(f"{folder}: file name '{shown}' is not valid UTF-8; rename it") from None


def _check_extension(path: Path | str, where: str) -> None:
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise TransferlabError(
            f"{path}: not an image file name ({where}); extension {suffix or '(none)'!r} is not one of "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}"
        )


def _check_root(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise TransferlabError(f"dataset folder {path} does not exist")
    if not path.is_dir():
        raise TransferlabError(f"dataset {path} is not a folder")
    return path.absolute()


def _class_indices(
    per_split_classes: dict[str, set[str]], where: Path
) -> tuple[list[str], list[str]]:
    """Sorted union of class names; a class seen in val/test but never in train is an error
    (a probe cannot learn it). Returns (classes, notes)."""
    if "train" not in per_split_classes:  # extraction of a folder without a train split
        return sorted(set().union(*per_split_classes.values())), []
    train = per_split_classes["train"]
    for split in ("val", "test"):
        unseen = sorted(per_split_classes.get(split, set()) - train)
        if unseen:
            raise TransferlabError(
                f"{where}: class{'es' if len(unseen) > 1 else ''} {', '.join(unseen)} appear in "
                f"{split} but not in train; every class needs training images"
            )
    notes = []
    untested = sorted(train - per_split_classes["test"]) if "test" in per_split_classes else []
    if untested:
        notes.append(f"classes with no test images: {', '.join(untested)}")
    return sorted(train), notes


# ---------------------------------------------------------------------------------------------
# image folder


def _list_class_folder(folder: Path) -> list[str]:
    images = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if _is_ignored(entry.name):
                continue
            _check_name(entry.name, folder)
            if entry.is_dir():
                raise TransferlabError(
                    f"{entry.path}: unexpected folder inside class folder {folder}; the layout is "
                    f"ROOT/<split>/<class>/<image>"
                )
            _check_extension(entry.path, f"in class folder {folder}")
            images.append(entry.path)
    if not images:
        raise TransferlabError(f"{folder}: class folder is empty (no images)")
    return images


def read_image_folder(root: str | Path, required: tuple[str, ...] = REQUIRED_SPLITS) -> TaskData:
    """Read ``ROOT/<split>/<class>/<image>``; classes are the sorted union of class folders.
    ``required``: the splits that must exist (``()``: any, at least one)."""
    root = _check_root(root)
    listed: dict[str, dict[str, list[str]]] = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            if split in required:
                raise TransferlabError(
                    f"{root}: missing split folder {split_dir}; the image-folder layout is "
                    f"ROOT/<split>/<class>/<image> with splits train and test (val optional)"
                )
            continue
        classes: dict[str, list[str]] = {}
        with os.scandir(split_dir) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if _is_ignored(entry.name):
                    continue
                _check_name(entry.name, split_dir)
                if not entry.is_dir():
                    raise TransferlabError(
                        f"{entry.path}: file directly in split folder {split_dir}; images go in "
                        f"class folders, ROOT/<split>/<class>/<image>"
                    )
                classes[entry.name] = _list_class_folder(Path(entry.path))
        if not classes:
            raise TransferlabError(f"{split_dir}: split folder has no class folders")
        listed[split] = classes

    class_names, notes = _class_indices({s: set(c) for s, c in listed.items()}, root)
    index = {name: i for i, name in enumerate(class_names)}
    splits = {}
    for split, classes in listed.items():
        paths: list[str] = []
        labels: list[int] = []
        for name, images in classes.items():
            paths.extend(images)
            labels.extend([index[name]] * len(images))
        splits[split] = Split(split, paths, np.asarray(labels, dtype=np.int64))
    return TaskData(
        name=root.name,
        kind="single",
        classes=class_names,
        splits=splits,
        root=str(root),
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------
# CSV


def _read_csv_rows(csv_path: Path) -> tuple[str, list[tuple[int, str, str]]]:
    """(label column name, [(line, path, label field)]) of one split CSV. A problem is
    reported at the line where its record starts (an unclosed quote swallows the rest of the
    file, so the line where reading stopped says nothing)."""
    start = 1
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader)
            except StopIteration:
                raise AnnotationError(
                    csv_path, "empty file; expected a header path,label or path,labels", line=1
                ) from None
            header = [h.strip() for h in header]
            if header not in (["path", "label"], ["path", "labels"]):
                raise AnnotationError(
                    csv_path,
                    f"header is {','.join(header)!r}; expected 'path,label' (single-label) or "
                    f"'path,labels' (multi-label, names separated by ';')",
                    line=1,
                )
            rows = []
            start = reader.line_num + 1
            for fields in reader:
                line, start = start, reader.line_num + 1
                if any("\n" in f or "\r" in f for f in fields):
                    raise AnnotationError(csv_path, f"a quoted field opens on this line and runs to line "
                                          f"{reader.line_num}: close the quote (\")", line=line)
                if not fields or all(not f.strip() for f in fields):
                    continue
                if len(fields) != 2:
                    raise AnnotationError(
                        csv_path, f"expected 2 fields (path,{header[1]}), found {len(fields)}", line=line
                    )
                rows.append((line, fields[0].strip(), fields[1].strip()))
    except UnicodeDecodeError as exc:
        raise AnnotationError(csv_path, f"not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise AnnotationError(csv_path, f"malformed CSV ({exc})", line=start) from None
    if not rows:
        raise AnnotationError(csv_path, "no images listed (only a header)")
    return header[1], rows


def read_csv_dataset(root: str | Path, required: tuple[str, ...] = REQUIRED_SPLITS) -> TaskData:
    """Read ``ROOT/<split>.csv`` (train and test required, val optional).

    Single-label (``path,label``) gives int64 class indices; multi-label (``path,labels``)
    gives int8 (n, K) with 1 = positive, -1 = negative. Classes are the sorted union of label
    names; a label never seen (positive) in train is an error.
    """
    root = _check_root(root)
    column: str | None = None
    first_csv: Path | None = None
    parsed: dict[str, list[tuple[int, str, list[str]]]] = {}
    seen_paths: dict[str, tuple[Path, int]] = {}
    for split in SPLITS:
        csv_path = root / f"{split}.csv"
        if not csv_path.is_file():
            if split in required:
                raise TransferlabError(
                    f"{root}: missing {csv_path.name}; the CSV layout is ROOT/<split>.csv for "
                    f"splits train and test (val optional), header path,label or path,labels"
                )
            continue
        split_column, rows = _read_csv_rows(csv_path)
        if column is None:
            column, first_csv = split_column, csv_path
        elif split_column != column:
            raise AnnotationError(
                csv_path, f"header column {split_column!r} differs from {column!r} in {first_csv}", line=1
            )
        entries = []
        for line, rel, field in rows:
            if not rel:
                raise AnnotationError(csv_path, "empty path", line=line)
            if os.path.isabs(rel):
                raise AnnotationError(csv_path, f"path {rel!r} is absolute; paths are relative to {root}", line=line)
            full = os.path.normpath(os.path.join(root, rel))
            if os.path.commonpath([full, str(root)]) != str(root):
                raise AnnotationError(csv_path, f"path {rel!r} leaves {root}; paths are relative to the "
                                      "dataset folder and stay inside it", line=line)
            if full in seen_paths:
                other, other_line = seen_paths[full]
                raise AnnotationError(csv_path, f"{rel} is also listed at {other}:{other_line}", line=line)
            seen_paths[full] = (csv_path, line)
            try:
                _check_extension(full, f"listed in {csv_path}:{line}")
            except TransferlabError as exc:
                raise AnnotationError(csv_path, str(exc), line=line) from None
            if not os.path.isfile(full):
                raise AnnotationError(csv_path, f"image {full} is missing", line=line)
            if column == "label":
                if not field:
                    raise AnnotationError(csv_path, "empty label", line=line)
                names = [field]
            else:
                names = [n.strip() for n in field.split(";")] if field else []
                if any(not n for n in names):
                    raise AnnotationError(csv_path, f"empty label name in {field!r}", line=line)
            entries.append((line, full, names))
        parsed[split] = entries

    per_split = {s: {n for _, _, names in e for n in names} for s, e in parsed.items()}
    classes, notes = _class_indices(per_split, root)
    index = {name: i for i, name in enumerate(classes)}
    splits = {}
    for split, entries in parsed.items():
        paths = [full for _, full, _ in entries]
        if column == "label":
            labels = np.asarray([index[names[0]] for _, _, names in entries], dtype=np.int64)
        else:
            labels = np.full((len(entries), len(classes)), -1, dtype=np.int8)
            for row, (_, _, names) in enumerate(entries):
                for name in names:
                    labels[row, index[name]] = 1
        splits[split] = Split(split, paths, labels)
    return TaskData(
        name=root.name,
        kind="single" if column == "label" else "multilabel",
        classes=classes,
        splits=splits,
        root=str(root),
        source_files=[str(root / f"{s}.csv") for s in parsed],
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------
# dispatch


def read_generic(root: str | Path, any_layout: bool = False) -> TaskData:
    """Read a user dataset: the CSV layout if ``ROOT/train.csv`` exists, else the image folder.
    ``any_layout`` (extraction): any subset of the splits, or a folder without splits."""
    path = _check_root(root)
    if any_layout:
        if any((path / f"{s}.csv").is_file() for s in SPLITS):
            return read_csv_dataset(path, required=())
        if any((path / s).is_dir() for s in SPLITS):
            return read_image_folder(path, required=())
        return read_unsplit_folder(path)
    if (path / "train.csv").is_file():
        return read_csv_dataset(path)
    if (path / "train").is_dir():
        return read_image_folder(path)
    raise TransferlabError(
        f"{path}: not a dataset folder; expected ROOT/train.csv + ROOT/test.csv (header path,label "
        f"or path,labels) or folders ROOT/train/<class>/<image> and ROOT/test/<class>/<image>"
    )


def read_unsplit_folder(root: Path) -> TaskData:
    """``ROOT/<class>/<image>`` (labelled) or ``ROOT/<image>`` (no labels) as one split."""
    folders: list[os.DirEntry[str]] = []
    files: list[os.DirEntry[str]] = []
    with os.scandir(root) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if _is_ignored(entry.name):
                continue
            _check_name(entry.name, root)
            (folders if entry.is_dir() else files).append(entry)
    if folders and files:
        raise TransferlabError(
            f"{root}: holds both image files and folders ({files[0].name}, {folders[0].name}/); use one "
            f"layout: ROOT/<image>, ROOT/<class>/<image> or ROOT/<split>/<class>/<image>")
    if not folders and not files:
        raise TransferlabError(f"{root}: no images (the folder is empty)")
    if files:
        for entry in files:
            _check_extension(entry.path, f"in {root}")
        paths = [entry.path for entry in files]
        split = Split(ALL_IMAGES_SPLIT, paths, np.full(len(paths), -1, dtype=np.int64))
        return TaskData(name=root.name, kind="single", classes=[], splits={ALL_IMAGES_SPLIT: split},
                        root=str(root), notes=["a flat folder of images: no labels"])
    classes = [entry.name for entry in folders]
    paths, labels = [], []
    for k, entry in enumerate(folders):
        images = _list_class_folder(Path(entry.path))
        paths.extend(images)
        labels.extend([k] * len(images))
    split = Split(ALL_IMAGES_SPLIT, paths, np.asarray(labels, dtype=np.int64))
    return TaskData(name=root.name, kind="single", classes=classes, splits={ALL_IMAGES_SPLIT: split},
                    root=str(root), notes=["class folders without splits"])


def load_dataset(spec: str, *, any_layout: bool = False, **options: Any) -> TaskData:
    """Resolve what a user typed after ``--data``: a registered task name (built-in tasks need
    nothing else; ``options`` such as ``quick=True`` go to its reader), else a folder in a
    generic layout. A spec containing a path separator is always a folder, so ``./digits``
    reads a folder even though ``digits`` is a task. ``any_layout`` (extraction) accepts any
    subset of the splits and folders without splits (``read_generic``)."""
    from transferlab.data.tasks import all_tasks, load_task

    text = str(spec)
    looks_like_path = os.sep in text or "/" in text or text in (".", "..")
    names = sorted(task.name for task in all_tasks())
    if not looks_like_path and text in names:
        return load_task(text, **options)
    if Path(text).expanduser().is_dir():
        if options:
            raise TransferlabError(
                f"{text}: options {', '.join(sorted(options))} apply to registered tasks, not to "
                f"a dataset folder"
            )
        return read_generic(text, any_layout=any_layout)
    raise TransferlabError(
        f"{text!r} is neither a registered task ({', '.join(names)}) nor an existing dataset folder"
    )
