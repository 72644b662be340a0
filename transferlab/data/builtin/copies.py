"""``photo_copies`` (group 5, instance retrieval): the Copydays idea on the photos shipped
inside the scikit-image wheel.

Each of 20 photos is a query (the original, not in the database). The database holds, for
each photo, copies made by seeded transforms (strong combined attack, crop, JPEG, rotation,
colour jitter, blur, down-scaling, occlusion), plus distractors that are copies of no query
(synthetic scikit-image pictures and LFW faces). A query's positives are its own copies;
scoring is Holidays-style mAP. Database files have opaque shuffled names so an index order
never leaks the answer.

On disk::

    queries/<photo>.png
    db/<nnnn>.png
    queries.csv    header query,positives  (positives: db file names separated by ';')
    db_info.csv    header path,source,transform  (for people; not needed to score)
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from transferlab.data.base import Query, Split, TaskData
from transferlab.data.builtin._materialise import materialise, save_png, to_rgb_image
from transferlab.data.generic import IMAGE_EXTENSIONS
from transferlab.errors import AnnotationError, TransferlabError

VERSION = 1
SEED = 106
MAX_SIDE = 320  # photos are reduced to this longest side before copying (networks resize anyway)

# Photos inside the scikit-image wheel (no pooch download). ``cat`` is ``chelsea`` again and
# ``motorcycle_right`` is another view of ``motorcycle_left``, so neither is used.
QUERY_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "microaneurysms",
    "moon",
    "motorcycle_left",
    "page",
    "retina",
    "rocket",
    "text",
)
DISTRACTOR_PICTURES = ("horse", "colorwheel", "checkerboard", "shepp_logan_phantom")
TRANSFORMS = ("strong", "crop", "jpeg", "rotate", "jitter", "blur", "scale", "occlude")
# copies per photo (a prefix of TRANSFORMS), copies per distractor picture, LFW faces
SIZES = {False: (8, 2, 32), True: (4, 1, 6)}


def load_photo(name: str) -> np.ndarray:
    """A scikit-image picture as uint8 RGB, longest side at most MAX_SIDE."""
    import skimage.data

    try:
        if name == "motorcycle_left":
            pixels = skimage.data.stereo_motorcycle()[0]
        else:
            pixels = getattr(skimage.data, name)()
    except Exception as exc:  # a picture missing from this scikit-image build
        raise TransferlabError(f"photo_copies: scikit-image picture {name!r} unavailable ({exc})") from None
    pixels = np.asarray(pixels)
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    elif pixels.dtype != np.uint8:
        pixels = np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    image = to_rgb_image(pixels)
    scale = MAX_SIDE / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(image)


# ---------------------------------------------------------------------------------------------
# transforms (PIL in, PIL out, every parameter drawn from rng)


def _crop(image: Image.Image, rng: np.random.Generator, low: float = 0.5, high: float = 0.8) -> Image.Image:
    fw, fh = rng.uniform(low, high, size=2)
    w, h = max(8, round(image.width * fw)), max(8, round(image.height * fh))
    x = int(rng.integers(0, image.width - w + 1))
    y = int(rng.integers(0, image.height - h + 1))
    return image.crop((x, y, x + w, y + h))


def _scale(image: Image.Image, rng: np.random.Generator, low: float = 0.3, high: float = 0.6) -> Image.Image:
    f = rng.uniform(low, high)
    size = (max(8, round(image.width * f)), max(8, round(image.height * f)))
    return image.resize(size, Image.Resampling.BILINEAR)


def _rotate(image: Image.Image, rng: np.random.Generator, low: float = 5.0, high: float = 20.0) -> Image.Image:
    angle = rng.uniform(low, high) * rng.choice([-1.0, 1.0])
    return image.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))


def _jpeg(image: Image.Image, rng: np.random.Generator, low: int = 5, high: int = 20) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(low, high + 1)))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.6, 1.4))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.6, 1.4))
    return ImageEnhance.Color(image).enhance(rng.uniform(0.3, 1.7))


def _blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(1.5, 3.0)))


def _occlude(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Paste a flat rectangle over 10-20% of the picture (Copydays' 'paint' attacks)."""
    out = image.copy()
    area = rng.uniform(0.10, 0.20) * image.width * image.height
    aspect = rng.uniform(0.5, 2.0)
    w = min(image.width, max(1, round((area * aspect) ** 0.5)))
    h = min(image.height, max(1, round(area / w)))
    x = int(rng.integers(0, image.width - w + 1))
    y = int(rng.integers(0, image.height - h + 1))
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    out.paste(Image.new("RGB", (w, h), colour), (x, y))
    return out


