"""Sources: real ImageNet weights, layer naming, weights files, safe loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from transferlab.errors import TransferlabError
from transferlab.sources import load_source
from transferlab.sources.builtin import BUILTIN_SOURCES

CATS = {"tiger cat", "Egyptian cat", "tabby"}


def top1(source, pixels: np.ndarray) -> str:
    x = source.preprocessing.to_tensor(Image.fromarray(pixels).convert("RGB")).unsqueeze(0)
    with torch.inference_mode():
        logits = source.forward_head(source.model, source.forward_features(source.model, x))
    return source.class_names[int(logits.argmax())]


@pytest.mark.parametrize("name", sorted(BUILTIN_SOURCES))
def test_builtin_weights_are_real_imagenet(name):
    source = load_source(name)
    assert top1(source, data.chelsea()) in CATS
    assert top1(source, data.coffee()) == "espresso"


def test_random_init_is_not_imagenet():
    source = load_source("timm:tf_efficientnet_lite0", "none")
    assert source.class_names is None
    assert source.weights_id.startswith("random-init")


def test_layers_counted_from_top(lite0):
    layers = lite0.layers
    assert layers[-1].name == "features" and layers[-1].index == -1 and layers[-1].channels == 1280
    assert [layer.index for layer in layers] == list(range(-len(layers), 0))
    assert layers[-2].name == "blocks.6" and layers[-2].channels == 320 and layers[-2].stride == 32
    resolved = lite0.resolve_layers(["-1", -2, "blocks.4"])
    assert [layer.name for layer in resolved] == ["features", "blocks.6", "blocks.4"]


def test_absolute_module_name_inside_a_stage(lite0):
    (layer,) = lite0.resolve_layers(["blocks.5.0"])
    assert layer.channels == 192 and layer.stride == 32


@pytest.mark.parametrize("bad, message", [(-99, "out of range"), (0, "out of range"), ("nope", "no layer 'nope'")])
def test_bad_layer_names(lite0, bad, message):
    with pytest.raises(TransferlabError, match=message):
        lite0.resolve_layers([bad])


def test_vector_layers_of_alexnet_family():
    source = load_source("torchvision:alexnet", "none")
    top, fc6 = source.layers[-1], source.layers[-2]
    assert (top.channels, top.spatial) == (4096, False)
    assert (fc6.name, fc6.spatial) == ("classifier.2", False)
    assert source.layers[-3].spatial


def test_weights_file_with_wrapper_and_module_prefix(tmp_path):
    reference = load_source("timm:resnet18", "none")
    state = {
        f"module.{k}": v.clone() + 1.0 if v.is_floating_point() else v for k, v in reference.model.state_dict().items()
    }
    path = tmp_path / "places.pth.tar"
    torch.save({"epoch": 3, "state_dict": state}, path)
    loaded = load_source("timm:resnet18", str(path))
    w = loaded.model.state_dict()["conv1.weight"]
    assert torch.equal(w, reference.model.state_dict()["conv1.weight"] + 1.0)
    assert loaded.weights_id.startswith("places.pth.tar:")


def test_safetensors_and_different_head(tmp_path):
    from safetensors.torch import save_file

    reference = load_source("timm:resnet18", "none")
    state = {k: v.contiguous() for k, v in reference.model.state_dict().items()}
    state["fc.weight"] = torch.zeros(365, 512)  # a Places365-style head: tolerated
    state["fc.bias"] = torch.zeros(365)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    loaded = load_source("timm:resnet18", str(path))
    assert torch.equal(loaded.model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


def test_weights_that_do_not_fit_list_keys(tmp_path):
    other = load_source("timm:resnet34", "none")
    path = tmp_path / "r34.pth"
    torch.save(other.model.state_dict(), path)
    with pytest.raises(TransferlabError, match=r"r34.pth: weights do not fit.*unexpected layer1\.2"):
        load_source("timm:resnet18", str(path))


def test_untrusted_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": object()}, path)
    with pytest.raises(TransferlabError, match="weights_only=True"):
        load_source("timm:resnet18", str(path))


def test_arch_sources_need_weights_or_none():
    with pytest.raises(TransferlabError, match="--weights none"):
        load_source("timm:resnet18")
    with pytest.raises(TransferlabError, match="unknown source"):
        load_source("nonsense_net")


def test_efficientnet_key_renaming_covers_every_timm_key():
    import timm

    from transferlab.sources.builtin import builtin_weights_path, efficientnet_pytorch_to_timm
    from transferlab.sources.weights import load_state_dict_file

    model = timm.create_model("tf_efficientnet_lite0")
    state = load_state_dict_file(builtin_weights_path(BUILTIN_SOURCES["efficientnet_lite0"]))
    renamed = efficientnet_pytorch_to_timm(state, [len(s) for s in model.blocks])
    assert set(renamed) == set(model.state_dict())
