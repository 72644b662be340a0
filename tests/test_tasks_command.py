"""`transferlab tasks` and `transferlab tasks show`, through the real CLI entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest

from transferlab.cli import main
from transferlab.data.base import Query, Split, TaskData
from transferlab.data.tasks import TASKS, TaskSpec, all_tasks

try:
    from tests import fixtures_classification as fx
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    import fixtures_classification as fx

BENCHMARKS = [
    "voc2007", "mit67", "sun397", "sun_attributes", "apascal", "h3d", "pets", "cub", "flowers",
    "voc2012_actions", "stanford40", "visual_phrases",
]  # fmt: skip


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_is_nearest_first_with_every_column(capsys):
    code, out, _ = run(capsys, "tasks")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["rank", "name", "group", "kind", "metric"]
    ranks = [int(line.split()[0]) for line in lines[1:]]
    assert ranks == sorted(ranks)
    names = [line.split()[1] for line in lines[1:]]
    assert [n for n in names if n in BENCHMARKS] == BENCHMARKS
    row = next(line for line in lines if line.split()[1] == "cub")
    assert row.split()[:6] == ["8", "cub", "3", "fine-grained", "recognition", "single"]
    assert "accuracy" in row and "CUB_200_2011/" in row


def test_list_json(capsys):
    code, out, _ = run(capsys, "tasks", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == [s.name for s in all_tasks()]
    by_name = {r["name"]: r for r in rows}
    assert [by_name[n]["distance"] for n in BENCHMARKS] == list(range(1, 13))
    assert (
        by_name["voc2007"]["metric"] == "voc07_map" and by_name["voc2007"]["kind"] == "multilabel"
    )
    assert by_name["sun397"]["options"] == {"partition": 1, "extra_partitions": 0}
    assert by_name["h3d"]["group_name"] == "attribute detection"
    assert all(r["layout"] for r in rows)


def test_show_json_of_a_clean_folder(tmp_path, capsys):
    fx.make_pets(tmp_path)
    code, out, _ = run(capsys, "tasks", "show", "pets", "--root", str(tmp_path), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["task"] == "pets"
    assert summary["splits"] == {"train": 38, "test": 37}
    assert summary["classes"] == 37 and summary["queries"] == 0
    assert summary["problems"] == []
    assert summary["source_files"] == [
        str(tmp_path / "annotations/trainval.txt"),
        str(tmp_path / "annotations/test.txt"),
    ]


def test_show_text_lists_every_problem_and_fails(tmp_path, capsys):
    fx.make_cub(tmp_path)
    base = tmp_path / "CUB_200_2011"
    fx.write_lines(base / "train_test_split.txt", ["1 0", "2 1", "3 x", "4 0"])
    (base / "images" / fx.CUB_IMAGES[0]).unlink()
    code, out, _ = run(capsys, "tasks", "show", "cub", "--root", str(tmp_path))
    assert code == 1
    assert "splits   train 1, test 2" in out
    assert "classes  2" in out
    assert "3 problem(s):" in out
    assert f"{base / 'train_test_split.txt'}:3: image id 3" in out
    assert "class 002.Laysan_Albatross has no train image" in out
    assert f"{base / 'images' / fx.CUB_IMAGES[0]}: image listed in" in out
    assert f"  {base / 'images.txt'}" in out  # files used


def test_show_reports_missing_annotation_files_together(tmp_path, capsys):
    fx.make_flowers(tmp_path)
    (tmp_path / "setid.mat").unlink()
    code, out, _ = run(capsys, "tasks", "show", "flowers", "--root", str(tmp_path), "--json")
    summary = json.loads(out)
    assert code == 1 and summary["splits"] == {}
    assert summary["problems"] == [f"setid.mat not found under {tmp_path} (looked for setid.mat)"]


def test_show_of_an_empty_folder_is_a_problem_not_a_crash(tmp_path, capsys):
    code, out, _ = run(capsys, "tasks", "show", "voc2007", "--root", str(tmp_path), "--json")
    summary = json.loads(out)
    assert code == 1 and summary["splits"] == {} and summary["classes"] == 0
    assert summary["problems"] == [
        f"VOC2007 devkit folder not found under {tmp_path} (looked for VOCdevkit/VOC2007, VOC2007)"
    ]


def test_show_passes_reader_options(tmp_path, capsys):
    fx.make_sun397(tmp_path)
    code, out, _ = run(
        capsys, "tasks", "show", "sun397", "--root", str(tmp_path), "-o", "partition=2", "--json"
    )
    assert code == 0
    assert json.loads(out)["splits"] == {"train": 3, "test": 4}
    fx.make_cub(tmp_path / "c")
    code, out, _ = run(
        capsys, "tasks", "show", "cub", "--root", str(tmp_path / "c"), "-o", "crop=true"
    )
    assert code == 0 and "crops from bounding_boxes.txt" in out


def test_show_rejects_unknown_options_and_names(tmp_path, capsys):
    code, _, err = run(
        capsys, "tasks", "show", "sun397", "--root", str(tmp_path), "-o", "partitoin=2"
    )
    assert code == 2 and "unknown option(s) partitoin (accepted: extra_partitions, partition)" in err
    code, _, err = run(
        capsys, "tasks", "show", "sun397", "--root", str(tmp_path), "-o", "partition"
    )
    assert code == 2 and "expected KEY=VALUE" in err
    code, _, err = run(capsys, "tasks", "show", "no_such_task")
    assert code == 2 and "unknown task 'no_such_task'" in err


def test_show_benchmark_without_root_is_an_error(capsys):
    code, out, err = run(capsys, "tasks", "show", "mit67")
    assert code == 2 and out == ""
    assert "task mit67 needs --root" in err


def _builtin_reader(root, *, size: int = 3) -> TaskData:
    """A reader without a ``problems`` parameter, as a built-in task may have."""
    db = Split("db", [f"/img{i}.jpg" for i in range(size)], np.full(size, -1, dtype=np.int64))
    queries = [Query(path="/img0.jpg", positives=np.array([1]), db_index=0)]
    return TaskData(
        name="tiny_builtin", kind="retrieval", classes=[], splits={"db": db}, queries=queries
    )


def test_show_builtin_task_needs_no_root_and_counts_queries(monkeypatch, capsys):
    spec = TaskSpec(
        name="tiny_builtin", title="tiny", group=5, distance=99, kind="retrieval", metric="holidays_map",
        layout="built-in", reader=_builtin_reader, builtin=True,
    )  # fmt: skip
    monkeypatch.setitem(TASKS, "tiny_builtin", spec)
    code, out, _ = run(capsys, "tasks", "show", "tiny_builtin", "--json", "-o", "size=5")
    assert code == 0
    summary = json.loads(out)
    assert summary["splits"] == {"db": 5} and summary["queries"] == 1 and summary["root"] == ""
    code, out, _ = run(capsys, "tasks", "show", "tiny_builtin")
    assert code == 0 and "queries  1" in out and "no problems" in out


@pytest.mark.parametrize("argv", [["tasks", "--help"], ["tasks", "show", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "usage: transferlab tasks" in capsys.readouterr().out


def test_load_task_rejects_an_unknown_option_for_every_reader_kind(tmp_path):
    from transferlab.data.tasks import load_task
    from transferlab.errors import TransferlabError

    # keyword-only readers (voc2007) and built-ins used to raise a raw TypeError here
    for name, root in (("voc2007", tmp_path), ("sun397", tmp_path), ("digits", None)):
        with pytest.raises(TransferlabError, match=rf"task {name}: unknown option\(s\) partiton"):
            load_task(name, root, partiton=2)
