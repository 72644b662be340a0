"""ResultStore: round trip, replace by job key, all-or-nothing batches, WAL, the run lock,
provenance, exports, and two writer processes at once."""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from transferlab.errors import TransferlabError
from transferlab.results.provenance import collect_provenance
from transferlab.results.rows import ResultRow, job_key_of
from transferlab.results.store import SCHEMA_VERSION, ResultStore

PROVENANCE = {
    "config_hash": "c0ffee",
    "versions": {"transferlab": "0.1.0", "torch": "2.14.1"},
    "git_commit": "abc1234",
    "seed": 7,
    "device": "cpu",
}


def row(task: str = "voc2007", value: float = 0.5, **factors) -> ResultRow:
    base = {"layer": -1, "pooling": "avg", "normalisation": "l2"}
    base.update(factors)
    return ResultRow("efficientnet_lite0", task, base, "voc07_map", value)


def test_round_trip_keeps_every_field_and_fills_provenance(tmp_path):
    store = ResultStore(tmp_path / "run", provenance=PROVENANCE)
    original = ResultRow(
        source="trained:runs/x@5",
        task="pets",
        factors={"layer": np.int64(-2), "pooling": "max", "pca": 0, "width": "small"},
        metric="mean_class_accuracy",
        value=0.8125,
        metrics={"mean_class_accuracy": 0.8125, "per_class": [1.0, float("nan"), 0.625]},
        standard=True,
        seconds={"extract": 1.5, "fit": 0.25},
        extra={"C": 0.1, "n_train": 40},
    )
    store.add(original)
    (got,) = store.rows()
    assert (
        got["job_key"]
        == original.job_key
        == job_key_of("trained:runs/x@5", "pets", {"layer": -2, "pooling": "max", "pca": 0, "width": "small"})
    )
    assert got["factors"] == {"layer": -2, "pooling": "max", "pca": 0, "width": "small"}
    assert (got["source"], got["task"], got["metric"], got["value"], got["standard"]) == (
        "trained:runs/x@5", "pets", "mean_class_accuracy", 0.8125, True,
    )  # fmt: skip
    assert got["metrics"]["per_class"][0] == 1.0 and math.isnan(got["metrics"]["per_class"][1])
    assert got["seconds"] == {"extract": 1.5, "fit": 0.25} and got["extra"] == {"C": 0.1, "n_train": 40}
    for key in ("config_hash", "versions", "git_commit", "seed", "device"):
        assert got[key] == PROVENANCE[key]
    assert abs(got["created"] - __import__("time").time()) < 60
    assert ResultRow.from_dict(got).job_key == original.job_key

    # A restarted study (new store on the same directory) sees what is done.
    again = ResultStore(tmp_path / "run")
    assert again.done_keys() == {original.job_key}
    assert again.has(original.job_key) and not again.has("nope")


def test_job_key_is_stable_and_depends_on_every_input():
    a = job_key_of("s", "t", {"layer": -1, "pooling": "avg"})
    assert a == job_key_of("s", "t", {"pooling": "avg", "layer": -1})  # key order does not matter
    assert len({a, job_key_of("s2", "t", {"layer": -1, "pooling": "avg"}),
                job_key_of("s", "t2", {"layer": -1, "pooling": "avg"}),
                job_key_of("s", "t", {"layer": -2, "pooling": "avg"})}) == 4  # fmt: skip
    assert row().job_key == job_key_of(
        "efficientnet_lite0", "voc2007", {"layer": -1, "pooling": "avg", "normalisation": "l2"}
    )


def test_same_job_key_replaces_the_row(tmp_path):
    store = ResultStore(tmp_path)
    store.add(row(value=0.25))
    store.add(row(value=0.75))
    store.add(row(value=0.5, layer=-2))
    assert store.count() == 2
    values = {r["factors"]["layer"]: r["value"] for r in store.rows()}
    assert values == {-1: 0.75, -2: 0.5}


def test_failure_inside_add_many_leaves_nothing(tmp_path):
    store = ResultStore(tmp_path)
    store.add(row(value=0.1, layer=-5))
    bad = row(value=0.9, layer=-3)
    bad.factors["pooling"] = object()  # not JSON-able: fails after two rows were inserted
    with pytest.raises(TransferlabError, match=r"result row 3 .*factors are not JSON-able"):
        store.add_many([row(value=0.2, layer=-1), row(value=0.3, layer=-2), bad])
    assert [r["value"] for r in store.rows()] == [0.1]
    # and the connection is usable afterwards
    store.add_many([row(value=0.2, layer=-1), row(value=0.3, layer=-2)])
    assert store.count() == 3


