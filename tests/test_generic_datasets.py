"""Generic image-folder and CSV readers, and load_dataset, on small hand-made folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.data.generic import load_dataset, read_csv_dataset, read_generic, read_image_folder
from transferlab.errors import AnnotationError, TransferlabError


def _png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value, value, value)).save(path)
    return path


def _folder(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    """layout: {split: {class: number of images}}."""
    for split, classes in layout.items():
        for name, n in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _png(root / split / name / f"img{i}.png", i)
    return root


def _csv(root: Path, split: str, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{split}.csv"
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# image folder


def test_image_folder_reads_classes_labels_and_absolute_paths(tmp_path):
    root = _folder(
        tmp_path / "ds",
        {"train": {"dog": 2, "cat": 3}, "val": {"cat": 1}, "test": {"cat": 1, "dog": 1}},
    )
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"junk")  # ignored
    data = read_image_folder(root)
    assert data.kind == "single"
    assert data.classes == ["cat", "dog"]
    assert list(data.splits) == ["train", "val", "test"]
    train = data.splits["train"]
    assert train.labels.dtype == np.int64
    assert train.labels.tolist() == [0, 0, 0, 1, 1]
    assert [Path(p).relative_to(root.absolute()).as_posix() for p in train.paths] == [
        "train/cat/img0.png",
        "train/cat/img1.png",
        "train/cat/img2.png",
        "train/dog/img0.png",
        "train/dog/img1.png",
    ]
    assert all(Path(p).is_absolute() for p in train.paths)
    assert data.splits["val"].labels.tolist() == [0]
    assert data.splits["test"].labels.tolist() == [0, 1]
    assert data.notes == []


def test_image_folder_val_optional_and_untested_class_noted(tmp_path):
    root = _folder(tmp_path / "ds", {"train": {"a": 1, "b": 1}, "test": {"a": 1}})
    data = read_image_folder(root)
    assert list(data.splits) == ["train", "test"]
    assert data.classes == ["a", "b"]
    assert any("no test images: b" in note for note in data.notes)


@pytest.mark.parametrize("missing", ["train", "test"])
def test_image_folder_missing_required_split(tmp_path, missing):
    layout = {"train": {"a": 1}, "test": {"a": 1}}
    del layout[missing]
    root = _folder(tmp_path / "ds", layout)
    with pytest.raises(TransferlabError, match=f"missing split folder {root / missing}"):
        read_image_folder(root)


def test_image_folder_empty_class_folder(tmp_path):
    root = _folder(tmp_path / "ds", {"train": {"a": 1, "b": 0}, "test": {"a": 1}})
    with pytest.raises(TransferlabError, match=f"{root / 'train' / 'b'}: class folder is empty"):
        read_image_folder(root)


def test_image_folder_unknown_extension(tmp_path):
    root = _folder(tmp_path / "ds", {"train": {"a": 1}, "test": {"a": 1}})
    (root / "train" / "a" / "notes.txt").write_text("x")
    with pytest.raises(TransferlabError, match=r"notes\.txt: not an image file name.*'\.txt'"):
        read_image_folder(root)


def test_image_folder_class_only_in_test(tmp_path):
    root = _folder(tmp_path / "ds", {"train": {"a": 1}, "test": {"a": 1, "zebra": 1}})
    with pytest.raises(TransferlabError, match="zebra appear in test but not in train"):
        read_image_folder(root)


def test_image_folder_class_only_in_val(tmp_path):
    root = _folder(tmp_path / "ds", {"train": {"a": 1}, "val": {"b": 1}, "test": {"a": 1}})
    with pytest.raises(TransferlabError, match="b appear in val but not in train"):
        read_image_folder(root)


def test_image_folder_file_directly_in_split(tmp_path):
    root = _folder(tmp_path / "ds", {"train": {"a": 1}, "test": {"a": 1}})
    _png(root / "train" / "loose.png")
    with pytest.raises(TransferlabError, match="loose.png: file directly in split folder"):
        read_image_folder(root)


def test_image_folder_nested_folder_in_class(tmp_path):
    root = _folder(tmp_path / "ds", {"train": {"a": 1}, "test": {"a": 1}})
    _png(root / "train" / "a" / "deeper" / "x.png")
    with pytest.raises(TransferlabError, match="deeper: unexpected folder inside class folder"):
        read_image_folder(root)


def test_image_folder_split_without_classes(tmp_path):
    root = _folder(tmp_path / "ds", {"train": {"a": 1}, "test": {}})
    (root / "test").mkdir(exist_ok=True)
    with pytest.raises(TransferlabError, match="split folder has no class folders"):
        read_image_folder(root)


def test_root_missing_or_a_file(tmp_path):
    with pytest.raises(TransferlabError, match="does not exist"):
        read_image_folder(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(TransferlabError, match="is not a folder"):
        read_csv_dataset(tmp_path / "file")


# ---------------------------------------------------------------------------------------------
# CSV


def test_csv_single_label(tmp_path):
    root = tmp_path / "ds"
    _png(root / "im" / "a.png")
    _png(root / "im" / "b.jpg")
    _png(root / "im" / "c,d.png")
    _csv(root, "train", 'path,label\nim/a.png,zebra\nim/b.jpg,ant\n"im/c,d.png",zebra\n')
    _csv(root, "test", "path,label\r\nim/a.png,ant\r\n")  # the same image in train and test leaks
    with pytest.raises(AnnotationError, match=r"test\.csv:2: im/a\.png is also listed at .*train\.csv:2"):
        read_csv_dataset(root)
    _png(root / "im" / "t.png")
    _csv(root, "test", "\ufeffpath,label\r\nim/t.png,ant\r\n\r\n")  # BOM, CRLF, blank line
    data = read_csv_dataset(root)
    assert data.kind == "single"
    assert data.classes == ["ant", "zebra"]
    assert data.splits["train"].labels.tolist() == [1, 0, 1]
    assert data.splits["train"].paths[2] == str(root.absolute() / "im" / "c,d.png")
    assert data.splits["test"].labels.tolist() == [0]
    assert "val" not in data.splits
    assert data.source_files == [str(root.absolute() / "train.csv"), str(root.absolute() / "test.csv")]


def test_csv_multi_label(tmp_path):
    root = tmp_path / "ds"
    for name in ("1", "2", "3", "4", "5"):
        _png(root / f"{name}.png")
    _csv(root, "train", "path,labels\n1.png,dog;person\n2.png,\n3.png, cat ; dog\n")
    _csv(root, "val", "path,labels\n4.png,person\n")
    _csv(root, "test", "path,labels\n5.png,cat;dog;person\n")
    data = read_csv_dataset(root)
    assert data.kind == "multilabel"
    assert data.classes == ["cat", "dog", "person"]
    train = data.splits["train"].labels
    assert train.dtype == np.int8
    assert train.tolist() == [[-1, 1, 1], [-1, -1, -1], [1, 1, -1]]
    assert data.splits["val"].labels.tolist() == [[-1, -1, 1]]
    assert data.splits["test"].labels.tolist() == [[1, 1, 1]]


@pytest.mark.parametrize(
    ("train_text", "pattern"),
    [
        ("path,class\na.png,x\n", r"train\.csv:1: header is 'path,class'"),
        ("", r"train\.csv:1: empty file"),
        ("path,label\n", r"train\.csv: no images listed"),
        ("path,label\na.png,x\nb.png\n", r"train\.csv:3: expected 2 fields \(path,label\), found 1"),
        ("path,label\na.png,x,y\n", r"train\.csv:2: expected 2 fields"),
        ("path,label\na.png,\n", r"train\.csv:2: empty label"),
        ("path,label\n,x\n", r"train\.csv:2: empty path"),
        ("path,labels\na.png,x;;y\n", r"train\.csv:2: empty label name in 'x;;y'"),
        ("path,label\nmissing.png,x\n", r"train\.csv:2: image .*missing\.png is missing"),
        ("path,label\nnotes.txt,x\n", r"train\.csv:2: .*notes\.txt: not an image file name"),
        ("path,label\n/abs/a.png,x\n", r"train\.csv:2: path '/abs/a\.png' is absolute"),
        ("path,label\na.png,x\na.png,x\n", r"train\.csv:3: a\.png is also listed at .*train\.csv:2"),
    ],
)
def test_csv_bad_lines_name_file_and_line(tmp_path, train_text, pattern):
    root = tmp_path / "ds"
    _png(root / "a.png")
    _png(root / "b.png")
    (root / "notes.txt").write_text("x")
    _csv(root, "train", train_text)
    _csv(root, "test", "path,labels\nb.png,x\n" if "labels" in train_text else "path,label\nb.png,x\n")
    with pytest.raises(AnnotationError, match=pattern):
        read_csv_dataset(root)


def test_csv_label_only_in_test(tmp_path):
    root = tmp_path / "ds"
    _png(root / "a.png")
    _png(root / "b.png")
    _csv(root, "train", "path,label\na.png,x\n")
    _csv(root, "test", "path,label\nb.png,y\n")
    with pytest.raises(TransferlabError, match="y appear in test but not in train"):
        read_csv_dataset(root)


def test_csv_header_kinds_must_agree(tmp_path):
    root = tmp_path / "ds"
    _png(root / "a.png")
    _png(root / "b.png")
    _csv(root, "train", "path,label\na.png,x\n")
    _csv(root, "test", "path,labels\nb.png,x\n")
    with pytest.raises(AnnotationError, match=r"test\.csv:1: header column 'labels' differs"):
        read_csv_dataset(root)


def test_csv_missing_test_and_bad_encoding(tmp_path):
    root = tmp_path / "ds"
    _png(root / "a.png")
    _csv(root, "train", "path,label\na.png,x\n")
    with pytest.raises(TransferlabError, match=r"missing test\.csv"):
        read_csv_dataset(root)
    (root / "test.csv").write_bytes(b"path,label\n\xff\xfe.png,x\n")
    with pytest.raises(AnnotationError, match=r"test\.csv: not UTF-8"):
        read_csv_dataset(root)


# ---------------------------------------------------------------------------------------------
# dispatch


def test_read_generic_picks_layout(tmp_path):
    folder = _folder(tmp_path / "folder", {"train": {"a": 1}, "test": {"a": 1}})
    assert read_generic(folder).source_files == []  # image folder
    root = tmp_path / "csv"
    _png(root / "train" / "a" / "x.png")  # a train/ folder too: the CSV wins
    _png(root / "y.png")
    _csv(root, "train", "path,label\ntrain/a/x.png,q\n")
    _csv(root, "test", "path,label\ny.png,q\n")
    assert read_generic(root).source_files[0].endswith("train.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TransferlabError, match="not a dataset folder"):
        read_generic(tmp_path / "empty")


def test_load_dataset_folder_and_errors(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "digits", {"train": {"a": 1}, "test": {"a": 1}})
    data = load_dataset(str(folder))
    assert data.name == "digits" and data.classes == ["a"]
    monkeypatch.chdir(tmp_path)
    # "./digits" is a path even though "digits" is a built-in task.
    assert load_dataset("./digits").root == str(folder.absolute())
    with pytest.raises(TransferlabError, match="options quick apply to registered tasks"):
        load_dataset(str(folder), quick=True)
    with pytest.raises(TransferlabError, match=r"'no_such_thing' is neither a registered task \(.*digits.*\)"):
        load_dataset("no_such_thing")
