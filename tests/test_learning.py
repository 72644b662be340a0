"""Learning factors: the drawn scene tasks, the decoded-image cache, near-chance flags,
train:NAME / Concat / fine-tuning of trained sources in a study, `results --sources` and the
report's learning section."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from transferlab.cli import main
from transferlab.data.builtin.scenes import INDOOR_LAYOUTS, LAYOUTS, SOURCE_LAYOUTS, draw_scene
from transferlab.data.tasks import load_task
from transferlab.errors import TransferlabError
from transferlab.sources.preprocessing import Preprocessing
from transferlab.sources.train_data import decode_cached, union_tasks
from transferlab.sources.trained import TrainRecord, near_chance
from transferlab.study.config import StudyConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- scenes
def test_scenes_are_deterministic_and_every_layout_draws_a_colour_image():
    for layout in LAYOUTS:
        a = draw_scene(layout, np.random.default_rng(5))
        b = draw_scene(layout, np.random.default_rng(5))
        assert a.shape == (32, 32, 3) and a.dtype == np.uint8
        assert np.array_equal(a, b)
        assert a.std() > 5  # not a flat image
    assert set(SOURCE_LAYOUTS).isdisjoint(INDOOR_LAYOUTS)


def test_scene_target_tasks_have_their_sizes_and_rebuild_identically(tmp_path, monkeypatch):
    task = load_task("indoor_layouts", quick=True)
    assert sorted(task.classes) == sorted(INDOOR_LAYOUTS)
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 40, "val": 20, "test": 40}
    first = open(task.split("test").paths[0], "rb").read()
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path))  # an empty cache draws everything again
    again = load_task("indoor_layouts", quick=True)
    assert again.split("test").paths[0] != task.split("test").paths[0]
    assert open(again.split("test").paths[0], "rb").read() == first
    with pytest.raises(TransferlabError, match="takes no root"):
        load_task("scene_categories", str(tmp_path))


# ----------------------------------------------------------------------------- data for training
def test_a_subset_larger_than_the_data_names_the_numbers():
    digits = load_task("digits", quick=True)  # 10 training images per class
    with pytest.raises(TransferlabError, match=r"3 classes x 11 images per class = 33 .* has only 10"):
        union_tasks([digits], classes=3, images_per_class=11)
    with pytest.raises(TransferlabError, match="asks for more classes than the source has"):
        union_tasks([digits], classes=11)


def test_union_records_whole_splits_and_rows_matching_the_subset():
    digits = load_task("digits", quick=True)
    data = union_tasks([digits], classes=4, images_per_class=3, seed=2)
    ((whole, rows),) = data.train_parts
    assert [whole.paths[i] for i in rows] == data.train.paths
    assert len(data.val_parts) == 1
    ((val_whole, val_rows),) = data.val_parts
    assert [val_whole.paths[i] for i in val_rows] == data.val.paths


def test_decoded_images_are_cached_and_a_corrupt_cache_is_decoded_again(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path))
    split = load_task("digits", quick=True).split("train")
    pre = Preprocessing(input_size=32, crop_pct=1.0, interpolation="bilinear")
    first = decode_cached(split, pre)
    assert first.shape == (len(split), 3, 32, 32) and first.dtype == np.uint8
    (cached,) = (tmp_path / "decoded").glob("*.npy")
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF  # one flipped pixel: the checksum no longer matches
    cached.write_bytes(bytes(data))
    again = decode_cached(split, pre)
    assert np.array_equal(again, first)
    info = json.loads(cached.with_suffix(".json").read_text())
    assert info["images"] == len(split)


def test_near_chance_is_within_five_points_of_one_over_classes():
    assert near_chance(0.12, 10) is True
    assert near_chance(0.16, 10) is False
    assert near_chance(0.53, 2) is True
    assert near_chance(None, 10) is None
    record = TrainRecord("out", "alexnet", "tiny", 32, 10, [str(i) for i in range(10)], {},
                         history=[{"epoch": 1, "val_accuracy": 0.11, "seconds": 2.0, "images_seen": 100}])
    summary = record.to_dict()
    assert summary["val_accuracy"] == 0.11 and summary["near_chance"] is True and summary["chance"] == 0.1
    assert summary["images_per_second"] == 50.0


# ----------------------------------------------------------------------------- study wiring
def _config(**extra) -> StudyConfig:
    body = {
        "name": "learning-test",
        "sources": [{"spec": "concat:[train:object, train:scene]", "label": "concat"}],
        "tasks": ["digits"],
        "quick": True,
        "train": [
            {"name": "object", "source_task": "fashion_mnist", "epochs": 2, "snapshots": [1],
             "options": {"quick": True, "batch_size": 16}, "finetune": True},
            {
                "name": "scene",
                "source_task": "scene_categories",
                "epochs": 1,
                "options": {"quick": True, "batch_size": 16},
            },
        ],
        "execution": {"device": "cpu"},
    }
    body.update(extra)
    return StudyConfig(**body)


def test_train_names_resolve_to_trained_folders_and_concat_gets_learning_factors():
    from transferlab.study.learning import concat_factors, resolve_train_references, train_dir

    config = _config()
    resolved = resolve_train_references(config)
    (source,) = resolved.sources
    object_dir, scene_dir = (train_dir(e) for e in config.train)
    assert source.spec == f"concat:[trained:{object_dir}@2, trained:{scene_dir}@1]"
    assert source.name == "concat"  # the label keeps job keys independent of the cache path
    factors = concat_factors(source.spec, resolved)
    assert factors["source_task"] == "concat:fashion_mnist+scene_categories"
    assert factors["snapshot"] == "2+1"
    bad = _config(sources=[{"spec": "concat:[train:object, train:nothing]"}])
    with pytest.raises(TransferlabError, match="no train: entry is named 'nothing'"):
        resolve_train_references(bad)
    with pytest.raises(TransferlabError, match="keeps epochs 1, 2, not 3"):
        resolve_train_references(_config(sources=["train:object@3"]))


def test_a_trained_source_with_finetune_true_gets_the_finetune_setting_only():
    from transferlab.study.plan import make_plan

    config = _config(factors={"finetune": ["off", "on"], "pooling": ["avg", "max"]})
    plan = make_plan(config)
    tuned = {j.source for j in plan.jobs if j.setting.finetune == "on"}
    assert tuned == {"object@2"}  # the final network of the entry with finetune: true
    assert all(j.setting.pooling == "avg" for j in plan.jobs)  # learning sources: standard setting only
    assert {j.source for j in plan.jobs} == {"concat", "object@1", "object@2", "scene@1"}
    # the first listed source is the standard one even when it is a Concat of trained networks
    assert {(j.source, j.setting.finetune) for j in plan.jobs if j.standard} == {("concat", "off")}


def test_study_trains_once_records_sources_and_reports_them(tmp_path, capsys):
    from transferlab.results.store import ResultStore

    path = tmp_path / "study.yaml"
    config = _config()
    import yaml

    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    run = tmp_path / "run"
    assert main(["study", str(path), "--out", str(run), "--no-progress"]) == 0
    rows = ResultStore(run, create=False).rows()
    assert {r["source"] for r in rows} == {"concat", "object@1", "object@2", "scene@1"}
    concat = next(r for r in rows if r["source"] == "concat")
    assert concat["factors"]["source_task"] == "concat:fashion_mnist+scene_categories"
    capsys.readouterr()
    assert main(["results", str(run), "--sources", "--json"]) == 0
    records = {r["source"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(records) == {"concat", "object@1", "object@2", "scene@1"}
    obj = records["object@2"]
    assert obj["source_task"] == ["fashion_mnist"] and obj["arch"] == "alexnet" and obj["width"] == "tiny"
    assert obj["snapshot"] == 2 and obj["images"] == 100 and obj["classes"] == 10
    assert 0.0 <= obj["val_accuracy"] <= 1.0
    assert records["concat"]["members"][0]["source"] == "object@2"
    page = (run / "report.html").read_text()
    assert "Learning factors" in page and "Trained sources" in page and "Early stopping" in page
    # a rerun trains nothing: the networks are cached by their settings
    assert main(["study", str(path), "--out", str(tmp_path / "run2"), "--no-progress", "--dry-run"]) == 0
    assert "will be trained first" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- report
def _row(source: str, task: str, value: float, factors: dict, low=None, high=None) -> dict:
    base = {"layer": -1, "pooling": "avg", "finetune": "off", "sweep": "sweep", "classes": "all",
            "images_per_class": "all", "arch": "alexnet", "width": "tiny", "snapshot": 4}
    row = {"source": source, "task": task, "metric": "accuracy", "value": value, "standard": False,
           "factors": {**base, **factors}, "created": 0.0}
    if low is not None:
        row.update(low=low, high=high)
    return row


def _meta(records: dict) -> dict:
    tasks = {"fashion_mnist": {"distance": 101}, "scene_categories": {"distance": 101}, "digits": {"distance": 104}}
    return {"tasks": tasks, "trained_sources": records}


def _source_task_rows(object_scene: tuple[float, float], scene_scene: tuple[float, float], hybrid=(0.8, 0.7)):
    rows = []
    for source, task_name, (fm, sc) in (("object@4", "fashion_source", object_scene),
                                        ("scene@4", "scene_source", scene_scene),
                                        ("hybrid@4", "fashion_source+scene_source", hybrid)):
        rows.append(_row(source, "fashion_mnist", fm, {"source_task": task_name}, fm - 0.05, fm + 0.05))
        rows.append(_row(source, "scene_categories", sc, {"source_task": task_name}, sc - 0.05, sc + 0.05))
    return rows


def test_source_task_table_reads_the_papers_pattern_when_it_shows_and_says_when_it_does_not():
    from transferlab.report.learning import learning_section

    records = {
        n: {"val_accuracy": 0.8, "near_chance": False, "images": 1000} for n in ("object@4", "scene@4", "hybrid@4")
    }
    shows = learning_section(_source_task_rows((0.85, 0.4), (0.6, 0.9)), _meta(records))
    assert "Source task" in shows and "85.0 [80.0, 90.0]" in shows
    assert "the paper&#x27;s pattern shows" in shows and "Hybrid keeps most of both" in shows
    close = learning_section(_source_task_rows((0.62, 0.4), (0.6, 0.9)), _meta(records))
    assert "too close to call on fashion_mnist: the paper&#x27;s pattern shows in part" in close
    reversed_ = learning_section(_source_task_rows((0.5, 0.9), (0.85, 0.4), hybrid=(0.5, 0.4)), _meta(records))
    assert "pattern does not show" in reversed_ and "Hybrid does not keep most of both" in reversed_
    records["scene@4"]["near_chance"] = True
    flagged = learning_section(_source_task_rows((0.85, 0.4), (0.6, 0.9)), _meta(records))
    assert "no reading: scene@4 did not learn" in flagged and "near chance" in flagged


def test_cells_without_intervals_show_the_bare_value():
    from transferlab.report.learning import cell_text

    assert cell_text({"metric": "accuracy", "value": 0.82}) == "82.0"
    assert cell_text({"metric": "accuracy", "value": 0.82, "low": 0.751, "high": 0.883}) == "82.0 [75.1, 88.3]"


def test_results_sources_lists_records_and_flags_near_chance(tmp_path, capsys):
    from transferlab.results.store import ResultStore

    with ResultStore(tmp_path) as store:
        store.set_meta("trained_sources", {"a@1": {"source": "a@1", "kind": "object", "arch": "alexnet",
                                                   "width": "tiny", "snapshot": 1, "images": 100, "classes": 10,
                                                   "val_accuracy": 0.11, "near_chance": True}})
    assert main(["results", str(tmp_path), "--sources"]) == 0
    out = capsys.readouterr().out
    assert "11.0 (near chance)" in out and "not learnt): a@1" in out
