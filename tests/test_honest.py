"""Honest answers (issue 11): selection on validation, intervals on every number, results keyed
by everything that made them, the machine-readable summary, and bad input for selection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from transferlab.analysis import intervals as I
from transferlab.cli import main
from transferlab.errors import TransferlabError
from transferlab.report import build_report
from transferlab.results.rows import ResultRow
from transferlab.results.store import ResultStore
from transferlab.study.config import parse_config
from transferlab.study.run import run_study

try:
    from tests import fixtures_classification as fx
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    import fixtures_classification as fx

TINY = {"spec": "timm:mobilenetv3_small_050", "weights": "none"}


def _scored_row(task, layer, labels, correct, val, standard=False):
    """A probe row whose per-image correctness is given: value, interval and replicates as the
    study computes them."""
    n, k = len(labels), int(labels.max()) + 1
    scores = np.zeros((n, k), np.float32)
    scores[np.arange(n), np.where(correct, labels, (labels + 1) % k)] = 1
    items = I.item_data("accuracy", labels, scores)
    iv = I.row_interval("accuracy", items, task)
    factors = {"layer": layer, "pooling": "avg", "sweep": "sweep"}
    return ResultRow("net", task, factors, "accuracy", iv.value, metrics={"accuracy": iv.value}, standard=standard,
                     val_value=val, selection="val", low=iv.low, high=iv.high,
                     items={**items, "replicates": iv.replicates, "resample_seed": np.int64(iv.seed)})


@pytest.fixture()
def lucky_store(tmp_path):
    """Layer -3 is lucky on test (best test score) but worst on validation; layer -2 is best on
    validation. Deep Optimal must be -2, the oracle -3."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 400)
    base = rng.random(400)
    rows = [
        _scored_row("digits", -1, labels, base < 0.70, val=0.70, standard=True),
        _scored_row("digits", -2, labels, base < 0.74, val=0.78),
        _scored_row("digits", -3, labels, base < 0.80, val=0.60),  # lucky on test
    ]
    with ResultStore(tmp_path) as store:
        store.add_many(rows)
        store.set_meta("standard", {"layer": -1, "pooling": "avg"})
    return tmp_path


def test_deep_optimal_is_the_validation_winner_and_the_oracle_the_lucky_one(lucky_store, capsys):
    assert main(["results", str(lucky_store), "--summary", "--json"]) == 0
    (task,) = json.loads(capsys.readouterr().out)
    assert task["optimal"]["configuration"]["layer"] == -2
    assert task["oracle"]["configuration"]["layer"] == -3
    assert task["oracle"]["label"] == "oracle: best on test, as the paper reported"
    assert task["standard"]["configuration"]["layer"] == -1
    for role in ("standard", "optimal", "oracle"):
        entry = task[role]
        assert {"configuration", "value", "low", "high", "val_value"} <= set(entry)
        assert entry["low"] <= entry["value"] <= entry["high"]
    assert task["metric"] == "accuracy"
    diff = task["difference"]
    assert diff["value"] == pytest.approx(task["optimal"]["value"] - task["standard"]["value"])
    assert diff["paired"] and diff["low"] <= diff["value"] <= diff["high"]
    # paired: both rows are scored on the same 400 images, so the difference interval is narrow
    assert diff["high"] - diff["low"] < task["standard"]["high"] - task["standard"]["low"]

    page = build_report(lucky_store).read_text()
    assert "oracle: best on test, as the paper reported" in page
    opt = task["optimal"]
    shown = f"{100 * opt['value']:.1f} [{100 * opt['low']:.1f}, {100 * opt['high']:.1f}]"
    assert shown in page  # Deep Optimal's test value with its interval


def test_ties_on_validation_go_to_the_standard_then_to_fewer_changes():
    from transferlab.report.tables import select_row

    std = {"source": "n", "factors": {"layer": -1, "pooling": "avg"}, "standard": True, "val_value": 0.7,
           "selection": "val", "value": 0.5}
    one = {"source": "n", "factors": {"layer": -2, "pooling": "avg"}, "standard": False, "val_value": 0.7,
           "selection": "val", "value": 0.9}
    two = {"source": "n", "factors": {"layer": -2, "pooling": "max"}, "standard": False, "val_value": 0.8,
           "selection": "val", "value": 0.6}
    assert select_row("accuracy", [one, std], std) is std
    assert select_row("accuracy", [one, two, std], std) is two
    two_tied = {**two, "val_value": 0.7}
    assert select_row("accuracy", [two_tied, one], std) is one  # fewer changes from the standard
    unselected = {**two, "val_value": 0.99, "selection": "none: too small"}
    assert select_row("accuracy", [unselected, one], std) is one


def _config(tmp_path, **changes):
    config = {
        "name": "honest", "sources": [TINY], "tasks": ["digits", "photo_copies"], "quick": True,
        "factors": {"layers": [-1], "pooling": ["avg", "max"]}, "probe": {"Cs": [0.1, 1.0]},
        "execution": {"batch_size": 64},
    }
    config.update(changes)
    return parse_config(config)