def test_bad_rows_are_named(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(
        TransferlabError, match=r"result row 1 \(efficientnet_lite0 on voc2007\): value 'high' is not a number"
    ):
        store.add(row(value="high"))
    with pytest.raises(TransferlabError, match="task must be a non-empty string"):
        store.add(ResultRow("s", "", {}, "map", 0.1))
    assert store.count() == 0


def test_nan_value_is_kept(tmp_path):
    store = ResultStore(tmp_path)
    store.add(row(value=float("nan")))
    assert math.isnan(store.rows()[0]["value"])
    assert json.loads(store.to_json())[0]["value"] is None


def test_wal_mode_schema_version_and_meta(tmp_path):
    store = ResultStore(tmp_path)
    store.add(row())
    with sqlite3.connect(tmp_path / "results.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    store.set_meta("tasks", {"voc2007": {"distance": 1}})
    store.set_meta("config", "name: x\n")
    store.set_meta("config", "name: y\n")
    assert store.get_meta("config") == "name: y\n"
    assert store.get_meta("missing", 3) == 3
    assert store.meta() == {"config": "name: y\n", "tasks": {"voc2007": {"distance": 1}}}


def test_newer_schema_and_foreign_files_are_refused(tmp_path):
    ResultStore(tmp_path / "a").close()
    with sqlite3.connect(tmp_path / "a" / "results.sqlite") as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(TransferlabError, match="newer transferlab"):
        ResultStore(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.sqlite").write_text("not a database at all, just text " * 100)
    with pytest.raises(TransferlabError, match="not a transferlab results database"):
        ResultStore(tmp_path / "b")
    with pytest.raises(TransferlabError, match="no results here"):
        ResultStore(tmp_path / "c", create=False)
    assert not (tmp_path / "c").exists()


_HOLDER = textwrap.dedent(
    """
    import sys
    from transferlab.results.store import ResultStore
    with ResultStore(sys.argv[1]).lock():
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


def _hold_lock(run_dir) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_study_is_refused_while_the_first_holds_the_lock(tmp_path):
    store = ResultStore(tmp_path)
    proc = _hold_lock(tmp_path)
    try:
        with pytest.raises(TransferlabError, match=rf"run directory .* is in use by another study \(pid {proc.pid}\)"):
            with store.lock():
                pass
    finally:
        proc.communicate("\n", timeout=30)
    with store.lock():  # released when the holder finished
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(TransferlabError, match="in use by another study"):
            with ResultStore(tmp_path).lock():  # not re-entrant, even in one process
                pass


def test_a_killed_study_leaves_no_stale_lock(tmp_path):
    proc = _hold_lock(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with ResultStore(tmp_path).lock():
        pass


def _write_many(run_dir: str, worker: int, n: int) -> None:
    store = ResultStore(run_dir)
    for i in range(n):
        store.add(ResultRow("s", "t", {"worker": worker, "i": i}, "map", i / n))


def test_two_writer_processes_both_complete(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path), w, 40)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    rows = ResultStore(tmp_path).rows()
    assert len(rows) == 80
    assert {(r["factors"]["worker"], r["factors"]["i"]) for r in rows} == {(w, i) for w in range(2) for i in range(40)}


def test_exports(tmp_path):
    store = ResultStore(tmp_path, provenance=PROVENANCE)
    first = row(value=0.5)
    first.metrics = {"voc07_map": 0.5, "per_class": [0.1, 0.9]}
    first.seconds = {"fit": 2.0}
    store.add_many([first, row(value=0.25, layer=-2, pca=64)])
    text = store.to_csv(tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_text() == text
    records = list(csv.DictReader(io.StringIO(text)))
    assert [r["value"] for r in records] == ["0.5", "0.25"]
    assert records[0]["factor.layer"] == "-1" and records[1]["factor.pca"] == "64" and records[0]["factor.pca"] == ""
    assert records[0]["metrics.voc07_map"] == "0.5" and "metrics.per_class" not in records[0]
    assert records[0]["seconds.fit"] == "2.0" and records[0]["config_hash"] == "c0ffee"
    header = text.splitlines()[0].split(",")
    assert header.index("factor.layer") < header.index("factor.pooling") < header.index("factor.pca")
    data = json.loads(store.to_json())
    assert data[0]["metrics"]["per_class"] == [0.1, 0.9] and data[1]["factors"]["pca"] == 64
    assert data[0]["created"].endswith("+00:00")


def test_collect_provenance(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prov = collect_provenance("h", 3, "cuda:0")
    assert prov["git_commit"] is None
    assert (prov["config_hash"], prov["seed"], prov["device"]) == ("h", 3, "cuda:0")
    assert set(prov["versions"]) == {"transferlab", "torch", "torchvision", "timm", "numpy", "sklearn"}
    assert prov["versions"]["numpy"] == np.__version__
    assert prov["versions"]["transferlab"]

    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "x"], cwd=tmp_path, check=True, env=env)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert collect_provenance("h", 3, "cpu")["git_commit"] == head


def test_print_json_is_strict_json_for_nan_and_numpy(capsys):
    import numpy as np

    from transferlab.commands._common import print_json

    print_json({"a": np.float32("nan"), "b": np.array([1.0, np.inf]), "c": (1, float("nan")), "d": np.int64(3)})
    assert json.loads(capsys.readouterr().out) == {"a": None, "b": [1.0, None], "c": [1, None], "d": 3}
