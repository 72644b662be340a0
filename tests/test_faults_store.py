"""The FeatureStore never deletes what is not its own and never returns damaged rows:
entries carry their size and checksum, a damaged one is reported, set aside and recomputed."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from transferlab.cli import main
from transferlab.errors import TransferlabError
from transferlab.features import store as store_module
from transferlab.features.store import FeatureStore, GroupKey


def _key(n: int = 5, name: str = "src") -> GroupKey:
    return GroupKey(name, "w0", "{}", "orig", "fp-" + name, n)


def _filled(root, n: int = 5, name: str = "src") -> tuple[FeatureStore, GroupKey, np.ndarray]:
    store = FeatureStore(root)
    key = _key(n, name)
    rows = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    store.write_meta(key, {"source": name, "split": "train", "n_images": n})
    store.write_shard(key, 0, {"features__avg": rows})
    return store, key, rows


# -- cache rm: only FeatureStore groups are ever removed ----------------------------------------
def test_cache_rm_all_leaves_folders_that_are_not_groups(tmp_path, capsys):
    project = tmp_path / "project"
    (project / "sources").mkdir(parents=True)
    (project / "sources" / "model.py").write_text("print('precious')\n")
    (project / "photos").mkdir()
    (project / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff precious")
    # a folder named like a group but not one (no meta.json, files of its own)
    fake = project / ("a" * 24)
    fake.mkdir()
    (fake / "notes.txt").write_text("mine")
    store, key, _ = _filled(project)
    assert main(["cache", "rm", "--all", "--cache", str(project)]) == 0
    captured = capsys.readouterr()
    assert (project / "sources" / "model.py").read_text() == "print('precious')\n"
    assert (project / "photos" / "cat.jpg").exists() and (fake / "notes.txt").exists()
    assert not store.group_dir(key).exists()
    assert "removed 1 group(s)" in captured.out
    assert "photos" in captured.out and "sources" in captured.out  # named as left in place


def test_cache_rm_prefix_never_matches_a_foreign_folder(tmp_path, capsys):
    store, key, _ = _filled(tmp_path)
    (tmp_path / "photos").mkdir()
    assert main(["cache", "rm", "p", "--cache", str(tmp_path)]) == 0
    assert (tmp_path / "photos").is_dir() and store.group_dir(key).is_dir()
    assert "removed 0 group(s)" in capsys.readouterr().out


def test_cache_ls_survives_a_corrupt_meta_json(tmp_path, capsys):
    store, key, _ = _filled(tmp_path)
    (store.group_dir(key) / "meta.json").write_text("{ not json")
    assert main(["cache", "ls", "--cache", str(tmp_path), "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert [g["group"] for g in groups] == [key.digest] and "damaged" in groups[0]
    # and it can still be removed: its structure says it is a group
    assert store.remove(None) == 1 and not store.group_dir(key).exists()


# -- verified reads -------------------------------------------------------------------------------
def test_round_trip_records_size_and_checksum(tmp_path):
    store, key, rows = _filled(tmp_path)
    assert np.array_equal(store.load(key, "features__avg"), rows)
    record = json.loads((store.group_dir(key) / "00000" / "features__avg.npy.check").read_text())
    assert record["bytes"] == os.path.getsize(store.group_dir(key) / "00000" / "features__avg.npy")
    assert record["rows"] == 5 and isinstance(record["crc32"], int)


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "no_record", "bad_record"])
def test_damaged_shard_is_reported_set_aside_and_missing(tmp_path, capsys, damage):
    store, key, _ = _filled(tmp_path)
    path = store.group_dir(key) / "00000" / "features__avg.npy"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) - 7]))
    elif damage == "flip_byte":
        data[-3] ^= 0xFF  # same size, different rows
        path.write_bytes(bytes(data))
    elif damage == "no_record":
        path.with_name(path.name + ".check").unlink()
    else:
        path.with_name(path.name + ".check").write_text("{")
    fresh = FeatureStore(tmp_path)  # a new process: nothing verified yet
    assert fresh.missing(key, ["features__avg"]) == {0: ["features__avg"]}
    err = capsys.readouterr().err
    if damage != "no_record":  # an interrupted write is not damage, just not done
        assert "damaged" in err and str(path) in err
        assert fresh.damaged and fresh.damaged[0]["path"] == str(path)
        assert list(path.parent.glob("features__avg.npy.damaged*"))  # set aside, not deleted
        assert not path.exists()


def test_load_refuses_a_damaged_shard_instead_of_returning_wrong_rows(tmp_path):
    store, key, _ = _filled(tmp_path)
    path = store.group_dir(key) / "00000" / "features__avg.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(TransferlabError, match="damaged.*set aside.*rerun"):
        FeatureStore(tmp_path).load(key, "features__avg")


def test_row_count_must_match_the_shard(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "SHARD_SIZE", 3)
    store = FeatureStore(tmp_path)
    key = _key(5)
    store.write_shard(key, 0, {"o": np.zeros((3, 2), np.float32)})
    store.write_shard(key, 1, {"o": np.zeros((1, 2), np.float32)})  # shard 1 holds 2 images, 0 bad
    assert FeatureStore(tmp_path).missing(key, ["o"]) == {1: ["o"]}


def test_corrupt_bad_json_sets_the_shard_aside(tmp_path, capsys):
    store, key, _ = _filled(tmp_path)
    (store.group_dir(key) / "00000" / "bad.json").write_text("[1, ")
    fresh = FeatureStore(tmp_path)
    assert fresh.missing(key, ["features__avg"]) == {0: ["features__avg"]}
    assert fresh.bad_indices(key) == []
    assert "bad.json" in capsys.readouterr().err


def test_corrupt_meta_json_is_rewritten(tmp_path, capsys):
    store, key, _ = _filled(tmp_path)
    meta = store.group_dir(key) / "meta.json"
    meta.write_text("\x00\x00garbage")
    FeatureStore(tmp_path).write_meta(key, {"source": "src"})
    assert json.loads(meta.read_text())["key"]["source"] == "src"


def test_extraction_recomputes_a_damaged_shard(lite0, photo_dir, tmp_path, capsys):
    from transferlab.data.base import Split
    from transferlab.features.extract import extract

    paths = [str(p) for p in sorted(photo_dir.glob("*.jpg"))[:3]]
    split = Split("train", paths, np.zeros(len(paths), np.int64))
    layers = lite0.resolve_layers([-1])
    store = FeatureStore(tmp_path / "features")
    first = np.array(extract(lite0, split, layers, ["avg"], store=store, progress=False).get("features", "avg"))
    npy = next((tmp_path / "features").rglob("features__avg.npy"))
    npy.write_bytes(npy.read_bytes()[:-100])
    again = extract(lite0, split, layers, ["avg"], store=FeatureStore(tmp_path / "features"), progress=False)
    assert again.forwarded_images == 3 and "damaged" in capsys.readouterr().err
    assert np.allclose(again.get("features", "avg"), first, atol=1e-5)


@pytest.mark.parametrize("batch_size", [0, -2])
def test_extract_api_refuses_a_batch_size_below_one(lite0, photo_dir, tmp_path, batch_size):
    from transferlab.data.base import Split
    from transferlab.features.extract import extract

    split = Split("train", [str(next(photo_dir.glob("*.jpg")))], np.zeros(1, np.int64))
    with pytest.raises(TransferlabError, match="batch size must be >= 1"):
        extract(lite0, split, lite0.resolve_layers([-1]), ["avg"], store=FeatureStore(tmp_path),
                progress=False, batch_size=batch_size)
    assert not any(tmp_path.rglob("*.npy"))
