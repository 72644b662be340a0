"""Readers of the 12 classification / attribute / compositional benchmarks.

(a) the publishers' real annotation files (copied into a temporary folder in the native
layout, with a tiny JPEG for every listed image) give the official counts;
(b) a tiny folder per benchmark, in its exact native layout, gives hand-checked splits,
labels and boxes; (c) broken folders give errors naming the file and line / key, and
``Problems(collect=True)`` lists several problems at once.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from transferlab.data.readers._util import Problems
from transferlab.data.tasks import get_task, load_task
from transferlab.errors import AnnotationError, TransferlabError

try:
    from tests import fixtures_classification as fx
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    import fixtures_classification as fx

REAL = fx.REAL_ANNOTATIONS
needs_real = pytest.mark.skipif(
    not REAL.is_dir(), reason=f"real annotation files not found at {REAL}"
)


def collect(name: str, root: Path, **options):
    problems = Problems(collect=True)
    task = load_task(name, root, problems=problems, **options)
    return task, problems.items


# =========================================================================== (a) real files


@needs_real
def test_real_voc2007_official_counts(tmp_path):
    shutil.copytree(REAL / "voc2007", tmp_path, dirs_exist_ok=True)
    main = tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    ids = [
        line.strip()
        for name in ("trainval.txt", "test.txt")
        for line in (main / name).read_text().split()
    ]
    fx.write_images(tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages" / f"{i}.jpg" for i in ids)

    task = load_task("voc2007", tmp_path)
    assert (len(task.split("train")), len(task.split("test"))) == (5011, 4952)
    train, test = task.split("train"), task.split("test")
    k = {c: i for i, c in enumerate(task.classes)}
    assert train.labels.dtype == np.int8 and train.labels.shape == (5011, 20)
    # official VOC2007 statistics (images with at least one non-difficult object)
    assert (train.labels[:, k["aeroplane"]] == 1).sum() == 238
    assert (test.labels[:, k["aeroplane"]] == 1).sum() == 204
    assert (train.labels[:, k["person"]] == 1).sum() == 2008
    assert (test.labels[:, k["person"]] == 1).sum() == 2007
    assert (train.labels[:, k["car"]] == 1).sum() == 713
    assert (test.labels[:, k["car"]] == 1).sum() == 721
    assert set(np.unique(train.labels)) == {-1, 0, 1}
    assert train.paths[0].endswith("VOC2007/JPEGImages/000005.jpg")
    assert len(task.source_files) == 2 * 21

    with_val = load_task("voc2007", tmp_path, use_val=True)
    assert {k: len(v) for k, v in with_val.splits.items()} == {
        "train": 2501,
        "val": 2510,
        "test": 4952,
    }


@needs_real
def test_real_mit67_official_counts(tmp_path):
    for name in ("TrainImages.txt", "TestImages.txt"):
        shutil.copy(REAL / "mit_indoor67" / name, tmp_path / name)
    rels = [
        line for name in ("TrainImages.txt", "TestImages.txt")
        for line in (tmp_path / name).read_text().split("\n") if line
    ]  # fmt: skip
    fx.write_images(tmp_path / "Images" / rel for rel in rels)

    task = load_task("mit67", tmp_path)
    train, test = task.split("train"), task.split("test")
    assert (len(train), len(test)) == (5360, 1340)
    assert len(task.classes) == 67
    counts = np.bincount(train.labels, minlength=67)
    assert counts.min() >= 77 and counts.max() <= 83
    assert (
        str(tmp_path / "Images" / "laundromat" / "laundry room.jpg") in test.paths
    )  # a name with a space
    assert str(tmp_path / "Images" / "gameroom" / "bt_132294gameroom2.jpg") == train.paths[0]
    assert not set(train.paths) & set(test.paths)


@needs_real
def test_real_sun397_training_partition(tmp_path):
    # Only Training_01.txt is available; Testing_01.txt below is a synthetic stand-in (one
    # image per class, same path format) so that the reader has both files.
    partitions = tmp_path / "Partitions"
    partitions.mkdir()
    shutil.copy(REAL / "sun397" / "Partitions" / "Training_01.txt", partitions / "Training_01.txt")
    train_rel = (partitions / "Training_01.txt").read_text().split()
    classes = sorted({rel.rsplit("/", 1)[0] for rel in train_rel})
    fx.write_lines(partitions / "Testing_01.txt", [f"{c}/sun_standin_test.jpg" for c in classes])
    fx.write_images(tmp_path / "SUN397" / rel.lstrip("/") for rel in train_rel)
    fx.write_images(tmp_path / "SUN397" / c.lstrip("/") / "sun_standin_test.jpg" for c in classes)

    task = load_task("sun397", tmp_path)
    train = task.split("train")
    assert len(train) == 19850 and len(task.classes) == 397
    assert np.bincount(train.labels).tolist() == [50] * 397
    assert task.classes[0] == "/a/abbey" and train.paths[0] == str(
        tmp_path / "SUN397/a/abbey/sun_aqswjsnjlrfzzhiz.jpg"
    )
    assert train.paths[-1].endswith("SUN397/y/youth_hostel/sun_ammfvvfoiqxeovyl.jpg")
    assert any("no ClassName.txt" in note for note in task.notes)


@needs_real
def test_real_cub_official_counts_and_boxes(tmp_path):
    shutil.copytree(REAL / "cub200_2011", tmp_path, dirs_exist_ok=True)
    base = tmp_path / "CUB_200_2011"
    rels = [
        line.split(" ", 1)[1] for line in (base / "images.txt").read_text().splitlines() if line
    ]
    fx.write_images(base / "images" / rel for rel in rels)

    task = load_task("cub", tmp_path, crop=True)
    train, test = task.split("train"), task.split("test")
    assert (len(train), len(test)) == (5994, 5794)
    assert len(task.classes) == 200 and task.classes[0] == "001.Black_footed_Albatross"
    assert (
        np.bincount(train.labels, minlength=200).min() > 0
        and np.bincount(test.labels, minlength=200).min() > 0
    )
    # image 1 is a test image: box "60.0 27.0 325.0 304.0" (x, y, w, h) -> (60, 27, 385, 331)
    assert test.paths[0].endswith("001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg")
    assert test.boxes[0] == (60.0, 27.0, 385.0, 331.0)
    assert load_task("cub", tmp_path).split("train").boxes is None


@needs_real
def test_real_flowers_official_counts(tmp_path):
    for name in ("imagelabels.mat", "setid.mat"):
        shutil.copy(REAL / "flowers102" / name, tmp_path / name)
    fx.write_images(tmp_path / "jpg" / f"image_{i:05d}.jpg" for i in range(1, 8190))

    task = load_task("flowers", tmp_path)
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 1020, "val": 1020, "test": 6149}
    assert len(task.classes) == 102
    assert np.bincount(task.split("train").labels).tolist() == [10] * 102
    assert np.bincount(task.split("val").labels).tolist() == [10] * 102
    all_paths = [p for s in task.splits.values() for p in s.paths]
    assert len(set(all_paths)) == 8189


# =========================================================================== (b) tiny native layouts


def test_voc2007_tiny(tmp_path):
    task = load_task("voc2007", fx.make_voc2007(tmp_path))
    expected = fx.voc07_labels()
    train, test = task.split("train"), task.split("test")
    assert train.paths == [
        str(tmp_path / "VOCdevkit/VOC2007/JPEGImages" / f"{i}.jpg") for i in expected["trainval"]
    ]
    assert train.labels.tolist() == list(expected["trainval"].values())
    assert test.labels.tolist() == list(expected["test"].values())
    assert train.labels[0, 0] == 0 and test.labels[2, 19] == 0
    assert task.kind == "multilabel" and task.classes == fx.VOC07_CLASSES
    with_val = load_task("voc2007", tmp_path, use_val=True)
    assert with_val.split("val").labels.tolist() == list(expected["val"].values())
    devkit = load_task(
        "voc2007", tmp_path / "VOCdevkit" / "VOC2007"
    )  # --root may be the devkit itself
    assert devkit.split("train").paths == train.paths
    assert len(with_val.split("train")) == 2


def test_mit67_tiny_names_with_spaces(tmp_path):
    task = load_task("mit67", fx.make_mit67(tmp_path))
    assert task.classes == ["bar", "kitchen", "laundromat"]
    train = task.split("train")
    assert train.paths[2] == str(tmp_path / "Images" / "laundromat" / "laundry room.jpg")
    assert train.labels.tolist() == [0, 1, 2, 0]
    assert task.split("test").labels.tolist() == [1, 2, 0]
    assert train.labels.dtype == np.int64


def test_sun397_tiny_partitions_and_class_file(tmp_path):
    fx.make_sun397(tmp_path)
    task = load_task("sun397", tmp_path)
    assert task.classes == fx.SUN397_CLASSES
    assert task.split("train").labels.tolist() == [0, 1, 2, 2]
    assert task.split("train").paths[1] == str(
        tmp_path / "SUN397/a/apartment_building/outdoor/sun_b1.jpg"
    )
    second = load_task("sun397", tmp_path, partition=2)
    assert second.split("train").paths == task.split("test").paths
    with pytest.raises(TransferlabError, match="partition must be an integer 1..10"):
        load_task("sun397", tmp_path, partition=11)


def test_sun397_classes_derived_without_class_file(tmp_path):
    fx.make_sun397(tmp_path, class_file=False)
    task = load_task("sun397", tmp_path)
    assert task.classes == sorted(fx.SUN397_CLASSES)


def test_sun_attributes_tiny_votes_and_seeded_split(tmp_path):
    fx.make_sun_attributes(tmp_path)
    task = load_task("sun_attributes", tmp_path)
    assert task.kind == "attributes" and task.classes == fx.SUN_ATTR_NAMES
    train, test = task.split("train"), task.split("test")
    assert len(train) == len(test) == 4
    # each scene category is split in half
    for split in (train, test):
        assert sum("/a/abbey/" in p for p in split.paths) == 2
    row = {p: i for i, p in enumerate(str(tmp_path / "images" / n) for n in fx.SUN_ATTR_IMAGES)}
    expected = np.where(fx.SUN_ATTR_VOTES >= 2 / 3 - 1e-9, 1, -1)
    for split in (train, test):
        assert split.labels.dtype == np.int8
        assert split.labels.tolist() == expected[[row[p] for p in split.paths]].tolist()
    # same seed, same split; another seed, another split
    assert load_task("sun_attributes", tmp_path).split("train").paths == train.paths
    others = {
        tuple(load_task("sun_attributes", tmp_path, seed=s).split("train").paths)
        for s in range(1, 6)
    }
    assert len(others | {tuple(train.paths)}) > 1
    ignored = load_task("sun_attributes", tmp_path, ambiguous="ignore")
    all_rows = np.concatenate([ignored.split("train").labels, ignored.split("test").labels])
    all_votes = fx.SUN_ATTR_VOTES[
        [row[p] for s in ("train", "test") for p in ignored.split(s).paths]
    ]
    assert (all_rows[np.isclose(all_votes, 1 / 3)] == 0).all()
    assert (all_rows[all_votes == 0] == -1).all()


def test_apascal_tiny_boxes_and_attributes(tmp_path):
    task = load_task("apascal", fx.make_apascal(tmp_path))
    train = task.split("train")
    assert len(train) == 2 and len(task.split("test")) == 1
    assert train.paths[0] == str(tmp_path / "VOCdevkit/VOC2008/JPEGImages/2008_000008.jpg")
    assert train.boxes[0] == (52.0, 86.0, 471.0, 420.0)  # 1-based inclusive -> 0-based half-open
    assert train.labels[0].tolist() == [1 if k % 2 == 0 else -1 for k in range(64)]
    assert task.split("test").labels.tolist() == [[1] * 64]
    assert task.classes[0] == "2D Boxy" and len(task.classes) == 64
    assert any("mean_auc" in n for n in task.notes)
    names = [f"attr{k}" for k in range(64)]
    fx.write_lines(tmp_path / "attribute_data" / "attribute_names.txt", names)
    assert load_task("apascal", tmp_path).classes == names


def test_h3d_tiny_labels_boxes_and_nan_bounds(tmp_path):
    task = load_task("h3d", fx.make_h3d(tmp_path))
    train = task.split("train")
    assert train.paths == [
        str(tmp_path / "attributes_dataset/train/00001.jpg"),
        str(tmp_path / "attributes_dataset/train/00002.jpg"),
    ]
    assert train.labels.tolist() == [
        [1, -1, 0, 0, 1, -1, -1, 1, 1],
        [-1, 1, 1, 1, -1, 1, 1, -1, -1],
    ]
    assert train.boxes == [(10.0, 20.0, 40.0, 60.0), None]
    assert task.split("test").boxes == [(0.5, 1.5, 100.5, 201.5)]
    assert load_task("h3d", tmp_path, crop=False).split("train").boxes is None


def test_pets_tiny_comment_lines_and_breeds(tmp_path):
    task = load_task("pets", fx.make_pets(tmp_path))
    train, test = task.split("train"), task.split("test")
    assert (len(train), len(test)) == (38, 37)
    assert task.classes[0] == "Abyssinian" and task.classes[1] == "american_bulldog"
    assert train.labels[-1] == 0 and train.paths[-1] == str(
        tmp_path / "images" / "Abyssinian_7.jpg"
    )
    assert test.labels.tolist() == list(range(37))


def test_cub_tiny_split_and_crop(tmp_path):
    task = load_task("cub", fx.make_cub(tmp_path), crop=True)
    train, test = task.split("train"), task.split("test")
    assert train.paths == [str(tmp_path / "CUB_200_2011/images" / fx.CUB_IMAGES[i]) for i in (1, 2)]
    assert train.labels.tolist() == [0, 1] and test.labels.tolist() == [0, 1]
    assert train.boxes == [(139.0, 30.0, 292.0, 294.0), (14.0, 112.0, 402.0, 298.0)]
    assert test.boxes[1] == (0.0, 0.0, 10.0, 20.0)


def test_flowers_tiny_mat_files(tmp_path):
    task = load_task("flowers", fx.make_flowers(tmp_path))
    train = task.split("train")
    assert train.paths[:2] == [
        str(tmp_path / "jpg" / "image_00102.jpg"),
        str(tmp_path / "jpg" / "image_00101.jpg"),
    ]
    assert train.labels.tolist() == list(range(101, -1, -1))
    assert task.split("val").labels.tolist() == list(range(102))
    assert task.split("test").paths[-1] == str(tmp_path / "jpg" / "image_00306.jpg")
    assert task.split("test").labels.tolist() == list(range(102))


def test_voc2012_actions_tiny_object_index_counts_all_objects(tmp_path):
    task = load_task("voc2012_actions", fx.make_voc2012_actions(tmp_path))
    train, test = task.split("train"), task.split("test")
    assert task.classes == fx.VOC12_ACTIONS and task.kind == "multilabel"
    assert len(train) == 3 and len(test) == 1
    # object 2 of 2010_000001 is the first person (object 1 is a horse): box (11,21,110,220) 1-based
    assert train.boxes == [
        (10.0, 20.0, 110.0, 220.0),
        (4.0, 5.0, 7.0, 8.0),
        (0.0, 0.0, 500.0, 375.0),
    ]
    assert train.labels[0].tolist() == [1] + [-1] * 9
    running = fx.VOC12_ACTIONS.index("running")
    assert train.labels[1, running] == 0  # not listed in running_train.txt -> unknown
    assert train.labels[1, 1] == 1 and (np.delete(train.labels[1], [1, running]) == -1).all()
    assert train.labels[2].tolist() == [-1] + [1] * 9
    assert test.labels.tolist() == [[1] * 10] and test.boxes == [(100.0, 50.0, 300.0, 351.0)]
    assert train.paths[0] == str(tmp_path / "VOCdevkit/VOC2012/JPEGImages/2010_000001.jpg")


def test_stanford40_tiny_crlf_one_hot_and_boxes(tmp_path):
    task = load_task("stanford40", fx.make_stanford40(tmp_path))
    train = task.split("train")
    assert task.classes == fx.S40_ACTIONS
    assert train.paths == [
        str(tmp_path / "JPEGImages" / n) for a in fx.S40_ACTIONS for n in fx.S40_TRAIN[a]
    ]
    assert train.labels.tolist() == [[1, -1, -1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]
    assert train.boxes is None
    cropped = load_task("stanford40", tmp_path, crop=True)
    assert cropped.split("train").boxes[0] == (0.0, 1.0, 30.0, 40.0)
    assert len(cropped.split("test")) == 4


def test_visual_phrases_tiny_xml_and_mat_agree(tmp_path):
    xml_task = load_task("visual_phrases", fx.make_visual_phrases(tmp_path / "x", split_files=True))
    assert xml_task.classes == ["person_jumping", "person_lying_on_sofa", "person_riding_horse"]
    train = xml_task.split("train")
    assert [Path(p).stem for p in train.paths] == [
        "3000_000001",
        "3000_000002",
        "3000_000003",
        "3000_000005",
    ]
    assert train.labels.tolist() == [[-1, -1, 1], [1, -1, 1], [1, -1, -1], [-1, 1, -1]]
    assert xml_task.split("test").labels.tolist() == [
        [-1, -1, -1],
        [1, 1, -1],
        [-1, 1, 1],
        [-1, -1, -1],
    ]
    assert any("layout unverified" in n for n in xml_task.notes)
    mat_task = load_task(
        "visual_phrases", fx.make_visual_phrases(tmp_path / "m", fmt="mat", split_files=True)
    )
    assert mat_task.classes == xml_task.classes
    for name in ("train", "test"):
        assert mat_task.split(name).labels.tolist() == xml_task.split(name).labels.tolist()


def test_visual_phrases_seeded_split_without_split_files(tmp_path):
    task = load_task("visual_phrases", fx.make_visual_phrases(tmp_path))
    train, test = task.split("train"), task.split("test")
    assert len(train) == len(test) == 4 and not set(train.paths) & set(test.paths)
    assert load_task("visual_phrases", tmp_path).split("test").paths == test.paths
    assert any("seed 0" in n for n in task.notes)


def test_every_reader_registered_with_rank_and_metric():
    expected = {
        "voc2007": (1, 1, "multilabel", "voc07_map"), "mit67": (1, 2, "single", "mean_class_accuracy"),
        "sun397": (1, 3, "single", "accuracy"), "sun_attributes": (2, 4, "attributes", "map"),
        "apascal": (2, 5, "attributes", "map"), "h3d": (2, 6, "attributes", "map"),
        "pets": (3, 7, "single", "mean_class_accuracy"), "cub": (3, 8, "single", "accuracy"),
        "flowers": (3, 9, "single", "mean_class_accuracy"), "voc2012_actions": (4, 10, "multilabel", "map"),
        "stanford40": (4, 11, "multilabel", "map"), "visual_phrases": (4, 12, "multilabel", "map"),
    }  # fmt: skip
    for name, (group, distance, kind, metric) in expected.items():
        spec = get_task(name)
        assert (spec.group, spec.distance, spec.kind, spec.metric) == (
            group,
            distance,
            kind,
            metric,
        )
        assert not spec.builtin and spec.layout


# =========================================================================== (c) bad input


def test_missing_annotation_file_is_named(tmp_path):
    fx.make_cub(tmp_path)
    (tmp_path / "CUB_200_2011" / "train_test_split.txt").unlink()
    with pytest.raises(AnnotationError, match=r"train_test_split\.txt: file not found"):
        load_task("cub", tmp_path)
    fx.make_voc2007(tmp_path / "v")
    (tmp_path / "v/VOCdevkit/VOC2007/ImageSets/Main/dog_test.txt").unlink()
    with pytest.raises(AnnotationError, match=r"dog_test\.txt: file not found"):
        load_task("voc2007", tmp_path / "v")


def test_missing_dataset_folder_says_what_was_looked_for(tmp_path):
    with pytest.raises(
        TransferlabError,
        match=r"CUB_200_2011 folder not found under .* \(looked for CUB_200_2011\)",
    ):
        load_task("cub", tmp_path)


@pytest.mark.parametrize(
    ("name", "make", "rel", "bad_line", "line_no"),
    [
        ("voc2007", fx.make_voc2007, "VOCdevkit/VOC2007/ImageSets/Main/cat_trainval.txt", "000003 yes", 3),
        ("pets", fx.make_pets, "annotations/trainval.txt", "Abyssinian_9 x 1 1", 2),
        ("cub", fx.make_cub, "CUB_200_2011/image_class_labels.txt", "3 two", 3),
        ("apascal", fx.make_apascal, "attribute_data/apascal_train.txt", "2008_000008.jpg horse 1 2 3", 2),
        ("h3d", fx.make_h3d, "attributes_dataset/test/labels.txt", "00003.jpg 1 2 3 4 1 1 1 1 1 1 1 1 7", 1),
        (
            "voc2012_actions",
            fx.make_voc2012_actions,
            "VOCdevkit/VOC2012/ImageSets/Action/reading_val.txt",
            "2010_000003 one 1",
            1,
        ),
        ("stanford40", fx.make_stanford40, "ImageSplits/applauding_test.txt", "two names.jpg", 1),
        ("sun397", fx.make_sun397, "Partitions/Testing_01.txt", "abbey/sun_x.jpg", 2),
    ],
)  # fmt: skip
def test_unparsable_line_names_file_and_line(tmp_path, name, make, rel, bad_line, line_no):
    make(tmp_path)
    path = tmp_path / rel
    lines = path.read_bytes().decode().splitlines()
    lines[line_no - 1] = bad_line
    fx.write_lines(path, lines)
    with pytest.raises(AnnotationError) as info:
        load_task(name, tmp_path)
    assert info.value.path == str(path) and info.value.line == line_no
    assert str(info.value).startswith(f"{path}:{line_no}: ")


@pytest.mark.parametrize(
    ("name", "make", "rel"),
    [
        ("voc2007", fx.make_voc2007, "VOCdevkit/VOC2007/JPEGImages/000006.jpg"),
        ("mit67", fx.make_mit67, "Images/laundromat/laundry room.jpg"),
        ("sun397", fx.make_sun397, "SUN397/b/bar/sun_c3.jpg"),
        ("sun_attributes", fx.make_sun_attributes, "images/b/bar/sun_r2.jpg"),
        ("apascal", fx.make_apascal, "VOCdevkit/VOC2008/JPEGImages/2008_000010.jpg"),
        ("h3d", fx.make_h3d, "attributes_dataset/train/00002.jpg"),
        ("pets", fx.make_pets, "images/Abyssinian_7.jpg"),
        ("cub", fx.make_cub, "CUB_200_2011/images/002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg"),
        ("flowers", fx.make_flowers, "jpg/image_00208.jpg"),
        ("voc2012_actions", fx.make_voc2012_actions, "VOCdevkit/VOC2012/JPEGImages/2010_000002.jpg"),
        ("stanford40", fx.make_stanford40, "JPEGImages/blowing_bubbles_002.jpg"),
        ("visual_phrases", fx.make_visual_phrases, "UIUC_PhrasalRecognitionDataset/VOC3000/JPEGImages/3000_000005.jpg"),
    ],
)  # fmt: skip
def test_listed_but_absent_image(tmp_path, name, make, rel):
    make(tmp_path)
    (tmp_path / rel).unlink()
    with pytest.raises(TransferlabError, match=r"image listed in .* is missing") as info:
        load_task(name, tmp_path)
    assert str(tmp_path / rel) in str(info.value)


def test_mat_with_wrong_key_names_key(tmp_path):
    import scipy.io

    fx.make_flowers(tmp_path)
    scipy.io.savemat(
        tmp_path / "setid.mat",
        {"trnid": np.array([[1]]), "valid": np.array([[2]]), "testid": np.array([[3]])},
    )
    with pytest.raises(
        AnnotationError,
        match=r"setid\.mat \[tstid\]: missing variable \(has: trnid, valid, testid\)",
    ) as info:
        load_task("flowers", tmp_path)
    assert info.value.key == "tstid"


def test_mat_with_wrong_shape_names_key(tmp_path):
    import scipy.io

    fx.make_sun_attributes(tmp_path)
    db = tmp_path / "SUNAttributeDB"
    scipy.io.savemat(db / "attributeLabels_continuous.mat", {"labels_cv": fx.SUN_ATTR_VOTES[:, :2]})
    with pytest.raises(AnnotationError, match=r"\[labels_cv\]: expected shape \(8, 3\)"):
        load_task("sun_attributes", tmp_path)
    scipy.io.savemat(db / "attributeLabels_continuous.mat", {"labels_cv": fx.SUN_ATTR_VOTES})
    scipy.io.savemat(db / "images.mat", {"images": np.arange(8.0).reshape(8, 1)})
    with pytest.raises(
        AnnotationError, match=r"images\.mat \[images\]: expected an n x 1 cell array"
    ):
        load_task("sun_attributes", tmp_path)
    flowers = fx.make_flowers(tmp_path / "f", labels=np.array([[1, 2, 3, 1, 2, 3, 1, 2, 300]]))
    with pytest.raises(
        AnnotationError, match=r"imagelabels\.mat \[labels\]: value 300 outside 1\.\.102"
    ):
        load_task("flowers", flowers)
    flowers = fx.make_flowers(tmp_path / "g")
    (flowers / "setid.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(AnnotationError, match=r"setid\.mat: not a readable \.mat file"):
        load_task("flowers", flowers)


def test_malformed_xml_names_file_and_line(tmp_path):
    fx.make_voc2012_actions(tmp_path)
    xml = tmp_path / "VOCdevkit/VOC2012/Annotations/2010_000002.xml"
    xml.write_text("<annotation>\n<object><name>person</name>\n</annotation>")
    with pytest.raises(AnnotationError, match=r"2010_000002\.xml:3: malformed XML"):
        load_task("voc2012_actions", tmp_path)


def test_object_index_beyond_annotation_is_reported(tmp_path):
    fx.make_voc2012_actions(tmp_path)
    path = tmp_path / "VOCdevkit/VOC2012/ImageSets/Action/jumping_val.txt"
    fx.write_lines(path, ["2010_000003 4  1"])
    with pytest.raises(
        AnnotationError, match=r"jumping_val\.txt:1: 2010_000003\.xml has no object 4"
    ):
        load_task("voc2012_actions", tmp_path)


@pytest.mark.parametrize(
    ("name", "make", "damage", "message"),
    [
        (
            "cub",
            fx.make_cub,
            lambda r: fx.write_lines(
                r / "CUB_200_2011/classes.txt",
                ["1 001.Black_footed_Albatross", "2 002.Laysan_Albatross", "3 003.Sooty_Albatross"],
            ),
            r"class 003\.Sooty_Albatross has no train image",
        ),
        ("flowers", None, None, r"setid\.mat \[valid\]: class 3 has no image in val"),
        (
            "sun397",
            fx.make_sun397,
            lambda r: fx.write_lines(r / "Partitions/ClassName.txt", [*fx.SUN397_CLASSES, "/z/zoo"]),
            r"class /z/zoo has no image",
        ),
        (
            "voc2007",
            fx.make_voc2007,
            lambda r: fx.write_lines(
                r / "VOCdevkit/VOC2007/ImageSets/Main/cow_test.txt", ["000005 -1", "000006 -1", "000007 -1"]
            ),
            r"class cow has no positive image in test",
        ),
        (
            "stanford40",
            fx.make_stanford40,
            lambda r: fx.write_lines(r / "ImageSplits/brushing_teeth_test.txt", []),
            r"action brushing_teeth has no test image",
        ),
        (
            "pets",
            fx.make_pets,
            lambda r: fx.write_lines(
                r / "annotations/test.txt", [line for line in fx.pets_lists()["test.txt"] if " 5 " not in line]
            ),
            r"class id 5 has no image",
        ),
    ],
)  # fmt: skip
def test_class_with_no_images(tmp_path, name, make, damage, message):
    if name == "flowers":  # class 3 only in train and test
        valid = np.array(
            [[i for i in range(103, 205) if i != 105]]
        )  # image 105 is the only val image of class 3
        fx.make_flowers(tmp_path, sets={**fx.FLOWER_SETS, "valid": valid})
    else:
        make(tmp_path)
        damage(tmp_path)
    with pytest.raises(TransferlabError, match=message):
        load_task(name, tmp_path)
    task, problems = collect(name, tmp_path)
    assert any(re.search(message, p) for p in problems)


def test_collect_gathers_several_problems_at_once(tmp_path):
    fx.make_cub(tmp_path)
    base = tmp_path / "CUB_200_2011"
    fx.write_lines(
        base / "images.txt", [f"{i} {p}" for i, p in enumerate(fx.CUB_IMAGES, start=1)] + ["five"]
    )
    fx.write_lines(base / "train_test_split.txt", ["1 0", "2 1", "3 maybe", "4 0"])
    (base / "images" / fx.CUB_IMAGES[0]).unlink()
    (base / "images" / fx.CUB_IMAGES[3]).unlink()
    task, problems = collect("cub", tmp_path)
    assert len(problems) == 5, problems
    assert problems[0].startswith(f"{base / 'images.txt'}:5: ")
    assert problems[1].startswith(f"{base / 'train_test_split.txt'}:3: image id 3")
    assert (
        "class 002.Laysan_Albatross has no train image" in problems[2]
    )  # its only train image was dropped
    assert sum("is missing" in p for p in problems) == 2
    # what could be read is still returned
    assert len(task.split("train")) == 1 and len(task.split("test")) == 2


def test_collect_continues_past_missing_files(tmp_path):
    fx.make_voc2012_actions(tmp_path)
    action_dir = tmp_path / "VOCdevkit/VOC2012/ImageSets/Action"
    (action_dir / "phoning_train.txt").unlink()
    (action_dir / "walking_val.txt").unlink()
    (tmp_path / "VOCdevkit/VOC2012/JPEGImages/2010_000003.jpg").unlink()
    task, problems = collect("voc2012_actions", tmp_path)
    assert [p.split(": ")[0] for p in problems[:1]] == [str(action_dir / "phoning_train.txt")]
    assert any(str(action_dir / "walking_val.txt") in p for p in problems)
    assert any("2010_000003.jpg" in p and "missing" in p for p in problems)
    assert len(task.split("train")) == 3 and (task.split("train").labels[:, 1] == 0).all()


def test_strict_mode_raises_first_problem_only(tmp_path):
    fx.make_pets(tmp_path)
    fx.write_lines(
        tmp_path / "annotations/test.txt", ["bad", *fx.pets_lists()["test.txt"], "also bad"]
    )
    with pytest.raises(AnnotationError) as info:
        load_task("pets", tmp_path)
    assert info.value.line == 1
    _, problems = collect("pets", tmp_path)
    assert [p.split(": ")[0] for p in problems] == [
        f"{tmp_path / 'annotations/test.txt'}:1",
        f"{tmp_path / 'annotations/test.txt'}:39",
    ]


def test_inconsistent_declarations_are_reported(tmp_path):
    fx.make_stanford40(tmp_path)
    fx.write_lines(
        tmp_path / "ImageSplits/actions.txt",
        [
            "action_name\tnumber_of_images",
            "applauding\t4",
            "blowing_bubbles\t3",
            "brushing_teeth\t2",
        ],
        newline="\r\n",
    )
    with pytest.raises(AnnotationError, match=r"applauding: 4 images declared, 3 listed"):
        load_task("stanford40", tmp_path)
    fx.make_pets(tmp_path / "p")
    fx.write_lines(
        tmp_path / "p/annotations/trainval.txt",
        [*fx.pets_lists()["trainval.txt"], "Persian_1 1 1 1"],
    )
    with pytest.raises(
        AnnotationError,
        match=r"trainval\.txt:39: class id 1 is Abyssinian elsewhere but Persian here",
    ):
        load_task("pets", tmp_path / "p")


def test_root_is_required(tmp_path):
    with pytest.raises(TransferlabError, match="needs --root"):
        load_task("voc2007")


def test_overlapping_or_stray_ids_are_reported(tmp_path):
    flowers = fx.make_flowers(
        tmp_path / "f", sets={**fx.FLOWER_SETS, "tstid": np.arange(200, 307).reshape(1, -1)}
    )
    with pytest.raises(
        AnnotationError, match=r"setid\.mat \[tstid\]: 5 image\(s\) also in valid, first 200"
    ):
        load_task("flowers", flowers)
    fx.make_cub(tmp_path / "c")
    fx.write_lines(
        tmp_path / "c/CUB_200_2011/image_class_labels.txt", ["1 1", "2 1", "3 2", "4 2", "9 1"]
    )
    with pytest.raises(
        AnnotationError,
        match=r"image_class_labels\.txt:5: 1 image id\(s\) not in images\.txt, first 9",
    ):
        load_task("cub", tmp_path / "c")


def test_stanford40_actions_file_without_header(tmp_path):
    fx.make_stanford40(tmp_path)
    fx.write_lines(
        tmp_path / "ImageSplits/actions.txt",
        ["brushing_teeth 2", "applauding 3", "blowing_bubbles 3"],
    )
    task = load_task("stanford40", tmp_path)
    assert task.classes == ["brushing_teeth", "applauding", "blowing_bubbles"]
    (tmp_path / "ImageSplits/actions.txt").unlink()
    task = load_task("stanford40", tmp_path)
    assert task.classes == fx.S40_ACTIONS and any("no actions.txt" in n for n in task.notes)


def test_an_unreadable_optional_class_list_is_collected_not_raised(tmp_path):
    from transferlab.data.readers._util import Problems
    from transferlab.data.readers.sun397 import read_sun397

    root = fx.make_sun397(tmp_path / "sun")
    (root / "Partitions" / "ClassName.txt").write_bytes(b"/a/abbey\n\xff\xfe not utf-8\n")
    problems = Problems(collect=True)
    task = read_sun397(root, problems=problems)
    assert any("ClassName.txt" in item and "UTF-8" in item for item in problems.items)
    assert task.splits  # the rest of the task is still read and every problem listed
