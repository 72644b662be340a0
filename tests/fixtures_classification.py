"""Builders of tiny benchmark folders in their publishers' native layouts, for the reader tests.

Every builder writes the real file names and formats (``.mat`` through scipy.io.savemat,
VOC-style XML, CRLF where the release has it) and one tiny JPEG per listed image, and
returns the root to pass to the reader.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

REAL_ANNOTATIONS = Path(
    os.environ.get("TRANSFERLAB_ANNOTATIONS", Path(__file__).resolve().parents[2] / "shared" / "annotations")
)


def _tiny_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


TINY_JPEG = _tiny_jpeg()


def write_images(paths: Iterable[str | Path]) -> int:
    """Put the same 8x8 JPEG at every path. The first is written, the rest are hard links
    to it: writing data into thousands of fresh folders costs ~1 ms a file on this disk,
    a link ~15 us (real-annotation tests list 10-20k images)."""
    made: set[str] = set()
    first: str | None = None
    count = 0
    for path in paths:
        path = str(path)
        parent = os.path.dirname(path)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        if os.path.lexists(path):
            os.unlink(path)
        try:
            if first is None:
                raise OSError("nothing to link to yet")
            os.link(first, path)
        except OSError:  # first file, another file system, or too many links
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, TINY_JPEG)
            os.close(fd)
            first = path
        count += 1
    return count


def write_lines(
    path: Path, lines: Sequence[str], newline: str = "\n", final_newline: bool = True
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = newline.join(lines) + (newline if final_newline and lines else "")
    path.write_bytes(text.encode("utf-8"))
    return path


def cell(strings: Sequence[str]) -> np.ndarray:
    """An n x 1 MATLAB cell array of strings, as scipy.io.savemat writes it."""
    out = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        out[i, 0] = s
    return out


def voc_xml(
    objects: Sequence[tuple[str, tuple[int, int, int, int] | None, dict[str, int] | None]],
) -> str:
    """A VOC annotation file: (name, (xmin, ymin, xmax, ymax) 1-based or None, actions or None)."""
    parts = [
        "<annotation>",
        "<folder>VOC2012</folder>",
        "<size><width>500</width><height>375</height><depth>3</depth></size>",
    ]
    for name, box, actions in objects:
        parts.append(f"<object><name>{name}</name>")
        if box is not None:
            parts.append(
                f"<bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox>"
            )
        if actions is not None:
            parts.append(
                "<actions>" + "".join(f"<{a}>{v}</{a}>" for a, v in actions.items()) + "</actions>"
            )
        parts.append("</object>")
    parts.append("</annotation>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- group 1

VOC07_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip


def voc07_labels() -> dict[str, dict[str, list[int]]]:
    """Per set: image id -> 20 labels. Even classes positive on odd ids, odd classes on even ids."""

    def row(i: int) -> list[int]:
        return [1 if (k % 2) == (i % 2) else -1 for k in range(20)]

    trainval = {f"{i:06d}": row(i) for i in range(1, 5)}
    trainval["000001"][0] = 0  # a "difficult" aeroplane
    test = {f"{i:06d}": row(i) for i in range(5, 8)}
    test["000007"] = [-1] * 19 + [0]
    return {
        "trainval": trainval,
        "train": {k: trainval[k] for k in ("000001", "000002")},
        "val": {k: trainval[k] for k in ("000003", "000004")},
        "test": test,
    }


def make_voc2007(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2007"
    main = voc / "ImageSets" / "Main"
    for set_name, rows in voc07_labels().items():
        write_lines(main / f"{set_name}.txt", list(rows))
        for k, cls in enumerate(VOC07_CLASSES):
            write_lines(
                main / f"{cls}_{set_name}.txt", [f"{i} {row[k]:2d}" for i, row in rows.items()]
            )
    write_images(
        voc / "JPEGImages" / f"{i}.jpg"
        for i in list(voc07_labels()["trainval"]) + list(voc07_labels()["test"])
    )
    return root


MIT67_TRAIN = [
    "bar/bar_1.jpg",
    "kitchen/int474.jpg",
    "laundromat/laundry room.jpg",
    "bar/bar 2.jpg",
]
MIT67_TEST = ["kitchen/k2.jpg", "laundromat/lm_3.jpg", "bar/b9.jpg"]


def make_mit67(root: Path) -> Path:
    write_lines(root / "TrainImages.txt", MIT67_TRAIN, final_newline=False)
    write_lines(root / "TestImages.txt", MIT67_TEST, final_newline=False)
    write_images(root / "Images" / rel for rel in MIT67_TRAIN + MIT67_TEST)
    return root


SUN397_CLASSES = ["/a/abbey", "/a/apartment_building/outdoor", "/b/bar"]
SUN397_TRAIN = [
    "/a/abbey/sun_a1.jpg",
    "/a/apartment_building/outdoor/sun_b1.jpg",
    "/b/bar/sun_c1.jpg",
    "/b/bar/sun_c2.jpg",
]
SUN397_TEST = [
    "/a/abbey/sun_a2.jpg",
    "/a/apartment_building/outdoor/sun_b2.jpg",
    "/b/bar/sun_c3.jpg",
]


def make_sun397(root: Path, class_file: bool = True) -> Path:
    write_lines(root / "Partitions" / "Training_01.txt", SUN397_TRAIN)
    write_lines(root / "Partitions" / "Testing_01.txt", SUN397_TEST)
    write_lines(root / "Partitions" / "Training_02.txt", SUN397_TEST)
    write_lines(root / "Partitions" / "Testing_02.txt", SUN397_TRAIN)
    if class_file:
        write_lines(root / "Partitions" / "ClassName.txt", SUN397_CLASSES)
    write_images(root / "SUN397" / rel.lstrip("/") for rel in SUN397_TRAIN + SUN397_TEST)
    return root


# --------------------------------------------------------------------------- group 2

SUN_ATTR_NAMES = ["sailing/ boating", "driving", "natural light"]
SUN_ATTR_IMAGES = [f"{cat}/sun_{cat[-1]}{i}.jpg" for cat in ("a/abbey", "b/bar") for i in range(4)]
SUN_ATTR_VOTES = np.array(
    [
        [0, 1 / 3, 2 / 3], [1, 0, 2 / 3], [0, 2 / 3, 1], [1 / 3, 1, 0],
        [2 / 3, 0, 1 / 3], [0, 1, 1], [1, 1 / 3, 0], [0, 0, 1],
    ]
)  # fmt: skip


def make_sun_attributes(root: Path) -> Path:
    import scipy.io

    db = root / "SUNAttributeDB"
    db.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(db / "images.mat", {"images": cell(SUN_ATTR_IMAGES)})
    scipy.io.savemat(db / "attributes.mat", {"attributes": cell(SUN_ATTR_NAMES)})
    scipy.io.savemat(db / "attributeLabels_continuous.mat", {"labels_cv": SUN_ATTR_VOTES})
    write_images(root / "images" / name for name in SUN_ATTR_IMAGES)
    return root


def apascal_line(
    image: str, cls: str, box: tuple[int, int, int, int], positives: Iterable[int]
) -> str:
    values = ["0"] * 64
    for k in positives:
        values[k] = "1"
    return " ".join([image, cls, *map(str, box), *values])


APASCAL_TRAIN = [
    apascal_line("2008_000008.jpg", "horse", (53, 87, 471, 420), range(0, 64, 2)),
    apascal_line("2008_000008.jpg", "person", (159, 44, 248, 356), range(1, 64, 2)),
]
APASCAL_TEST = [apascal_line("2008_000010.jpg", "car", (1, 1, 100, 80), range(64))]


def make_apascal(root: Path) -> Path:
    write_lines(root / "attribute_data" / "apascal_train.txt", APASCAL_TRAIN)
    write_lines(root / "attribute_data" / "apascal_test.txt", APASCAL_TEST)
    write_images(
        root / "VOCdevkit" / "VOC2008" / "JPEGImages" / name
        for name in ("2008_000008.jpg", "2008_000010.jpg")
    )
    return root


H3D_TRAIN = [
    "00001.jpg 10 20 30 40 1 -1 0 0 1 -1 -1 1 1",
    "00002.jpg NaN NaN NaN NaN -1 1 1 1 -1 1 1 -1 -1",
]
H3D_TEST = ["00003.jpg 0.5 1.5 100 200 1 1 -1 -1 0 1 1 1 1"]


def make_h3d(root: Path) -> Path:
    base = root / "attributes_dataset"
    write_lines(base / "train" / "labels.txt", H3D_TRAIN)
    write_lines(base / "test" / "labels.txt", H3D_TEST)
    write_images(
        [base / "train" / "00001.jpg", base / "train" / "00002.jpg", base / "test" / "00003.jpg"]
    )
    return root


# --------------------------------------------------------------------------- group 3

PETS_HEADER = ["#Image CLASS-ID SPECIES BREED ID", "#ID: 1:37 Class ids", "#SPECIES: 1:Cat 2:Dog"]


def pets_lists() -> dict[str, list[str]]:
    """Every class id once in trainval, plus one more Abyssinian; test has every class once."""
    breeds = [f"Breed{k}" for k in range(1, 38)]
    breeds[0] = "Abyssinian"
    breeds[1] = "american_bulldog"
    trainval = [f"{b}_{100 + k} {k + 1} {1 + k % 2} {k + 1}" for k, b in enumerate(breeds)] + [
        "Abyssinian_7 1 1 1"
    ]
    test = [f"{b}_{200 + k} {k + 1} {1 + k % 2} {k + 1}" for k, b in enumerate(breeds)]
    return {"trainval.txt": trainval, "test.txt": test}


def make_pets(root: Path) -> Path:
    lists = pets_lists()
    write_lines(root / "annotations" / "trainval.txt", lists["trainval.txt"])
    write_lines(root / "annotations" / "test.txt", PETS_HEADER + lists["test.txt"])
    write_images(
        root / "images" / f"{line.split()[0]}.jpg" for lines in lists.values() for line in lines
    )
    return root


CUB_IMAGES = [
    "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg",
    "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg",
    "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg",
    "002.Laysan_Albatross/Laysan_Albatross_0003_1033.jpg",
]


def make_cub(root: Path) -> Path:
    base = root / "CUB_200_2011"
    write_lines(base / "images.txt", [f"{i} {p}" for i, p in enumerate(CUB_IMAGES, start=1)])
    write_lines(base / "classes.txt", ["1 001.Black_footed_Albatross", "2 002.Laysan_Albatross"])
    write_lines(base / "image_class_labels.txt", ["1 1", "2 1", "3 2", "4 2"])
    write_lines(base / "train_test_split.txt", ["1 0", "2 1", "3 1", "4 0"])
    write_lines(
        base / "bounding_boxes.txt",
        ["1 60.0 27.0 325.0 304.0", "2 139.0 30.0 153.0 264.0", "3 14 112 388 186", "4 0 0 10 20"],
    )
    write_images(base / "images" / p for p in CUB_IMAGES)
    return root


# 306 images: image i has class ((i - 1) % 102) + 1, so each block of 102 covers every class
FLOWER_LABELS = (np.arange(306) % 102 + 1).astype(np.uint8).reshape(1, -1)
FLOWER_SETS = {
    "trnid": np.arange(1, 103, dtype=np.uint16).reshape(1, -1)[:, ::-1],  # any order is allowed
    "valid": np.arange(103, 205, dtype=np.uint16).reshape(1, -1),
    "tstid": np.arange(205, 307, dtype=np.uint16).reshape(1, -1),
}


def make_flowers(root: Path, labels: np.ndarray = FLOWER_LABELS, sets: dict | None = None) -> Path:
    import scipy.io

    sets = sets or FLOWER_SETS
    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "imagelabels.mat", {"labels": labels})
    scipy.io.savemat(root / "setid.mat", sets)
    write_images(root / "jpg" / f"image_{i:05d}.jpg" for i in range(1, labels.size + 1))
    return root


# --------------------------------------------------------------------------- group 4

VOC12_ACTIONS = [
    "jumping", "phoning", "playinginstrument", "reading", "ridingbike",
    "ridinghorse", "running", "takingphoto", "usingcomputer", "walking",
]  # fmt: skip


def make_voc2012_actions(root: Path) -> Path:
    """train: 2010_000001 (a horse, then two people) and 2010_000002 (one person);
    val: 2010_000003 (one person). Person 2 of 2010_000001 is absent from the running file."""
    voc = root / "VOCdevkit" / "VOC2012"
    xml = {
        "2010_000001": [
            ("horse", (1, 1, 50, 50), None),
            ("person", (11, 21, 110, 220), None),
            ("person", (5, 6, 7, 8), None),
        ],
        "2010_000002": [("person", (1, 1, 500, 375), None)],
        "2010_000003": [("person", (101, 51, 300, 351), None)],
    }
    for image_id, objects in xml.items():
        (voc / "Annotations").mkdir(parents=True, exist_ok=True)
        (voc / "Annotations" / f"{image_id}.xml").write_text(voc_xml(objects))
    action_dir = voc / "ImageSets" / "Action"
    for k, action in enumerate(VOC12_ACTIONS):
        train = [
            f"2010_000001 2 {1 if k == 0 else -1:2d}",
            f"2010_000002 1 {1 if k != 0 else -1:2d}",
        ]
        if action != "running":
            train.insert(1, f"2010_000001 3 {1 if k == 1 else -1:2d}")
        write_lines(action_dir / f"{action}_train.txt", train)
        write_lines(action_dir / f"{action}_val.txt", [f"2010_000003 1 {1:2d}"])
    write_images(voc / "JPEGImages" / f"{i}.jpg" for i in xml)
    return root


S40_ACTIONS = ["applauding", "blowing_bubbles", "brushing_teeth"]
S40_TRAIN = {
    "applauding": ["applauding_001.jpg", "applauding_002.jpg"],
    "blowing_bubbles": ["blowing_bubbles_001.jpg"],
    "brushing_teeth": ["brushing_teeth_001.jpg"],
}
S40_TEST = {
    "applauding": ["applauding_003.jpg"],
    "blowing_bubbles": ["blowing_bubbles_002.jpg", "blowing_bubbles_003.jpg"],
    "brushing_teeth": ["brushing_teeth_002.jpg"],
}


def make_stanford40(root: Path) -> Path:
    splits = root / "ImageSplits"
    totals = {a: len(S40_TRAIN[a]) + len(S40_TEST[a]) for a in S40_ACTIONS}
    write_lines(
        splits / "actions.txt",
        ["action_name\tnumber_of_images"] + [f"{a}\t{totals[a]}" for a in S40_ACTIONS],
        newline="\r\n",
    )
    for action in S40_ACTIONS:
        write_lines(splits / f"{action}_train.txt", S40_TRAIN[action], newline="\r\n")
        write_lines(splits / f"{action}_test.txt", S40_TEST[action], newline="\r\n")
    write_lines(
        splits / "train.txt", [n for a in S40_ACTIONS for n in S40_TRAIN[a]], newline="\r\n"
    )
    write_lines(splits / "test.txt", [n for a in S40_ACTIONS for n in S40_TEST[a]], newline="\r\n")
    names = [n for d in (S40_TRAIN, S40_TEST) for a in S40_ACTIONS for n in d[a]]
    (root / "XMLAnnotations").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        action = name.rsplit("_", 1)[0]
        (root / "XMLAnnotations" / name.replace(".jpg", ".xml")).write_text(
            voc_xml([("person", (1 + i, 2 + i, 30 + i, 40 + i), None)]).replace(
                "</name>", f"</name><action>{action}</action>"
            )
        )
    write_images(root / "JPEGImages" / n for n in names)
    return root


PHRASE_TAGS = {
    "3000_000001": ["person_riding_horse", "person", "horse"],
    "3000_000002": ["person_riding_horse", "person", "horse", "person_jumping"],
    "3000_000003": ["person_jumping", "person"],
    "3000_000004": ["absolute_negatives"],
    "3000_000005": ["person_lying_on_sofa", "person", "sofa"],
    "3000_000006": ["person_lying_on_sofa", "person_jumping"],
    "3000_000007": ["person_riding_horse", "person_lying_on_sofa"],
    "3000_000008": ["dog"],
}


def make_visual_phrases(root: Path, fmt: str = "xml", split_files: bool = False) -> Path:
    import scipy.io

    base = root / "UIUC_PhrasalRecognitionDataset" / "VOC3000"
    if fmt == "xml":
        (base / "Annotations").mkdir(parents=True, exist_ok=True)
        for image_id, tags in PHRASE_TAGS.items():
            (base / "Annotations" / f"{image_id}.xml").write_text(
                voc_xml([(t, (1, 1, 20, 20), None) for t in tags])
            )
    else:
        rows = [(image_id, tag) for image_id, tags in PHRASE_TAGS.items() for tag in tags]
        table = np.empty((len(rows), 3), dtype=object)
        for i, (image_id, tag) in enumerate(rows):
            table[i] = [image_id, tag, np.array([1.0, 1.0, 20.0, 20.0])]
        base.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(base / "groundtruth.mat", {"groundtruth": table})
    if split_files:
        write_lines(
            base / "ImageSets" / "Main" / "train.txt",
            ["3000_000001", "3000_000002", "3000_000003", "3000_000005"],
        )
        write_lines(
            base / "ImageSets" / "Main" / "test.txt",
            ["3000_000004", "3000_000006", "3000_000007", "3000_000008"],
        )
    write_images(base / "JPEGImages" / f"{i}.jpg" for i in PHRASE_TAGS)
    return root
