"""The HTML report and the `results` / `report` commands on a hand-made store whose numbers
are checked by hand: 3 tasks x layer {-1,-2,-3} x pooling {avg,max}, swept one at a time
around the Deep Standard (layer -1, avg)."""

from __future__ import annotations

import base64
import csv
import html
import json
import re
from html.parser import HTMLParser

import pytest

import transferlab.report as report_pkg
from transferlab.cli import main
from transferlab.errors import TransferlabError
from transferlab.report import build_report
from transferlab.report.tables import factor_table, summarise, task_infos
from transferlab.results.rows import ResultRow as _ResultRow
from transferlab.results.store import ResultStore


def ResultRow(*args, **kwargs) -> _ResultRow:  # noqa: N802 - a row scored on validation as on test
    value = args[4] if len(args) > 4 else kwargs.get("value")
    kwargs.setdefault("val_value", value)
    kwargs.setdefault("selection", "val")
    return _ResultRow(*args, **kwargs)

# task -> metric, {(layer, pooling): value}; (-1, "avg") is the Deep Standard.
STUDY = {
    "ukbench": ("ukb_score", {(-1, "avg"): 3.0, (-2, "avg"): 3.2, (-3, "avg"): 3.5, (-1, "max"): 2.9}),
    "voc2007": ("voc07_map", {(-1, "avg"): 0.60, (-2, "avg"): 0.70, (-3, "avg"): 0.65, (-1, "max"): 0.62}),
    "pets": ("mean_class_accuracy", {(-1, "avg"): 0.80, (-2, "avg"): 0.75, (-3, "avg"): 0.70, (-1, "max"): 0.84}),
}
# Plus, as the study runner writes it, the combined best-per-factor setting of voc2007
# (layer -2 + max, factors["sweep"] = "optimal"): 0.72.
# Hand-computed error reductions (err_std - err_opt) / err_std:
#   voc2007  err 0.40 -> 0.28             = 30.0%
#   pets     err 0.20 -> 0.16             = 20.0%
#   ukbench  err (4-3)/4=.25 -> (4-3.5)/4 = 50.0%
NAMES = {-1: "conv_head", -2: "blocks.6", -3: "blocks.5"}


def make_rows() -> list[ResultRow]:
    rows = []
    for task, (metric, values) in STUDY.items():
        for (layer, pooling), value in values.items():
            factors = {"layer": layer, "layer_name": NAMES[layer], "pooling": pooling, "normalisation": "l2",
                       "head": "probe", "sweep": "sweep"}  # fmt: skip
            rows.append(ResultRow("efficientnet_lite0", task, factors, metric, value, metrics={metric: value},
                                  standard=(layer, pooling) == (-1, "avg"), seconds={"fit": 0.5}))  # fmt: skip
    combined = {"layer": -2, "layer_name": "blocks.6", "pooling": "max", "normalisation": "l2", "head": "probe",
                "sweep": "optimal"}  # fmt: skip
    rows.append(ResultRow("efficientnet_lite0", "voc2007", combined, "voc07_map", 0.72))
    return rows


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("study")
    store = ResultStore(path, provenance={"config_hash": "feed", "versions": {"torch": "2.14.1"}, "git_commit": None,
                                          "seed": 0, "device": "cpu"})  # fmt: skip
    store.add_many(make_rows())
    store.set_meta("name", "hand-made study")
    store.set_meta("config", "name: hand-made study\ntasks: [voc2007, pets, ukbench]\n")
    store.close()
    return path


@pytest.fixture(scope="module")
def built(run_dir):
    path = build_report(run_dir)
    return path, path.read_text(encoding="utf-8")


