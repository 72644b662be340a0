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
    train = per_split_classes["train"]
    for split in ("val", "test"):
        unseen = sorted(per_split_classes.get(split, set()) - train)
        if unseen:
            raise TransferlabError(
                f"{where}: class{'es' if len(unseen) > 1 else ''} {', '.join(unseen)} appear in "
                f"{split} but not in train; every class needs training images"
            )
    notes = []
    untested = sorted(train - per_split_classes["test"])
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


def read_image_folder(root: str | Path) -> TaskData:
    """Read ``ROOT/<split>/<class>/<image>``; classes are the sorted union of class folders."""
    root = _check_root(root)
    listed: dict[str, dict[str, list[str]]] = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            if split in REQUIRED_SPLITS:
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
    """(label column name, [(line, path, label field)]) of one split CSV."""
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader)
            except StopIteration:
                raise AnnotationError(csv_path, "empty file; expected a header path,label or path,labels", line=1) from None
            header = [h.strip() for h in header]
            if header not in (["path", "label"], ["path", "labels"]):
                raise AnnotationError(
                    csv_path,
                    f"header is {','.join(header)!r}; expected 'path,label' (single-label) or "
                    f"'path,labels' (multi-label, names separated by ';')",
                    line=1,
                )
            rows = []
            for fields in reader:
                line = reader.line_num
                if not fields or all(not f.strip() for f in fields):
                    continue
                if len(fields) != 2:
                    raise AnnotationError(csv_path, f"expected 2 fields (path,{header[1]}), found {len(fields)}", line=line)
                rows.append((line, fields[0].strip(), fields[1].strip()))
    except UnicodeDecodeError as exc:
        raise AnnotationError(csv_path, f"not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise AnnotationError(csv_path, f"malformed CSV ({exc})") from None
    if not rows:
        raise AnnotationError(csv_path, "no images listed (only a header)")
    return header[1], rows


def read_csv_dataset(root: str | Path) -> TaskData:
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
            if split in REQUIRED_SPLITS:
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


def read_generic(root: str | Path) -> TaskData:
    """Read a user dataset: the CSV layout if ``ROOT/train.csv`` exists, else the image folder."""
    path = _check_root(root)
    if (path / "train.csv").is_file():
        return read_csv_dataset(path)
    if (path / "train").is_dir():
        return read_image_folder(path)
    raise TransferlabError(
        f"{path}: not a dataset folder; expected ROOT/train.csv + ROOT/test.csv (header path,label "
        f"or path,labels) or folders ROOT/train/<class>/<image> and ROOT/test/<class>/<image>"
    )


def load_dataset(spec: str, **options: Any) -> TaskData:
    """Resolve what a user typed after ``--data``: a registered task name (built-in tasks need
    nothing else; ``options`` such as ``quick=True`` go to its reader), else a folder in a
    generic layout. A spec containing a path separator is always a folder, so ``./digits``
    reads a folder even though ``digits`` is a task."""
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
        return read_generic(text)
    raise TransferlabError(
        f"{text!r} is neither a registered task ({', '.join(names)}) nor an existing dataset folder"
    )
