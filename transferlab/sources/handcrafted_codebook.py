"""The handcrafted baseline's descriptors and its learned Fisher codebook (PCA + GMM).

The recipe and its numbers are documented in ``sources/handcrafted.py``, which turns these
into a Source; this module computes the per-image descriptors and learns, caches and loads
the codebook (from scikit-image's photos by default, or from a user's images).
"""


from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferlab.atomic import atomic_write
from transferlab.data.generic import IMAGE_EXTENSIONS
from transferlab.errors import BadImageError, TransferlabError
from transferlab.sources.preprocessing import Preprocessing

RECIPE_VERSION = 1
RECIPE = f"handcrafted-v{RECIPE_VERSION}"
INPUT_SIZE = 160
PREPROCESSING = Preprocessing(input_size=INPUT_SIZE, crop_pct=1.0, interpolation="bilinear",
                              mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
BLOCKS = ("fisher", "hog", "lbp", "color")  # canonical order of the concatenation

# dense DAISY: 104-d descriptors every 4 pixels (1156 per 160x160 image)
DAISY: dict[str, Any] = dict(step=4, radius=12, rings=2, histograms=6, orientations=8, normalization="l1")
PCA_DIM = 64
GMM_COMPONENTS = 32
HOG_CELLS = 5
LBP_POINTS, LBP_RADIUS = 8, 1
HSV_BINS = (8, 3, 3)

# Photos inside the scikit-image wheel (no pooch download); the default codebook's data.
CODEBOOK_PHOTOS = (
    "astronaut", "camera", "chelsea", "coffee", "coins", "hubble_deep_field",
    "immunohistochemistry", "moon", "page", "rocket", "text", "clock", "grass", "gravel",
    "brick", "retina", "cell", "motorcycle_left", "motorcycle_right",
)
DEFAULT_MAX_DESCRIPTORS = 20_000
CODEBOOK_KEYS = ("pca_mean", "pca_components", "weights", "means", "variances")

fit_count = 0  # codebooks fitted in this process (lets tests see that the cache is used)


# ----------------------------------------------------------------------- descriptors
def to_gray(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an (H, W, 3) float image in [0, 1] (as skimage's rgb2gray)."""
    return rgb @ np.array([0.2125, 0.7154, 0.0721], dtype=rgb.dtype)


def daisy_descriptors(gray: np.ndarray) -> np.ndarray:
    """Dense DAISY descriptors of a grayscale image, Hellinger-mapped, with their centre's
    (x, y) in [-0.5, 0.5] appended as the last two columns: (N, 104 + 2) float64."""
    from skimage.feature import daisy

    radius, step = DAISY["radius"], DAISY["step"]
    if min(gray.shape) <= 2 * radius:
        raise TransferlabError(f"handcrafted: image {gray.shape} too small for DAISY radius {radius}")
    desc = daisy(gray.astype(np.float32), **DAISY).astype(np.float64)  # float32: 30% faster
    rows, cols, dim = desc.shape
    desc = np.sqrt(np.maximum(desc.reshape(-1, dim), 0.0))
    ys = (radius + step * np.arange(rows) + 0.5) / gray.shape[0] - 0.5
    xs = (radius + step * np.arange(cols) + 0.5) / gray.shape[1] - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.concatenate([desc, xx.reshape(-1, 1), yy.reshape(-1, 1)], axis=1)


def power_l2(vector: np.ndarray) -> np.ndarray:
    """Signed square root then L2 normalisation (a zero vector stays zero)."""
    vector = np.sign(vector) * np.sqrt(np.abs(vector))
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _region_slices(height: int, width: int) -> list[tuple[slice, slice]]:
    """The whole image, then its 2x2 grid (top-left, top-right, bottom-left, bottom-right)."""
    h2, w2 = height // 2, width // 2
    return [(slice(None), slice(None)),
            (slice(0, h2), slice(0, w2)), (slice(0, h2), slice(w2, None)),
            (slice(h2, None), slice(0, w2)), (slice(h2, None), slice(w2, None))]


def hog_vector(gray: np.ndarray) -> np.ndarray:
    from skimage.feature import hog

    cell = max(2, min(gray.shape) // HOG_CELLS)
    return hog(gray, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2),
               block_norm="L2-Hys", feature_vector=True)


def lbp_vector(gray: np.ndarray) -> np.ndarray:
    """Uniform LBP code histograms (P+2 bins), whole image and 2x2 grid, each summing to 1.

    Codes: 0..P = rotation-invariant uniform patterns by their number of ones, P+1 = the rest."""
    from skimage.feature import local_binary_pattern

    codes = local_binary_pattern(np.round(gray * 255).astype(np.uint8), LBP_POINTS, LBP_RADIUS,
                                 method="uniform").astype(np.int64)
    r = LBP_RADIUS  # border codes compare against zero padding: leave them out
    codes = codes[r:-r, r:-r] if min(codes.shape) > 4 * r else codes
    bins = LBP_POINTS + 2
    return np.concatenate([_histogram(codes[r], bins) for r in _region_slices(*codes.shape)])


def color_vector(rgb: np.ndarray) -> np.ndarray:
    """Joint HSV histograms, whole image and 2x2 grid, each summing to 1. Computed at half
    resolution: a histogram barely changes and it is 4x cheaper."""
    from skimage.color import rgb2hsv

    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    small = rgb[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)) if min(h, w) >= 8 else rgb
    hsv = rgb2hsv(np.clip(small, 0.0, 1.0))
    nh, ns, nv = HSV_BINS
    idx = [np.minimum((hsv[..., c] * n).astype(np.int64), n - 1) for c, n in enumerate(HSV_BINS)]
    codes = (idx[0] * ns + idx[1]) * nv + idx[2]
    return np.concatenate([_histogram(codes[r], nh * ns * nv) for r in _region_slices(*codes.shape)])


def _histogram(codes: np.ndarray, bins: int) -> np.ndarray:
    counts = np.bincount(codes.ravel(), minlength=bins)[:bins].astype(np.float64)
    total = counts.sum()
    return counts / total if total > 0 else counts


_THREADPOOLS = None


def single_threaded_blas():
    """Context with one BLAS thread. The matrices here are small; on shared busy cores
    OpenBLAS threads made the Fisher encoding 50x slower (100 ms instead of 2 ms) and the
    codebook fit 10x slower. The controller is built once (threadpool_limits costs ~8 ms)."""
    global _THREADPOOLS
    if _THREADPOOLS is None:
        from sklearn.mixture import GaussianMixture  # noqa: F401  load sklearn's libraries first
        from threadpoolctl import ThreadpoolController

        _THREADPOOLS = ThreadpoolController()
    return _THREADPOOLS.limit(limits=1, user_api="blas")


# --------------------------------------------------------------------------- codebook
@dataclass(frozen=True, eq=False)
class Codebook:
    """PCA projection of the DAISY descriptors and the diagonal GMM of the Fisher vector."""

    pca_mean: np.ndarray  # (104,)
    pca_components: np.ndarray  # (PCA_DIM, 104), rows are principal axes
    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, PCA_DIM + 2)
    variances: np.ndarray  # (K, PCA_DIM + 2)
    info: dict = field(default_factory=dict, compare=False)

    @property
    def dim(self) -> int:
        """Length of the Fisher vector it produces."""
        return 2 * self.means.shape[0] * self.means.shape[1]

    def digest(self) -> str:
        h = hashlib.sha256(RECIPE.encode())
        for key in CODEBOOK_KEYS:
            array = np.ascontiguousarray(getattr(self, key), dtype=np.float64)
            h.update(f"{key}{array.shape}".encode())
            h.update(array.tobytes())
        return h.hexdigest()

    def project(self, descriptors: np.ndarray) -> np.ndarray:
        """(N, 104 + 2) Hellinger DAISY + position -> (N, PCA_DIM + 2)."""
        reduced = (descriptors[:, :-2] - self.pca_mean) @ self.pca_components.T
        return np.concatenate([reduced, descriptors[:, -2:]], axis=1)

    def fisher_vector(self, descriptors: np.ndarray) -> np.ndarray:
        """Improved Fisher vector (Sanchez et al. IJCV 2013, eqs. 22-23), before power/L2.

        ``descriptors`` are already projected, (T, D)."""
        x = descriptors
        count = max(len(x), 1)
        precision = 1.0 / self.variances  # (K, D)
        log_prob = (-0.5 * ((x * x) @ precision.T - 2.0 * x @ (self.means * precision).T
                            + np.sum(self.means ** 2 * precision, axis=1))
                    - 0.5 * np.sum(np.log(self.variances), axis=1) + np.log(self.weights))
        log_prob -= log_prob.max(axis=1, keepdims=True)
        gamma = np.exp(log_prob)
        gamma /= gamma.sum(axis=1, keepdims=True)  # (T, K) posteriors
        s0 = gamma.sum(axis=0)[:, None]  # (K, 1)
        s1 = gamma.T @ x  # (K, D)
        s2 = gamma.T @ (x * x)
        sigma = np.sqrt(self.variances)
        root_w = np.sqrt(self.weights)[:, None]
        g_mu = (s1 - self.means * s0) / (sigma * root_w * count)
        g_sigma = ((s2 - 2.0 * self.means * s1 + self.means ** 2 * s0) * precision - s0) / (
            math.sqrt(2.0) * root_w * count)
        return np.concatenate([g_mu.ravel(), g_sigma.ravel()])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        arrays = {key: getattr(self, key) for key in CODEBOOK_KEYS}
        arrays["recipe"] = np.array(RECIPE)
        arrays["images"] = np.array([str(v) for v in self.info.get("images", [])])
        arrays["n_descriptors"] = np.array(int(self.info.get("n_descriptors", 0)))
        atomic_write(path, lambda handle: np.savez(handle, **arrays))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Codebook:
        """Read and check a codebook file; problems name the file and the key."""
        path = Path(path)
        if not path.is_file():
            raise TransferlabError(f"handcrafted codebook {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                contents = {key: data[key] for key in data.files}
        except Exception as exc:
            raise TransferlabError(f"{path}: not a readable handcrafted codebook .npz ({exc})") from None
        for key in (*CODEBOOK_KEYS, "recipe"):
            if key not in contents:
                raise TransferlabError(f"{path}: handcrafted codebook lacks key {key!r}")
        recipe = str(contents["recipe"])
        if recipe != RECIPE:
            raise TransferlabError(f"{path}: codebook made for recipe {recipe}, this is {RECIPE}; "
                                   "refit it with fit_codebook")
        a = {k: np.asarray(contents[k], dtype=np.float64) for k in CODEBOOK_KEYS}
        book = cls(a["pca_mean"], a["pca_components"], a["weights"], a["means"], a["variances"],
                   info={"images": [str(v) for v in contents.get("images", np.array([]))],
                         "n_descriptors": int(contents.get("n_descriptors", 0)), "path": str(path)})
        book.check(path)
        return book

    def check(self, where: str | Path) -> None:
        desc_dim = (DAISY["rings"] * DAISY["histograms"] + 1) * DAISY["orientations"]
        k, d = self.means.shape if self.means.ndim == 2 else (0, 0)
        expected = {"pca_mean": (desc_dim,), "pca_components": (d - 2, desc_dim), "weights": (k,),
                    "means": (k, d), "variances": (k, d)}
        for key, shape in expected.items():
            array = getattr(self, key)
            if k == 0 or d < 3 or array.shape != shape:
                raise TransferlabError(f"{where}: codebook key {key!r} has shape {array.shape}, "
                                       f"expected {shape}")
            if not np.all(np.isfinite(array)):
                raise TransferlabError(f"{where}: codebook key {key!r} has non-finite values")
        if np.any(self.variances <= 0) or np.any(self.weights <= 0):
            raise TransferlabError(f"{where}: codebook has non-positive GMM weights or variances")


def learn_codebook(descriptors: np.ndarray, n_components: int = GMM_COMPONENTS, pca_dim: int = PCA_DIM,
                   seed: int = 0, info: dict | None = None) -> Codebook:
    """PCA (eigenvectors of the covariance, sign-fixed) + seeded diagonal GMM on the rows of
    ``descriptors`` as returned by ``daisy_descriptors``."""
    with single_threaded_blas():
        return _learn_codebook(descriptors, n_components, pca_dim, seed, info)


def _learn_codebook(descriptors, n_components, pca_dim, seed, info) -> Codebook:
    global fit_count
    from sklearn.mixture import GaussianMixture

    desc = np.asarray(descriptors, dtype=np.float64)
    if not 1 <= pca_dim <= desc.shape[1] - 2 or n_components < 1:
        raise TransferlabError(f"handcrafted: pca_dim must be 1..{desc.shape[1] - 2} and "
                               f"n_components >= 1 (got {pca_dim}, {n_components})")
    if len(desc) < max(n_components * 20, pca_dim + 1):
        raise TransferlabError(f"handcrafted: {len(desc)} descriptors are too few to fit "
                               f"{n_components} Gaussians; give more (or larger) images")
    raw = desc[:, :-2]
    mean = raw.mean(axis=0)
    centred = raw - mean
    eigval, eigvec = np.linalg.eigh(centred.T @ centred / len(raw))
    order = np.argsort(eigval)[::-1][:pca_dim]
    components = eigvec[:, order].T
    signs = np.sign(components[np.arange(len(components)), np.argmax(np.abs(components), axis=1)])
    components *= signs[:, None]
    projected = np.concatenate([centred @ components.T, desc[:, -2:]], axis=1)
    gmm = GaussianMixture(n_components=n_components, covariance_type="diag", reg_covar=1e-6,
                          max_iter=100, tol=1e-3, init_params="k-means++", random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a codebook need not converge fully
        gmm.fit(projected)
    fit_count += 1
    return Codebook(mean, components, gmm.weights_.copy(), gmm.means_.copy(), gmm.covariances_.copy(),
                    info={**(info or {}), "n_descriptors": len(desc)})


def _sample(descriptor_sets: list[np.ndarray], max_descriptors: int, seed: int) -> np.ndarray:
    """At most ``max_descriptors`` rows, the same share from every image, seeded."""
    rng = np.random.default_rng(seed)
    per_set = max(1, max_descriptors // max(1, len(descriptor_sets)))
    return np.concatenate([_pick(d, per_set, rng) for d in descriptor_sets], axis=0)


def _pick(descriptors: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` rows of one image's descriptors (all if it has fewer), in their order."""
    if len(descriptors) <= count:
        return descriptors
    return descriptors[np.sort(rng.choice(len(descriptors), count, replace=False))]


def _pil_pixels(image, preprocessing: Preprocessing = PREPROCESSING) -> np.ndarray:
    """PIL image -> (S, S, 3) float in [0, 1], resized and cropped exactly as the extractor
    does (``Preprocessing.to_pixels``; the normalisation is undone by the model anyway)."""
    return preprocessing.to_pixels(image.convert("RGB")).astype(np.float64) / 255.0


def _photo_views(image) -> list[np.ndarray]:
    """Several crops of one photo so a few photos give varied descriptors: the extractor's
    view, both ends along the long side, and a 1.5x zoom of the centre."""
    from PIL import Image

    views = [_pil_pixels(image)]
    w, h = image.size
    side = min(w, h)
    for box in ((0, 0, side, side), (w - side, h - side, w, h)):
        views.append(_pil_pixels(image.crop(box)))
    zoom = max(1, int(side / 1.5))
    left, top = (w - zoom) // 2, (h - zoom) // 2
    views.append(_pil_pixels(image.crop((left, top, left + zoom, top + zoom)).resize(
        (INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)))
    return views


def skimage_photos() -> list[tuple[str, Any]]:
    """The scikit-image photos that load offline here, as (name, PIL RGB image)."""
    from PIL import Image
    from skimage import data

    photos = []
    for name in CODEBOOK_PHOTOS:
        try:
            if name.startswith("motorcycle_"):
                left, right, _ = data.stereo_motorcycle()
                pixels = left if name.endswith("left") else right
            else:
                pixels = getattr(data, name)()
        except Exception:  # a photo that needs a download in this skimage version: skip it
            continue
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8:
            pixels = (np.clip(pixels.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
        photos.append((name, Image.fromarray(pixels).convert("RGB")))
    return photos


def fit_default_codebook(seed: int = 0) -> Codebook:
    photos = skimage_photos()
    if len(photos) < 8:
        raise TransferlabError("handcrafted: fewer than 8 scikit-image photos load offline; "
                               "learn a codebook with fit_codebook and pass it as --weights")
    sets = [daisy_descriptors(to_gray(view)) for _, image in photos for view in _photo_views(image)]
    return learn_codebook(_sample(sets, DEFAULT_MAX_DESCRIPTORS, seed), seed=seed,
                          info={"images": [f"skimage.data.{name}" for name, _ in photos]})


def default_codebook_path() -> Path:
    from transferlab.paths import cache_dir

    return cache_dir("handcrafted") / f"codebook-{RECIPE}-k{GMM_COMPONENTS}-d{PCA_DIM}.npz"


def default_codebook() -> Codebook:
    """The codebook learned from scikit-image's photos: from the cache, else fitted (seconds)
    and cached. An unreadable cached file is refitted and replaced."""
    path = default_codebook_path()
    if path.is_file():
        try:
            return Codebook.load(path)
        except TransferlabError:
            pass
    book = fit_default_codebook()
    book.save(path)
    return Codebook.load(path)


def _expand(image_paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for item in image_paths:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS))
        elif path.is_file():
            files.append(path)
        else:
            raise TransferlabError(f"{path}: no such image file or folder")
    return files


def fit_codebook(image_paths: Iterable[str | Path], out_file: str | Path, *,
                 n_components: int = GMM_COMPONENTS, pca_dim: int = PCA_DIM,
                 max_descriptors: int = 200_000, seed: int = 0) -> Codebook:
    """Learn a Fisher codebook from your own (training) images and save it to ``out_file``
    (.npz, written atomically); use it with ``load_source("handcrafted", weights=out_file)``.
    Folders are searched recursively for images. Each image is preprocessed exactly as at
    extraction time; the same number of descriptors is sampled from every image as soon as it
    is described, so memory holds the sample, not every image's descriptors."""
    from transferlab.data.images import read_image

    files = _expand(image_paths)
    if not files:
        raise TransferlabError("fit_codebook: no images given")
    rng = np.random.default_rng(seed)
    per_image = max(1, max_descriptors // len(files))
    picked = []
    for path in files:
        try:
            image = read_image(str(path))
        except Exception as exc:
            raise BadImageError(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        picked.append(_pick(daisy_descriptors(to_gray(_pil_pixels(image))), per_image, rng))
    book = learn_codebook(np.concatenate(picked, axis=0), n_components, pca_dim, seed,
                          info={"images": [str(p) for p in files]})
    book.save(out_file)
    return Codebook.load(out_file)


