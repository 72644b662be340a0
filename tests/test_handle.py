"""The features handle (features/handle.py): its three implementations give the same arrays for
the same features; `select` ranks concat:[...] specs; `finetune` refuses them in one line; a
study loads each network once; select's and the report's direction come from the metric registry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from transferlab.cli import main
from transferlab.data.tasks import load_task
from transferlab.errors import TransferlabError
from transferlab.features.export import export_concat, export_features, extract_task
from transferlab.features.exported import exported_task_and_features
from transferlab.features.handle import ConcatFeatures, FeatureHandle, StoreFeatures, features_of
from transferlab.features.store import FeatureStore
from transferlab.sources.concat import load_members, split_specs

A, B = "timm:mobilenetv3_small_050", "timm:mobilenetv3_small_075"  # small random-init networks: real forwards, quick


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    root = tmp_path_factory.mktemp("handle")
    task = load_task("digits", None, quick=True)
    store = FeatureStore(root / "cache")
    members = load_members(f"concat:[{A}, {B}]", "none", resolution=96)  # small inputs: a quick forward
    feats = [extract_task(source, task, [-1, -2], ["avg", "grid2"], ["orig", "flip"], store=store, progress=False)
             for source in members]
    return root, task, members, feats


def test_store_and_exported_folder_give_the_same_arrays(extracted):
    root, task, members, feats = extracted
    export_features(members[0], task, feats[0], root / "a")
    folder_task, exported, metric = exported_task_and_features(root / "a")
    store = StoreFeatures(feats[0])
    assert isinstance(store, FeatureHandle) and isinstance(exported, FeatureHandle)
    assert metric == "accuracy" and store.representations() == exported.representations()
    assert {(r.layer, r.pooling) for r in store.representations()} == {(-1, "avg"), (-1, "grid2"), (-2, "avg"),
                                                                       (-2, "grid2")}
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(folder_task.splits[split].labels, task.splits[split].labels[store.kept(split)])
        assert len(exported.kept(split)) == len(store.kept(split)) == len(task.splits[split])
        for r in store.representations():
            assert exported.layer_name(r.layer) == store.layer_name(r.layer) == r.layer_name
            for view in ("orig", "flip"):
                np.testing.assert_array_equal(exported.split(split, r.layer, r.pooling, view),
                                              store.split(split, r.layer, r.pooling, view))
    with pytest.raises(TransferlabError, match="layer -7 was not extracted"):
        exported.split("train", -7, "avg")


def test_concat_is_the_members_side_by_side(extracted):
    root, task, members, feats = extracted
    joined = features_of(feats)
    assert isinstance(joined, ConcatFeatures) and isinstance(joined, FeatureHandle)
    a, b = StoreFeatures(feats[0]), StoreFeatures(feats[1])
    unit = [lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)] * 2
    for r in joined.representations():
        x, y = a.split("train", r.layer, r.pooling), b.split("train", r.layer, r.pooling)
        assert r.layer_name == f"{a.layer_name(r.layer)}+{b.layer_name(r.layer)}"
        np.testing.assert_allclose(joined.split("train", r.layer, r.pooling), np.hstack([unit[0](x), unit[1](y)]),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ConcatFeatures([a, b], normalise=False).split("train", r.layer, r.pooling),
                                      np.hstack([x, y]))
        # the joined name asks for the same array as the layer spec
        np.testing.assert_array_equal(joined.split("train", r.layer_name, r.pooling),
                                      joined.split("train", r.layer, r.pooling))
    np.testing.assert_array_equal(joined.kept("test"), a.kept("test"))
    assert joined.members == feats  # the store behind it (extraction placement reads it)
    # the exported concat folder holds what the study reads: each member L2-normalised, side by side
    export_concat(f"concat:[{A},{B}]", list(zip(members, feats, strict=True)), task, root / "ab")
    _, exported, _ = exported_task_and_features(root / "ab")
    assert [(r.layer, r.layer_name, r.pooling) for r in exported.representations()] == \
        [(r.layer, r.layer_name, r.pooling) for r in joined.representations()]
    for r in joined.representations():
        np.testing.assert_allclose(exported.split("test", r.layer, r.pooling, "flip"),
                                   joined.split("test", r.layer, r.pooling, "flip"), rtol=1e-6, atol=1e-7)


def test_source_lists_split_only_outside_brackets():
    assert split_specs("concat:[a,b],c") == ["concat:[a,b]", "c"]
    assert split_specs(" a , concat:[b, c] ,, ") == ["a", "concat:[b, c]"]
    with pytest.raises(TransferlabError, match="not closed"):
        split_specs("concat:[a,b")
    with pytest.raises(TransferlabError, match="closes nothing"):
        split_specs("a],b")
    with pytest.raises(TransferlabError, match="takes none"):
        load_members(f"concat:[{A},{B}]", "weights.safetensors")


@pytest.mark.slow
def test_select_ranks_a_concat_spec_beside_its_member(tmp_path, capsys):
    args = ["select", "--task", "digits", "--quick", "--sources",
            "concat:[efficientnet_lite0,mobilenet_v2],efficientnet_lite0", "--layers=-1", "--pool", "avg",
            "--confirm", "2", "--Cs", "0.1,1", "--cache", str(tmp_path), "--no-progress", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    by_source = {c["source"]: c for c in out["candidates"]}
    assert set(by_source) == {"concat:[efficientnet_lite0,mobilenet_v2]", "efficientnet_lite0"}
    concat, single = by_source["concat:[efficientnet_lite0,mobilenet_v2]"], by_source["efficientnet_lite0"]
    assert concat["dim"] == single["dim"] + 1280  # mobilenet_v2's top layer beside efficientnet_lite0's
    assert "+" in concat["layer_name"] and concat["layer"] == -1
    assert all(np.isfinite(c["score"]) and 0.0 <= c["probe"] <= 1.0 for c in out["candidates"])


def test_select_ranks_exported_folders(extracted, capsys):
    root, task, members, feats = extracted
    for name, source, f in (("sa", members[0], feats[0]), ("sb", members[1], feats[1])):
        export_features(source, task, f, root / name)
    args = ["select", "--features", str(root / "sa"), "--features", str(root / "sb"), "--pool", "avg",
            "--score", "knn1", "--confirm", "1", "--Cs", "1", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["score"] == "knn1" and len(out["candidates"]) == 4
    assert {c["source"] for c in out["candidates"]} == {str(root / "sa"), str(root / "sb")}
    assert sum(c["probe"] is not None for c in out["candidates"]) == 1


def test_finetune_refuses_a_concat_source_in_one_line(tmp_path, capsys):
    spec = "concat:[efficientnet_lite0,mobilenet_v2]"
    assert main(["finetune", "--source", spec, "--task", "digits", "--quick", "--out", str(tmp_path / "ft")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and spec in err and "one network" in err
    assert not (tmp_path / "ft").exists()


@pytest.mark.slow
def test_a_study_loads_each_network_once(tmp_path, monkeypatch):
    """A real run of two sources (one a concat sharing a network with the other) on two tasks:
    every network is loaded once, by the plan, and extraction reuses it."""
    import transferlab.sources as sources_package
    from transferlab.sources import registry
    from transferlab.study.config import parse_config
    from transferlab.study.run import run_study

    real = registry.load_source
    loads: list[str] = []

    def counting(spec, weights=None, resolution=None):
        loads.append(spec)
        return real(spec, weights, resolution=resolution)

    monkeypatch.setattr(registry, "load_source", counting)
    monkeypatch.setattr(sources_package, "load_source", counting)
    config = {
        "name": "once", "quick": True, "tasks": ["digits", "photo_copies"],
        "sources": [{"spec": A, "weights": "none"}, {"spec": f"concat:[{A},{B}]", "weights": "none"}],
        "factors": {"layers": [-1], "pooling": ["avg"], "pca_dims": [0]}, "probe": {"Cs": [1.0]},
        "execution": {"batch_size": 64},
    }
    summary = run_study(parse_config(config), tmp_path / "run", cache=str(tmp_path / "cache"), progress=False)
    assert summary.failures == [] and summary.new_results >= 4 and summary.forwarded_images > 0
    assert sorted(loads) == sorted([A, B])


@pytest.fixture()
def error_rate(monkeypatch):
    """A lower-is-better metric, registered for one test."""
    from transferlab import evaluate as E

    def compute(y, s, n_classes):
        return {"error_rate": float(np.mean(np.argmax(s, axis=1) != y))}, {"error_rate": []}

    spec = E.MetricSpec("error_rate", "classification", "fraction misclassified", compute, higher_is_better=False)
    monkeypatch.setitem(E.METRICS, "error_rate", spec)
    monkeypatch.setitem(E.PROTOCOLS, "error_rate", spec.protocol)
    return "error_rate"


def test_a_lower_is_better_metric_is_read_the_right_way_round(error_rate):
    from transferlab.report.factors import transferability
    from transferlab.report.tables import TaskInfo, TaskSummary
    from transferlab.study.evaluation import best_setting
    from transferlab.study.plan import Setting
    from transferlab.study.select import Candidate, Selection, agreement

    # scores rank a, b, c; the error rate agrees (a lowest): a perfect ranking, no regret
    found = agreement([3.0, 2.0, 1.0, 0.5], [0.1, 0.2, 0.3, 0.4], values_higher_is_better=False)
    assert found is not None and found["spearman"] == pytest.approx(1.0) and found["top1_hit"]
    assert found["confirmed_best"] == pytest.approx(0.1) and found["regret"] == pytest.approx(0.0)
    assert agreement([3.0, 2.0, 1.0, 0.5], [0.1, 0.2, 0.3, 0.4])["spearman"] == pytest.approx(-1.0)

    candidates = [Candidate("net", -1, "top", p, score=s, probe=v) for p, s, v in
                  (("avg", 3.0, 0.30), ("max", 2.0, 0.10), ("gem", 1.0, 0.20))]
    selection = Selection("tiny", error_rate, "logme", candidates, {}, 0, True)
    assert selection.best.pooling == "max"  # the lowest error, not the highest
    assert not selection.agreement()["top1_hit"]

    standard = Setting()
    rows = [{"factors": {**standard.as_dict(), "pooling": p, "sweep": "sweep"}, "val_value": v, "selection": "val"}
            for p, v in (("avg", 0.3), ("max", 0.1), ("gem", 0.2))]
    assert best_setting(rows, standard, error_rate).pooling == "max"
    assert best_setting(rows, standard, "accuracy").pooling == "avg"

    info = TaskInfo("tiny", 0.0, 1, "near", error_rate)
    report_rows = [{"source": "net", "value": v, "factors": {"layer": -1, "pooling": p},
                    "extra": {"logme": s, "knn1": s}} for p, s, v in (("avg", 3.0, 0.1), ("max", 2.0, 0.2),
                                                                       ("gem", 1.0, 0.3))]
    summary = TaskSummary(info, error_rate, report_rows, None, None, None)
    table, _ = transferability([summary], {"standard": standard.as_dict()})
    assert {t["score"] for t in table} == {"logme", "knn1"}
    assert all(t["top1_hit"] and t["rho"] == pytest.approx(1.0) for t in table)


def test_the_probe_picks_c_by_the_lowest_error_for_a_lower_is_better_metric(error_rate):
    """C chosen on val by error rate is the C chosen by accuracy (error = 1 - accuracy), and the
    validation score is the error at that C, not the largest error of the grid. (The selection
    step itself: the bootstrap intervals of a whole row know only the built-in metrics.)"""
    from transferlab.heads.probe import LinearProbe
    from transferlab.study.config import ProbeConfig
    from transferlab.study.evaluation import _fit_and_select

    rng = np.random.default_rng(0)
    labels = {name: rng.integers(0, 3, n) for name, n in (("train", 60), ("val", 40))}
    arrays = {name: (rng.normal(size=(len(y), 6)) + 0.8 * np.eye(3, 6)[y]).astype(np.float32)
              for name, y in labels.items()}

    class Task:
        name, classes = "tiny", ["a", "b", "c"]

    probe = ProbeConfig(Cs=[0.0001, 0.01, 1.0, 100.0])
    chosen = {m: _fit_and_select(Task(), probe, m, False, 0, arrays["train"], labels["train"], arrays["val"],
                                 labels["val"], None) for m in ("accuracy", error_rate)}
    (acc_model, acc_val, _), (err_model, err_val, _) = chosen["accuracy"], chosen[error_rate]
    assert err_model.C_ == acc_model.C_ and err_val == pytest.approx(1.0 - acc_val)
    errors = 1.0 - np.array([LinearProbe(Cs=[c]).fit(arrays["train"], labels["train"]).score(arrays["val"],
                                                                                               labels["val"])
                             for c in probe.Cs])
    assert err_val == pytest.approx(errors.min()) and errors.max() > errors.min()  # the grid's spread matters
