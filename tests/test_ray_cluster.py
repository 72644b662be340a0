"""The Ray executor on a real two-raylet cluster on this machine (`ray start --head` plus a
second `ray start --address`, one CPU each): a study through the CLI gives the local
executor's results, extracts shards on both nodes (from the placement of its rows), and
survives a worker killed in the middle of a shard. The module starts one cluster for all
its tests and always stops it (its own process groups only)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from transferlab.results.store import ResultStore
from transferlab.study.config import parse_config
from transferlab.study.run import run_study

pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a real two-raylet cluster: ~2 min for the module

REPO = Path(__file__).resolve().parents[1]
CONFIG = {
    "name": "tiny-ray",
    "sources": [{"spec": "timm:mobilenetv3_small_050", "weights": "none"}],
    "tasks": ["digits", "photo_copies"],
    "quick": True,
    "factors": {"layers": [-1, -2], "pooling": ["avg", "max"], "pca_dims": [0, 16], "views": ["orig", "orig+flip"]},
    "probe": {"Cs": [0.1, 1.0, 10.0]},
    "execution": {"batch_size": 32},
}
STARTUP_S = 240  # a loaded 2-core machine starts raylets slowly: generous, never asserted on
STUDY_S = 900


@pytest.fixture(scope="module")
def cluster():
    from transferlab.study.ray_local_cluster import LocalCluster

    extra = {"PYTHONPATH": os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)}
    with LocalCluster([1, 1], startup_s=STARTUP_S, extra_env=extra) as running:
        assert len(running.nodes) == 2
        yield running


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-study")
    (folder / "study.yaml").write_text(yaml.safe_dump(CONFIG))
    return folder


@pytest.fixture(scope="module")
def local_values(workdir):
    """The same study with the local executor, its own FeatureStore."""
    summary = run_study(parse_config(CONFIG), workdir / "local", cache=str(workdir / "store-local"), progress=False)
    assert summary.failures == []
    return {r["job_key"]: r["value"] for r in ResultStore(workdir / "local").rows()}


def _study(cluster, workdir, name: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "transferlab.cli", "study", str(workdir / "study.yaml"), "--executor", "ray",
               "--address", "auto", "--out", str(workdir / name), "--cache", str(workdir / f"store-{name}"),
               "--no-report", "--no-progress", "--json"]
    return subprocess.Popen(command, env=cluster.env, cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> tuple[dict, str]:
    try:
        out, err = process.communicate(timeout=STUDY_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    assert process.returncode == 0, err[-3000:]
    return json.loads(out), err


def _same_results(run_dir: Path, local_values: dict) -> list[dict]:
    rows = ResultStore(run_dir).rows()
    remote = {r["job_key"]: r["value"] for r in rows}
    assert remote.keys() == local_values.keys()
    for key, value in local_values.items():
        assert remote[key] == pytest.approx(value, abs=1e-6)
    return rows


def _store_is_whole(store: Path) -> int:
    """Every shard file reads back completely; returns how many there are."""
    files = [p for p in store.rglob("*.npy") if not p.name.startswith(".")]
    for path in files:
        array = np.load(path)
        assert array.dtype == np.float32 and array.ndim >= 2 and np.isfinite(array).all(), path
    for record in store.rglob("provenance.json"):
        json.loads(record.read_text())
    return len(files)


def test_study_on_two_raylets_matches_local_and_extracts_on_both_nodes(cluster, workdir, local_values):
    summary, err = _finish(_study(cluster, workdir, "ray"))
    assert summary["failures"] == [] and summary["new_results"] == len(local_values)
    assert "2 Ray node(s) share the feature store" in err
    rows = _same_results(workdir / "ray", local_values)
    extracted = {e["node_id"] for r in rows for e in r["placement"]["extracted"]}
    evaluated = {r["placement"]["evaluated"]["node_id"] for r in rows}
    assert extracted == set(cluster.nodes)  # shards on both raylets
    assert evaluated <= set(cluster.nodes) and None not in evaluated
    assert all(e["device"] == "cpu" and e["shards"] >= 1 for r in rows for e in r["placement"]["extracted"])
    assert _store_is_whole(workdir / "store-ray") == _store_is_whole(workdir / "store-local") > 0
    # the rerun resumes: nothing left to compute or forward
    again, _ = _finish(_study(cluster, workdir, "ray"))
    assert again["new_results"] == 0 and again["forwarded_images"] == 0


def test_worker_killed_mid_shard_is_retried_and_results_are_unchanged(cluster, workdir, local_values):
    study = _study(cluster, workdir, "killed")
    killed, originals = None, set()
    deadline = time.monotonic() + STUDY_S
    try:
        while killed is None and study.poll() is None and time.monotonic() < deadline:
            processes = cluster.descendants()
            for pid, command in processes.items():
                if command.startswith("ray::ExtractionWorker.extract"):  # inside a shard right now
                    originals = {p for p, c in processes.items() if c.startswith("ray::ExtractionWorker")}
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
                    break
            time.sleep(0.2)
    finally:
        summary, err = _finish(study)
    assert killed is not None, "no extraction worker was seen mid-shard"
    assert summary["failures"] == []
    rows = _same_results(workdir / "killed", local_values)
    assert all(r["placement"]["extracted"] for r in rows)
    store = workdir / "store-killed"
    assert _store_is_whole(store) == _store_is_whole(workdir / "store-local")
    pids = {json.loads(p.read_text())["pid"] for p in store.rglob("provenance.json")}
    assert pids - originals  # the killed worker's shard was redone by its restarted actor


def test_lost_node_is_reported_and_its_shards_go_to_the_other_node(cluster, workdir, local_values):
    """Last in this module: it takes the second raylet down for good."""
    study = _study(cluster, workdir, "lost")
    lost = False
    deadline = time.monotonic() + STUDY_S
    try:
        while not lost and study.poll() is None and time.monotonic() < deadline:
            if any(c.startswith("ray::ExtractionWorker.extract") for c in cluster.descendants(node=1).values()):
                cluster.kill_node(1)  # the whole second node, mid-shard
                lost = True
            time.sleep(0.2)
    finally:
        summary, err = _finish(study)
    assert lost, "no extraction worker of the second node was seen mid-shard"
    assert "lost the extraction worker on node" in err
    assert summary["failures"] == []
    _same_results(workdir / "lost", local_values)
    assert _store_is_whole(workdir / "store-lost") == _store_is_whole(workdir / "store-local")
    again, _ = _finish(_study(cluster, workdir, "lost"))  # the rerun on the one node left resumes: nothing to do
    assert again["new_results"] == 0 and again["forwarded_images"] == 0
