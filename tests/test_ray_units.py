"""Pieces of the Ray executor that run without a cluster: unit planning from the store,
shard provenance, row placement (local executor), the results-column migration and the
shared-store probe of one node."""

from __future__ import annotations

import sqlite3

import pytest

from transferlab.data.tasks import load_task
from transferlab.features.export import extract_task
from transferlab.features.store import FeatureStore, GroupKey
from transferlab.results.rows import ResultRow
from transferlab.results.store import ResultStore
from transferlab.sources import load_source
from transferlab.study.config import parse_config
from transferlab.study.ray_cluster import PROBE_DIR, probe_roots
from transferlab.study.ray_extract import plan_units
from transferlab.study.run import run_study

TINY = "timm:mobilenetv3_small_050"


def test_units_are_the_missing_shards_of_each_view(tmp_path):
    task = load_task("digits", None, quick=True)
    source = load_source(TINY, "none")
    store = FeatureStore(tmp_path / "features")
    execution = {"device": "cpu", "batch_size": 32, "on_bad_image": "error"}
    request = ([(TINY, "none")], task, [-1, -2], ["avg", "max"], ["orig", "flip"], str(store.root), execution)
    sources = {(TINY, "none"): source}
    before = plan_units([request], sources)
    assert {u.view for u in before} == {"orig", "flip"} and {u.split for u in before} == set(task.splits)
    assert sum(u.images for u in before) == 2 * sum(len(s) for s in task.splits.values())
    extract_task(source, task, [-1, -2], ["avg", "max"], ["orig"], store=store, device="cpu", progress=False)
    after = plan_units([request], sources)
    assert after and {u.view for u in after} == {"flip"}  # the orig shards are on disk now
    assert len(after) == len(before) - len(after)


def test_shard_provenance_round_trip(tmp_path):
    store = FeatureStore(tmp_path)
    key = GroupKey("s", "w", "{}", "orig", "d", 1200)  # three shards
    store.write_provenance(key, 1, {"node_id": "n1", "hostname": "h", "device": "cpu"})
    found = store.provenance(key)
    assert found == {0: None, 1: {"device": "cpu", "hostname": "h", "node_id": "n1"}, 2: None}


def test_local_rows_record_where_features_were_extracted_and_evaluated(tmp_path):
    config = parse_config({"name": "placement", "sources": [{"spec": TINY, "weights": "none"}], "tasks": ["digits"],
                           "quick": True, "optimal": False,
                           "factors": {"layers": [-1], "pooling": ["avg"], "pca_dims": [0]}})
    summary = run_study(config, tmp_path / "run", cache=str(tmp_path / "features"), progress=False)
    assert summary.failures == [] and summary.new_results >= 1
    rows = ResultStore(tmp_path / "run").rows()
    for row in rows:
        (where,) = row["placement"]["extracted"]
        assert where["node_id"] is None and where["hostname"] and where["device"] == "cpu"
        assert where["shards"] == len(load_task("digits", None, quick=True).splits)  # one shard per split
        assert row["placement"]["evaluated"]["hostname"] == where["hostname"]
    assert "placement" in ResultStore(tmp_path / "run").to_csv().splitlines()[0]


def test_results_made_before_the_placement_column_still_open(tmp_path):
    path = tmp_path / "results.sqlite"
    with sqlite3.connect(path) as conn:  # the schema before placement existed
        conn.executescript("""
            CREATE TABLE schema_version (version INTEGER NOT NULL);
            INSERT INTO schema_version VALUES (1);
            CREATE TABLE results (job_key TEXT PRIMARY KEY, source TEXT NOT NULL, task TEXT NOT NULL,
                factors TEXT NOT NULL, metric TEXT NOT NULL, value REAL, metrics TEXT NOT NULL,
                standard INTEGER NOT NULL, seconds TEXT NOT NULL, extra TEXT NOT NULL, config_hash TEXT,
                versions TEXT, git_commit TEXT, seed INTEGER, device TEXT, created REAL NOT NULL);
            INSERT INTO results VALUES ('k', 's', 't', '{}', 'accuracy', 0.5, '{}', 0, '{}', '{}',
                NULL, NULL, NULL, 0, 'cpu', 1.0);
        """)
    with ResultStore(tmp_path) as store:
        assert store.rows()[0]["placement"] == {}
        store.add(ResultRow("s", "t", {"layer": -1}, "accuracy", 0.7, placement={"evaluated": {"node_id": "n"}}))
        assert {r["job_key"]: r["placement"] for r in store.rows()}["k"] == {}
        assert any(r["placement"] == {"evaluated": {"node_id": "n"}} for r in store.rows())


def test_probe_names_the_root_a_node_cannot_see(tmp_path):
    shared, elsewhere = tmp_path / "shared", tmp_path / "elsewhere"
    (shared / PROBE_DIR).mkdir(parents=True)
    (shared / PROBE_DIR / "tok.driver").write_text("tok")
    assert probe_roots([str(shared)], "tok", "node1") == []
    assert (shared / PROBE_DIR / "tok.node1").read_text() == "node1"
    (problem,) = probe_roots([str(elsewhere)], "tok", "node1")
    assert str(elsewhere) in problem and "not visible" in problem
    (shared / PROBE_DIR / "tok.driver").write_text("another driver")
    (problem,) = probe_roots([str(shared)], "tok", "node1")
    assert "not the same storage" in problem


def test_unreachable_cluster_is_one_clear_error():
    pytest.importorskip("ray")
    from transferlab.errors import TransferlabError
    from transferlab.study.executors import RayExecutor

    with pytest.raises(TransferlabError, match="cannot reach Ray at 127.0.0.1"):
        RayExecutor(address=f"127.0.0.1:{_closed_port()}")


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_units_are_dealt_round_robin_and_the_tail_is_not_committed_early():
    """Longest units first, one per worker in turn; a second unit queues behind a running one
    only while more than DEPTH units per worker wait. With 6 units on 2 workers, committing
    two each up front put the two longest on one worker (900 vs 700 images of 1600)."""
    from transferlab.study.ray_extract import DEPTH, _Slot, dispatch_order

    a, b = _Slot(actor=None, node_id="a", ip="1"), _Slot(actor=None, node_id="b", ip="2")
    assert dispatch_order([a, b], 6) == [a, b]  # the tail: one each
    assert dispatch_order([a, b], 20) == [a, b] * DEPTH  # a long queue: DEPTH each, alternating
    a.inflight = 1
    assert dispatch_order([a, b], 3) == [b]  # a is busy: the free worker takes the next unit
    b.alive = False
    assert dispatch_order([a, b], 10) == [a]  # a lost worker gets nothing
    assert dispatch_order([a, b], 0) == []
