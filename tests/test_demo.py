"""`transferlab demo --quick`: the offline study end to end, report included."""

from __future__ import annotations

import pytest

from transferlab.cli import main
from transferlab.results.store import ResultStore


@pytest.mark.slow
def test_quick_demo_runs_end_to_end_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "photo_copies" in printed and "report:" in printed
    rows = ResultStore(out).rows()
    expected = {"shape_attributes", "digits", "shape_relations", "photo_copies"}
    assert expected <= {r["task"] for r in rows}  # + the Fashion-MNIST tasks where the Debian package is installed
    page = (out / "report.html").read_text()
    assert "Deep Standard vs Deep Optimal" in page and "Factors versus distance" in page
    assert (out / "results.csv").read_text().count("\n") == len(rows) + 1
    # a smoke test, and its report says so: the quick test sets cannot tell configurations apart
    assert "too small to tell configurations apart" in page and "too small to tell configurations apart" in printed
    assert all(r["selection"] for r in rows) and all(r["low"] <= r["high"] for r in rows)
