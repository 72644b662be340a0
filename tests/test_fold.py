"""BatchNorm folding: the built-in networks, folded, give the unfolded outputs within 1e-4."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.data.base import Split
from transferlab.features.extract import PooledForward, extract, group_keys
from transferlab.features.fold import fold_batchnorm, foldable_pairs, folded_for_inference
from transferlab.features.pooling import default_windows
from transferlab.features.store import FeatureStore
from transferlab.sources import load_source


def photos(source, count: int = 4) -> torch.Tensor:
    """Real photos (scikit-image's samples), preprocessed as the source wants."""
    from skimage import data

    names = ("astronaut", "chelsea", "coffee", "rocket")[:count]
    pixels = [source.preprocessing.to_pixels(Image.fromarray(np.asarray(getattr(data, n)())).convert("RGB"))
              for n in names]
    return source.preprocessing.normalize(torch.stack([torch.from_numpy(np.array(p)) for p in pixels]))


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2"])
def test_folded_builtin_network_matches_the_unfolded_one(name):
    source = load_source(name)
    model = source.model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = source.resolve_layers([-1, -2, -3, -4])
    by_layer = {layer.name: ["avg", "max", "grid2"] for layer in layers}
    folded, count = fold_batchnorm(model, keep=by_layer)
    assert count >= 40  # every conv of these networks is followed by a BatchNorm
    batch = photos(source)
    with torch.inference_mode():
        plain = PooledForward(source, model, by_layer, default_windows())
        want = {k: v.clone() for k, v in plain(batch).items()}
        plain.close()
        hooked = PooledForward(source, folded, by_layer, default_windows())
        got = hooked(batch)
        hooked.close()
    assert set(got) == set(want) and len(want) == 12
    for key in want:
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-4, rtol=0, err_msg=key)
    # the caller's network is untouched
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) >= count


def test_folding_leaves_hooked_convolutions_and_training_models_alone():
    source = load_source("mobilenet_v2")
    model = source.model.eval()
    pairs = foldable_pairs(model)
    conv, bn = pairs[0]
    assert (conv, bn) not in foldable_pairs(model, keep=[conv])
    assert (conv, bn) not in foldable_pairs(model, keep=[bn])
    folded, _ = fold_batchnorm(model, keep=[conv])
    assert isinstance(folded.get_submodule(bn), torch.nn.BatchNorm2d)
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(model.train())
    model.eval()


def test_folded_copy_is_reused_until_the_weights_change():
    source = load_source("mobilenet_v2")
    model = source.model.eval()
    first = folded_for_inference(model, keep=["features"])
    assert folded_for_inference(model, keep=["features"]) is first
    with torch.no_grad():
        next(model.parameters()).mul_(1.0)  # an in-place update, as training makes
    assert folded_for_inference(model, keep=["features"]) is not first


def test_store_keys_tell_folded_rows_from_unfolded_ones(tmp_path):
    from skimage import data

    source = load_source("mobilenet_v2")
    paths = []
    for n in ("astronaut", "chelsea", "coffee"):
        path = tmp_path / f"{n}.jpg"
        Image.fromarray(np.asarray(getattr(data, n)())).convert("RGB").save(path, quality=90)
        paths.append(str(path))
    split = Split("photos", paths, np.zeros(len(paths), dtype=np.int64))
    folded_key = group_keys(source, paths, None, ["orig"])["orig"]
    plain_key = group_keys(source, paths, None, ["orig"], fold_bn=False)["orig"]
    assert folded_key != plain_key and "bn-folded" in folded_key.preprocessing
    store = FeatureStore(tmp_path / "store")
    layers = source.resolve_layers([-1, -2])
    a = extract(source, split, layers, ["avg", "grid2"], store=store, progress=False, batch_size=2)
    b = extract(source, split, layers, ["avg", "grid2"], store=store, progress=False, batch_size=2, fold_bn=False)
    assert a.forwarded_images == b.forwarded_images == 3  # stored apart: the second run forwards again
    for layer in layers:
        for pooling in ("avg", "grid2"):
            np.testing.assert_allclose(a.get(layer, pooling), b.get(layer, pooling), atol=1e-4, rtol=0)
