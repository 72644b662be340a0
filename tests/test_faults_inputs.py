"""CSV paths that leave ROOT or open a quote they never close, and `extract` on the folders
people have: one split only, class folders without splits, a flat folder of photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.cli import main
from transferlab.data.generic import load_dataset, read_csv_dataset, read_generic
from transferlab.errors import AnnotationError, TransferlabError

TINY = ["--source", "timm:mobilenetv3_small_050", "--weights", "none", "--no-progress"]


def _png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), (value, 255 - value, 60)).save(path)
    return path


# -- CSV paths and quotes --------------------------------------------------------------------------
def test_csv_path_leaving_root_is_refused_naming_file_and_line(tmp_path):
    root = tmp_path / "ds"
    _png(tmp_path / "outside" / "x.png")
    _png(root / "in.png")
    (root / "train.csv").write_text("path,label\nin.png,a\n../outside/x.png,b\n")
    (root / "test.csv").write_text("path,label\nin.png,a\n")
    with pytest.raises(AnnotationError, match=r"train\.csv:3: .*leaves"):
        read_csv_dataset(root)


def test_csv_path_climbing_out_and_back_in_is_fine(tmp_path):
    root = tmp_path / "ds"
    _png(root / "a.png")
    _png(root / "b.png", 9)
    (root / "train.csv").write_text("path,label\nsub/../a.png,a\n")
    (root / "test.csv").write_text("path,label\n../ds/b.png,a\n")
    data = read_csv_dataset(root)
    assert data.splits["test"].paths == [str(root / "b.png")]


def test_unterminated_quote_is_reported_where_it_opens(tmp_path):
    root = tmp_path / "ds"
    for i in range(4):
        _png(root / f"{i}.png", i)
    (root / "train.csv").write_text('path,label\n0.png,a\n"1.png,b\n2.png,a\n3.png,b\n')
    (root / "test.csv").write_text("path,label\n0.png,a\n")
    with pytest.raises(AnnotationError, match=r"train\.csv:3: .*quote"):
        read_csv_dataset(root)


# -- extraction on any folder layout ---------------------------------------------------------------
def _extract_json(capsys, tmp_path, data, *extra) -> dict:
    out = tmp_path / "out"
    code = main(["extract", *TINY, "--data", str(data), "--out", str(out), "--cache", str(tmp_path / "c"),
                 "--json", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_extract_train_split_only(tmp_path, capsys):
    for name in ("cat", "dog"):
        _png(tmp_path / "d" / "train" / name / "1.png", 3)
    manifest = _extract_json(capsys, tmp_path, tmp_path / "d")
    assert manifest["splits"] == {"train": 2} and manifest["classes"] == ["cat", "dog"]


def test_extract_test_split_only_csv(tmp_path, capsys):
    root = tmp_path / "d"
    _png(root / "a.png")
    (root / "test.csv").write_text("path,label\na.png,x\n")
    manifest = _extract_json(capsys, tmp_path, root)
    assert manifest["splits"] == {"test": 1}


def test_extract_class_folders_without_splits(tmp_path, capsys):
    root = tmp_path / "d"
    for name, n in (("zebra", 2), ("ant", 1)):
        for i in range(n):
            _png(root / name / f"{i}.png", 10 * i)
    manifest = _extract_json(capsys, tmp_path, root)
    assert manifest["splits"] == {"images": 3} and manifest["classes"] == ["ant", "zebra"]
    items = (tmp_path / "out" / "images" / "items.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in items[1:]] == ["ant", "zebra", "zebra"]


def test_extract_flat_folder_of_photos_in_sorted_order_without_labels(tmp_path, capsys):
    root = tmp_path / "photos"
    for name in ("b.png", "a.png", "c.jpg"):
        _png(root / name, len(name))
    (root / ".DS_Store").write_bytes(b"junk")
    manifest = _extract_json(capsys, tmp_path, root)
    assert manifest["splits"] == {"images": 3} and manifest["classes"] == []
    items = (tmp_path / "out" / "images" / "items.csv").read_text().splitlines()
    assert items == ["path,label", f"{root / 'a.png'},", f"{root / 'b.png'},", f"{root / 'c.jpg'},"]
    assert np.load(tmp_path / "out" / "images" / "features__avg.npy").shape[0] == 3


def test_probe_on_an_export_without_train_and_test_says_so(tmp_path, capsys):
    root = tmp_path / "photos"
    _png(root / "a.png")
    _extract_json(capsys, tmp_path, root)
    assert main(["probe", "--features", str(tmp_path / "out"), "--layer", "features"]) == 2
    assert "needs exported train and test splits" in capsys.readouterr().err


def test_strict_reading_still_requires_train_and_test(tmp_path):
    _png(tmp_path / "d" / "train" / "cat" / "1.png")
    with pytest.raises(TransferlabError, match="missing split folder"):
        read_generic(tmp_path / "d")
    with pytest.raises(TransferlabError, match="missing split folder"):
        load_dataset(str(tmp_path / "d"))
    assert list(load_dataset(str(tmp_path / "d"), any_layout=True).splits) == ["train"]


def test_a_folder_mixing_photos_and_folders_is_explained(tmp_path):
    _png(tmp_path / "d" / "a.png")
    _png(tmp_path / "d" / "cats" / "1.png")
    with pytest.raises(TransferlabError, match="both image files and folders"):
        load_dataset(str(tmp_path / "d"), any_layout=True)


def test_an_empty_folder_is_explained(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(TransferlabError, match="no images"):
        load_dataset(str(tmp_path / "d"), any_layout=True)
