"""Vision transformers as sources: token and channels-last layers, token poolings, exactness
against timm's own head, other resolutions, and checkpoints with foreign keys.

Random-init models only (nothing is downloaded); small inputs where the model allows it.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

from transferlab.errors import TransferlabError
from transferlab.features.extract import PooledForward, layer_poolings
from transferlab.features.pooling import (
    POOLING_REGISTRY,
    check_pooling,
    get_pooling,
    pool,
    pool_layer,
    pooling_fineness,
    validate_pooling,
)
from transferlab.features.store import output_name
from transferlab.sources import Layer
from transferlab.sources import load_source as _load_source


@functools.lru_cache(maxsize=8)
def load_source(spec: str, weights: str | None = None, resolution: int | None = None):
    """Sources are read-only here: build each (slow on a busy 2-core machine) once."""
    return _load_source(spec, weights, resolution=resolution)

# (spec, resolution): the four families of the issue, and a "gap" ViT whose head norms after
# pooling (so its -1 is timm's pre-logits vector itself)
FAMILIES = [
    ("timm:vit_small_patch16_224", None),
    ("timm:deit_tiny_patch16_224", None),
    ("timm:vit_small_patch14_reg4_dinov2", 56),  # 1 class + 4 register tokens, 4x4 patches
    ("timm:swin_tiny_patch4_window7_224", None),  # channels-last (N, H, W, C) stages
    ("timm:vit_little_patch16_reg4_gap_256", 64),  # registers, no class token, fc_norm
]


@pytest.mark.parametrize(("spec", "resolution"), FAMILIES)
def test_top_layer_pooled_as_the_head_pools_equals_timm_pre_logits(spec, resolution):
    source = load_source(spec, "none", resolution=resolution)
    size = source.preprocessing.input_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    top = source.layers[-1]
    wanted = [(top, source.head_pooling)] + [(layer, "avg") for layer in source.layers[-3:-1]]
    forward = PooledForward(source, source.model, layer_poolings(wanted), [])
    with torch.inference_mode():
        outputs = forward(x)
        expected = source.model.forward_head(source.model.forward_features(x), pre_logits=True)
    forward.close()
    got = outputs[output_name(top.name, source.head_pooling)]
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # and the logits from that vector are the model's own
    with torch.inference_mode():
        logits = source.logits_from_vector(got)
        torch.testing.assert_close(logits, source.model(x), rtol=1e-4, atol=1e-4)


def test_layer_kinds_grids_and_head_poolings():
    vit = load_source("timm:vit_small_patch14_reg4_dinov2", "none", resolution=56)
    assert vit.head_pooling == "cls"
    top = vit.layers[-1]
    assert (top.name, top.kind, top.grid, top.prefix_tokens, top.class_token) == ("features", "tokens", (4, 4), 5, True)
    assert vit.layers[-2].name == "blocks.11"  # every transformer block is a layer
    assert len(vit.layers) == 13
    swin = load_source("timm:swin_tiny_patch4_window7_224", "none")
    assert swin.head_pooling == "avg"
    assert [(layer.kind, layer.layout, layer.grid, layer.channels) for layer in swin.layers[-2:]] == [
        ("map", "NHWC", (14, 14), 384), ("map", "NHWC", (7, 7), 768)]
    # preprocessing from timm's pretrained_cfg, which ships with timm (nothing downloaded)
    vit_s = load_source("timm:vit_small_patch16_224", "none").preprocessing
    assert (vit_s.input_size, vit_s.crop_pct, vit_s.interpolation, vit_s.mean) == (224, 0.9, "bicubic", (0.5,) * 3)
    gap = load_source("timm:vit_little_patch16_reg4_gap_256", "none", resolution=64)
    assert [layer.name for layer in gap.layers[-2:]] == ["features", "pre_logits"]
    assert gap.layers[-1].kind == "vector" and not gap.layers[-2].class_token


def _token_layer(prefix: int, grid=(2, 3), channels=4, class_token=True) -> Layer:
    return Layer("blocks.0", channels, 16, kind="tokens", grid=grid, prefix_tokens=prefix, class_token=class_token)


def test_token_poolings_leave_prefix_tokens_out():
    torch.manual_seed(0)
    layer = _token_layer(prefix=5)  # class + 4 registers, then 2x3 patches
    tokens = torch.randn(2, 5 + 6, 4)
    tokens[:, 1:5] = 1e6  # registers must never reach avg/max/grids
    patches = tokens[:, 5:]
    fmap = patches.reshape(2, 2, 3, 4).permute(0, 3, 1, 2)
    assert torch.equal(pool_layer(tokens, layer, "cls"), tokens[:, 0])
    torch.testing.assert_close(pool_layer(tokens, layer, "avg"), patches.mean(dim=1))
    assert torch.equal(pool_layer(tokens, layer, "max"), patches.amax(dim=1))
    torch.testing.assert_close(pool_layer(tokens, layer, "cls+avg"), torch.cat([tokens[:, 0], patches.mean(dim=1)], 1))
    for name in ("gem", "grid2", "grid3", "rmac", "windows"):
        torch.testing.assert_close(pool_layer(tokens, layer, name), pool(fmap, name))
    # grid2 on a 2x3 patch grid: the top-left cell is patches (0,0),(0,1) -> tokens 5, 6
    cell = pool_layer(tokens, layer, "grid2")[:, :4]
    torch.testing.assert_close(cell, tokens[:, 5:7].amax(dim=1))


def test_channels_last_maps_pool_like_their_nchw_view():
    x = torch.randn(2, 3, 5, 6)  # NCHW
    nhwc = Layer("layers.0", 6, 4, kind="map", layout="NHWC", grid=(3, 5))
    for name in ("avg", "max", "gem", "grid2", "rmac"):
        torch.testing.assert_close(pool_layer(x.permute(0, 2, 3, 1), nhwc, name), pool(x.permute(0, 1, 2, 3), name))


def test_pooling_registry_answers_kinds_sizes_and_fineness():
    vector = Layer("fc7", 8, None)
    fmap = Layer("layer4", 8, 32, grid=(7, 7))
    tokens = _token_layer(prefix=1, channels=8)
    no_cls = _token_layer(prefix=4, channels=8, class_token=False)
    assert get_pooling("avg").applies(vector) and not get_pooling("grid2").applies(vector)
    assert get_pooling("cls").applies(tokens) and not get_pooling("cls").applies(fmap)
    assert not get_pooling("cls+avg").applies(no_cls)
    assert get_pooling("cls+avg").width == 2 and get_pooling("grid3").width == 9
    assert pooling_fineness("grid2") == 2 and pooling_fineness("cls") == 1 and pooling_fineness("rmac") == 3
    assert get_pooling("grid5").width == 25 and pooling_fineness("grid5") == 5
    assert set(POOLING_REGISTRY) >= {
        "avg",
        "max",
        "gem",
        "grid1",
        "grid2",
        "grid3",
        "rmac",
        "windows",
        "cls",
        "cls+avg",
    }
    with pytest.raises(TransferlabError, match=r"layer layer4 of swin cannot give pooling 'cls'.*feature map"):
        check_pooling(fmap, "cls", "swin")
    with pytest.raises(TransferlabError, match="no class token"):
        check_pooling(no_cls, "cls")


@pytest.mark.parametrize("bad", ["grid0", "grid00", "grid-1", "gridK", "cls+max"])
def test_bad_pooling_names_are_one_line_errors(bad):
    with pytest.raises(TransferlabError) as info:
        validate_pooling(bad)
    assert "\n" not in str(info.value)


def test_grid0_is_rejected_by_the_study_config_and_the_cli(capsys):
    from transferlab.cli import main
    from transferlab.study.config import parse_config

    with pytest.raises(TransferlabError, match="grid"):
        parse_config({"sources": ["efficientnet_lite0"], "tasks": ["digits"], "factors": {"pooling": ["avg", "grid0"]}})
    assert main(["extract", "--source", "timm:deit_tiny_patch16_224", "--weights", "none", "--data", "digits",
                 "--quick", "--pool", "grid0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "grid0" in err and len(err.strip().splitlines()) == 1


def test_cls_on_swin_is_an_error_naming_the_layer_and_the_pooling(tmp_path):
    from transferlab.study.config import parse_config
    from transferlab.study.plan import make_plan

    config = parse_config({"sources": [{"spec": "timm:swin_tiny_patch4_window7_224", "weights": "none"}],
                           "tasks": ["digits"], "quick": True, "factors": {"pooling": ["avg", "cls"]}})
    with pytest.raises(TransferlabError, match=r"layer features of timm:swin_tiny\S* cannot give pooling 'cls'"):
        make_plan(config)


def test_other_resolutions_interpolate_position_embeddings():
    native = load_source("timm:deit_tiny_patch16_224", "none")
    small = load_source("timm:deit_tiny_patch16_224", "none", resolution=64)
    assert small.preprocessing.input_size == 64 and small.preprocessing.crop_pct == native.preprocessing.crop_pct
    assert small.layers[-1].grid == (4, 4) and native.layers[-1].grid == (14, 14)
    assert small.weights_id == native.weights_id  # same weights, features keyed apart by preprocessing
    # same parameters: the pos-embedding is the native one, resampled in the forward pass
    torch.testing.assert_close(small.model.pos_embed, native.model.pos_embed)
    with pytest.raises(TransferlabError, match="at least 16 px"):
        load_source("timm:deit_tiny_patch16_224", "none", resolution=8)


def test_timm_safetensors_bin_and_dinov2_checkpoints(tmp_path):
    from safetensors.torch import save_file

    reference = load_source("timm:vit_small_patch14_reg4_dinov2", "none", resolution=28)
    state = {k: v.clone().contiguous() for k, v in reference.model.state_dict().items()}
    x = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = reference.model.forward_features(x)
    # timm's own layout, as safetensors and as a .bin state dict
    save_file({k: v * 1.5 if k == "cls_token" else v for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.bin")
    # the original DINOv2 release's layout: register_tokens, mask_token, cls_token inside pos_embed
    dinov2 = {k: v for k, v in state.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    dinov2["register_tokens"] = state["reg_token"]
    dinov2["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    pos_cls = torch.randn(1, 1, state["pos_embed"].shape[-1])
    dinov2["cls_token"] = state["cls_token"] - pos_cls
    dinov2["pos_embed"] = torch.cat([pos_cls, state["pos_embed"]], dim=1)
    torch.save({"model": dinov2}, tmp_path / "dinov2.pth")
    for name in ("w.bin", "dinov2.pth", "w.safetensors"):
        source = load_source("timm:vit_small_patch14_reg4_dinov2", str(tmp_path / name), resolution=28)
        with torch.inference_mode():
            got = source.model.forward_features(x)
        if name == "w.safetensors":  # a different cls token: the file's weights were used
            assert not torch.allclose(got, expected)
        else:  # (a - b) + b rounds: 1e-4 after 12 random-init blocks
            torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    bad = {k: v for k, v in state.items() if not k.startswith("blocks.3.")}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(TransferlabError, match=r"bad.pth: weights do not fit.*missing blocks\.3\."):
        load_source("timm:vit_small_patch14_reg4_dinov2", str(tmp_path / "bad.pth"), resolution=28)


def _image_folder(root, n_per_class=2):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n_per_class):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_extract_cli_exports_12_arrays_from_one_pass(tmp_path, capsys, monkeypatch):
    """The issue's "done when": -1..-4 x cls,avg,grid2 of ViT-S/16 with a safetensors file."""
    from safetensors.torch import save_file

    import transferlab.sources.registry as registry
    from transferlab.cli import main

    model = load_source("timm:vit_small_patch16_224", "none").model
    weights = tmp_path / "vit_s16.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    data = _image_folder(tmp_path / "data")
    calls = []
    real = registry._make_source

    def counting(*args, **kwargs):  # count forward passes of the model that extracts
        source = real(*args, **kwargs)
        source.model.patch_embed.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
        return source

    monkeypatch.setattr(registry, "_make_source", counting)
    out = tmp_path / "out"
    assert main(["extract", "--source", "timm:vit_small_patch16_224", "--weights", str(weights),
                 "--data", str(data), "--layers", "-1,-2,-3,-4", "--pool", "cls,avg,grid2", "--out", str(out),
                 "--no-progress", "--cache", str(tmp_path / "cache"), "--json"]) == 0, capsys.readouterr().err
    manifest = json.loads(capsys.readouterr().out)
    arrays = sorted(p.name for p in (out / "train").glob("*.npy"))
    assert len(arrays) == 12 and "features__cls.npy" in arrays and "blocks.9__grid2.npy" in arrays
    assert manifest["dims"]["features__grid2"] == [4 * 384] and manifest["dims"]["blocks.11__cls"] == [384]
    assert [layer["kind"] for layer in manifest["layers"]] == ["tokens"] * 4
    # one forward per image (8 images) beyond the dry forwards that measure the layers
    dry = len(calls) - sum(1 for n in calls if n > 1)
    assert sum(n for n in calls if n > 1) == 8 and dry <= 3
    # the exported top layer's cls is timm's pre-logits vector of the same pixels
    source = load_source("timm:vit_small_patch16_224", str(weights))
    from transferlab.data.generic import load_dataset

    split = load_dataset(str(data)).split("train")
    from PIL import Image

    image = source.preprocessing.to_tensor(Image.open(split.paths[0]).convert("RGB"))[None]
    with torch.inference_mode():
        expected = source.model.forward_head(source.model.forward_features(image), pre_logits=True)[0]
    np.testing.assert_allclose(np.load(out / "train" / "features__cls.npy")[0], expected.numpy(), rtol=1e-4, atol=1e-4)
