"""Folders given to `probe --features`, and splits left empty, fail in one line naming the file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from transferlab.cli import main

TINY = ["--source", "timm:mobilenetv3_small_050", "--weights", "none", "--no-progress"]
PROBE = ["probe", "--layer", "features", "--pool", "avg", "--Cs", "1"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    feats = tmp_path_factory.mktemp("feats") / "digits"
    assert main(["extract", *TINY, "--data", "digits", "--quick", "--layers", "-1", "--pool", "avg",
                 "--out", str(feats)]) == 0
    return feats


@pytest.fixture
def copy(exported, tmp_path):
    target = tmp_path / "feats"
    shutil.copytree(exported, target)
    return target


def one_line(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("transferlab: error:") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_intact_export_probes(copy, capsys):
    assert main([*PROBE, "--features", str(copy)]) == 0


def test_corrupt_manifest(copy, capsys):
    (copy / "manifest.json").write_text('{"splits": {"train": 3,\n "test"')
    one_line(capsys, [*PROBE, "--features", str(copy)], str(copy / "manifest.json"), "not valid JSON")


def test_manifest_missing_a_field(copy, capsys):
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["layers"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    one_line(capsys, [*PROBE, "--features", str(copy)], "manifest.json", "'layers'")


def test_truncated_array(copy, capsys):
    array = copy / "train" / "features__avg.npy"
    array.write_bytes(array.read_bytes()[:-1000])
    one_line(capsys, [*PROBE, "--features", str(copy)], str(array), "truncated or damaged")


def test_array_rows_disagree_with_items_csv(copy, capsys):
    array = copy / "test" / "features__avg.npy"
    np.save(array, np.load(array)[:-2])
    one_line(capsys, [*PROBE, "--features", str(copy)], str(array), "rows", "items.csv")


def test_missing_items_csv(copy, capsys):
    (copy / "train" / "items.csv").unlink()
    one_line(capsys, [*PROBE, "--features", str(copy)], str(copy / "train" / "items.csv"))


def test_exported_split_left_empty(copy, capsys):
    (copy / "train" / "items.csv").write_text("path,label\n")
    np.save(copy / "train" / "features__avg.npy", np.zeros((0, 1024), np.float32))
    one_line(capsys, [*PROBE, "--features", str(copy)], "split train", "no images")


def test_probe_on_a_split_whose_images_were_all_skipped(tmp_path, capsys):
    data = tmp_path / "data"
    for split, count in (("train", 2), ("test", 2)):
        for name in ("a", "b"):
            (data / split / name).mkdir(parents=True)
            for k in range(count):
                path = data / split / name / f"{k}.jpg"
                if split == "train":
                    path.write_bytes(b"\xff\xd8\xff not a jpeg")  # every training image unreadable
                else:
                    Image.new("RGB", (32, 32), (100, 50 * k, 0)).save(path)
    out = tmp_path / "feats"
    assert main(["extract", *TINY, "--data", str(data), "--on-bad-image", "skip", "--out", str(out),
                 "--cache", str(tmp_path / "cache")]) == 0
    capsys.readouterr()
    one_line(capsys, [*PROBE, "--features", str(out)], "split train", "no images", "skipped as unreadable")


def test_probe_on_a_task_split_left_empty_names_it(capsys, monkeypatch):
    """The same check on the --source/--task path, before the probe is fitted."""
    from transferlab.commands import probe

    real = probe.task_and_features

    def all_train_skipped(*args, **kwargs):
        task, features = real(*args, **kwargs)
        for member in features.members:
            member.splits["train"].bad = list(range(len(task.splits["train"])))
        return task, features

    monkeypatch.setattr(probe, "task_and_features", all_train_skipped)
    one_line(capsys, [*PROBE[:1], *TINY, "--task", "digits", "--quick", "--Cs", "1"], "split train", "no images",
             "--on-bad-image skip")
