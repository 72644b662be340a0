"""The offline built-in task suite: sizes, labels, determinism, cache reuse, atomic builds."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.data import builtin  # noqa: F401  (registers the tasks)
from transferlab.data.builtin import _materialise, copies, digits, fashion, shapes
from transferlab.data.generic import load_dataset
from transferlab.data.tasks import all_tasks, get_task, load_task
from transferlab.errors import AnnotationError, TransferlabError
from transferlab.paths import cache_dir, cache_root

METRICS = {
    "voc07_map", "map", "mean_class_accuracy", "accuracy", "mean_auc",
    "oxford_map", "revisited_map", "holidays_map", "ukb_score",
}  # fmt: skip

# quick=True sizes: kind, number of classes, images per split (queries for retrieval)
QUICK = {
    "fashion_mnist": ("single", 10, {"train": 100, "val": 50, "test": 50}),
    "shape_attributes": ("attributes", 12, {"train": 100, "val": 40, "test": 60}),
    "fashion_upper": ("single", 4, {"train": 120, "val": 40, "test": 60}),
    "digits": ("single", 10, {"train": 100, "val": 50, "test": 50}),
    "shape_relations": ("single", 12, {"train": 96, "val": 48, "test": 72}),
    "photo_copies": ("retrieval", 0, {"db": 90, "queries": 20}),
}


def _fashion_or_skip() -> None:
    try:
        fashion.find_files(None)
    except TransferlabError as exc:
        pytest.skip(str(exc))


def _needs(name: str) -> None:
    if name.startswith("fashion"):
        _fashion_or_skip()


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _tree_stats(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every built-in task materialised once (quick) in a private cache."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFERLAB_CACHE", str(cache))
        tasks = {}
        for name in QUICK:
            try:
                _needs(name)
            except pytest.skip.Exception:
                continue
            tasks[name] = load_task(name, quick=True)
        yield cache, tasks


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---------------------------------------------------------------------------------------------
# registry


def test_registry_entries():
    builtins = [t for t in all_tasks() if t.builtin]
    # the learning factors' source tasks and their scene targets sit beside the six of the suite
    assert {t.name for t in builtins} - set(QUICK) == {"fashion_source", "scene_source", "indoor_layouts",
                                                      "scene_categories"}
    specs = [t for t in builtins if t.name in QUICK]
    assert [t.name for t in specs] == list(QUICK)
    assert [t.distance for t in specs] == [101, 102, 103, 104, 105, 106]
    assert [t.group for t in specs] == [1, 2, 3, 3, 4, 5]
    for spec in specs:
        assert spec.kind == QUICK[spec.name][0]
        assert spec.metric in METRICS
    assert get_task("shape_attributes").metric == "map"
    assert get_task("photo_copies").metric == "holidays_map"


def test_cache_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert cache_dir("datasets") == tmp_path / "c" / "datasets"
    assert (tmp_path / "c" / "datasets").is_dir()
    monkeypatch.delenv("TRANSFERLAB_CACHE")
    assert cache_root() == Path("~/.cache/transferlab").expanduser()


# ---------------------------------------------------------------------------------------------
# every task


@pytest.mark.parametrize("name", list(QUICK))
def test_task_loads_with_expected_sizes(built, name):
    _needs(name)
    cache, tasks = built
    data = tasks[name]
    kind, n_classes, sizes = QUICK[name]
    assert data.name == name
    assert data.kind == kind
    assert len(data.classes) == n_classes
    assert Path(data.root).parent == cache / "datasets"
    for split, n in sizes.items():
        if split == "queries":
            assert len(data.queries) == n
            continue
        s = data.splits[split]
        assert len(s) == n
        assert all(os.path.isabs(p) and os.path.isfile(p) for p in s.paths)
        assert all(p.endswith(".png") for p in s.paths)
    assert set(data.splits) == {k for k in sizes if k != "queries"}
    if kind == "single":
        for split in data.splits.values():
            counts = np.bincount(split.labels, minlength=n_classes)
            assert (counts == counts[0]).all() and counts[0] > 0, f"{split.name} not class-balanced"
    with Image.open(data.splits[next(iter(data.splits))].paths[0]) as image:
        assert image.mode == "RGB"


@pytest.mark.parametrize("name", list(QUICK))
def test_materialisation_is_deterministic(built, name, tmp_path, monkeypatch):
    _needs(name)
    cache, tasks = built
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "other"))
    again = load_task(name, quick=True)
    first, second = Path(tasks[name].root), Path(again.root)
    assert first.name == second.name and first != second
    assert _tree_hashes(first) == _tree_hashes(second)
    assert len(_tree_hashes(first)) > 100


@pytest.mark.parametrize("name", list(QUICK))
def test_second_load_reads_the_cache(built, name):
    _needs(name)
    cache, tasks = built
    folder = Path(tasks[name].root)
    before = _tree_stats(folder)
    entries = sorted(os.listdir(cache / "datasets"))
    again = load_task(name, quick=True)
    assert _tree_stats(folder) == before  # same inodes and mtimes: nothing rewritten
    assert sorted(os.listdir(cache / "datasets")) == entries
    split = "db" if name == "photo_copies" else "train"
    assert again.splits[split].paths == tasks[name].splits[split].paths


def test_default_and_quick_live_apart(cache):
    quick = load_task("digits", quick=True)
    full = load_task("digits")
    assert Path(quick.root).name == "digits-v1-quick"
    assert Path(full.root).name == "digits-v1"
    assert sum(len(s) for s in full.splits.values()) == 900


# ---------------------------------------------------------------------------------------------
# atomic builds


def test_half_written_folders_are_not_trusted(cache):
    datasets = cache / "datasets"
    final = datasets / "digits-v1-quick"
    # a killed build's temp folder (fresh and old), and a half folder under the final name
    fresh = datasets / ".digits-v1-quick.tmp-fresh"
    old = datasets / ".digits-v1-quick.tmp-old"
    for folder in (fresh, old, final / "train" / "0"):
        folder.mkdir(parents=True)
    (final / "train" / "0" / "half.png").write_bytes(b"\x89PNG truncated")
    (old / "x.png").write_bytes(b"")
    hour_ago = time.time() - 2 * _materialise.STALE_TEMP_SECONDS
    os.utime(old, (hour_ago, hour_ago))

    data = load_task("digits", quick=True)
    assert sum(len(s) for s in data.splits.values()) == 200
    assert not (final / "train" / "0" / "half.png").exists()
    assert _materialise.is_complete(final, "digits-v1-quick")
    assert not old.exists()  # a dead build's leftover is cleaned
    assert fresh.exists()  # a recent one may be a live concurrent build: left alone
    assert not [p for p in datasets.iterdir() if ".stale-" in p.name]


def test_killed_build_is_not_trusted(cache):
    """SIGKILL a real build half-way: no final folder appears, and the next load rebuilds."""
    code = "from transferlab.data.tasks import load_task; load_task('photo_copies', quick=True)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ))
    datasets = cache / "datasets"
    written: list[Path] = []
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        written = list(datasets.glob(".photo_copies-v1-quick.tmp-*/queries/*.png"))
        if len(written) >= 3:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert len(written) >= 3, "the build was not caught half-way"
    assert not (datasets / "photo_copies-v1-quick").exists()
    data = load_task("photo_copies", quick=True)
    assert len(data.queries) == 20 and len(data.splits["db"]) == 90
    assert _materialise.is_complete(Path(data.root), "photo_copies-v1-quick")


def test_deleted_file_triggers_rebuild(cache):
    data = load_task("digits", quick=True)
    victim = Path(data.splits["test"].paths[0])
    victim.unlink()
    again = load_task("digits", quick=True)
    assert victim.is_file()
    assert again.splits["test"].paths == data.splits["test"].paths


def test_marker_for_another_key_is_not_trusted(cache):
    folder = _materialise.dataset_folder("k")
    folder.mkdir(parents=True)
    (folder / _materialise.MARKER).write_text('{"key": "other", "files": 0}')
    assert not _materialise.is_complete(folder, "k")
    (folder / _materialise.MARKER).write_text('{"key": "k", "files": 0}')
    assert _materialise.is_complete(folder, "k")


def _write_one(folder: Path) -> None:
    (folder / "a.txt").write_text("built")


def test_concurrent_build_finishing_first_is_used(cache):
    """Another process completes the same folder while we build: its folder is kept."""

    def build(folder: Path) -> None:
        _materialise.materialise("k", lambda f: (f / "a.txt").write_text("winner"), lambda f: f)
        (folder / "a.txt").write_text("loser")

    result = _materialise.materialise("k", build, lambda f: f)
    assert (result / "a.txt").read_text() == "winner"
    assert [p.name for p in (cache / "datasets").iterdir()] == ["k"]


def test_discard_puts_back_a_folder_completed_meanwhile(cache):
    _materialise.materialise("k", _write_one, lambda f: f)
    final = _materialise.dataset_folder("k")
    _materialise._discard(final, final.parent, "k")
    assert _materialise.is_complete(final, "k")
    assert [p.name for p in final.parent.iterdir()] == ["k"]


def test_two_processes_building_at_once(cache):
    code = (
        "from transferlab.data.tasks import load_task; "
        "d = load_task('shape_relations', quick=True); print(sum(map(len, d.splits.values())))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ), stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs == ["216", "216"]
    assert [p.name for p in (cache / "datasets").iterdir()] == ["shape_relations-v1-quick"]
    assert _materialise.is_complete(cache / "datasets" / "shape_relations-v1-quick", "shape_relations-v1-quick")


def test_occupied_final_path_is_an_error(cache):
    def build(folder: Path) -> None:
        intruder = _materialise.dataset_folder("k")
        intruder.mkdir()
        (intruder / "other.txt").write_text("not ours")
        _write_one(folder)

    with pytest.raises(TransferlabError, match="occupied"):
        _materialise.materialise("k", build, lambda f: f)
    assert [p.name for p in (cache / "datasets").iterdir()] == ["k"]  # no temp left behind


def test_unwritable_cache_is_a_clear_error(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(blocker / "cache"))
    with pytest.raises(TransferlabError, match="set TRANSFERLAB_CACHE to a writable folder"):
        load_task("digits", quick=True)


def test_os_error_during_build_is_a_clear_error(cache):
    def build(folder: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(TransferlabError, match="building k in .* failed: .*No space left"):
        _materialise.materialise("k", build, lambda f: f)
    assert list((cache / "datasets").iterdir()) == []


def test_failed_build_leaves_nothing(cache):
    def build(folder: Path) -> None:
        _write_one(folder)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        _materialise.materialise("k", build, lambda f: f)
    assert list((cache / "datasets").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# per task content


def test_photo_copies_ground_truth(built):
    data = built[1]["photo_copies"]
    db = data.splits["db"]
    assert (db.labels == -1).all()
    assert [q.name for q in data.queries] == list(copies.QUERY_PHOTOS)
    seen: set[int] = set()
    for query in data.queries:
        assert len(query.positives) == 4
        assert query.db_index is None and query.path not in db.paths
        assert os.path.isfile(query.path)
        assert not seen & set(query.positives.tolist())
        seen |= set(query.positives.tolist())
    assert len(db) - len(seen) == 10  # distractors: 4 pictures x 1 copy + 6 faces
    info = (Path(data.root) / "db_info.csv").read_text().splitlines()[1:]
    source_of = {row.split(",")[0]: row.split(",")[1] for row in info}
    for query in data.queries:
        assert {source_of["db/" + Path(db.paths[i]).name] for i in query.positives} == {query.name}


def test_photo_copies_transforms_change_the_image():
    photo = copies.load_photo("astronaut")
    assert photo.dtype == np.uint8 and photo.ndim == 3 and max(photo.shape[:2]) == copies.MAX_SIDE
    for transform in copies.TRANSFORMS:
        a = copies.make_copy(photo, transform, np.random.default_rng(1))
        b = copies.make_copy(photo, transform, np.random.default_rng(1))
        assert np.array_equal(a, b), transform
        assert a.shape != photo.shape or np.abs(a.astype(int) - photo).mean() > 0.5, transform


def test_shape_attributes_labels(built):
    data = built[1]["shape_attributes"]
    assert data.classes == sorted(shapes.ATTRIBUTES)
    groups = [shapes.COLOURS, shapes.SHAPES, shapes.TEXTURES, shapes.SIZES]
    columns = [[data.classes.index(a) for a in group] for group in groups]
    for split in data.splits.values():
        labels = split.labels
        assert labels.dtype == np.int8 and set(np.unique(labels)) == {-1, 1}
        for cols in columns:  # every object has one value per attribute family
            positives = (labels[:, cols] == 1).sum(axis=1)
            assert (positives >= 1).all() and (positives <= 3).all()
        if split.name in ("train", "test"):  # every attribute learnable and scorable
            assert ((labels == 1).any(axis=0) & (labels == -1).any(axis=0)).all()


def test_attribute_scene_matches_labels():
    for seed in range(50):
        things, positives = shapes.attribute_scene(np.random.default_rng(seed))
        assert 1 <= len(things) <= 3
        sizes = {
            name for t in things for name, (low, high) in shapes.SIZES.items() if low <= t.radius <= high
        }
        assert positives - set(shapes.COLOURS) == {t.shape for t in things} | {t.texture for t in things} | sizes
        assert 1 <= len(positives & set(shapes.COLOURS)) <= len(things)
        for i, a in enumerate(things):
            assert a.radius <= a.cx <= shapes.CANVAS - a.radius
            for b in things[i + 1 :]:
                assert np.hypot(a.cx - b.cx, a.cy - b.cy) >= a.radius + b.radius


def test_shape_relations_need_composition(built):
    data = built[1]["shape_relations"]
    assert len(data.classes) == 12
    by_objects: dict[frozenset, set[str]] = {}
    for first, relation, second in shapes.relation_classes():
        by_objects.setdefault(frozenset((first, second)), set()).add(
            shapes.class_name(first, relation, second)
        )
    assert set().union(*by_objects.values()) == set(data.classes)
    # each object pair appears under four classes: identity alone is right 1 time in 4
    assert all(len(names) == 4 for names in by_objects.values())


@pytest.mark.parametrize("relation", shapes.RELATIONS)
def test_relation_scene_geometry(relation):
    for seed in range(100):
        a, b = shapes.relation_scene("circle", relation, "square", np.random.default_rng(seed))
        assert (a.shape, b.shape) == ("circle", "square")
        along, across = (b.cx - a.cx, b.cy - a.cy) if relation == "left_of" else (b.cy - a.cy, b.cx - a.cx)
        assert along >= a.radius + b.radius + 6
        assert abs(across) <= 0.4 * along
        for t in (a, b):
            assert t.radius <= t.cx <= shapes.CANVAS - t.radius
            assert t.radius <= t.cy <= shapes.CANVAS - t.radius


def test_digits_pixels_match_sklearn(built):
    from sklearn.datasets import load_digits

    assert digits.to_pixels(np.array([[16, 8], [0, 1]])).tolist()[0] == [255] * 4 + [128] * 4
    source = load_digits()
    data = built[1]["digits"]
    for path, label in list(zip(data.splits["test"].paths, data.splits["test"].labels, strict=True))[:5]:
        index = int(Path(path).stem)
        assert source.target[index] == int(data.classes[label])
        with Image.open(path) as image:
            pixels = np.asarray(image)
        assert pixels.shape == (32, 32, 3)
        expected = np.rint(source.images[index] * 255 / 16)
        assert np.array_equal(pixels[::4, ::4, 0], expected)
    train = {Path(p).stem for p in data.splits["train"].paths}
    test = {Path(p).stem for p in data.splits["test"].paths}
    assert not train & test


def test_builtin_tasks_take_no_root(tmp_path):
    with pytest.raises(TransferlabError, match="takes no root"):
        load_task("digits", root=tmp_path)


def test_load_dataset_resolves_task_names(built, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(built[0]))
    data = load_dataset("shape_relations", quick=True)
    assert data.root == built[1]["shape_relations"].root


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST


def _idx(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    ndim = array.ndim
    header = (magic if magic is not None else 0x0800 | ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())
    return path


def _fake_fashion(root: Path, per_class_train: int, per_class_test: int) -> dict[str, np.ndarray]:
    """Tiny IDX files whose image pixels encode (class, position), in a subfolder of root."""
    arrays = {}
    for split, n, prefix in (("train", per_class_train, "train"), ("test", per_class_test, "t10k")):
        labels = np.tile(np.arange(10), n)
        images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
        images[:, 0, 0] = labels * 20
        images[:, 0, 1] = np.arange(len(labels)) % 256
        _idx(root / "fmnist" / f"{prefix}-images-idx3-ubyte.gz", images)
        _idx(root / "fmnist" / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[split] = images
    return arrays


def test_fashion_from_user_root(cache, tmp_path):
    arrays = _fake_fashion(tmp_path / "src", per_class_train=40, per_class_test=15)
    data = load_task("fashion_mnist", root=tmp_path / "src", quick=True)
    assert {k: len(s) for k, s in data.splits.items()} == {"train": 100, "val": 50, "test": 50}
    assert data.classes == sorted(fashion.CLASS_NAMES)
    assert all("fmnist" in f for f in data.source_files)
    train_stems = {Path(p).stem for p in data.splits["train"].paths}
    val_stems = {Path(p).stem for p in data.splits["val"].paths}
    assert not train_stems & val_stems
    for split in ("train", "test"):
        for path, label in zip(data.splits[split].paths, data.splits[split].labels, strict=True):
            source, index = Path(path).stem.split("-")
            assert source == ("t10k" if split == "test" else "train")
            with Image.open(path) as image:
                pixels = np.asarray(image)
            assert np.array_equal(pixels[..., 0], arrays[split][int(index)])
            assert fashion.CLASS_NAMES[pixels[0, 0, 0] // 20] == data.classes[label]
    upper = load_task("fashion_upper", root=tmp_path / "src", quick=True)
    assert upper.classes == ["coat", "pullover", "shirt", "tshirt_top"]
    assert {k: len(s) for k, s in upper.splits.items()} == {"train": 120, "val": 40, "test": 60}


def test_fashion_too_few_images_names_the_file(cache, tmp_path):
    _fake_fashion(tmp_path / "src", per_class_train=14, per_class_test=5)
    with pytest.raises(TransferlabError, match=r"train-labels-idx1-ubyte\.gz: class 0 has 14 images, 15 needed"):
        load_task("fashion_mnist", root=tmp_path / "src", quick=True)


def test_fashion_cache_key_depends_on_source(cache, tmp_path):
    _fake_fashion(tmp_path / "a", 15, 5)
    _fake_fashion(tmp_path / "b", 16, 5)
    a = load_task("fashion_mnist", root=tmp_path / "a", quick=True)
    b = load_task("fashion_mnist", root=tmp_path / "b", quick=True)
    assert a.root != b.root


def test_fashion_missing_files_message(monkeypatch, tmp_path):
    monkeypatch.setattr(fashion, "SYSTEM_ROOT", tmp_path / "absent")
    with pytest.raises(TransferlabError, match="apt-get install dataset-fashion-mnist"):
        load_task("fashion_mnist")
    (tmp_path / "partial").mkdir()
    _idx(tmp_path / "partial" / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28)))
    with pytest.raises(TransferlabError, match="t10k-images-idx3-ubyte.gz"):
        load_task("fashion_mnist", root=tmp_path / "partial")


def test_idx_parser(tmp_path):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    path = _idx(tmp_path / "ok.gz", array)
    assert np.array_equal(fashion.read_idx(path, fashion.IMAGES_MAGIC), array)
    plain = tmp_path / "plain"
    plain.write_bytes(gzip.decompress(path.read_bytes()))
    assert np.array_equal(fashion.read_idx(plain, fashion.IMAGES_MAGIC), array)
    with pytest.raises(AnnotationError, match=r"ok\.gz: bad IDX magic number 0x00000803, expected 0x00000801"):
        fashion.read_idx(path, fashion.LABELS_MAGIC)
    short = tmp_path / "short"
    short.write_bytes(plain.read_bytes()[:-1])
    with pytest.raises(AnnotationError, match="short: IDX size mismatch: header says 2x3x4"):
        fashion.read_idx(short, fashion.IMAGES_MAGIC)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(AnnotationError, match=r"bad\.gz: cannot decompress"):
        fashion.read_idx(bad, fashion.IMAGES_MAGIC)
    truncated = tmp_path / "trunc.gz"
    truncated.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(AnnotationError, match=r"trunc\.gz: cannot decompress"):
        fashion.read_idx(truncated, fashion.IMAGES_MAGIC)


def test_fashion_label_count_mismatch(cache, tmp_path):
    _fake_fashion(tmp_path / "src", 15, 5)
    _idx(tmp_path / "src" / "fmnist" / "t10k-labels-idx1-ubyte.gz", np.zeros(3))
    with pytest.raises(AnnotationError, match="3 labels for 50 images"):
        load_task("fashion_mnist", root=tmp_path / "src", quick=True)


def test_system_fashion_mnist_default_size(cache):
    _fashion_or_skip()
    data = load_task("fashion_mnist")
    assert {k: len(s) for k, s in data.splits.items()} == {"train": 500, "val": 100, "test": 300}
    assert data.source_files[0].startswith(str(fashion.SYSTEM_ROOT))
