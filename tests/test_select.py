"""`transferlab select`: scoring, ranking, agreement, bad input, and one end-to-end run on the
built-in digits task with a small random-init network (2 layers x 2 poolings, 2 probes)."""

from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
import pytest

from transferlab.cli import main
from transferlab.errors import TransferlabError
from transferlab.study.select import Candidate, agreement, rank, score_features


def test_agreement_by_hand():
    # scores rank a > b > c > d; values rank b > a > c > d: d = 1, -1, 0, 0 -> rho = 1 - 6*2/(4*15) = 0.8
    out = agreement([4.0, 3.0, 2.0, 1.0], [0.8, 0.9, 0.5, 0.1])
    assert out["spearman"] == pytest.approx(0.8)
    assert out["top1_hit"] is False  # best-scored a is not the best measured (b)
    assert out["top3_overlap"] == 3 and out["top_k"] == 3  # {a, b, c} both ways
    assert out["confirmed_best"] == 0.9 and out["regret"] == 0.0
    tie = agreement([3.0, 2.0, 1.0], [0.9, 0.9, 0.1])
    assert tie["top1_hit"] is True  # a tie for the best value counts
    swapped = agreement([1.0, 2.0, 3.0, 4.0], [0.8, 0.9, 0.5, 0.1])
    assert swapped["top3_overlap"] == 2 and swapped["top1_hit"] is False  # top3 by score {d, c, b}
    assert swapped["confirmed_best"] == 0.9 and swapped["regret"] == 0.0
    missed = agreement([4.0, 3.0, 2.0, 1.0], [0.1, 0.2, 0.3, 0.9])
    assert missed["confirmed_best"] == 0.3 and missed["regret"] == pytest.approx(0.6)
    assert agreement([1.0], [0.5]) is None
    few = agreement([1.0, 2.0], [0.5, 0.6])
    assert few["status"] != "ok" and math.isnan(few["spearman"]) and few["top1_hit"] is True


def test_rank_puts_nan_last():
    cands = [Candidate("s", -1, "a", "avg", score=math.nan), Candidate("s", -2, "b", "avg", score=0.1),
             Candidate("s", -3, "c", "avg", score=0.5)]  # fmt: skip
    assert [c.layer_name for c in rank(cands)] == ["c", "b", "a"]


def test_score_features_bad_input():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5))
    y = np.repeat(np.arange(3), 10)
    for score in ("logme", "knn1", "hscore"):
        value, caught = score_features(x, y, score)
        assert math.isfinite(value) and caught == []
        with pytest.raises(TransferlabError, match="single class"):
            score_features(x, np.zeros(30, dtype=np.int64), score)
        with pytest.raises(TransferlabError, match="images"):
            score_features(x[:3], np.arange(3), score)  # one image per class
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the warning is returned, not raised
            value, caught = score_features(np.ones((30, 5)), y, score)
        assert math.isnan(value) and any("zero variance" in m for m in caught)
    with pytest.raises(TransferlabError, match="unknown score"):
        score_features(x, y, "leep")


def test_select_refuses_bad_requests(capsys):
    assert main(["select", "--task", "photo_copies", "--quick", "--sources", "efficientnet_lite0"]) == 2
    assert "retrieval task" in capsys.readouterr().err
    assert main(["select", "--task", "digits", "--quick", "--sources", "efficientnet_lite0", "--pool", "windows"]) == 2
    assert "windows" in capsys.readouterr().err
    assert main(["select", "--task", "digits", "--quick", "--sources", "efficientnet_lite0", "--Cs", "0,1"]) == 2
    assert "--Cs" in capsys.readouterr().err


def test_select_end_to_end_on_digits(tmp_path, capsys):
    args = ["select", "--task", "digits", "--quick", "--sources", "timm:mobilenetv3_small_050", "--weights", "none",
            "--layers", "-2,-3", "--pool", "avg,grid2", "--confirm", "2", "--Cs", "0.1,1,10",
            "--cache", str(tmp_path), "--no-progress", "--json"]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "digits" and out["metric"] == "accuracy" and out["score"] == "logme"
    cands = out["candidates"]
    assert len(cands) == 4
    assert {(c["layer"], c["pooling"]) for c in cands} == {(-2, "avg"), (-2, "grid2"), (-3, "avg"), (-3, "grid2")}
    scores = [c["score"] for c in cands]
    assert all(isinstance(s, float) for s in scores) and scores == sorted(scores, reverse=True)
    probed = [c for c in cands if c["probe"] is not None]
    assert [c["rank"] for c in probed] == [1, 2]  # the top 2 by score, and only they, are probed
    assert all(0.0 <= c["probe"] <= 1.0 and c["C"] > 0 for c in probed)
    assert out["best"]["probe"] == max(c["probe"] for c in probed)
    grid = next(c for c in cands if (c["layer"], c["pooling"]) == (-2, "grid2"))
    avg = next(c for c in cands if (c["layer"], c["pooling"]) == (-2, "avg"))
    assert grid["dim"] == 4 * avg["dim"]  # 2x2 cells of the same channels
    assert set(out["seconds"]) == {"extract", "score", "probe"}
    assert out["forwarded_images"] > 0
    assert out["estimated_full_probe_seconds"] == pytest.approx(out["seconds"]["probe"] / 2 * 4)

    # second run: features come from the FeatureStore, the knn1 score ranks, every candidate is probed
    args = [a for a in args if a != "--json"]
    assert main([*args, "--score", "knn1", "--full"]) == 0
    text = capsys.readouterr().out
    assert "all from the FeatureStore" in text
    assert "probing all" not in text  # nothing left to estimate
    assert "confirmed by probes: best accuracy" in text
    assert "agreement with full probing over 4 candidates: Spearman" in text
    ranked = [line for line in text.splitlines() if line[:1].isdigit()]
    assert len(ranked) == 4 and all(re.search(r"0\.\d{4}\s+[01]\.\d{4}$", line) for line in ranked)
