"""Procedurally drawn shape tasks (PIL, seeded, 96x96 RGB PNG).

``shape_attributes`` (group 2, attributes): 1-3 objects per image, each with a colour, a shape,
a texture and a size; the image has an attribute when any of its objects has it (12 binary
attributes, labels in {1, -1}). Stored in the CSV layout with a ``labels`` column.

``shape_relations`` (group 4, compositional): two different shapes in a spatial relation, one
label per image, e.g. ``circle_left_of_square``. Single-label on purpose: the class is the
composition (who, where, whom), and each pair of shapes appears under four classes
(a left of b, b left of a, a above b, b above a), so recognising the objects alone is right
only one time in four; a multi-label split into parts would let part detectors solve it.
Colours and sizes are random nuisances. Stored in the image-folder layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from transferlab.data.base import TaskData
from transferlab.data.builtin._materialise import (
    materialise,
    save_png,
    write_csv,
    write_image_folder,
)
from transferlab.data.generic import read_csv_dataset, read_image_folder
from transferlab.errors import TransferlabError

VERSION = 1
CANVAS = 96
SUPERSAMPLE = 4  # masks are drawn 4x larger and reduced, for smooth edges

COLOURS = {
    "red": (215, 45, 45),
    "green": (45, 165, 70),
    "blue": (50, 80, 215),
    "yellow": (235, 200, 40),
}
SHAPES = ("circle", "square", "triangle")
TEXTURES = ("solid", "striped", "dotted")
SIZES = {"small": (8.0, 11.0), "large": (17.0, 22.0)}  # circumradius range, pixels
ATTRIBUTES = (*COLOURS, *SHAPES, *TEXTURES, *SIZES)
RELATIONS = ("left_of", "above")

ATTRIBUTE_SPLITS = {False: {"train": 400, "val": 100, "test": 200}, True: {"train": 100, "val": 40, "test": 60}}
RELATION_SPLITS = {False: {"train": 30, "val": 10, "test": 20}, True: {"train": 8, "val": 4, "test": 6},
                   "demo": {"train": 8, "val": 4, "test": 25}}  # demo: quick train/val, a 300-image test split
ATTRIBUTE_SEED = 102
RELATION_SEED = 105
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: tuple[int, int, int]
    texture: str
    cx: float
    cy: float
    radius: float
    angle: float  # degrees


# ---------------------------------------------------------------------------------------------
# drawing


def _background(rng: np.random.Generator) -> np.ndarray:
    """A desaturated background (flat, gradient or noisy), so object colours stand out."""

    def grey() -> np.ndarray:
        return rng.uniform(70, 190) + rng.uniform(-12, 12, size=3)

    kind = rng.integers(3)
    base = np.broadcast_to(grey(), (CANVAS, CANVAS, 3)).astype(np.float64)
    if kind == 1:
        theta = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:CANVAS, 0:CANVAS] / (CANVAS - 1)
        t = ((xx - 0.5) * math.cos(theta) + (yy - 0.5) * math.sin(theta)) / math.sqrt(0.5) * 0.5 + 0.5
        base = base * (1 - t[..., None]) + grey() * t[..., None]
    elif kind == 2:
        base = base + rng.normal(0, 8, size=(CANVAS, CANVAS, 1))
    return base


def _mask(thing: Thing) -> np.ndarray:
    """Coverage of one object in [0, 1], anti-aliased."""
    size = CANVAS * SUPERSAMPLE
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    cx, cy, r = (v * SUPERSAMPLE for v in (thing.cx, thing.cy, thing.radius))
    if thing.shape == "circle":
        r *= 0.9  # similar area to the square
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        corners, start = (4, 45.0) if thing.shape == "square" else (3, -90.0)
        points = [
            (
                cx + r * math.cos(math.radians(start + thing.angle + k * 360.0 / corners)),
                cy + r * math.sin(math.radians(start + thing.angle + k * 360.0 / corners)),
            )
            for k in range(corners)
        ]
        draw.polygon(points, fill=255)
    small = image.resize((CANVAS, CANVAS), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def _texture(thing: Thing, rng: np.random.Generator) -> np.ndarray:
    colour = np.asarray(thing.colour, dtype=np.float64)
    paint = np.broadcast_to(colour, (CANVAS, CANVAS, 3)).copy()
    if thing.texture == "solid":
        return paint
    light = np.array([245.0, 245.0, 245.0])
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float64)
    period = 6.0
    if thing.texture == "striped":
        theta = rng.uniform(0, math.pi)
        phase = (xx * math.cos(theta) + yy * math.sin(theta)) % period
        paint[phase >= period / 2] = light
    else:  # dotted
        ox, oy = rng.uniform(0, period, size=2)
        dx = (xx - ox) % period - period / 2
        dy = (yy - oy) % period - period / 2
        paint[dx * dx + dy * dy <= 1.7**2] = light
    return paint


def render(things: list[Thing], rng: np.random.Generator) -> np.ndarray:
    canvas = _background(rng)
    for thing in things:
        m = _mask(thing)[..., None]
        canvas = canvas * (1 - m) + _texture(thing, rng) * m
    return np.rint(canvas).clip(0, 255).astype(np.uint8)


def _jitter(colour: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    values = np.clip(np.asarray(colour) + rng.integers(-20, 21, size=3), 0, 255)
    return (int(values[0]), int(values[1]), int(values[2]))


def _fits(cx: float, cy: float, r: float, placed: list[Thing], gap: float = 3.0) -> bool:
    return all(math.hypot(cx - t.cx, cy - t.cy) >= r + t.radius + gap for t in placed)


# ---------------------------------------------------------------------------------------------
# shape_attributes


def attribute_scene(rng: np.random.Generator) -> tuple[list[Thing], set[str]]:
    """1-3 non-overlapping objects with random attributes, and the image's positive attributes."""
    while True:
        things: list[Thing] = []
        positives: set[str] = set()
        for _ in range(int(rng.integers(1, 4))):
            colour = str(rng.choice(list(COLOURS)))
            shape = str(rng.choice(SHAPES))
            texture = str(rng.choice(TEXTURES))
            size = str(rng.choice(list(SIZES)))
            r = float(rng.uniform(*SIZES[size]))
            for _attempt in range(100):
                cx, cy = rng.uniform(r + 2, CANVAS - r - 2, size=2)
                if _fits(cx, cy, r, things):
                    break
            else:
                break  # no room: draw the whole scene again
            things.append(Thing(shape, _jitter(COLOURS[colour], rng), texture, float(cx), float(cy), r,
                                float(rng.uniform(0, 360))))
            positives |= {colour, shape, texture, size}
        else:
            return things, positives


