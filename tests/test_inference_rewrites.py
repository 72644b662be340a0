"""The exact inference rewrites beside BatchNorm folding: TF "same" padding without the copy,
and convolution + ReLU / ReLU6 in one oneDNN call. Each against the module it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.layers import Conv2dSame
from torch import nn

from transferlab.features.conv_activation import ConvActivation, fuse_conv_activations
from transferlab.features.extract import PooledForward
from transferlab.features.fold import folded_for_inference
from transferlab.features.pooling import default_windows
from transferlab.features.same_padding import AlignedSameConv2d, align_same_padding, alignable
from transferlab.sources import load_source


@pytest.mark.parametrize(("channels", "groups", "kernel", "stride"),
                         [(3, 1, 3, 2), (8, 8, 3, 2), (8, 8, 5, 2), (8, 8, 3, 1), (8, 8, 4, 2), (8, 8, 5, 3)])
@pytest.mark.parametrize("size", [(16, 16), (17, 15), (9, 12), (2, 3)])
def test_aligned_same_conv_equals_timms_padded_conv(channels, groups, kernel, stride, size):
    torch.manual_seed(0)
    same = Conv2dSame(channels, 8, kernel, stride=stride, groups=groups).eval()
    aligned = AlignedSameConv2d(same)
    x = torch.randn(2, channels, *size)
    with torch.inference_mode():
        want = same(x)
        got = aligned(x)
        got_cl = aligned.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_cl, want, atol=1e-5, rtol=1e-5)


def test_alignment_skips_hooked_dilated_and_dense_convolutions():
    model = nn.Sequential(Conv2dSame(3, 8, 3, stride=2), Conv2dSame(8, 8, 3, stride=2, groups=8),
                          Conv2dSame(8, 8, 3, stride=2, dilation=2, groups=8), Conv2dSame(8, 16, 3, stride=2),
                          Conv2dSame(16, 16, 3, stride=2, groups=16))
    assert alignable(model, keep=["4"]) == ["0", "1"]
    assert align_same_padding(model, keep=["4"]) == 2
    assert [type(m).__name__ for m in model] == ["AlignedSameConv2d", "AlignedSameConv2d", "Conv2dSame",
                                                 "Conv2dSame", "Conv2dSame"]


@pytest.mark.parametrize("act", [nn.ReLU(), nn.ReLU6(), nn.Hardtanh(0.0, 6.0)])
def test_fused_conv_activation_equals_the_pair(act):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1, stride=2).eval()
    fused = ConvActivation(conv, act)
    x = torch.randn(2, 8, 15, 16) * 4
    with torch.inference_mode():
        want = act(conv(x))
        got = fused(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got.max() > 0 and (got == 0).any()  # the activation really clamps
    # with autograd recording it runs the pair (oneDNN's fused kernel has no backward)
    y = fused(x.requires_grad_())
    y.sum().backward()
    assert x.grad is not None


def test_only_pairs_whose_batchnorm_became_a_relu_are_fused():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU6(), nn.Conv2d(4, 4, 1), nn.GELU(),
                          nn.Conv2d(4, 4, 1, padding="same"), nn.ReLU())
    assert fuse_conv_activations(model, [("0", "1"), ("2", "3"), ("4", "5")]) == 1
    assert isinstance(model[0], ConvActivation) and isinstance(model[1], nn.Identity)
    assert isinstance(model[2], nn.Conv2d) and isinstance(model[4], nn.Conv2d)


def test_rewritten_lite0_matches_the_original_network_at_hooked_layers():
    """EfficientNet-Lite0: its 5 TF-padded strided convolutions aligned, its ReLU6s fused into
    their convolutions, BatchNorm folded; the 12 hooked outputs within 1e-4 at two sizes."""
    source = load_source("efficientnet_lite0")
    model = source.model.eval()
    layers = source.resolve_layers([-1, -2, -3, -4])
    by_layer = {layer.name: ["avg", "max", "grid2"] for layer in layers}
    rewritten = folded_for_inference(model, keep=by_layer)
    kinds = [type(m).__name__ for m in rewritten.modules()]
    assert kinds.count("AlignedSameConv2d") == 5 and kinds.count("ConvActivation") >= 30
    assert "Conv2dSame" in [type(m).__name__ for m in model.modules()]  # the caller's network untouched
    torch.manual_seed(0)
    for size in (224, 161):
        batch = torch.randn(2, 3, size, size).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            outputs = []
            for net in (model, rewritten):
                pooled = PooledForward(source, net, by_layer, default_windows())
                outputs.append({k: v.clone() for k, v in pooled(batch).items()})
                pooled.close()
        want, got = outputs
        assert set(got) == set(want) and len(want) == 12
        for key in want:
            np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-4, rtol=0, err_msg=key)