class Tables(HTMLParser):
    """Every <table> as (class, rows of cell texts)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append((dict(attrs).get("class", ""), []))
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def tables_of(page: str, css_class: str) -> list[list[list[str]]]:
    parser = Tables()
    parser.feed(page)
    return [rows for cls, rows in parser.tables if cls == css_class]


def test_report_is_self_contained_with_embedded_pngs(built):
    path, page = built
    assert path.name == "report.html" and page.startswith("<!DOCTYPE html>")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # error-reduction bars + one plot per varying factor (layer, pooling) + the analysis section's
    assert len(images) >= 3
    assert 'id="factor-sweep"' not in page and 'id="factor-layer"' in page
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "<script" not in page and "<link" not in page and 'src="http' not in page
    assert "<style>" in page and "hand-made study" in page and "feed" in page


def test_standard_vs_optimal_table_numbers(built):
    (table,) = tables_of(built[1], "std-opt")
    body = {r[1]: r for r in table[1:]}
    assert [r[1] for r in table[1:]] == ["voc2007", "pets", "ukbench"]  # ordered by distance
    assert body["voc2007"][2:7] == ["voc07_map", "60.0", "72.0", "+12.0 (no interval)", "30.0%"]
    assert body["pets"][2:7] == ["mean_class_accuracy", "80.0", "84.0", "+4.0 (no interval)", "20.0%"]
    assert body["ukbench"][2:7] == ["ukb_score", "3.00", "3.50", "+0.50 (no interval)", "50.0%"]
    assert body["voc2007"][8] == "72.0"  # oracle: the same row here (validation = test in this store)
    assert body["voc2007"][7] == (
        "layer: -1 (conv_head) → -2 (blocks.6); pooling: avg → max [the combined best-per-factor setting]"
    )
    assert body["pets"][7] == "pooling: avg → max"
    assert body["voc2007"][0] == "image classification" and body["ukbench"][0] == "instance retrieval"


def test_best_factor_values_table(built):
    (table,) = tables_of(built[1], "best-factors")
    assert table[0] == ["factor", "image classification", "fine-grained recognition", "instance retrieval"]
    assert table[1] == ["voc2007 voc07_map", "pets mean_class_accuracy", "ukbench ukb_score"]
    rows = {r[0]: r[1:] for r in table[2:]}
    assert rows["representation layer"] == ["-2 (blocks.6)", "-1 (conv_head)", "-3 (blocks.5)"]
    assert rows["spatial pooling"] == ["max", "max", "avg"]
    assert rows["error reduction"] == ["30.0%", "20.0%", "50.0%"]
    assert "sweep" not in rows and "layer_name" not in " ".join(rows)  # descriptive keys, not factors
    assert "normalisation" not in rows  # one value in the whole study: listed as fixed instead
    assert "Held fixed in the whole study: source=efficientnet_lite0, normalisation=l2, head=probe." in built[1]


def test_factor_tables_hold_the_other_factors_at_standard(built):
    layer, pooling = tables_of(built[1], "factor-table")
    assert {r[0]: r[1:] for r in layer[2:]} == {
        "-1": ["60.0", "80.0", "3.00"], "-2": ["70.0", "75.0", "3.20"], "-3": ["65.0", "70.0", "3.50"],
    }  # fmt: skip
    assert {r[0]: r[1:] for r in pooling[2:]} == {"avg": ["60.0", "80.0", "3.00"], "max": ["62.0", "84.0", "2.90"]}
    assert "Other factors held at the Deep Standard configuration" in built[1]
    assert 'title="relative 1.167"' in built[1]  # ukbench layer -3: 3.5 / 3.0


def test_protocol_notes_and_csv(built, run_dir):
    page = built[1]
    from transferlab.evaluate import PROTOCOLS

    for metric in ("voc07_map", "mean_class_accuracy", "ukb_score"):
        assert html.escape(PROTOCOLS[metric]) in page
    records = list(csv.DictReader((run_dir / "results.csv").open()))
    assert len(records) == 13
    std = [r for r in records if r["task"] == "ukbench" and r["standard"] == "1"]
    assert len(std) == 1 and float(std[0]["value"]) == 3.0 and std[0]["factor.layer"] == "-1"


def test_extra_sections_and_a_failing_one(run_dir, monkeypatch, tmp_path):
    seen = {}

    def correlation(rows, meta):
        seen["rows"], seen["tasks"] = len(rows), meta["tasks"]
        return "<h2>Factor vs distance</h2><p>rho = 0.42</p>"

    def broken(rows, meta):
        raise ValueError("cannot <correlate>")

    monkeypatch.setattr(report_pkg, "sections", [broken, correlation, lambda rows, meta: None])
    monkeypatch.setattr(report_pkg, "section_modules", ["transferlab.no_such_module_for_sections"])
    page = build_report(run_dir).read_text()
    assert '<div class="error-box"><strong>report section broken failed' in page
    assert "ValueError: cannot &lt;correlate&gt;" in page
    assert "<p>rho = 0.42</p>" in page and '<a href="#extra-1">Factor vs distance</a>' in page
    assert page.index("rho = 0.42") < page.index('id="protocols"')  # the report went on
    assert seen["rows"] == 13 and seen["tasks"]["ukbench"]["distance"] > seen["tasks"]["voc2007"]["distance"]


def summary_rows(rows: list[ResultRow], meta=None):
    store_like = [{**r.__dict__, "created": i} for i, r in enumerate(rows)]
    tasks = task_infos(store_like, meta or {})
    return summarise(store_like, tasks)


def test_without_a_standard_row_each_value_takes_its_best_and_meta_orders_tasks():
    rows = [
        ResultRow("s", "mine", {"layer": -1, "pooling": "avg"}, "accuracy", 0.50),
        ResultRow("s", "mine", {"layer": -1, "pooling": "max"}, "accuracy", 0.58),
        ResultRow("s", "mine", {"layer": -2, "pooling": "avg"}, "accuracy", 0.55),
        ResultRow("s", "voc2007", {"layer": -1, "pooling": "avg"}, "voc07_map", 0.6, standard=True),
    ]
    meta = {"tasks": {"mine": {"distance": 0.5, "group": 3, "group_name": "fine-grained recognition"}}}
    summaries = summary_rows(rows, meta)
    assert [s.task.name for s in summaries] == ["mine", "voc2007"]
    mine = summaries[0]
    assert mine.standard is None and mine.optimal["value"] == 0.58 and mine.error_reduction is None
    table = factor_table("layer", summaries)
    assert table.modes == {"mine": "best", "voc2007": "standard"}
    assert table.cell("mine", -1).value == 0.58 and table.cell("mine", -2).value == 0.55
    assert table.cell("mine", -1).relative == 1.0  # no standard row: relative to Deep Optimal


def test_learning_factor_slices_ignore_the_source_name_and_free_the_snapshot():
    std = {"layer": -1, "pooling": "avg"}
    rows = [ResultRow("lite0", "voc2007", std, "voc07_map", 0.80, standard=True)]
    for width, snaps in (("small", {5: 0.60, 10: 0.64}), ("large", {5: 0.70, 10: 0.72})):
        for snap, value in snaps.items():
            rows.append(ResultRow(f"trained:{width}@{snap}", "voc2007", {**std, "width": width, "snapshot": snap},
                                  "voc07_map", value))  # fmt: skip
    rows.append(ResultRow("trained:large@10", "voc2007", {**std, "pooling": "max", "width": "large", "snapshot": 10},
                          "voc07_map", 0.79))  # other pooling: outside the standard slice  # fmt: skip
    table = factor_table("width", summary_rows(rows))
    assert table.modes == {"voc2007": "standard"} and table.free_factors == {"snapshot"}
    assert table.cell("voc2007", "small").value == 0.64 and table.cell("voc2007", "large").value == 0.72
    assert table.cell("voc2007", "large").relative == pytest.approx(0.9)


def test_cli_report_and_results(run_dir, capsys, tmp_path):
    assert main(["report", str(run_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"report": str(run_dir / "report.html"), "csv": str(run_dir / "results.csv"), "tasks": 3,
                   "results": 13, "older_results": 0}  # fmt: skip

    assert main(["results", str(run_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "fixed: source=efficientnet_lite0, normalisation=l2, head=probe"
    assert lines[1].split() == ["task", "layer", "pooling", "metric", "value", "[95%", "interval]", "val", "row"]
    assert lines[2].split() == ["voc2007", "-1", "avg", "voc07_map", "60.0", "60.0", "standard"]
    assert ["voc2007", "-2", "max", "voc07_map", "72.0", "72.0", "combined"] in [line.split() for line in lines]
    assert lines[-2].split()[:5] == ["ukbench", "-1", "max", "ukb_score", "2.90"]

    assert main(["results", str(run_dir), "--csv", "-", "--task", "pets"]) == 0
    records = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert sorted(float(r["value"]) for r in records) == [0.70, 0.75, 0.80, 0.84]

    assert main(["results", str(run_dir), "--csv", str(tmp_path / "all.csv")]) == 0
    assert len(list(csv.DictReader((tmp_path / "all.csv").open()))) == 13

    assert main(["results", str(run_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 13 and data[0]["config_hash"] == "feed"

    assert main(["results", str(tmp_path / "missing")]) == 2
    assert "no results here" in capsys.readouterr().err


def test_empty_store_is_a_clear_error(tmp_path):
    ResultStore(tmp_path).close()
    with pytest.raises(TransferlabError, match="no results yet"):
        build_report(tmp_path)


def test_plain_text_summary_skips_a_nan_result_as_the_report_does(tmp_path):
    from transferlab.report.summary import summary_table

    with ResultStore(tmp_path) as store:
        store.add_many([
            ResultRow("s", "digits", {"layer": -1, "pooling": "avg"}, "accuracy", float("nan")),
            ResultRow("s", "digits", {"layer": -1, "pooling": "max"}, "accuracy", 0.6, standard=True),
            ResultRow("s", "digits", {"layer": -2, "pooling": "max"}, "accuracy", 0.7),
        ])
        store.set_meta("standard", {"layer": -1, "pooling": "max"})
    line = summary_table(tmp_path).splitlines()[1].split()
    # standard 60.0 (%), optimal 70.0 (chosen on validation), no stored interval, reached at layer -2
    assert line[:4] == ["digits", "accuracy", "60.0", "70.0"] and line[-2:] == ["s,", "layer=-2"]
