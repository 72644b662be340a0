"""Procedurally drawn scenes: a scene-centric source task and target tasks near it, offline.

The paper's second source task is Places (scenes), against ImageNet (objects). Here the
object-centric source is Fashion-MNIST (``fashion_source``) and the scene-centric one is
``scene_source``: 32x32 colour images whose class is the *layout* of regions and textures
(a beach is three horizontal bands, a road a trapezoid converging on a vanishing point, a
city a row of window-textured blocks ...), never one centred object. Region colours and
textures are drawn from one shared pool for every class, so colour alone does not give the
class away; geometry (horizon heights, peaks, widths, vanishing points) is jittered per image.

Tasks (each deterministic: one seed per task and split, materialised atomically as PNGs):

* ``scene_source``: the 10 outdoor/indoor layouts, 2000/200/100 images per class
  (quick 500/50/20) for training a source network.
* ``scene_categories``: the same 10 layouts drawn afresh (other seeds), a small target task
  (30/10/30 per class, quick 10/5/10): near the scene source, as SUN397 is near Places.
* ``indoor_layouts``: 4 layouts no source saw (stairs, window wall, shelves, doorway),
  30/10/30 per class (quick 10/5/10): near the scene source as MIT Indoor 67 is near Places.
* ``fashion_source``: Fashion-MNIST's training file split 5400/600 per class into train and
  val (quick 1000/100), test 100 per class from t10k (quick 20): the object-centric source.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from transferlab.data.base import TaskData
from transferlab.data.builtin._materialise import balanced_subset, materialise, write_image_folder
from transferlab.data.generic import read_image_folder
from transferlab.data.tasks import TaskSpec, register
from transferlab.errors import TransferlabError

VERSION = 1
SIZE = 32
SOURCE_LAYOUTS = ["beach", "field", "mountains", "forest", "city", "road", "room", "corridor", "lake", "night"]
INDOOR_LAYOUTS = ["stairs", "window_wall", "shelves", "doorway"]

# images per class and split: {task: {quick: {split: n}}}
SCENE_SIZES = {
    "scene_source": {False: {"train": 2000, "val": 200, "test": 100}, True: {"train": 500, "val": 50, "test": 20}},
    "scene_categories": {False: {"train": 30, "val": 10, "test": 30}, True: {"train": 10, "val": 5, "test": 10}},
    "indoor_layouts": {False: {"train": 30, "val": 10, "test": 30}, True: {"train": 10, "val": 5, "test": 10}},
}
FASHION_SOURCE_SIZES = {False: {"train": 5400, "val": 600, "test": 100}, True: {"train": 1000, "val": 100, "test": 20}}
# what kind of source a network trained on each task is (the paper's ImageNet = object, Places = scene)
SOURCE_KINDS = {"fashion_source": "object", "fashion_mnist": "object", "scene_source": "scene",
                "scene_categories": "scene"}
SEEDS = {"scene_source": 201, "scene_categories": 202, "indoor_layouts": 203, "fashion_source": 204}
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}

Canvas = np.ndarray  # float32 (SIZE, SIZE, 3) in 0..255
_Y, _X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE  # row and column coordinates in [0, 1)


# --------------------------------------------------------------------------------- textures
def _colour(rng: np.random.Generator, dark: bool = False) -> np.ndarray:
    """A random colour from the pool every class shares (``dark`` for night scenes only)."""
    value = rng.uniform(15, 70) if dark else rng.uniform(60, 245)
    grey = rng.uniform(0.0, 1.0) < 0.2
    tint = np.ones(3) if grey else rng.dirichlet(np.ones(3)) * 3
    return np.clip(value * (0.45 + 0.55 * tint), 0, 255).astype(np.float32)


def _texture(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    """A (SIZE, SIZE, 3) texture of one colour: flat, stripes, checks, speckle or a gradient."""
    kind = rng.integers(0, 6)
    period = rng.integers(3, 7)
    amp = rng.uniform(18, 45)
    pattern: np.ndarray
    if kind == 0:
        pattern = np.zeros((SIZE, SIZE), np.float32)
    elif kind == 1:
        pattern = np.where((np.arange(SIZE)[:, None] // (period // 2 + 1)) % 2 == 0, 1.0, -1.0) * np.ones((1, SIZE))
    elif kind == 2:
        pattern = np.where((np.arange(SIZE)[None, :] // (period // 2 + 1)) % 2 == 0, 1.0, -1.0) * np.ones((SIZE, 1))
    elif kind == 3:
        cells = (np.arange(SIZE)[:, None] // period + np.arange(SIZE)[None, :] // period) % 2
        pattern = np.where(cells == 0, 1.0, -1.0)
    elif kind == 4:
        pattern = rng.uniform(-1.0, 1.0, (SIZE, SIZE))
    else:
        angle = rng.uniform(0, 2 * np.pi)
        pattern = 2.0 * ((np.cos(angle) * _X + np.sin(angle) * _Y) % 1.0) - 1.0
    out = colour[None, None, :] + amp * pattern[:, :, None].astype(np.float32)
    return out + rng.normal(0, 5, (SIZE, SIZE, 1)).astype(np.float32)


def _paint(canvas: Canvas, mask: np.ndarray, rng: np.random.Generator, dark: bool = False,
           texture: np.ndarray | None = None) -> None:
    canvas[mask] = (texture if texture is not None else _texture(rng, _colour(rng, dark)))[mask]


# --------------------------------------------------------------------------------- layouts
def _wavy(rng: np.random.Generator, level: float, amp: float = 0.03) -> np.ndarray:
    """A near-horizontal boundary (one height per column) around ``level``."""
    phase, freq, tilt = rng.uniform(0, 2 * np.pi), rng.uniform(1, 3), rng.uniform(-0.08, 0.08)
    return level + tilt * (_X[0] - 0.5) + amp * np.sin(2 * np.pi * freq * _X[0] + phase)


def _beach(c: Canvas, rng: np.random.Generator) -> None:
    h1 = _wavy(rng, rng.uniform(0.28, 0.42), 0.005)
    h2 = _wavy(rng, float(h1.mean()) + rng.uniform(0.18, 0.3), 0.04)
    _paint(c, np.ones_like(_Y, bool), rng)
    _paint(c, _Y >= h1[None, :], rng)
    _paint(c, _Y >= h2[None, :], rng)


def _field(c: Canvas, rng: np.random.Generator) -> None:
    h = _wavy(rng, rng.uniform(0.35, 0.6), 0.01)
    _paint(c, np.ones_like(_Y, bool), rng)
    _paint(c, _Y >= h[None, :], rng)


def _mountains(c: Canvas, rng: np.random.Generator) -> None:
    peaks = np.sort(rng.uniform(0, 1, rng.integers(2, 4)))
    heights = rng.uniform(0.1, 0.4, len(peaks))
    base = rng.uniform(0.65, 0.8)
    ridge = np.full(SIZE, base, np.float32)
    for px, ph in zip(peaks, heights, strict=True):
        slope = (base - ph) / rng.uniform(0.2, 0.35)
        ridge = np.minimum(ridge, ph + slope * np.abs(_X[0] - px))
    _paint(c, np.ones_like(_Y, bool), rng)
    _paint(c, _Y >= ridge[None, :], rng)
    _paint(c, _Y >= _wavy(rng, base + rng.uniform(0.05, 0.12), 0.01)[None, :], rng)


def _forest(c: Canvas, rng: np.random.Generator) -> None:
    _paint(c, np.ones_like(_Y, bool), rng)
    trunk = _texture(rng, _colour(rng))
    for x0 in rng.uniform(0, 1, rng.integers(4, 8)):
        width = rng.uniform(0.05, 0.1)
        _paint(c, np.abs(_X - x0) < width / 2, rng, texture=trunk)
    canopy = _wavy(rng, rng.uniform(0.18, 0.32), 0.06)
    _paint(c, _Y < canopy[None, :], rng)


def _city(c: Canvas, rng: np.random.Generator) -> None:
    _paint(c, np.ones_like(_Y, bool), rng)
    edges = np.sort(np.concatenate([[0.0, 1.0], rng.uniform(0.1, 0.9, rng.integers(2, 5))]))
    wall, window = _colour(rng), _colour(rng)
    for left, right in zip(edges[:-1], edges[1:], strict=True):
        top = rng.uniform(0.15, 0.6)
        block = (_X >= left + 0.01) & (_X < right - 0.01) & (_Y >= top)
        c[block] = wall + rng.normal(0, 5)
        step = rng.integers(3, 5)
        rows, cols = (np.arange(SIZE)[:, None] % step == 1), (np.arange(SIZE)[None, :] % step == 1)
        c[block & rows & cols] = window


def _road(c: Canvas, rng: np.random.Generator) -> None:
    horizon, vx = rng.uniform(0.3, 0.5), rng.uniform(0.35, 0.65)
    half = rng.uniform(0.25, 0.45)  # half width of the road at the bottom
    _paint(c, np.ones_like(_Y, bool), rng)
    ground = _Y >= horizon
    _paint(c, ground, rng)
    t = np.clip((_Y - horizon) / (1 - horizon), 0, 1)
    road = ground & (np.abs(_X - vx) < half * t + 0.01)
    _paint(c, road, rng)
    line = road & (np.abs(_X - vx) < 0.02 + 0.02 * t) & ((_Y * SIZE).astype(int) // 3 % 2 == 0)
    c[line] = _colour(rng)


def _box(rng: np.random.Generator, depth: tuple[float, float]) -> tuple[float, float, float, float]:
    cx, cy = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    w, h = rng.uniform(*depth), rng.uniform(*depth)
    return cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2


def _room(c: Canvas, rng: np.random.Generator) -> None:
    """Back wall, floor, ceiling and two side walls of a box seen from inside."""
    x0, x1, y0, y1 = _box(rng, (0.35, 0.55))
    _paint(c, np.ones_like(_Y, bool), rng)  # side walls
    down = np.clip((_Y - y1) / (1 - y1), 0, 1)  # 0 at the back wall's bottom edge, 1 at the image bottom
    up = np.clip((y0 - _Y) / y0, 0, 1)
    floor = (_Y >= y1) & (_X >= x0 * (1 - down)) & (_X < x1 + (1 - x1) * down)
    ceiling = (_Y < y0) & (_X >= x0 * (1 - up)) & (_X < x1 + (1 - x1) * up)
    _paint(c, floor, rng)
    _paint(c, ceiling, rng)
    _paint(c, (_X >= x0) & (_X < x1) & (_Y >= y0) & (_Y < y1), rng)


def _corridor(c: Canvas, rng: np.random.Generator) -> None:
    """Concentric frames shrinking to a vanishing point."""
    cx, cy = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65)
    frames = rng.integers(3, 5)
    a, b = _texture(rng, _colour(rng)), _texture(rng, _colour(rng))
    for k in range(frames):
        r = 0.5 * (1 - k / frames) + 0.05
        mask = (np.abs(_X - cx) < r) & (np.abs(_Y - cy) < r * rng.uniform(0.9, 1.3))
        _paint(c, mask, rng, texture=a if k % 2 == 0 else b)
    _paint(c, (np.abs(_X - cx) < 0.06) & (np.abs(_Y - cy) < 0.08), rng)


def _lake(c: Canvas, rng: np.random.Generator) -> None:
    """Sky, a jagged tree line, and water below that mirrors it (darker)."""
    water = rng.uniform(0.5, 0.62)
    trees = water - rng.uniform(0.12, 0.22) - 0.06 * rng.uniform(0, 1, SIZE).astype(np.float32)
    _paint(c, np.ones_like(_Y, bool), rng)
    _paint(c, (_Y >= trees[None, :]) & (_Y < water), rng)
    top = c[: int(water * SIZE)]
    rows = SIZE - int(water * SIZE)
    mirror = top[::-1][:rows] * rng.uniform(0.55, 0.8) + rng.normal(0, 6, (rows, SIZE, 3))
    c[int(water * SIZE):] = mirror if len(mirror) == rows else c[int(water * SIZE):]


def _night(c: Canvas, rng: np.random.Generator) -> None:
    _paint(c, np.ones_like(_Y, bool), rng, dark=True)
    for _ in range(rng.integers(10, 30)):
        y, x = rng.integers(0, SIZE * 0.6), rng.integers(0, SIZE)  # type: ignore[call-overload]  # kept: the drawn scenes' fingerprint
        c[y, x] = rng.uniform(190, 255)
    h = _wavy(rng, rng.uniform(0.65, 0.8), 0.05)
    _paint(c, _Y >= h[None, :], rng, dark=True)


def _stairs(c: Canvas, rng: np.random.Generator) -> None:
    steps = rng.integers(4, 7)
    rise = rng.uniform(0.5, 0.8) / steps
    _paint(c, np.ones_like(_Y, bool), rng)
    tread, riser = _texture(rng, _colour(rng)), _texture(rng, _colour(rng))
    going_up = rng.uniform() < 0.5
    for k in range(steps):
        x = _X if going_up else 1 - _X
        step = (x >= k / steps) & (_Y >= 1 - (k + 1) * rise)
        _paint(c, step, rng, texture=tread)
        _paint(c, step & (_Y < 1 - (k + 1) * rise + 0.04), rng, texture=riser)


def _window_wall(c: Canvas, rng: np.random.Generator) -> None:
    _paint(c, np.ones_like(_Y, bool), rng)
    _paint(c, _Y >= rng.uniform(0.75, 0.88), rng)
    glass = _texture(rng, _colour(rng))
    for _ in range(rng.integers(1, 3)):
        x0, y0 = rng.uniform(0.05, 0.55), rng.uniform(0.08, 0.3)
        w, h = rng.uniform(0.2, 0.4), rng.uniform(0.25, 0.4)
        frame = (_X >= x0) & (_X < x0 + w) & (_Y >= y0) & (_Y < y0 + h)
        c[frame] = _colour(rng)
        _paint(c, frame & (_X >= x0 + 0.04) & (_X < x0 + w - 0.04) & (_Y >= y0 + 0.04) & (_Y < y0 + h - 0.04)
               & (np.abs(_X - x0 - w / 2) > 0.02), rng, texture=glass)


def _shelves(c: Canvas, rng: np.random.Generator) -> None:
    _paint(c, np.ones_like(_Y, bool), rng)
    board = _colour(rng)
    levels = np.linspace(rng.uniform(0.2, 0.3), rng.uniform(0.8, 0.95), rng.integers(3, 5))
    for level in levels:
        x = 0.0
        while x < 1:
            w, h = rng.uniform(0.05, 0.15), rng.uniform(0.08, 0.15)
            _paint(c, (_X >= x) & (_X < x + w) & (_Y < level) & (_Y >= level - h), rng)
            x += w + rng.uniform(0.0, 0.08)
        c[(_Y >= level) & (_Y < level + 0.05)] = board


def _doorway(c: Canvas, rng: np.random.Generator) -> None:
    _paint(c, np.ones_like(_Y, bool), rng)
    floor = rng.uniform(0.8, 0.9)
    _paint(c, _Y >= floor, rng)
    x0, w, top = rng.uniform(0.15, 0.55), rng.uniform(0.25, 0.35), rng.uniform(0.1, 0.3)
    door = (_X >= x0) & (_X < x0 + w) & (_Y >= top) & (_Y < floor)
    c[door] = _colour(rng)
    _paint(c, door & (_X >= x0 + 0.04) & (_X < x0 + w - 0.04) & (_Y >= top + 0.04), rng)
    knob = (np.abs(_X - (x0 + w - 0.08)) < 0.025) & (np.abs(_Y - (top + floor) / 2) < 0.025)
    c[knob] = _colour(rng)


LAYOUTS: dict[str, Callable[[Canvas, np.random.Generator], None]] = {
    "beach": _beach, "field": _field, "mountains": _mountains, "forest": _forest, "city": _city,
    "road": _road, "room": _room, "corridor": _corridor, "lake": _lake, "night": _night,
    "stairs": _stairs, "window_wall": _window_wall, "shelves": _shelves, "doorway": _doorway,
}


def draw_scene(layout: str, rng: np.random.Generator) -> np.ndarray:
    """One (SIZE, SIZE, 3) uint8 scene of ``layout``, mirrored left-right half of the time."""
    canvas: np.ndarray = np.zeros((SIZE, SIZE, 3), np.float32)
    LAYOUTS[layout](canvas, rng)
    canvas = canvas * rng.uniform(0.85, 1.15) + rng.normal(0, 4, canvas.shape)  # exposure, sensor noise
    if rng.uniform() < 0.5:
        canvas = canvas[:, ::-1]
    return np.clip(canvas, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------- tasks
def _sizes(task: str, quick: bool) -> dict[str, int]:
    return SCENE_SIZES[task][quick]


def _build_scenes(task: str, layouts: list[str], quick: bool, folder: Path) -> None:
    def items():
        for split, per_class in _sizes(task, quick).items():
            for k, layout in enumerate(layouts):
                rng = np.random.default_rng([SEEDS[task], SPLIT_SEEDS[split], k])
                for i in range(per_class):
                    yield split, layout, f"{layout}_{i:05d}.png", draw_scene(layout, rng)

    write_image_folder(folder, items())


def _scene_task(task: str, layouts: list[str], quick: bool) -> TaskData:
    key = f"{task}-v{VERSION}{'-quick' if quick else ''}"

    def read(folder: Path) -> TaskData:
        data = read_image_folder(folder)
        data.name = task
        data.notes.append(f"built-in task materialised in {folder}")
        return data

    return materialise(key, lambda folder: _build_scenes(task, layouts, quick, folder), read)


def _no_root(task: str, root: Path | None) -> None:
    if root is not None:
        raise TransferlabError(f"{task} is drawn offline and takes no root (got {root})")


def read_scene_source(root: Path | None = None, quick: bool = False) -> TaskData:
    """The scene-centric source task: 10 layouts, thousands of images each."""
    _no_root("scene_source", root)
    return _scene_task("scene_source", SOURCE_LAYOUTS, quick)


def read_scene_categories(root: Path | None = None, quick: bool = False) -> TaskData:
    """The source's 10 layouts drawn afresh, a small target task."""
    _no_root("scene_categories", root)
    return _scene_task("scene_categories", SOURCE_LAYOUTS, quick)