def test_rerun_with_changed_c_grid_or_retrieval_setting_makes_new_rows_and_shows_only_them(tmp_path, capsys):
    run = tmp_path / "run"
    first = run_study(_config(tmp_path), run, progress=False)
    assert first.new_results > 0 and not first.failures
    with ResultStore(run, create=False) as store:
        old = {r["job_key"] for r in store.rows()}
        for r in store.rows():
            assert np.isfinite(r["val_value"]) and r["low"] <= r["value"] <= r["high"]
            assert r["selection"] in ("val", "queries 50%")

    again = run_study(_config(tmp_path), run, progress=False)
    assert again.new_results == 0  # same configuration: nothing recomputed

    changed = _config(tmp_path, probe={"Cs": [0.1, 1.0, 10.0]}, retrieval={"metric": "l2"})
    second = run_study(changed, run, progress=False)
    assert second.new_results == first.new_results
    with ResultStore(run, create=False) as store:
        every = store.rows()
        current = store.current_rows()
    assert len(every) == 2 * len(old)
    assert {r["job_key"] for r in current}.isdisjoint(old) and len(current) == len(old)

    page = build_report(run).read_text()
    assert f"{len(old)} rows of earlier configurations kept" in page
    assert main(["results", str(run), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {r["job_key"] for r in shown} == {r["job_key"] for r in current}
    assert main(["results", str(run), "--all"]) == 0
    out = capsys.readouterr().out
    assert "config hash" in out and len({r["identity"] for r in every}) >= 3
    assert main(["report", str(run), "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)
    assert (reported["results"], reported["older_results"]) == (len(current), len(old))


def test_a_train_split_too_small_for_k_fold_is_named_and_never_deep_optimal(tmp_path, capsys):
    from transferlab.data.base import Split, TaskData
    from transferlab.features.export import TaskFeatures  # noqa: F401 - the interface mimicked below
    from transferlab.study.config import ProbeConfig
    from transferlab.study.evaluation import evaluate_probe_job
    from transferlab.study.plan import Job, Setting

    class Features:
        def __init__(self, arrays):
            self.arrays = arrays

        def split(self, name, layer, pooling, view="orig"):
            return self.arrays[name]

        def kept(self, name):
            return np.arange(len(self.arrays[name]))

        def layer_name(self, layer):
            return "top"

    rng = np.random.default_rng(0)
    train = np.array([0, 1])
    test = rng.integers(0, 2, 20)
    task = TaskData("tiny", "single", ["a", "b"], {"train": Split("train", ["x", "y"], train),
                                                  "test": Split("test", [f"t{i}" for i in range(20)], test)})
    feats = Features({"train": rng.normal(size=(2, 4)).astype(np.float32) + train[:, None],
                      "test": rng.normal(size=(20, 4)).astype(np.float32) + test[:, None]})
    row = evaluate_probe_job(Job("net", "tiny", Setting(), "probe"), task, feats, ProbeConfig(), "accuracy")
    assert row.val_value is None and row.selection.startswith("none: task tiny: the training split (2 images)")
    assert np.isfinite(row.value) and row.low <= row.value <= row.high


def test_a_validation_split_without_positives_for_a_label_is_named_and_never_deep_optimal():
    from transferlab.data.base import Split, TaskData
    from transferlab.report.tables import select_row
    from transferlab.study.config import ProbeConfig
    from transferlab.study.evaluation import evaluate_probe_job
    from transferlab.study.plan import Job, Setting

    rng = np.random.default_rng(1)

    def labels(n, val=False):
        y = np.where(rng.random((n, 3)) < 0.4, 1, -1).astype(np.int8)
        if val:
            y[:, 2] = -1  # no positive for "c" in validation
        return y

    y = {"train": labels(40), "val": labels(12, val=True), "test": labels(30)}
    task = TaskData("attrs", "attributes", ["a", "b", "c"],
                    {k: Split(k, [f"{k}{i}" for i in range(len(v))], v) for k, v in y.items()})

    class Features:
        def split(self, name, layer, pooling, view="orig"):
            return (y[name].astype(np.float32) + rng.normal(size=y[name].shape)).astype(np.float32)

        def kept(self, name):
            return np.arange(len(y[name]))

        def layer_name(self, layer):
            return "top"

    row = evaluate_probe_job(Job("net", "attrs", Setting(), "probe"), task, Features(), ProbeConfig(), "map")
    assert row.val_value is None
    assert row.selection == "none: task attrs: the validation split has no positives for label(s) c: no selection"
    as_dict = {"source": "net", "factors": row.factors, "standard": False, "val_value": float("nan"),
               "selection": row.selection, "value": row.value}
    assert select_row("map", [as_dict]) is None


def test_evaluation_hash_covers_probe_retrieval_and_finetune_settings():
    base = parse_config({"sources": ["efficientnet_lite0"], "tasks": ["digits"]})
    other_c = parse_config({"sources": ["efficientnet_lite0"], "tasks": ["digits"], "probe": {"Cs": [1.0]}})
    other_loss = parse_config({"sources": ["efficientnet_lite0"], "tasks": ["digits"], "probe": {"loss": "logistic"}})
    whiten = parse_config({"sources": ["efficientnet_lite0"], "tasks": ["digits"], "retrieval": {"whiten_on": "x"}})
    tune = parse_config({"sources": ["efficientnet_lite0"], "tasks": ["digits"], "finetune": {"epochs": 9}})
    assert base.evaluation_hash("probe") != other_c.evaluation_hash("probe") != other_loss.evaluation_hash("probe")
    assert base.evaluation_hash("retrieval") != whiten.evaluation_hash("retrieval")
    assert base.evaluation_hash("probe") == whiten.evaluation_hash("probe")
    assert base.evaluation_hash("probe", "on") != tune.evaluation_hash("probe", "on")
    assert base.evaluation_hash("probe", "off") == tune.evaluation_hash("probe", "off")


def test_default_probe_and_retrieval_settings_keep_their_evaluation_hash():
    """The default C grid (heads.probe_grid.DEFAULT_CS) and retrieval settings have one owner
    each; moving them must not change the keys of results already stored by a default study."""
    base = parse_config({"sources": ["efficientnet_lite0"], "tasks": ["digits"]})
    assert base.probe.Cs == [0.01, 0.1, 1.0, 10.0, 100.0]
    assert base.evaluation_hash("probe") == "a870039f250f4f15"
    assert base.evaluation_hash("retrieval") == "d04ba56e8c83dc48"
    assert base.evaluation_hash("probe", "on") == "1fa68387e3f18fbe"


def test_repeats_re_split_built_in_tasks_and_report_mean_and_std(tmp_path):
    run = tmp_path / "run"
    config = _config(tmp_path, execution={"batch_size": 64, "repeats": 2})
    result = run_study(config, run, progress=False)
    assert not result.failures
    with ResultStore(run, create=False) as store:
        rows = store.rows()
    digits = [r for r in rows if r["task"] == "digits"]
    copies = [r for r in rows if r["task"] == "photo_copies"]
    assert {r["extra"].get("split", 0) for r in digits} == {0, 1}
    assert {r["extra"].get("split", 0) for r in copies} == {0}  # retrieval: one fixed split
    page = build_report(run).read_text()
    assert "Repeated splits" in page and "one fixed split: repeats do not apply" in page


def test_sun397_repeats_are_its_next_official_partitions(tmp_path):
    """SUN397 has ten official partitions: repeat r is partition 1 + r, read from its own lists
    (not a re-deal of partition 1's images), under the names the evaluation asks for."""
    from transferlab.data.tasks import load_task
    from transferlab.study.evaluation import repeat_split

    fx.make_sun397(tmp_path / "sun")
    task = load_task("sun397", tmp_path / "sun", extra_partitions=1)
    assert set(task.splits) == {"train", "test", "train_p02", "test_p02"}

    class Rows:  # features whose rows are the image indices, to see which images were picked
        def split(self, name, layer, pooling, view="orig"):
            return np.arange(len(task.splits[name]))[:, None] + (100 if name.endswith("_p02") else 0)

        def kept(self, name):
            return np.arange(len(task.splits[name]))

    second, features = repeat_split(task, Rows(), 1)
    assert sorted(second.splits) == ["test", "train"]
    assert [p.split("SUN397")[1] for p in second.splits["train"].paths] == fx.SUN397_TEST  # Training_02
    assert features.split("train", -1, "avg")[:, 0].tolist() == [100, 101, 102]
    assert len(features.kept("test")) == len(fx.SUN397_TRAIN)
    with pytest.raises(TransferlabError, match="repeat 2 needs 2 extra partitions"):
        repeat_split(task, Rows(), 2)


def test_a_study_repeats_sun397_on_its_partitions_and_sun_attributes_by_re_dealing(tmp_path):
    fx.make_sun397(tmp_path / "sun")
    fx.make_sun_attributes(tmp_path / "attr")
    run = tmp_path / "run"
    config = _config(tmp_path, quick=False, tasks=[{"name": "sun397", "root": str(tmp_path / "sun")},
                                                  {"name": "sun_attributes", "root": str(tmp_path / "attr")}],
                     factors={"layers": [-1], "pooling": ["avg"]}, execution={"batch_size": 16, "repeats": 2})
    result = run_study(config, run, progress=False)
    assert not result.failures
    with ResultStore(run, create=False) as store:
        rows = store.rows()
    sun = {r["extra"].get("split", 0): r for r in rows if r["task"] == "sun397"}
    attr = {r["extra"].get("split", 0): r for r in rows if r["task"] == "sun_attributes"}
    assert set(sun) == set(attr) == {0, 1}
    # partition 1 trains on 4 images and tests on 3, partition 2 the other way round
    assert (sun[0]["extra"]["n_train"], sun[0]["extra"]["n_test"]) == (4, 3)
    assert (sun[1]["extra"]["n_train"], sun[1]["extra"]["n_test"]) == (3, 4)
