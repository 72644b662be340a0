"""One owner per vocabulary: a name is registered once; a second registration is an error
naming both registrants, never a silent overwrite."""

from __future__ import annotations

from dataclasses import replace

import pytest

from transferlab.errors import TransferlabError


def test_a_task_name_registered_twice_is_an_error_naming_both_readers():
    from transferlab.data.tasks import TASKS, get_task, register

    digits = get_task("digits")
    register(digits)  # the same entry again (a re-import) is harmless
    other = replace(digits, reader=lambda root=None, **options: None)
    with pytest.raises(TransferlabError, match=r"task digits is registered twice: by .*read_digits and by .*<lambda>"):
        register(other)
    assert TASKS["digits"] is digits


def test_a_source_kind_registered_twice_is_an_error():
    from transferlab.sources.registry import _KINDS, register_source_kind, source_kinds

    assert "trained" in source_kinds()
    factory, description = _KINDS["trained"]
    register_source_kind("trained", factory, description)  # same factory: harmless
    with pytest.raises(TransferlabError, match="source kind 'trained' is registered twice"):
        register_source_kind("trained", lambda spec, weights: None, "another")
    with pytest.raises(TransferlabError, match="would hide the built-in source"):
        register_source_kind("efficientnet_lite0", lambda spec, weights: None, "shadow")
    assert _KINDS["trained"][0] is factory and "efficientnet_lite0" not in _KINDS


def test_a_pooling_registered_twice_is_an_error():
    from transferlab.features.pooling import POOLING_REGISTRY, register_pooling

    avg = POOLING_REGISTRY["avg"]
    with pytest.raises(TransferlabError, match="pooling 'avg' is registered twice"):
        register_pooling(replace(avg, description="another average"))
    assert POOLING_REGISTRY["avg"] is avg


def test_a_pooling_registered_after_import_is_offered_and_validated():
    from dataclasses import replace

    from transferlab.features.pooling import (
        POOLING_REGISTRY,
        get_pooling,
        pooling_names,
        poolings_for,
    )
    from transferlab.sources.base import Layer

    layer = Layer("stage4", 1280, 32, kind="map", layout="NCHW")
    assert "avg4" not in poolings_for(layer)
    POOLING_REGISTRY["avg4"] = replace(POOLING_REGISTRY["avg"], name="avg4", description="test-only")
    try:
        assert "avg4" in pooling_names() and "avg4" in poolings_for(layer)
        assert get_pooling("avg4").description == "test-only"
    finally:
        del POOLING_REGISTRY["avg4"]
    assert "avg4" not in poolings_for(layer)


def test_every_benchmark_reader_registers_its_task():
    from transferlab.data.tasks import all_tasks

    benchmarks = {t.name for t in all_tasks() if not t.builtin}
    assert {"voc2007", "mit67", "sun397", "sun_attributes", "apascal", "h3d", "pets", "cub", "flowers",
            "voc2012_actions", "stanford40", "visual_phrases", "holidays", "ukbench", "oxford5k",
            "roxford5k"} <= benchmarks


def test_extract_a_concat_source_exports_the_members_side_by_side_and_probe_reads_it(tmp_path, capsys):
    """`transferlab extract --source "concat:[a,b]"`: one array per (layer, pooling) whose width is
    the members' widths added, rows in the same image order, readable by `probe --features`."""
    import json

    import numpy as np

    from transferlab.cli import main

    a, b = "timm:mobilenetv3_small_050", "timm:resnet10t"
    common = ["--data", "digits", "--quick", "--layers=-1,-2", "--pool", "avg,max", "--weights", "none",
              "--cache", str(tmp_path / "cache"), "--no-progress"]
    for name, spec in (("a", a), ("b", b), ("ab", f"concat:[{a}, {b}]")):
        assert main(["extract", "--source", spec, *common, "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    manifest = json.loads((tmp_path / "ab" / "manifest.json").read_text())
    assert manifest["arch"] == "concat" and [m["source"] for m in manifest["members"]] == [a, b]
    for layer_a, layer_b in zip(json.loads((tmp_path / "a" / "manifest.json").read_text())["layers"],
                                json.loads((tmp_path / "b" / "manifest.json").read_text())["layers"], strict=True):
        for split in ("train", "test"):
            for pool in ("avg", "max"):
                x = np.load(tmp_path / "a" / split / f"{layer_a['name']}__{pool}.npy")
                y = np.load(tmp_path / "b" / split / f"{layer_b['name']}__{pool}.npy")
                both = np.load(tmp_path / "ab" / split / f"{layer_a['name']}+{layer_b['name']}__{pool}.npy")
                unit = [v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30) for v in (x, y)]
                np.testing.assert_allclose(both, np.concatenate(unit, axis=1), rtol=1e-5, atol=1e-6)
    assert (tmp_path / "ab" / "train" / "items.csv").read_text() == (tmp_path / "a" / "train" / "items.csv").read_text()
    assert main(["probe", "--features", str(tmp_path / "ab"), "--layer", "-1", "--pool", "avg", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["value"] <= 1.0
    # the folder and the spec are one representation: the same probe gives the same number
    assert main(["probe", "--source", f"concat:[{a}, {b}]", "--task", "digits", "--quick", "--weights", "none",
                 "--cache", str(tmp_path / "cache"), "--layer", "-1", "--pool", "avg", "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["value"] == pytest.approx(result["value"], abs=1e-9)
    assert main(["extract", "--source", f"concat:[{a}]", *common]) != 0
    assert "a concatenation needs at least two sources" in capsys.readouterr().err


def test_a_metric_is_one_registry_entry_that_evaluate_and_direction_read(monkeypatch):
    import numpy as np

    from transferlab import evaluate as E

    with pytest.raises(TransferlabError, match="metric 'accuracy' is registered twice"):
        E.register_metric(E.METRICS["accuracy"])

    def error_rate(y, s, n_classes):
        wrong = float(np.mean(np.argmax(s, axis=1) != y))
        return {"error_rate": wrong}, {"error_rate": []}

    spec = E.MetricSpec("error_rate", "classification", "fraction misclassified", error_rate, higher_is_better=False)
    monkeypatch.setitem(E.METRICS, "error_rate", spec)
    monkeypatch.setitem(E.PROTOCOLS, "error_rate", spec.protocol)
    out = E.evaluate_classification("error_rate", np.array([0, 1, 1]), np.array([[1.0, 0], [0, 1], [1, 0]]))
    assert out["error_rate"] == pytest.approx(1 / 3) and out["per_class"] == []
    assert E.higher_is_better("error_rate") is False and E.metric_kind("error_rate") == "classification"
    assert E.higher_is_better("accuracy") is True and E.metric_range("ukb_score") == (0.0, 4.0)
    with pytest.raises(TransferlabError, match="is a classification metric"):
        E.evaluate_retrieval("error_rate", np.zeros((0, 1), np.int64), [], 1)
