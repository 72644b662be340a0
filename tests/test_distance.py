"""Task distance: the paper's ordering, source-prediction distance and the Fisher embedding."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from transferlab.analysis.distance import (
    PAPER_GROUP,
    PAPER_ORDER,
    fisher_embedding,
    paper_distance,
    paper_group,
    probe_fisher,
    source_prediction_distance,
    task2vec_distance,
)
from transferlab.analysis.transferability import TransferabilityWarning
from transferlab.errors import TransferlabError


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The probe fits are tiny; on a shared, loaded machine extra torch threads only spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# ---------------------------------------------------------------- the paper's ordering


def test_paper_order_ranks_groups_from_classification_to_retrieval() -> None:
    assert len(PAPER_ORDER) == 19
    assert sorted(PAPER_ORDER.values()) == list(range(1, 20))
    by_rank = sorted(PAPER_ORDER, key=PAPER_ORDER.get)
    assert [PAPER_GROUP[name] for name in by_rank] == sorted(PAPER_GROUP[name] for name in by_rank)
    assert paper_distance("voc2007") == 1
    assert paper_distance("h3d") == 6
    assert paper_distance("sculptures6k") == 19
    assert paper_group("flowers") == 3
    assert paper_group("roxford5k") == 5
    with pytest.raises(TransferlabError, match="not in the paper's ordering"):
        paper_distance("my_task")


# ---------------------------------------------------------------- source predictions


def test_source_prediction_distance_hand_cases() -> None:
    # confident one-hot predictions spread evenly over all 4 source classes: nearest
    near = source_prediction_distance(np.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3]])
    assert near["mean_entropy"] == pytest.approx(0.0)
    assert near["coverage"] == pytest.approx(1.0)
    assert near["effective_classes"] == pytest.approx(4.0)
    assert near["distance"] == pytest.approx(0.0)
    # uniform predictions: the source cannot tell the images apart
    far = source_prediction_distance(np.full((6, 4), 0.25))
    assert far["mean_entropy"] == pytest.approx(1.0)
    assert far["coverage"] == pytest.approx(1.0)
    assert far["distance"] == pytest.approx(1.0)
    # each image split evenly over two classes, alternating halves:
    # H(theta_i) = log 2 -> 0.5 normalised; mean = [.25]*4 -> coverage 1; I = log 4 - log 2
    half = source_prediction_distance(np.array([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]] * 3))
    assert half["mean_entropy"] == pytest.approx(0.5)
    assert half["mutual_information"] == pytest.approx(math.log(2))
    assert half["distance"] == pytest.approx(1 - math.log(2) / math.log(4))
    # confident but always the same class: coverage 0, far
    collapsed = source_prediction_distance(np.eye(4)[[2] * 5])
    assert collapsed["coverage"] == pytest.approx(0.0)
    assert collapsed["distance"] == pytest.approx(1.0)


def test_source_prediction_distance_orders_in_and_out_of_distribution_images() -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(10, 20)) * 3  # a fixed "source classifier" over 10 classes

    def softmax(logits: np.ndarray) -> np.ndarray:
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    in_domain = weights[rng.integers(0, 10, 300)] + rng.normal(size=(300, 20)) * 0.3  # near the class templates
    out_domain = rng.normal(size=(300, 20)) * 0.3  # far from every class
    near = source_prediction_distance(softmax(in_domain @ weights.T / 20))
    far = source_prediction_distance(softmax(out_domain @ weights.T / 20))
    assert near["distance"] < far["distance"] - 0.3


def test_source_prediction_distance_rejects_logits() -> None:
    with pytest.raises(TransferlabError, match="not logits"):
        source_prediction_distance(np.array([[2.0, -1.0], [0.5, 0.3]]))


# ---------------------------------------------------------------- Task2Vec distance


def test_task2vec_distance_hand_cases() -> None:
    assert task2vec_distance([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(0.0)
    assert task2vec_distance([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)
    # e1 = [1,1], e2 = [1,3]: r1 = [1/2, 1/4], r2 = [1/2, 3/4]
    # cos = (1/4 + 3/16) / (sqrt(1/4 + 1/16) sqrt(1/4 + 9/16)) = 0.4375 / sqrt(0.3125 * 0.8125)
    expected = 1 - 0.4375 / math.sqrt(0.3125 * 0.8125)
    assert task2vec_distance([1.0, 1.0], [1.0, 3.0]) == pytest.approx(expected)
    # a dimension where both are 0 is left out
    assert task2vec_distance([1.0, 1.0, 0.0], [1.0, 3.0, 0.0]) == pytest.approx(expected)
    with pytest.raises(TransferlabError, match="one length"):
        task2vec_distance([1.0], [1.0, 2.0])
    with pytest.raises(TransferlabError, match="all zero"):
        task2vec_distance([0.0, 0.0], [1.0, 2.0])


# ---------------------------------------------------------------- the Fisher of a linear probe


def _autograd_fisher(x: np.ndarray, w: np.ndarray, b: np.ndarray, wrt: str, multilabel: bool) -> np.ndarray:
    """E_x E_{y ~ p(y|x)} [grad log p(y|x)]^2 by enumerating every y, with autograd."""
    xt = torch.from_numpy(x)
    n, d = x.shape
    out = w.shape[0]
    total = np.zeros(d)
    for i in range(n):
        gain = torch.ones(d, dtype=torch.float64, requires_grad=True)
        weights = torch.from_numpy(w.copy()).requires_grad_(True)
        logits = (xt[i] * gain) @ weights.T + torch.from_numpy(b)
        outcomes = itertools.product((0, 1), repeat=out) if multilabel else range(out)
        for y in outcomes:
            if multilabel:
                y_t = torch.tensor(y, dtype=torch.float64)
                log_p = -torch.nn.functional.binary_cross_entropy_with_logits(logits, y_t, reduction="sum")
            else:
                log_p = torch.log_softmax(logits, dim=0)[y]
            g_gain, g_w = torch.autograd.grad(log_p, (gain, weights), retain_graph=True)
            prob = float(log_p.detach().exp())
            squared = g_gain**2 if wrt == "features" else (g_w**2).sum(dim=0)
            total += prob * squared.numpy()
    return total / n


@pytest.mark.parametrize("wrt", ["features", "head"])
@pytest.mark.parametrize("multilabel", [False, True])
def test_probe_fisher_closed_form_matches_autograd(wrt: str, multilabel: bool) -> None:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(5, 4))
    w = rng.normal(size=(3, 4))
    b = rng.normal(size=3)
    logits = x @ w.T + b
    if multilabel:
        probs = 1 / (1 + np.exp(-logits))
    else:
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    closed = probe_fisher(x, w, probs, multilabel=multilabel, mask=np.ones((5, 3)) if multilabel else None, wrt=wrt)
    np.testing.assert_allclose(closed, _autograd_fisher(x, w, b, wrt, multilabel), rtol=1e-10, atol=1e-12)


def _source_world(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features of 6 source classes living in dims 0..15; dims 16..31 are class-free noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 32)) * 2.0
    centres[:, 16:] = 0
    source_labels = rng.integers(0, 6, 400)
    features = np.maximum(centres[source_labels] + rng.normal(size=(400, 32)), 0)
    return features, source_labels


def test_fisher_embedding_puts_a_relabelling_of_the_source_nearer_than_unrelated_tasks() -> None:
    features, source_labels = _source_world()
    rng = np.random.default_rng(1)
    noise_task = (features[:, 20] > np.median(features[:, 20])).astype(int)  # uses the class-free dims
    embed = {
        "source": fisher_embedding(features, source_labels),
        "merged": fisher_embedding(features, source_labels // 2),  # relabelling: 6 -> 3 classes
        "random": fisher_embedding(features, rng.integers(0, 3, 400)),
        "noise_dims": fisher_embedding(features, noise_task),
    }
    near = task2vec_distance(embed["source"], embed["merged"])
    assert near < task2vec_distance(embed["source"], embed["random"]) - 0.1
    assert near < task2vec_distance(embed["source"], embed["noise_dims"]) - 0.1
    # the source task's Fisher sits on the class dims, the noise task's on dims 16..31
    assert embed["source"][:16].sum() > embed["source"][16:].sum()
    assert embed["noise_dims"][16:].sum() > embed["noise_dims"][:16].sum()


def test_fisher_embedding_multilabel_and_bad_input() -> None:
    features, source_labels = _source_world()
    labels = np.where(np.eye(6)[source_labels][:, :3] > 0, 1, -1).astype(np.int8)
    labels[::7, 0] = 0
    embedding = fisher_embedding(features, labels)
    assert embedding.shape == (32,) and np.all(embedding >= 0) and embedding[:16].sum() > embedding[16:].sum()
    with pytest.raises(TransferlabError, match="single class"):
        fisher_embedding(features, np.zeros(400, dtype=int))
    with pytest.warns(TransferabilityWarning, match="zero variance"):
        assert np.isnan(fisher_embedding(np.ones((10, 3)), [0, 1] * 5)).all()
    with pytest.raises(TransferlabError, match="wrt must be"):
        fisher_embedding(features, source_labels, wrt="weights")