def _strong(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Several attacks at once, like Copydays' 'strong' set."""
    image = _crop(image, rng, 0.6, 0.85)
    image = _rotate(image, rng, 3.0, 10.0)
    image = _jitter(image, rng)
    image = _occlude(image, rng)
    image = _scale(image, rng, 0.5, 0.8)
    return _jpeg(image, rng, 15, 40)


APPLY: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "strong": _strong,
    "crop": _crop,
    "jpeg": _jpeg,
    "rotate": _rotate,
    "jitter": _jitter,
    "blur": _blur,
    "scale": _scale,
    "occlude": _occlude,
}


def make_copy(pixels: np.ndarray, transform: str, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(APPLY[transform](Image.fromarray(pixels), rng).convert("RGB"))


# ---------------------------------------------------------------------------------------------
# build and read


def _build(quick: bool, folder: Path) -> None:
    copies, per_distractor, faces = SIZES[quick]
    db: list[tuple[str, str, np.ndarray]] = []  # (source, transform, pixels)
    for p, name in enumerate(QUERY_PHOTOS):
        photo = load_photo(name)
        save_png(photo, folder / "queries" / f"{name}.png")
        for k, transform in enumerate(TRANSFORMS[:copies]):
            rng = np.random.default_rng([SEED, 0, p, k])
            db.append((name, transform, make_copy(photo, transform, rng)))
    for p, name in enumerate(DISTRACTOR_PICTURES):
        picture = load_photo(name)
        for k in range(per_distractor):
            rng = np.random.default_rng([SEED, 1, p, k])
            transform = str(rng.choice(TRANSFORMS))
            db.append((f"distractor:{name}", transform, make_copy(picture, transform, rng)))
    if faces:
        import skimage.data

        lfw = skimage.data.lfw_subset()
        for j in range(faces):
            face = Image.fromarray(np.rint(np.clip(lfw[j], 0, 1) * 255).astype(np.uint8))
            face = face.resize((100, 100), Image.Resampling.BICUBIC)
            db.append((f"distractor:lfw_{j:03d}", "none", np.asarray(face.convert("RGB"))))

    order = np.random.default_rng([SEED, 2]).permutation(len(db))
    file_of: dict[str, list[str]] = {}
    info_rows = []
    for slot, item in enumerate(order):
        source, transform, pixels = db[item]
        file_name = f"{slot:04d}.png"
        save_png(pixels, folder / "db" / file_name)
        file_of.setdefault(source, []).append(file_name)
        info_rows.append(f"db/{file_name},{source},{transform}")
    lines = ["query,positives"]
    lines += [f"queries/{name}.png,{';'.join(sorted(file_of[name]))}" for name in QUERY_PHOTOS]
    (folder / "queries.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "db_info.csv").write_text("path,source,transform\n" + "\n".join(info_rows) + "\n", encoding="utf-8")


def read_copies_folder(folder: Path) -> TaskData:
    """Read the layout written by ``_build``: database = ``db/`` sorted by name, queries and
    their positives from ``queries.csv``."""
    db_dir = folder / "db"
    if not db_dir.is_dir():
        raise TransferlabError(f"{folder}: missing database folder {db_dir}")
    names = sorted(p.name for p in db_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    index = {name: i for i, name in enumerate(names)}
    gt = folder / "queries.csv"
    queries = []
    try:
        with open(gt, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            if next(reader, None) != ["query", "positives"]:
                raise AnnotationError(gt, "header must be query,positives", line=1)
            for fields in reader:
                line = reader.line_num
                if len(fields) != 2:
                    raise AnnotationError(gt, f"expected 2 fields, found {len(fields)}", line=line)
                query_path = folder / fields[0]
                if not query_path.is_file():
                    raise AnnotationError(gt, f"query image {query_path} is missing", line=line)
                unknown = [n for n in fields[1].split(";") if n not in index]
                if unknown or not fields[1]:
                    raise AnnotationError(gt, f"positives not in {db_dir}: {', '.join(unknown) or '(none)'}", line=line)
                positives = np.array(sorted(index[n] for n in fields[1].split(";")), dtype=np.int64)
                queries.append(Query(path=str(query_path), positives=positives, name=query_path.stem))
    except FileNotFoundError:
        raise AnnotationError(gt, "file not found") from None
    paths = [str(db_dir / n) for n in names]
    return TaskData(
        name="photo_copies",
        kind="retrieval",
        classes=[],
        splits={"db": Split("db", paths, np.full(len(paths), -1, dtype=np.int64))},
        queries=queries,
        root=str(folder),
        source_files=[str(gt), "skimage.data"],
        notes=[f"built-in task materialised in {folder}"],
    )


def read_photo_copies(root: Path | None = None, quick: bool = False) -> TaskData:
    """20 query photos; database of their transformed copies plus distractors."""
    if root is not None:
        raise TransferlabError("task photo_copies is built in (scikit-image photos) and takes no root")
    key = f"photo_copies-v{VERSION}{'-quick' if quick else ''}"
    return materialise(key, lambda folder: _build(quick, folder), read_copies_folder)
