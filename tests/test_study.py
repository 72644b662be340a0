"""The study: config validation, planning, local and Ray execution, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from transferlab.cli import main
from transferlab.errors import TransferlabError
from transferlab.results.store import ResultStore
from transferlab.study.config import load_config, parse_config
from transferlab.study.plan import make_plan, settings_for
from transferlab.study.run import run_study

REPO = Path(__file__).resolve().parents[1]
# A small, fast random-init ConvNet keeps the end-to-end tests quick; features are real
# forward passes all the same.
TINY = {"spec": "timm:mobilenetv3_small_050", "weights": "none"}


def tiny_config(**changes) -> dict:
    config = {
        "name": "tiny",
        "sources": [TINY],
        "tasks": ["digits", "photo_copies"],
        "quick": True,
        "factors": {"layers": [-1, -2], "pooling": ["avg", "max"], "pca_dims": [0, 16]},
        "probe": {"Cs": [0.1, 1.0, 10.0]},
        "execution": {"batch_size": 64},
    }
    config.update(changes)
    return config


# ----------------------------------------------------------------------- config
def test_config_errors_name_every_key():
    with pytest.raises(TransferlabError) as info:
        parse_config({"sources": ["efficientnet_lite0"], "tasks": ["digits"], "colour": 1,
                      "factors": {"pooling": ["median"], "poolng": ["avg"]}, "probe": {"Cs": [0, 1]}})
    text = str(info.value)
    assert "colour: unknown key" in text and "factors.poolng: unknown key" in text
    assert "factors.pooling" in text and "median" in text and "probe.Cs" in text


def test_config_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsources: [a\ntasks: [b]\n")
    with pytest.raises(TransferlabError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(path)


def test_defaults_are_deep_standard():
    config = parse_config({"sources": ["efficientnet_lite0"], "tasks": ["digits"]})
    (setting, standard), = settings_for(config, retrieval=False)
    assert standard and setting.layer == -1 and setting.pooling == "avg"
    assert setting.normalisation == "l2" and setting.pca == 0 and setting.finetune == "off"
    assert setting.postprocess_spec() == "l2"


def test_postprocess_order_is_the_papers():
    from transferlab.study.plan import Setting

    assert Setting(normalisation="l2+power", pca=128).postprocess_spec() == "l2,pca128,power,l2"
    assert Setting(normalisation="l2", pca=64).postprocess_spec(retrieval_whiten=True) == "l2,pcaw64,l2"
    assert Setting(normalisation="none").postprocess_spec() == "none"


# ---------------------------------------------------------------------- planning
def test_one_at_a_time_and_grid_counts():
    factors = {"layers": [-1, -2, -3, -4], "pooling": ["avg", "max", "grid2"], "pca_dims": [0, 64, 128]}
    one = parse_config({"sources": ["efficientnet_lite0"], "tasks": ["digits"], "factors": factors})
    grid = parse_config({"sources": ["efficientnet_lite0"], "tasks": ["digits"], "factors": factors, "sweep": "grid"})
    assert len(settings_for(one, False)) == 1 + 3 + 2 + 2
    assert len(settings_for(grid, False)) == 4 * 3 * 3


def test_plan_lists_every_problem_before_any_compute():
    config = parse_config({"sources": ["no_such_net", "efficientnet_lite0"], "tasks": ["voc2007", "nope", "digits"],
                           "factors": {"layers": [-1, -50]}})
    with pytest.raises(TransferlabError) as info:
        make_plan(config)
    text = str(info.value)
    assert "tasks.voc2007: needs a root" in text and "tasks.nope: unknown task" in text
    assert "sources.no_such_net" in text and "layer -50 exists in none of the sources" in text


def test_missing_task_root_is_caught_at_plan_time(tmp_path):
    config = parse_config(
        {"sources": ["efficientnet_lite0"], "tasks": [{"name": "cub", "root": str(tmp_path / "nope")}]}
    )
    with pytest.raises(TransferlabError, match="tasks.cub: .*does not exist"):
        make_plan(config)


def test_paper_config_validates_and_plans_against_native_fixtures(tmp_path, capsys):
    from fixtures_classification import (
        make_apascal,
        make_cub,
        make_flowers,
        make_h3d,
        make_mit67,
        make_pets,
        make_stanford40,
        make_sun397,
        make_sun_attributes,
        make_visual_phrases,
        make_voc2007,
        make_voc2012_actions,
    )
    data = tmp_path / "data"
    makers = {"voc2007": make_voc2007, "mit67": make_mit67, "sun397": make_sun397,
              "sun_attributes": make_sun_attributes, "apascal": make_apascal, "h3d": make_h3d,
              "pets": make_pets, "cub": make_cub, "flowers": make_flowers,
              "voc2012_actions": make_voc2012_actions, "stanford40": make_stanford40,
              "visual_phrases": make_visual_phrases}
    for name, make in makers.items():
        make(data / name)
    write_oxford_style(data / "oxford5k", "oxbuild_images", "gt_files_170407", prefix="oxc1_")
    paper = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    assert load_config(REPO / "configs" / "paper.yaml").name == "paper"
    paper["data_root"] = str(data)
    paper["tasks"] = [t for t in paper["tasks"] if t in makers or t == "oxford5k"]
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(paper))
    assert main(["study", str(path), "--dry-run", "--json", "--out", str(tmp_path / "run")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["tasks"] == paper["tasks"] and len(plan["sources"]) == len(paper["sources"])
    assert plan["probe_fits"] > 0 and plan["retrieval_evaluations"] > 0 and plan["finetune_runs"] > 0
    assert plan["image_forwards"] > 0 and plan["jobs_done"] == 0


def write_oxford_style(root: Path, images: str, gt: str, prefix: str = "") -> None:
    from PIL import Image

    (root / images).mkdir(parents=True)
    (root / gt).mkdir(parents=True)
    names = ["all_souls_000001", "all_souls_000002", "radcliffe_000003", "radcliffe_000004"]
    for name in names:
        Image.new("RGB", (32, 24), (10, 20, 30)).save(root / images / f"{name}.jpg")
    (root / gt / "all_souls_1_query.txt").write_text(f"{prefix}all_souls_000001 1 1 20 20\n")
    (root / gt / "all_souls_1_good.txt").write_text("all_souls_000001\nall_souls_000002\n")
    (root / gt / "all_souls_1_ok.txt").write_text("")
    (root / gt / "all_souls_1_junk.txt").write_text("radcliffe_000003\n")


# -------------------------------------------------------------------- execution
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("study") / "run"
    summary = run_study(parse_config(tiny_config()), run_dir, progress=False)
    return run_dir, summary


def test_study_runs_end_to_end_and_reruns_for_free(finished_run):
    run_dir, summary = finished_run
    rows = ResultStore(run_dir).rows()
    assert summary.failures == [] and summary.forwarded_images > 0
    assert {r["task"] for r in rows} == {"digits", "photo_copies"}
    sweep = [r for r in rows if r["factors"]["sweep"] == "sweep"]
    assert len(sweep) == 2 * (1 + 1 + 1 + 1)
    standard = [r for r in rows if r["standard"]]
    assert {r["task"] for r in standard} == {"digits", "photo_copies"}
    assert all(r["factors"]["layer"] == -1 and r["factors"]["pooling"] == "avg" for r in standard)
    digits = [r for r in rows if r["task"] == "digits"]
    assert all(0.0 <= r["value"] <= 1.0 for r in rows)
    assert max(r["value"] for r in digits) > 0.3  # far above chance (0.1), even random-init
    assert rows[0]["versions"]["torch"] and rows[0]["config_hash"]
    again = run_study(parse_config(tiny_config()), run_dir, progress=False)
    assert again.new_results == 0 and again.forwarded_images == 0


def test_second_study_in_same_run_dir_is_refused(finished_run):
    run_dir, _ = finished_run
    with ResultStore(run_dir).lock():
        with pytest.raises(TransferlabError, match="in use by another study"):
            run_study(parse_config(tiny_config()), run_dir, progress=False)


@pytest.mark.slow
def test_ray_executor_gives_the_same_results(finished_run, tmp_path):
    pytest.importorskip("ray")
    run_dir, _ = finished_run
    ray_dir = tmp_path / "ray-run"
    summary = run_study(parse_config(tiny_config()), ray_dir, executor="ray", progress=False)
    assert summary.failures == []
    local = {r["job_key"]: r["value"] for r in ResultStore(run_dir).rows()}
    remote = {r["job_key"]: r["value"] for r in ResultStore(ray_dir).rows()}
    assert local.keys() == remote.keys()
    for key, value in local.items():
        assert remote[key] == pytest.approx(value, abs=1e-6)


def test_killed_study_resumes_without_losing_results(tmp_path):
    config = tiny_config(tasks=["digits"], factors={"layers": [-1, -2, -3], "pooling": ["avg", "max"],
                                                      "pca_dims": [0, 4, 8, 12, 16, 24, 32]})
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "transferlab.cli", "study", str(path), "--out", str(run_dir),
                             "--no-progress", "--no-report"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    db = run_dir / "results.sqlite"
    deadline = time.time() + 240
    committed = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=1) as con:
                    committed = con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            except sqlite3.Error:
                committed = 0
            if committed >= 2:
                break
        time.sleep(0.01)  # the whole study takes ~2 s after start-up: poll often enough to kill it midway
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert committed >= 2, "the study did not commit results before the kill"
    assert proc.returncode == -signal.SIGKILL, "the study finished before it could be killed"
    kept = {r["job_key"] for r in ResultStore(run_dir).rows()}
    assert len(kept) >= committed
    resumed = run_study(parse_config(config), run_dir, progress=False)
    rows = ResultStore(run_dir).rows()
    assert kept <= {r["job_key"] for r in rows}
    assert resumed.skipped >= len(kept) - 1  # the optimal row is computed after the sweep
    assert resumed.forwarded_images == 0  # the killed run had finished the forward pass
    assert len([r for r in rows if r["factors"]["sweep"] == "sweep"]) == 1 + 2 + 1 + 6


def test_finetune_factor_trains_once_and_extracts_the_tuned_network(tmp_path):
    config = tiny_config(tasks=["digits"], factors={"layers": [-1], "pooling": ["avg"], "finetune": ["off", "on"]},
                         finetune={"epochs": 1, "input_size": 64, "batch_size": 16})
    summary = run_study(parse_config(config), tmp_path / "run", progress=False)
    assert summary.failures == []
    rows = ResultStore(tmp_path / "run").rows()
    tuned = [r for r in rows if r["factors"]["finetune"] == "on"]
    assert len(tuned) == 1
    folder = tmp_path / "run" / "finetuned"
    assert len(list(folder.glob("*/source.json"))) == 1
    from transferlab.sources import load_source

    (path,) = folder.iterdir()
    assert load_source(f"finetuned:{path}").preprocessing.input_size == 64


def test_concat_keeps_spatial_search_windows_and_normalises_each_window():
    from types import SimpleNamespace

    from transferlab.features.handle import ConcatFeatures, StoreFeatures
    from transferlab.sources.base import Layer

    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(5, 14, 8)).astype(np.float32), rng.normal(size=(5, 14, 4)).astype(np.float32)]

    def member(array):
        handle = SimpleNamespace(get=lambda layer, pooling, view: array)
        return SimpleNamespace(layers=[Layer("features", array.shape[-1], 32, -1)], splits={"db": handle})

    joined = ConcatFeatures([StoreFeatures(member(a)) for a in arrays]).split("db", -1, "windows")
    assert joined.shape == (5, 14, 12)
    assert np.allclose(np.linalg.norm(joined[..., :8], axis=-1), 1, atol=1e-5)
    assert np.allclose(joined[..., 8:], arrays[1] / np.linalg.norm(arrays[1], axis=-1, keepdims=True), atol=1e-5)


def test_trained_sources_with_other_epochs_train_apart_but_snapshots_share():
    from transferlab.study.config import TrainEntry
    from transferlab.study.learning import train_dir

    base = {"arch": "alexnet", "width": "tiny", "source_task": "digits"}
    five, ten = TrainEntry(**base, epochs=5), TrainEntry(**base, epochs=10)
    assert train_dir(five) != train_dir(ten)  # a cosine schedule over 5 epochs is another run
    assert train_dir(TrainEntry(**base, epochs=5, snapshots=[1, 3])) == train_dir(five)


def test_retrieval_whitening_on_a_held_out_task_runs_without_extra_forwards(tmp_path):
    from transferlab.data.base import image_splits
    from transferlab.data.tasks import load_task

    config = parse_config({"name": "wh", "sources": ["efficientnet_lite0"], "tasks": ["photo_copies"],
                           "quick": True, "optimal": False,
                           "factors": {"pca_dims": [0, 32]}, "retrieval": {"whiten_on": "photo_copies"}})
    summary = run_study(config, tmp_path / "run", cache=str(tmp_path / "store"), progress=False)
    assert summary.new_results == 2 and not summary.failures
    n_images = sum(len(s) for s in image_splits(load_task("photo_copies", quick=True)).values())
    assert summary.forwarded_images == n_images  # the whitening set came from the same store
    with ResultStore(tmp_path / "run", create=False) as store:
        assert sorted(r["factors"]["pca"] for r in store.rows()) == [0, 32]
