"""One retrieval pipeline: the study, `transferlab retrieve` and Python give the same numbers;
DBA and alpha-QE from a study config are keyed and change the result; bad values are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from transferlab.cli import main
from transferlab.errors import TransferlabError
from transferlab.heads.retrieval import RetrievalSettings, retrieve
from transferlab.results.store import ResultStore
from transferlab.study.config import parse_config
from transferlab.study.plan import make_plan
from transferlab.study.run import run_study

# a small random-init ConvNet: real forward passes, fast
TINY = {"spec": "timm:mobilenetv3_small_050", "weights": "none"}
BASE = {"name": "ret", "sources": [TINY], "tasks": ["photo_copies"], "quick": True, "optimal": False}


def study_rows(tmp_path, name: str, retrieval: dict, **changes) -> list[dict]:
    config = parse_config({**BASE, "retrieval": retrieval, **changes})
    summary = run_study(config, tmp_path / name, cache=str(tmp_path / "store"), progress=False)
    assert not summary.failures
    with ResultStore(tmp_path / name, create=False) as store:
        return sorted(store.rows(), key=lambda r: r["factors"]["qe"])


def run_json(capsys, argv) -> dict:
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_study_cli_and_python_give_the_same_numbers(tmp_path, capsys):
    from transferlab.data.tasks import get_task, load_task
    from transferlab.evaluate import evaluate_retrieval
    from transferlab.features.export import extract_task
    from transferlab.features.store import FeatureStore
    from transferlab.sources import load_source

    rows = study_rows(tmp_path, "run", {"qe": [0, 5], "dba": 3, "alpha": 3.0})
    assert [r["factors"]["qe"] for r in rows] == [0, 5]
    task = load_task("photo_copies", quick=True)
    metric = get_task("photo_copies").metric
    source = load_source(TINY["spec"], TINY["weights"])
    features = extract_task(source, task, [-1], ["avg"], ["orig"], store=FeatureStore(tmp_path / "store"),
                            progress=False)
    layer = features.layers[0]
    db = features.splits["db"].get(layer, "avg", "orig")
    queries = features.splits["queries"].get(layer, "avg", "orig")
    for row in rows:
        qe = row["factors"]["qe"]
        assert row["extra"]["dba"] == 3 and row["extra"]["alpha"] == 3.0
        cli = run_json(capsys, ["retrieve", "--source", TINY["spec"], "--weights", "none", "--task", "photo_copies",
                                "--quick", "--qe", str(qe), "--dba", "3", "--alpha", "3",
                                "--cache", str(tmp_path / "store"), "--no-progress", "--json"])
        ranking = retrieve(queries, db, RetrievalSettings(qe=qe, dba=3, alpha=3.0), postprocess="l2")
        python = evaluate_retrieval(metric, ranking, task.queries, len(task.splits["db"]))[metric]
        # the study reports the queries not held out for selection; "official" is over all of them
        assert row["metrics"]["official"] == cli["value"] == python
        assert cli["config"]["pipeline"] == row["extra"]["pipeline"]
    assert rows[0]["metrics"]["official"] != rows[1]["metrics"]["official"]


def test_dba_and_alpha_in_a_study_config_change_values_and_keys(tmp_path):
    plain = study_rows(tmp_path, "plain", {"qe": [5]})
    dba = study_rows(tmp_path, "dba", {"qe": [5], "dba": 3})
    alpha = study_rows(tmp_path, "alpha", {"qe": [5], "alpha": 3.0})
    for rows in (plain, dba, alpha):
        assert [r["factors"]["qe"] for r in rows] == [5]
    (p,), (d,), (a,) = plain, dba, alpha
    assert len({p["job_key"], d["job_key"], a["job_key"]}) == 3
    assert p["factors"] == d["factors"] == a["factors"]  # only the retrieval settings differ
    assert d["metrics"]["official"] != p["metrics"]["official"]
    assert a["metrics"]["official"] != p["metrics"]["official"]
    assert "DBA 3" in d["extra"]["pipeline"] and "alpha-QE 5 (alpha 3)" in a["extra"]["pipeline"]
    assert p["extra"]["pipeline"] == "l2 -> cosine rank -> AQE 5 -> re-rank"


def test_dba_and_alpha_are_part_of_the_result_key():
    def keys(retrieval: dict) -> set[str]:
        return set(make_plan(parse_config({**BASE, "retrieval": retrieval}), check_layers=False).current_keys())

    base = keys({"dba": 0})
    assert base == keys({})  # the defaults: dba 0, plain means
    assert not base & keys({"dba": 3})
    assert not base & keys({"alpha": 3.0})
    assert not keys({"dba": 3}) & keys({"dba": 3, "alpha": 3.0})


@pytest.mark.parametrize("retrieval, key", [
    ({"dba": -1}, "retrieval.dba"), ({"dba": 1.5}, "retrieval.dba"), ({"alpha": 0}, "retrieval.alpha"),
    ({"alpha": -2}, "retrieval.alpha"), ({"alpha": float("inf")}, "retrieval.alpha"),
])
def test_bad_retrieval_values_are_one_line_naming_the_key(retrieval, key):
    with pytest.raises(TransferlabError) as info:
        parse_config({**BASE, "retrieval": retrieval}, "study.yaml")
    header, *lines = str(info.value).splitlines()
    assert header == "invalid study config" and len(lines) == 1
    assert lines[0].startswith(f"study.yaml: {key}: ")


def test_spatial_search_key_points_to_the_windows_pooling():
    with pytest.raises(TransferlabError, match="pooling 'windows'"):
        parse_config({**BASE, "retrieval": {"spatial_search": True}})


def test_bad_cli_values_are_one_line(capsys):
    argv = ["retrieve", "--source", TINY["spec"], "--weights", "none", "--task", "photo_copies", "--quick"]
    for extra, word in ((["--dba", "-1"], "--dba"), (["--alpha", "0"], "--alpha"), (["--alpha", "x"], "--alpha")):
        with pytest.raises(SystemExit) as info:
            main(argv + extra)
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert word in err[-1]
    for extra, word in ((["--qe", "2"], "qe (2)"), (["--dba", "3"], "dba (3)")):
        assert main(argv + ["--spatial-search", *extra, "--layer", "-2", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "spatial search" in err and word in err


def test_python_settings_are_checked():
    for bad, word in (({"dba": -1}, "dba"), ({"qe": -1}, "qe"), ({"alpha": -1.0}, "alpha"),
                      ({"metric": "dot"}, "metric"), ({"spatial": True, "qe": 2}, "spatial search")):
        with pytest.raises(TransferlabError, match=word):
            RetrievalSettings(**bad)
    q = np.eye(3, dtype=np.float32)
    with pytest.raises(TransferlabError, match="unknown setting 'dbb'"):
        retrieve(q, q, dbb=2)
    with pytest.raises(TransferlabError, match="fit_on"):
        retrieve(q, q, fit_on=q)
    with pytest.raises(TransferlabError, match="spatial"):
        retrieve(q, q, db_mask=np.ones((3, 1), dtype=bool))


def test_pipeline_order_and_settings_object_agree():
    from transferlab.features.postprocess import build_postprocess, l2_normalize
    from transferlab.heads.expansion import database_augmentation, expand_queries
    from transferlab.heads.ranking import rank

    rng = np.random.default_rng(0)
    db = rng.standard_normal((40, 6)).astype(np.float32)
    q = rng.standard_normal((5, 6)).astype(np.float32)
    held = rng.standard_normal((30, 6)).astype(np.float32)
    post = build_postprocess("l2,pcaw4,l2").fit(held)
    qp, dp = l2_normalize(post.transform(q)), l2_normalize(post.transform(db))
    aug = database_augmentation(dp, 3, 2.0, device="cpu")
    first = rank(qp, aug, top_k=4, device="cpu")
    by_hand = rank(expand_queries(qp, aug, first, 4, 2.0, device="cpu"), aug, device="cpu")
    settings = RetrievalSettings(dba=3, qe=4, alpha=2.0)
    out = retrieve(q, db, settings, postprocess="l2,pcaw4,l2", fit_on=held, device="cpu")
    assert out.tolist() == by_hand.tolist()
    assert retrieve(q, db, dba=3, qe=4, alpha=2.0, postprocess=post, device="cpu").tolist() == by_hand.tolist()
    assert settings.describe("l2,pcaw4,l2") == \
        "l2,pcaw4,l2 -> alpha-DBA 3 (alpha 2) -> cosine rank -> alpha-QE 4 (alpha 2) -> re-rank"


@pytest.mark.slow  # ~20 s: sub-window features of a second layer
def test_spatial_search_rows_in_a_grid_study_and_the_report(tmp_path, capsys):
    from transferlab.report.html import build_report

    rows = study_rows(tmp_path, "grid", {"qe": [0, 2], "dba": 3}, sweep="grid",
                      factors={"layers": [-2], "pooling": ["avg", "windows"]})
    settings = sorted((r["factors"]["pooling"], r["factors"]["qe"]) for r in rows)
    assert settings == [("avg", 0), ("avg", 2), ("windows", 0)]  # QE never expands sub-windows
    (spatial,) = [r for r in rows if r["factors"]["pooling"] == "windows"]
    assert spatial["extra"]["pipeline"] == "l2 -> l2 per window -> spatial search" and spatial["extra"]["dba"] == 0
    cli = run_json(capsys, ["retrieve", "--source", TINY["spec"], "--weights", "none", "--task", "photo_copies",
                            "--quick", "--layer", "-2", "--spatial-search", "--cache", str(tmp_path / "store"),
                            "--no-progress", "--json"])
    assert cli["value"] == spatial["metrics"]["official"]
    page = build_report(tmp_path / "grid").read_text()
    assert "Retrieval pipeline" in page and "DBA 3, plain means (AQE)" in page and "DBA off" in page


def test_spatial_pipeline_post_processes_every_window():
    from transferlab.features.postprocess import build_postprocess, l2_normalize
    from transferlab.heads.spatial import spatial_search_rank

    rng = np.random.default_rng(1)
    qw = rng.standard_normal((4, 3, 8)).astype(np.float32)
    dw = rng.standard_normal((12, 5, 8)).astype(np.float32)
    held = rng.standard_normal((10, 5, 8)).astype(np.float32)
    valid = rng.random((12, 5)) > 0.3
    valid[:, 0] = True

    def by_hand(fit_rows):
        post = build_postprocess("l2,pcaw4,l2").fit(fit_rows)
        q = l2_normalize(post.transform(qw.reshape(-1, 8)).reshape(4, 3, 4))
        d = l2_normalize(post.transform(dw.reshape(-1, 8)).reshape(12, 5, 4))
        return spatial_search_rank(q, d, db_mask=valid, device="cpu").tolist()

    out = retrieve(qw, dw, spatial=True, postprocess="l2,pcaw4,l2", fit_on=held, db_mask=valid, device="cpu")
    assert out.tolist() == by_hand(held.reshape(-1, 8))
    # without a held-out set the spec is fit on the database's valid windows, never the masked ones
    out = retrieve(qw, dw, spatial=True, postprocess="l2,pcaw4,l2", db_mask=valid, device="cpu")
    assert out.tolist() == by_hand(dw[valid])
