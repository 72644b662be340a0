"""The non-ConvNet baseline source `handcrafted`: recipe pieces on hand-checked inputs,
the learned-and-cached Fisher codebook, extraction through the real extractor, and a linear
probe on a small real task."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from transferlab.data.base import Split
from transferlab.errors import BadImageError, TransferlabError
from transferlab.features.extract import extract
from transferlab.features.store import FeatureStore
from transferlab.sources import handcrafted as hc
from transferlab.sources import handcrafted_codebook as cb
from transferlab.sources import load_source

FULL_DIM = 2 * 32 * 66 + 576 + 50 + 360


def make_split(paths, labels=None) -> Split:
    paths = [str(p) for p in paths]
    labels = np.zeros(len(paths), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    return Split("test", paths, labels)


@pytest.fixture(scope="module")
def source():
    return load_source("handcrafted")


# ------------------------------------------------------------------ hand-checked pieces
def test_power_l2_by_hand():
    assert np.allclose(cb.power_l2(np.array([4.0, -9.0])), np.array([2.0, -3.0]) / math.sqrt(13))
    assert np.array_equal(cb.power_l2(np.zeros(3)), np.zeros(3))


def _book(weights, means, variances) -> cb.Codebook:
    means = np.asarray(means, dtype=float)
    return cb.Codebook(np.zeros(1), np.zeros((0, 1)), np.asarray(weights, dtype=float), means,
                       np.asarray(variances, dtype=float))


def test_fisher_vector_one_gaussian_by_hand():
    book = _book([1.0], [[0.0]], [[1.0]])
    # x = 2: g_mu = (2 - 0) / 1 = 2, g_sigma = (2^2 / 1 - 1) / sqrt(2) = 3 / sqrt(2)
    assert np.allclose(book.fisher_vector(np.array([[2.0]])), [2.0, 3.0 / math.sqrt(2)])
    # x = +1 and -1 around the mean: both gradients cancel
    assert np.allclose(book.fisher_vector(np.array([[1.0], [-1.0]])), [0.0, 0.0])


def test_fisher_vector_two_gaussians_by_hand():
    book = _book([0.5, 0.5], [[0.0], [30.0]], [[4.0], [1.0]])
    fv = book.fisher_vector(np.array([[1.0]]))  # posterior (1, e^-400): all on the first Gaussian
    # [g_mu1, g_mu2, g_sigma1, g_sigma2]; sigma1 = 2, w1 = 0.5:
    # g_mu1 = (1 / 2) / sqrt(0.5) = 1 / sqrt(2); g_sigma1 = (1 / 4 - 1) / (sqrt(2) sqrt(0.5)) = -0.75
    assert np.allclose(fv, [1 / math.sqrt(2), 0.0, -0.75, 0.0], atol=1e-12)


def test_histograms_of_flat_images_by_hand():
    red = np.zeros((32, 32, 3))
    red[..., 0] = 1.0  # HSV (0, 1, 1) -> bins (0, 2, 2) -> joint bin 0*9 + 2*3 + 2 = 8
    color = cb.color_vector(red).reshape(5, 72)
    assert np.array_equal(color, np.eye(72)[[8] * 5])
    # constant image: every neighbour >= centre, the uniform pattern with 8 ones -> code 8
    lbp = cb.lbp_vector(np.full((32, 32), 0.5)).reshape(5, 10)
    assert np.array_equal(lbp, np.eye(10)[[8] * 5])


def test_daisy_positions_and_size():
    gray = np.random.default_rng(0).random((160, 160))
    desc = cb.daisy_descriptors(gray)
    assert desc.shape == (34 * 34, 104 + 2)
    assert desc[:, -2:].min() > -0.5 and desc[:, -2:].max() < 0.5
    # Hellinger-mapped L1-normalised histograms: squares sum to 1
    assert np.allclose((desc[:, :-2] ** 2).sum(axis=1), 1.0)


# ------------------------------------------------------------------------- the source
def test_one_vector_layer(source):
    (layer,) = source.layers
    assert (layer.name, layer.channels, layer.stride, layer.index) == ("features", FULL_DIM, None, -1)
    assert source.resolve_layers([-1]) == [layer]
    assert source.preprocessing.mean == (0.0, 0.0, 0.0) and source.preprocessing.std == (1.0, 1.0, 1.0)
    assert source.weights_id.startswith(f"{hc.RECIPE}:codebook-")
    with pytest.raises(TransferlabError, match="out of range"):
        source.resolve_layers([-2])


def test_codebook_is_cached_not_refitted(source):
    path = cb.default_codebook_path()
    assert path.is_file()
    mtime, fits = path.stat().st_mtime_ns, cb.fit_count
    again = load_source("handcrafted")
    assert cb.fit_count == fits and path.stat().st_mtime_ns == mtime
    assert again.weights_id == source.weights_id
    assert np.array_equal(again.model.fisher.codebook.means, source.model.fisher.codebook.means)


def test_extraction_deterministic_distinct_and_normalised(source, photo_dir, tmp_path):
    split = make_split(sorted(photo_dir.glob("*.jpg")))
    layers = source.resolve_layers([-1])
    a = extract(source, split, layers, ["avg"], store=FeatureStore(tmp_path / "a"), progress=False)
    b = extract(source, split, layers, ["avg"], store=FeatureStore(tmp_path / "b"), progress=False)
    x, y = a.get("features", "avg"), b.get("features", "avg")
    assert a.forwarded_images == b.forwarded_images == len(split)
    assert x.shape == (len(split), FULL_DIM) and x.dtype == np.float32
    assert np.array_equal(x, y)
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    distances = np.linalg.norm(x[:, None] - x[None], axis=2)[np.triu_indices(len(x), 1)]
    assert distances.min() > 0.1


def test_blocks_are_layers_by_name(source, photo_dir, tmp_path):
    """A block asked for by name is hooked in the same pass and equals its slice of the top."""
    split = make_split(sorted(photo_dir.glob("*.jpg"))[:2])
    layers = source.resolve_layers([-1, "hog", "color"])
    assert [(la.name, la.channels) for la in layers] == [("features", FULL_DIM), ("hog", 576), ("color", 360)]
    feats = extract(source, split, layers, ["avg", "max"], store=FeatureStore(tmp_path), progress=False)
    top = feats.get("features", "avg")
    start = 2 * 32 * 66
    assert np.allclose(feats.get("hog", "avg"), 2.0 * top[:, start:start + 576], atol=1e-6)
    assert np.allclose(feats.get("color", "max"), 2.0 * top[:, -360:], atol=1e-6)


def test_grid_pooling_on_the_vector_layer_is_refused(source, photo_dir, tmp_path):
    split = make_split(sorted(photo_dir.glob("*.jpg"))[:1])
    with pytest.raises(TransferlabError, match="vector layers take only avg/max"):
        extract(source, split, source.resolve_layers([-1]), ["grid2"], store=FeatureStore(tmp_path),
                progress=False)


def test_variants_and_their_errors():
    ablation = load_source("handcrafted:color+hog")
    assert ablation.name == "handcrafted:hog+color"
    assert ablation.weights_id == f"{hc.RECIPE}:no-codebook"
    assert [la.channels for la in ablation.layers] == [576 + 360]
    with pytest.raises(TransferlabError, match="no block 'sift'"):
        load_source("handcrafted:sift")
    with pytest.raises(TransferlabError, match="no fisher block"):
        load_source("handcrafted:hog", weights="codebook.npz")


def test_user_codebook_fit_is_deterministic_and_loads(photo_dir, tmp_path):
    images = sorted(photo_dir.glob("*.jpg"))
    first = cb.fit_codebook(images, tmp_path / "a.npz", n_components=4, max_descriptors=2000)
    second = cb.fit_codebook([photo_dir], tmp_path / "b.npz", n_components=4, max_descriptors=2000)
    assert first.digest() == second.digest()
    assert len(second.info["images"]) == len(images)
    custom = load_source("handcrafted:fisher", weights=str(tmp_path / "a.npz"))
    assert custom.weights_id == f"{hc.RECIPE}:codebook-{first.digest()[:16]}"
    assert custom.layers[0].channels == 2 * 4 * 66
    assert hc.main([str(tmp_path / "c.npz"), str(photo_dir), "--components", "4",
                    "--max-descriptors", "2000"]) == 0
    assert cb.Codebook.load(tmp_path / "c.npz").digest() == first.digest()


def test_bad_codebook_and_image_files_are_named(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(TransferlabError, match="garbage.npz: not a readable"):
        load_source("handcrafted", weights=str(garbage))
    partial = tmp_path / "partial.npz"
    np.savez(partial, recipe=np.array(hc.RECIPE), pca_mean=np.zeros(104))
    with pytest.raises(TransferlabError, match="partial.npz: handcrafted codebook lacks key 'pca_components'"):
        cb.Codebook.load(partial)
    with pytest.raises(TransferlabError, match="does not exist"):
        load_source("handcrafted", weights=str(tmp_path / "missing.npz"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(BadImageError, match="broken.jpg"):
        cb.fit_codebook([broken], tmp_path / "out.npz")


def test_linear_probe_on_digits_beats_chance(source, tmp_path):
    """sklearn's 8x8 digits, 3 classes x 20 images upscaled to PNGs; half train, half test."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    paths, labels = [], []
    for cls in (3, 5, 8):
        for k, i in enumerate(np.flatnonzero(digits.target == cls)[:20]):
            pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
            path = tmp_path / f"{cls}_{k}.png"
            Image.fromarray(pixels).resize((64, 64), Image.BILINEAR).save(path)
            paths.append(path)
            labels.append(cls)
    labels = np.array(labels)
    feats = extract(source, make_split(paths, labels), source.resolve_layers([-1]), ["avg"],
                    store=FeatureStore(tmp_path / "features"), progress=False).get("features", "avg")
    train = np.array([int(p.stem.split("_")[1]) < 10 for p in paths])
    probe = LogisticRegression(C=10.0, max_iter=2000).fit(feats[train], labels[train])
    accuracy = float((probe.predict(feats[~train]) == labels[~train]).mean())
    assert accuracy >= 0.8, accuracy  # chance is 1/3
