"""Readers of the instance-retrieval benchmarks (Holidays, UKBench, Oxford/Paris/Sculptures,
revisited Oxford/Paris), on the publishers' real ground-truth files where we have them and on
tiny fixtures in the exact native layout. Every referenced image is a real 8x8 JPEG."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.data.readers._util import Problems
from transferlab.data.readers.holidays import read_holidays
from transferlab.data.readers.oxford import (
    PARIS_CORRUPT,
    read_oxford5k,
    read_paris6k,
    read_sculptures6k,
)
from transferlab.data.readers.revisited import read_roxford5k, read_rparis6k
from transferlab.data.readers.ukbench import read_ukbench
from transferlab.data.tasks import TASKS, load_task
from transferlab.errors import AnnotationError, TransferlabError

ANNOTATIONS = Path(
    os.environ.get("TRANSFERLAB_ANNOTATIONS", Path(__file__).resolve().parents[2] / "shared" / "annotations")
)
needs_real = pytest.mark.skipif(not ANNOTATIONS.is_dir(), reason=f"real annotation files not at {ANNOTATIONS}")


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 200)).save(buf, "JPEG")
    return buf.getvalue()


JPEG = _jpeg()


def write_images(folder: Path, names, ext: str = ".jpg") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}{ext}").write_bytes(JPEG)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def referenced_ids(gt_dir: Path) -> set[str]:
    """Every image id the Oxford-format ground truth names (queries lose their oxc1_)."""
    ids = set()
    for f in gt_dir.glob("*.txt"):
        for line in f.read_text().splitlines():
            if line.strip():
                ids.add(line.split()[0].removeprefix("oxc1_"))
    return ids


# ----------------------------------------------------------------------------- registry


def test_retrieval_tasks_registered_with_ranks_13_to_19():
    expected = {
        "holidays": "holidays_map", "ukbench": "ukb_score", "oxford5k": "oxford_map",
        "paris6k": "oxford_map", "sculptures6k": "oxford_map", "roxford5k": "revisited_map",
        "rparis6k": "revisited_map",
    }  # fmt: skip
    specs = [TASKS[name] for name in expected]
    assert {s.name: s.metric for s in specs} == expected
    assert sorted(s.distance for s in specs) == list(range(13, 20))
    assert all(s.group == 5 and s.kind == "retrieval" and not s.builtin for s in specs)
    # the paper's relative order of its five retrieval tasks
    order = [TASKS[n].distance for n in ("holidays", "ukbench", "oxford5k", "paris6k", "sculptures6k")]
    assert order == sorted(order)


def test_unknown_option_is_an_error(tmp_path):
    with pytest.raises(TransferlabError, match="unknown option.*allow_mising"):
        read_oxford5k(tmp_path, allow_mising=True)


# ----------------------------------------------------------------------------- Holidays


@needs_real
def test_holidays_real_image_list_official_counts(tmp_path):
    dat = tmp_path / "eval_holidays" / "holidays_images.dat"
    dat.parent.mkdir()
    shutil.copy(ANNOTATIONS / "holidays/eval_holidays/holidays_images.dat", dat)
    names = [line.strip()[:-4] for line in dat.read_text().splitlines() if line.strip()]
    write_images(tmp_path / "jpg", names)

    data = load_task("holidays", tmp_path)
    db = data.split("db")
    assert len(db) == 1491 and (db.labels == -1).all()
    assert len(data.queries) == 500
    assert sum(len(q.positives) for q in data.queries) == 991
    assert str(dat) in data.source_files
    first = data.queries[0]
    assert first.name == "100000" and first.db_index == 0 and first.box is None
    assert db.paths[0].endswith("jpg/100000.jpg")
    assert [Path(db.paths[i]).name for i in first.positives] == ["100001.jpg", "100002.jpg"]
    for q in data.queries:
        assert int(q.name) % 100 == 0
        assert Path(db.paths[q.db_index]).stem == q.name == Path(q.path).stem
        assert q.db_index not in q.positives
        assert {int(Path(db.paths[i]).stem) // 100 for i in q.positives} == {int(q.name) // 100}


def test_holidays_folder_only_and_image_folder_option(tmp_path):
    write_images(tmp_path / "jpg_rotated", ["100000", "100001", "100100", "100101", "100102"])
    write(tmp_path / "jpg_rotated" / "README.txt", "not an image")
    with pytest.raises(TransferlabError, match="Holidays image folder jpg/"):
        read_holidays(tmp_path)
    data = read_holidays(tmp_path, image_folder="jpg_rotated")
    assert [Path(p).name for p in data.split("db").paths] == [
        "100000.jpg", "100001.jpg", "100100.jpg", "100101.jpg", "100102.jpg"
    ]
    assert [(q.name, q.db_index, q.positives.tolist()) for q in data.queries] == [
        ("100000", 0, [1]), ("100100", 2, [3, 4])
    ]
    assert any("ignored 1 files" in n for n in data.notes)
    assert data.source_files == []


def test_holidays_list_names_missing_image_with_line(tmp_path):
    write_images(tmp_path / "jpg", ["100000", "100001"])
    dat = write(tmp_path / "eval_holidays" / "holidays_images.dat", "100000.jpg\n100001.jpg\n100002.jpg")
    with pytest.raises(AnnotationError, match=r"holidays_images\.dat:3: image 100002\.jpg is not among"):
        read_holidays(tmp_path)
    write(dat, "100000.jpg\n100001.png\n")
    with pytest.raises(AnnotationError, match=r"holidays_images\.dat:2: expected an image name"):
        read_holidays(tmp_path)


def test_holidays_group_without_query(tmp_path):
    write_images(tmp_path / "jpg", ["100000", "100001", "100101", "100102"])
    with pytest.raises(AnnotationError, match="group 1001 has no query image 100100.jpg"):
        read_holidays(tmp_path)
    problems = Problems(collect=True)
    data = read_holidays(tmp_path, problems=problems)
    assert len(data.queries) == 1 and len(problems.items) == 1


# ----------------------------------------------------------------------------- UKBench


def test_ukbench_official_count(tmp_path):
    folder = tmp_path / "full"
    write_images(folder, [f"ukbench{i:05d}" for i in range(1)])
    for i in range(1, 10200):
        os.link(folder / "ukbench00000.jpg", folder / f"ukbench{i:05d}.jpg")
    data = read_ukbench(tmp_path)
    assert len(data.split("db")) == 10200 and len(data.queries) == 10200
    last = data.queries[-1]
    assert last.name == "ukbench10199" and last.db_index == 10199
    assert last.positives.tolist() == [10196, 10197, 10198, 10199]


@pytest.mark.parametrize("sub", ["full", ".", "ukbench/full"])
def test_ukbench_layouts(tmp_path, sub):
    write_images(tmp_path / sub, [f"ukbench{i:05d}" for i in range(12)])
    data = read_ukbench(tmp_path, n_images=8)
    db = data.split("db")
    assert [Path(p).name for p in db.paths] == [f"ukbench{i:05d}.jpg" for i in range(8)]
    assert [q.db_index for q in data.queries] == list(range(8))
    assert data.queries[5].positives.tolist() == [4, 5, 6, 7]
    assert data.queries[0].positives.tolist() == [0, 1, 2, 3]
    assert any("4 further images" in n for n in data.notes)


def test_ukbench_missing_image_and_bad_count(tmp_path):
    write_images(tmp_path / "full", [f"ukbench{i:05d}" for i in range(8) if i != 6])
    with pytest.raises(AnnotationError, match=r"ukbench00006\.jpg is not among"):
        read_ukbench(tmp_path, n_images=8)
    problems = Problems(collect=True)
    data = read_ukbench(tmp_path, n_images=8, problems=problems)
    assert len(problems.items) == 1
    assert data.queries[4].positives.tolist() == [4, 5, 6]  # the group's 3 present images
    with pytest.raises(TransferlabError, match="multiple of 4"):
        read_ukbench(tmp_path, n_images=6)


# ----------------------------------------------------------------------------- Oxford 5k (real gt)


@needs_real
@pytest.mark.parametrize("layout", ["folders", "flat"])
def test_oxford5k_real_ground_truth(tmp_path, layout):
    real = ANNOTATIONS / "oxford5k"
    if layout == "folders":
        gt = tmp_path / "gt_files_170407"
        shutil.copytree(real / "gt_files_170407", gt)
        images = tmp_path / "oxbuild_images"
    else:  # both archives extracted flat into the root, as they come
        with tarfile.open(real / "gt_files_170407.tgz") as tar:
            tar.extractall(tmp_path, filter="data")
        gt = images = tmp_path
    ids = referenced_ids(gt)
    write_images(images, ids)

    data = read_oxford5k(tmp_path)
    db = data.split("db")
    assert len(data.queries) == 55
    assert len(db) == len(ids) == 845  # only the images the gt names; the full set is 5063
    assert sum(len(q.positives) for q in data.queries) == 1360 + 1480  # good + ok
    assert sum(len(q.junk) for q in data.queries) == 1495
    assert len(data.source_files) == 55 * 4
    names = [q.name for q in data.queries]
    assert names[:6] == ["all_souls_1", "all_souls_2", "all_souls_3", "all_souls_4", "all_souls_5", "ashmolean_1"]
    first = data.queries[0]
    assert first.box == (136.5, 34.1, 648.5, 955.7)
    assert Path(first.path).name == "all_souls_000013.jpg"  # oxc1_ prefix stripped
    assert db.paths[first.db_index] == first.path
    for q in data.queries:  # the Oxford protocol keeps the query in the database, in its own good or ok list
        assert q.db_index in q.positives
        assert not set(q.junk) & set(q.positives)


@needs_real
def test_paris6k_real_ground_truth_and_corrupt_images(tmp_path):
    shutil.copytree(ANNOTATIONS / "paris6k" / "paris_120310", tmp_path / "paris_120310")
    ids = referenced_ids(tmp_path / "paris_120310")
    for name in ids:
        write_images(tmp_path / "paris" / name.split("_")[1], [name])
    for name in PARIS_CORRUPT:  # the real archives hold these as HTML error pages
        path = tmp_path / "paris" / name.split("_")[1] / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"<html>302 Found</html>")

    data = read_paris6k(tmp_path)
    assert len(data.queries) == 55
    assert len(data.split("db")) == len(ids) == 3399
    assert sum(len(q.positives) for q in data.queries) == 8955  # the good files are empty
    assert sum(len(q.junk) for q in data.queries) == 8245
    assert not any(Path(p).stem in PARIS_CORRUPT for p in data.split("db").paths)
    assert any("dropped 20 of the 20 known corrupt" in n for n in data.notes)
    q = data.queries[0]
    assert (q.name, Path(q.path).name, q.box) == ("defense_1", "paris_defense_000605.jpg", (130.0, 17.0, 843.0, 732.0))
    assert all(qq.db_index in qq.positives for qq in data.queries)
    assert len(read_paris6k(tmp_path, drop_corrupt=False).split("db")) == 3399 + 20


# ----------------------------------------------------------------------------- Oxford-format fixtures

OX_IMAGES = ["all_souls_000013", "all_souls_000026", "all_souls_000051", "balliol_000051",
             "balliol_000187", "magdalen_000001", "oxford_002985"]  # fmt: skip


def oxford_fixture(root: Path) -> Path:
    gt = root / "gt_files_170407"
    write(gt / "all_souls_1_query.txt", "oxc1_all_souls_000013 136.5 34.1 648.5 955.7\n")
    write(gt / "all_souls_1_good.txt", "all_souls_000013\nall_souls_000026\n")
    write(gt / "all_souls_1_ok.txt", "oxford_002985\n")
    write(gt / "all_souls_1_junk.txt", "all_souls_000051\n")
    write(gt / "balliol_1_query.txt", "oxc1_balliol_000051 6.8 34.1 682.6 716.8\n")
    write(gt / "balliol_1_good.txt", "")
    write(gt / "balliol_1_ok.txt", "balliol_000187\r\n")
    write(gt / "balliol_1_junk.txt", "")
    write_images(root / "oxbuild_images", OX_IMAGES)
    return gt


def test_oxford5k_fixture(tmp_path):
    oxford_fixture(tmp_path)
    data = read_oxford5k(tmp_path)
    db = data.split("db")
    assert [Path(p).stem for p in db.paths] == OX_IMAGES and db.labels.tolist() == [-1] * 7
    a, b = data.queries
    assert (a.name, a.db_index, a.positives.tolist(), a.junk.tolist()) == ("all_souls_1", 0, [0, 1, 6], [2])
    assert a.box == (136.5, 34.1, 648.5, 955.7) and a.easy is None
    assert (b.name, b.db_index, b.positives.tolist(), b.junk.tolist()) == ("balliol_1", 3, [4], [])
    assert b.path == db.paths[3]
    assert any("gt_files_170407" in n for n in data.notes)


def test_oxford5k_missing_gt_file(tmp_path):
    gt = oxford_fixture(tmp_path)
    (gt / "all_souls_1_ok.txt").unlink()
    with pytest.raises(AnnotationError, match=r"all_souls_1_ok\.txt: file not found"):
        read_oxford5k(tmp_path)


@pytest.mark.parametrize(
    "line",
    ["oxc1_all_souls_000013 136.5 34.1 648.5", "oxc1_all_souls_000013 a 34.1 648.5 955.7",
     "oxc1_all_souls_000013 700 34.1 648.5 955.7"],
)  # fmt: skip
def test_oxford5k_unparsable_query_line(tmp_path, line):
    gt = oxford_fixture(tmp_path)
    write(gt / "all_souls_1_query.txt", f"{line}\n")
    with pytest.raises(AnnotationError, match=r"all_souls_1_query\.txt:1: expected '<image> x1 y1 x2 y2'") as info:
        read_oxford5k(tmp_path)
    assert info.value.line == 1


def test_oxford5k_listed_image_absent(tmp_path):
    oxford_fixture(tmp_path)
    (tmp_path / "oxbuild_images" / "oxford_002985.jpg").unlink()
    with pytest.raises(AnnotationError, match=r"all_souls_1_ok\.txt:1: image oxford_002985\.jpg is not among"):
        read_oxford5k(tmp_path)
    data = read_oxford5k(tmp_path, allow_missing=True)
    assert data.queries[0].positives.tolist() == [0, 1]
    assert any("allow_missing: 1 ground-truth entries" in n for n in data.notes)
    (tmp_path / "oxbuild_images" / "balliol_000051.jpg").unlink()
    with pytest.raises(AnnotationError, match=r"balliol_1_query\.txt:1: query image balliol_000051\.jpg"):
        read_oxford5k(tmp_path, allow_missing=True)


def test_oxford5k_collects_several_problems(tmp_path):
    gt = oxford_fixture(tmp_path)
    (gt / "all_souls_1_junk.txt").unlink()
    write(gt / "balliol_1_ok.txt", "balliol_000187\nballiol_000999\nbad line here\n")
    problems = Problems(collect=True)
    data = read_oxford5k(tmp_path, problems=problems)
    assert len(problems.items) == 3
    joined = "\n".join(problems.items)
    assert "all_souls_1_junk.txt: file not found" in joined
    assert "balliol_1_ok.txt:2: image balliol_000999.jpg is not among" in joined
    assert "balliol_1_ok.txt:3: expected one image id per line" in joined
    assert [q.name for q in data.queries] == ["balliol_1"] and data.queries[0].positives.tolist() == [4]


def test_oxford5k_no_ground_truth(tmp_path):
    write_images(tmp_path / "oxbuild_images", OX_IMAGES)
    with pytest.raises(TransferlabError, match=r"no \*_query\.txt"):
        read_oxford5k(tmp_path)


def paris_fixture(root: Path, nested: bool = True) -> None:
    gt = root / "paris_120310"
    write(gt / "defense_1_query.txt", "paris_defense_000605 130.000000 17.000000 843.000000 732.000000\n")
    write(gt / "defense_1_good.txt", "")
    write(gt / "defense_1_ok.txt", "paris_defense_000605\nparis_general_000001\n")
    write(gt / "defense_1_junk.txt", "paris_defense_000010\n")
    names = ["paris_defense_000605", "paris_defense_000010", "paris_general_000001", "paris_louvre_000001"]
    for name in names:
        write_images(root / ("paris/" + name.split("_")[1] if nested else "jpg"), [name])
    corrupt = root / ("paris/louvre" if nested else "jpg") / "paris_louvre_000136.jpg"
    corrupt.write_bytes(b"<html>302 Found</html>")


@pytest.mark.parametrize("nested", [True, False])
def test_paris6k_fixture(tmp_path, nested):
    paris_fixture(tmp_path, nested)
    data = read_paris6k(tmp_path)
    db = data.split("db")
    assert [Path(p).stem for p in db.paths] == [
        "paris_defense_000010", "paris_defense_000605", "paris_general_000001", "paris_louvre_000001"
    ]
    if nested:
        assert db.paths[2].endswith("paris/general/paris_general_000001.jpg")
    (q,) = data.queries
    assert (q.db_index, q.positives.tolist(), q.junk.tolist()) == (1, [1, 2], [0])
    assert any("dropped 1 of the 20" in n for n in data.notes)


def test_sculptures6k_fixture_split(tmp_path):
    base = tmp_path / "sculptures6k"
    write_images(base / "test", ["Rodin_Thinker_0001", "Rodin_Thinker_0002", "Henry_Moore_Arch_0003"])
    write_images(base / "train", ["Rodin_Thinker_0100", "Rodin_Thinker_0101"])
    for split, query, ok in (
        ("test", "Rodin_Thinker_0001", "Rodin_Thinker_0002"),
        ("train", "Rodin_Thinker_0100", "Rodin_Thinker_0101"),
    ):
        gt = tmp_path / f"gt_{split}"
        write(gt / "thinker_1_query.txt", f"{query} 1 2 30 40\n")
        write(gt / "thinker_1_good.txt", f"{query}\n")
        write(gt / "thinker_1_ok.txt", f"{ok}.jpg\n")
        write(gt / "thinker_1_junk.txt", "")
    data = read_sculptures6k(tmp_path)
    assert len(data.split("db")) == 3
    (q,) = data.queries
    assert Path(q.path).name == "Rodin_Thinker_0001.jpg" and q.positives.tolist() == [1, 2]
    train = read_sculptures6k(tmp_path, split="train")
    assert len(train.split("db")) == 2 and Path(train.queries[0].path).stem == "Rodin_Thinker_0100"
    with pytest.raises(TransferlabError, match="split must be"):
        read_sculptures6k(tmp_path, split="val")


# ----------------------------------------------------------------------------- revisited


def write_pickle(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))
    return path


def revisited_cfg(**changes):
    cfg = {
        "imlist": ["all_souls_000000", "all_souls_000001", "all_souls_000002", "ashmolean_000000"],
        "qimlist": ["all_souls_000013", "ashmolean_000007"],
        "gnd": [
            {"bbx": [136.5, 34.1, 648.5, 955.7], "easy": [1], "hard": [2], "junk": [0]},
            {"bbx": [18, 49, 761, 416], "easy": [3], "hard": [], "junk": []},
        ],
    }
    cfg.update(changes)
    return cfg


def roxford_fixture(root: Path, cfg=None) -> Path:
    base = root / "data" / "datasets" / "roxford5k"  # as revisitop's download.py lays it out
    pkl = write_pickle(base / "gnd_roxford5k.pkl", cfg if cfg is not None else revisited_cfg())
    write_images(base / "jpg", revisited_cfg()["imlist"] + revisited_cfg()["qimlist"])
    return pkl


def test_roxford5k_fixture(tmp_path):
    pkl = roxford_fixture(tmp_path)
    data = load_task("roxford5k", tmp_path)
    db = data.split("db")
    assert [Path(p).stem for p in db.paths] == revisited_cfg()["imlist"]
    a, b = data.queries
    assert a.name == "all_souls_000013" and Path(a.path).name == "all_souls_000013.jpg"
    assert a.box == (136.5, 34.1, 648.5, 955.7) and a.db_index is None
    assert (a.easy.tolist(), a.hard.tolist(), a.positives.tolist(), a.junk.tolist()) == ([1], [2], [1, 2], [0])
    assert (b.easy.tolist(), b.hard.tolist(), b.positives.tolist()) == ([3], [], [3])
    assert b.box == (18.0, 49.0, 761.0, 416.0)
    assert data.source_files == [str(pkl)]


def test_revisited_accepts_numpy_arrays(tmp_path):
    cfg = revisited_cfg()
    cfg["gnd"][0] = {
        "bbx": np.array([1.0, 2.0, 3.0, 4.0]),
        "easy": np.array([1]),
        "hard": np.array([2], dtype=np.int32),
        "junk": np.zeros(0, dtype=np.int64),
    }
    roxford_fixture(tmp_path, cfg)
    a = read_roxford5k(tmp_path).queries[0]
    assert a.box == (1.0, 2.0, 3.0, 4.0) and a.positives.tolist() == [1, 2] and a.junk.tolist() == []


def test_rparis6k_original_paris_layout(tmp_path):
    cfg = {
        "imlist": ["paris_defense_000000", "paris_eiffel_000001"],
        "qimlist": ["paris_defense_000605"],
        "gnd": [{"bbx": [1, 2, 3, 4], "easy": [], "hard": [1], "junk": [0]}],
    }
    write_pickle(tmp_path / "gnd_rparis6k.pkl", cfg)
    for name in cfg["imlist"] + cfg["qimlist"]:
        write_images(tmp_path / "paris" / name.split("_")[1], [name])
    data = read_rparis6k(tmp_path)
    assert data.split("db").paths[1].endswith("paris/eiffel/paris_eiffel_000001.jpg")
    (q,) = data.queries
    assert (q.positives.tolist(), q.hard.tolist(), q.junk.tolist()) == ([1], [1], [0])


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_revisited_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    roxford_fixture(tmp_path, revisited_cfg(imlist=_Exploit(marker)))
    with pytest.raises(
        AnnotationError, match=r"gnd_roxford5k\.pkl: not a safe ground-truth pickle \(refused to load global"
    ):
        read_roxford5k(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"gnd": None}, r"\[gnd\]: expected a list"),
        ({"qimlist": ["all_souls_000013"]}, r"\[gnd\]: 2 entries for 1 queries"),
        ({"imlist": "all_souls_000000"}, r"\[imlist\]: expected a list of image names"),
    ],
)
def test_revisited_malformed_pickle_names_key(tmp_path, changes, match):
    roxford_fixture(tmp_path, revisited_cfg(**changes))
    with pytest.raises(AnnotationError, match=match):
        read_roxford5k(tmp_path)


def test_revisited_missing_key_and_bad_entries(tmp_path):
    cfg = revisited_cfg()
    del cfg["gnd"]
    pkl = roxford_fixture(tmp_path, cfg)
    with pytest.raises(AnnotationError, match=r"gnd_roxford5k\.pkl \[gnd\]: missing key") as info:
        read_roxford5k(tmp_path)
    assert info.value.key == "gnd"
    cfg = revisited_cfg()
    cfg["gnd"][1]["easy"] = [7]
    write_pickle(pkl, cfg)
    with pytest.raises(AnnotationError, match=r"\[gnd\[1\]\['easy'\]\]: index 7 outside imlist"):
        read_roxford5k(tmp_path)
    cfg = revisited_cfg()
    cfg["gnd"][0]["bbx"] = [10, 10, 5, 20]
    write_pickle(pkl, cfg)
    with pytest.raises(AnnotationError, match=r"\[gnd\[0\]\['bbx'\]\]"):
        read_roxford5k(tmp_path)
    pkl.write_text("imlist: not a pickle\n")
    with pytest.raises(AnnotationError, match="cannot read pickle"):
        read_roxford5k(tmp_path)


def test_revisited_image_absent_and_collect(tmp_path):
    roxford_fixture(tmp_path)
    jpg = tmp_path / "data" / "datasets" / "roxford5k" / "jpg"
    (jpg / "all_souls_000001.jpg").unlink()
    with pytest.raises(AnnotationError, match=r"imlist\[1\] all_souls_000001\.jpg is not among"):
        read_roxford5k(tmp_path)
    data = read_roxford5k(tmp_path, allow_missing=True)  # dropped and re-indexed
    a = data.queries[0]
    assert len(data.split("db")) == 3 and (a.easy.tolist(), a.hard.tolist(), a.junk.tolist()) == ([], [1], [0])
    assert data.queries[1].easy.tolist() == [2]

    cfg = revisited_cfg()
    cfg["gnd"][0]["hard"] = "all"
    cfg["gnd"][1]["bbx"] = None
    write_pickle(jpg.parent / "gnd_roxford5k.pkl", cfg)
    (jpg / "ashmolean_000007.jpg").unlink()
    problems = Problems(collect=True)
    data = read_roxford5k(tmp_path, problems=problems)
    joined = "\n".join(problems.items)
    assert len(problems.items) == 4, joined
    assert "[gnd[0]['hard']]: expected a list of integer indices" in joined
    assert "[gnd[1]['bbx']]" in joined
    assert "imlist[1] all_souls_000001.jpg" in joined and "qimlist[1] ashmolean_000007.jpg" in joined
    assert data.queries == []