def _build_attributes(quick: bool, folder: Path) -> None:
    for split, n in ATTRIBUTE_SPLITS[quick].items():
        rows = []
        for i in range(n):
            rng = np.random.default_rng([ATTRIBUTE_SEED, _SPLIT_CODE[split], i])
            things, positives = attribute_scene(rng)
            rel = f"images/{split}/{i:04d}.png"
            save_png(render(things, rng), folder / rel)
            rows.append((rel, ";".join(a for a in ATTRIBUTES if a in positives)))
        write_csv(folder / f"{split}.csv", "labels", rows)


def read_shape_attributes(root: Path | None = None, quick: bool = False) -> TaskData:
    """Twelve binary attributes (4 colours, 3 shapes, 3 textures, 2 sizes) of drawn scenes."""
    if root is not None:
        raise TransferlabError("task shape_attributes is built in (drawn images) and takes no root")
    key = f"shape_attributes-v{VERSION}{'-quick' if quick else ''}"

    def read(folder: Path) -> TaskData:
        data = read_csv_dataset(folder)
        data.name = "shape_attributes"
        data.kind = "attributes"
        data.notes.append(f"built-in task materialised in {folder}")
        return data

    return materialise(key, lambda folder: _build_attributes(quick, folder), read)


# ---------------------------------------------------------------------------------------------
# shape_relations


def relation_classes() -> list[tuple[str, str, str]]:
    """(first shape, relation, second shape) for every ordered pair of different shapes."""
    return [(a, rel, b) for a in SHAPES for b in SHAPES if a != b for rel in RELATIONS]


def class_name(first: str, relation: str, second: str) -> str:
    return f"{first}_{relation}_{second}"


def relation_scene(first: str, relation: str, second: str, rng: np.random.Generator) -> list[Thing]:
    """Two objects; ``first`` is left of (or above) ``second`` along a dominant axis: the
    gap along it is at least both radii plus 6 px and the offset across it at most 0.4 x that
    gap, so the relation is unambiguous."""
    while True:
        r1, r2 = rng.uniform(9, 15, size=2)
        along1 = rng.uniform(r1 + 2, CANVAS - r1 - 2)
        along2 = rng.uniform(r2 + 2, CANVAS - r2 - 2)
        across1 = rng.uniform(r1 + 2, CANVAS - r1 - 2)
        across2 = rng.uniform(r2 + 2, CANVAS - r2 - 2)
        gap = along2 - along1
        if gap >= r1 + r2 + 6 and abs(across2 - across1) <= 0.4 * gap:
            break
    if relation == "left_of":
        (x1, y1), (x2, y2) = (along1, across1), (along2, across2)
    else:
        (x1, y1), (x2, y2) = (across1, along1), (across2, along2)
    things = []
    for shape, x, y, r in ((first, x1, y1, r1), (second, x2, y2, r2)):
        colour = _jitter(COLOURS[str(rng.choice(list(COLOURS)))], rng)
        angle = float(rng.uniform(-15, 15))
        things.append(Thing(shape, colour, "solid", float(x), float(y), float(r), angle))
    return things


def _build_relations(quick: bool | str, folder: Path) -> None:
    classes = relation_classes()
    for split, n in RELATION_SPLITS[quick].items():
        items = []
        for c, (first, relation, second) in enumerate(classes):
            for i in range(n):
                rng = np.random.default_rng([RELATION_SEED, _SPLIT_CODE[split], c, i])
                image = render(relation_scene(first, relation, second, rng), rng)
                items.append((split, class_name(first, relation, second), f"{split}-{i:04d}.png", image))
        write_image_folder(folder, items)


def read_shape_relations(root: Path | None = None, quick: bool | str = False) -> TaskData:
    """Twelve composition classes: ordered pairs of different shapes x {left_of, above}."""
    if root is not None:
        raise TransferlabError("task shape_relations is built in (drawn images) and takes no root")
    if quick not in RELATION_SPLITS:
        raise TransferlabError(f"task shape_relations: option quick must be true, false or demo; got {quick!r}")
    key = f"shape_relations-v{VERSION}{'-quick' if quick is True else (f'-{quick}' if quick else '')}"

    def read(folder: Path) -> TaskData:
        data = read_image_folder(folder)
        data.name = "shape_relations"
        data.notes.append(f"built-in task materialised in {folder}")
        return data

    return materialise(key, lambda folder: _build_relations(quick, folder), read)