def read_indoor_layouts(root: Path | None = None, quick: bool = False) -> TaskData:
    """Four indoor layouts no source was trained on."""
    _no_root("indoor_layouts", root)
    return _scene_task("indoor_layouts", INDOOR_LAYOUTS, quick)


def read_fashion_source(root: Path | None = None, quick: bool = False) -> TaskData:
    """Fashion-MNIST's training file as a source task (train/val), test from t10k."""
    from transferlab.data.builtin.fashion import CLASS_NAMES, find_files, fingerprint, load_arrays

    files = find_files(root)
    key = f"fashion_source-v{VERSION}{'-quick' if quick else ''}-{fingerprint(files)}"
    sizes = FASHION_SOURCE_SIZES[quick]

    def build(folder: Path) -> None:
        arrays = load_arrays(files)
        rng = np.random.default_rng(SEEDS["fashion_source"])
        classes = list(range(len(CLASS_NAMES)))
        picked = balanced_subset(arrays["train_labels"], classes, {"train": sizes["train"], "val": sizes["val"]},
                                 rng, str(files["train_labels"]))
        picked.update(balanced_subset(arrays["test_labels"], classes, {"test": sizes["test"]}, rng,
                                      str(files["test_labels"])))

        def items():
            for split, pairs in picked.items():
                source, prefix = ("test", "t10k") if split == "test" else ("train", "train")
                for cls, index in pairs:
                    yield split, CLASS_NAMES[cls], f"{prefix}-{index:05d}.png", arrays[f"{source}_images"][index]

        write_image_folder(folder, items())

    def read(folder: Path) -> TaskData:
        data = read_image_folder(folder)
        data.name = "fashion_source"
        data.source_files = [str(files[k]) for k in sorted(files)]
        data.notes.append(f"built-in task materialised in {folder}")
        return data

    return materialise(key, build, read)


