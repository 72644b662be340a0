"""`transferlab probe` and `transferlab retrieve` end to end on built-in tasks."""

from __future__ import annotations

import json

import pytest

from transferlab.cli import main

TINY = ["--source", "timm:mobilenetv3_small_050", "--weights", "none"]


def run_json(capsys, argv) -> dict:
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_probe_on_a_builtin_task(capsys):
    out = run_json(capsys, ["probe", *TINY, "--task", "digits", "--quick", "--layer", "-2", "--pool", "max",
                            "--pca", "16", "--Cs", "0.1,1,10", "--no-progress", "--json"])
    assert out["task"] == "digits" and out["metric"] == "accuracy"
    assert 0.2 < out["value"] <= 1.0  # random-init features still beat chance (0.1)
    config = out["config"]
    assert config["layer"] == -2 and config["pooling"] == "max" and config["pca"] == 16
    assert config["C"] in (0.1, 1.0, 10.0) and config["dim"] == 16


def test_probe_on_exported_arrays_matches_direct_probe(capsys, tmp_path):
    feats = tmp_path / "feats"
    assert main(["extract", *TINY, "--data", "digits", "--quick", "--layers", "-1", "--pool", "avg",
                 "--out", str(feats), "--no-progress"]) == 0
    capsys.readouterr()
    exported = run_json(capsys, ["probe", "--features", str(feats), "--layer", "features", "--pool", "avg",
                                 "--Cs", "1", "--json"])
    direct = run_json(capsys, ["probe", *TINY, "--task", "digits", "--quick", "--Cs", "1",
                               "--no-progress", "--json"])
    assert exported["value"] == pytest.approx(direct["value"], abs=1e-9)


def test_probe_bad_inputs_are_one_line(capsys):
    assert main(["probe", *TINY, "--task", "digits", "--quick", "--Cs", "0,1", "--no-progress"]) == 2
    assert "--Cs must be positive" in capsys.readouterr().err
    assert main(["probe", *TINY, "--task", "photo_copies", "--quick", "--no-progress"]) == 2
    assert "use `transferlab retrieve`" in capsys.readouterr().err


@pytest.mark.slow
def test_retrieve_with_query_expansion_and_spatial_search(capsys):
    plain = run_json(capsys, ["retrieve", "--source", "efficientnet_lite0", "--task", "photo_copies", "--quick",
                              "--pool", "rmac", "--no-progress", "--json"])
    assert plain["metric"] == "holidays_map" and plain["value"] > 0.7  # real ImageNet features
    expanded = run_json(capsys, ["retrieve", "--source", "efficientnet_lite0", "--task", "photo_copies",
                                 "--quick", "--pool", "rmac", "--qe", "2", "--no-progress", "--json"])
    assert expanded["config"]["qe"] == 2 and expanded["value"] != plain["value"]
    spatial = run_json(capsys, ["retrieve", "--source", "efficientnet_lite0", "--task", "photo_copies",
                                "--quick", "--layer", "-2", "--spatial-search", "--no-progress", "--json"])
    assert spatial["config"]["pooling"] == "windows" and spatial["value"] > 0.5
    assert main(["retrieve", "--source", "efficientnet_lite0", "--task", "digits", "--quick", "--no-progress"]) == 2
    assert "not a retrieval task" in capsys.readouterr().err


def test_a_second_probe_with_another_pooling_forwards_nothing(tmp_path, capsys, monkeypatch):
    from transferlab.features import extract as extract_module

    forwarded = []
    original = extract_module._run
    monkeypatch.setattr(extract_module, "_run", lambda *a, **k: forwarded.append(1) or original(*a, **k))
    base = ["probe", "--source", "timm:test_resnet", "--weights", "none", "--task", "digits", "--quick",
            "--layer", "-1", "--cache", str(tmp_path / "cache"), "--no-progress", "--json"]
    assert main(base + ["--pool", "avg"]) == 0
    assert main(base + ["--pool", "grid2"]) == 0
    assert main(base + ["--pool", "gem"]) == 0
    assert len(forwarded) == 3  # train, val, test of the first command only
    capsys.readouterr()


def test_exported_multilabel_task_keeps_its_kind_classes_and_metric(capsys, tmp_path):
    from transferlab.data.tasks import get_task

    feats = tmp_path / "feats"
    assert main(["extract", *TINY, "--data", "shape_attributes", "--quick", "--layers", "-1", "--pool", "avg",
                 "--out", str(feats), "--no-progress"]) == 0
    capsys.readouterr()
    manifest = json.loads((feats / "manifest.json").read_text())
    assert manifest["kind"] == "attributes" and manifest["metric"] == get_task("shape_attributes").metric
    exported = run_json(capsys, ["probe", "--features", str(feats), "--layer", "features", "--pool", "avg",
                                 "--Cs", "1", "--json"])
    direct = run_json(capsys, ["probe", *TINY, "--task", "shape_attributes", "--quick", "--Cs", "1",
                               "--no-progress", "--json"])
    assert exported["metric"] == direct["metric"]
    assert exported["value"] == pytest.approx(direct["value"], abs=1e-9)