NO_ROOT = "built in, no root (drawn offline into the cache)"
SCENE_TASKS = [
    register(TaskSpec(
        name="fashion_source", title="Fashion-MNIST source task (object-centric, 60,000 training images)",
        group=1, distance=100, kind="single", metric="accuracy",
        layout="optional: same IDX files as fashion_mnist", reader=read_fashion_source, builtin=True,
        protocol="for training source networks: 5400/600 images per class (train/val) from the official "
        "training file (quick 1000/100), test 100 per class from t10k (quick 20), seeded; accuracy",
    )),
    register(TaskSpec(
        name="scene_source", title="Drawn scenes source task (scene-centric, 10 layouts)",
        group=1, distance=100, kind="single", metric="accuracy", layout=NO_ROOT, reader=read_scene_source,
        builtin=True,
        protocol="for training source networks: 2000/200/100 drawn 32x32 scenes per layout (quick 500/50/20); "
        "class = arrangement of regions and textures; accuracy",
    )),
    register(TaskSpec(
        name="scene_categories", title="Scene categories (the 10 drawn layouts, new images)",
        group=1, distance=101, kind="single", metric="accuracy", layout=NO_ROOT,
        reader=read_scene_categories, builtin=True,
        protocol="30/10/30 drawn scenes per layout (quick 10/5/10), seeds disjoint from scene_source; "
        "accuracy on test",
    )),
    register(TaskSpec(
        name="indoor_layouts", title="Indoor layouts (stairs, window wall, shelves, doorway)",
        group=1, distance=101, kind="single", metric="mean_class_accuracy", layout=NO_ROOT,
        reader=read_indoor_layouts, builtin=True,
        protocol="4 layouts no source saw, 30/10/30 drawn scenes per class (quick 10/5/10); mean class "
        "accuracy on test",
    )),
]
