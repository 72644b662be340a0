"""Inference-time BatchNorm folding: each BatchNorm that only rescales a convolution's output
is merged into that convolution's weights, so the network runs one pass fewer over every
feature map of those layers.

In eval mode ``bn(conv(x)) = gamma * (W * x + b - mean) / sqrt(var + eps) + beta``, which is
the convolution with ``W' = W * s`` and ``b' = (b - mean) * s + beta``, ``s = gamma /
sqrt(var + eps)``: the same function, up to float rounding (folded in float64, stored in the
conv's dtype; EfficientNet-Lite0 and MobileNetV2 stay within ~1e-5 of the unfolded network).

Pairs are found on a ``torch.fx`` trace of the model (BatchNorms kept as leaves): a BatchNorm
is folded only when its input is a Conv2d's output that nothing else reads, and neither is a
layer the caller hooks. The folded BatchNorm is replaced by ``nn.Identity`` or, for timm's
``BatchNormAct2d`` (BN + activation in one module), by its activation, so every module name the
extractor hooks still exists and still yields the same tensor. The caller's model is never
changed: folding works on a copy. A model that cannot be traced is returned as it was.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterable

import torch
from torch import nn

from transferlab.features.conv_activation import fuse_conv_activations
from transferlab.features.replace import replace_module
from transferlab.features.same_padding import align_same_padding, alignable

# Part of the FeatureStore's pixel/forward recipe, so rows from the rewritten forward (folded,
# TF padding aligned, conv + activation fused: equal up to float rounding) never mix with rows
# cached by an unfolded one or by an earlier set of rewrites.
FOLD_RECIPE = "+bn-folded+fused"


class _LeafBatchNormTracer(torch.fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, (nn.BatchNorm2d, nn.Conv2d)) or super().is_leaf_module(module, qualified_name)


def foldable_pairs(model: nn.Module, keep: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(conv name, batchnorm name) pairs that can be folded; [] if the model cannot be traced."""
    keep = set(keep)
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return []  # nothing to fold (transformers): no trace, which would also run the model's hooks
    try:
        graph = _LeafBatchNormTracer().trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure just means no folding
        return []
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        bn = modules[node.target]
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], torch.fx.Node):
            continue
        source = node.args[0]
        if source.op != "call_module" or len(source.users) != 1:
            continue
        conv = modules.get(source.target)
        if not isinstance(conv, nn.Conv2d) or conv.out_channels != bn.num_features:
            continue
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        if source.target in keep or node.target in keep:
            continue
        pairs.append((str(source.target), str(node.target)))
    return pairs


def fold_batchnorm(model: nn.Module, keep: Iterable[str] = ()) -> tuple[nn.Module, int]:
    """A copy of ``model`` (which must be in eval mode) with its foldable BatchNorms folded,
    and how many were. ``keep``: module names whose own outputs must stay as they are."""
    folded, pairs = _fold(model, keep)
    return folded, len(pairs)


def _fold(model: nn.Module, keep: Iterable[str]) -> tuple[nn.Module, list[tuple[str, str]]]:
    if model.training:
        raise ValueError("fold_batchnorm: BatchNorm can only be folded for inference (model.eval())")
    pairs = foldable_pairs(model, keep)
    if not pairs:
        return model, []
    folded = copy.deepcopy(model)
    modules = dict(folded.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        _fold_into(conv, bn)
        replace_module(folded, bn_name, _after_batchnorm(bn))
    return folded, pairs


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    dtype = conv.weight.dtype
    assert bn.running_var is not None and bn.running_mean is not None  # fold_pairs keeps tracked stats only
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
    weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
    conv.weight.copy_(weight.to(dtype))
    new_bias = ((bias - mean) * scale + beta).to(dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=False)
    else:
        conv.bias.copy_(new_bias)


def _after_batchnorm(bn: nn.BatchNorm2d) -> nn.Module:
    """What remains of ``bn`` once its affine map moved into the conv."""
    # timm's BatchNormAct2d: normalisation, then drop (identity in eval) and activation
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)
    if act is None and drop is None:
        return nn.Identity()
    return nn.Sequential(*(m for m in (drop, act) if m is not None))


_FOLDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def folded_for_inference(model: nn.Module, keep: Iterable[str] = ()) -> nn.Module:
    """``fold_batchnorm(model, keep)[0]`` with TF-"same" convolutions done without their padding
    copy (``features.same_padding``) and each folded convolution + ReLU / ReLU6 as one call
    (``features.conv_activation``), remembered per model, layers kept and weights version
    (an in-place update of any parameter or buffer, e.g. training, refolds), so the splits of
    one task trace and copy the network once. Every rewrite is exact up to float rounding."""
    keep = frozenset(keep)
    tensors = [*model.parameters(), *model.buffers()]
    version = (keep, next(iter(tensors)).device.type if tensors else "cpu",
               tuple(t._version for t in tensors), tuple(t.data_ptr() for t in tensors))
    cached = _FOLDED.get(model)
    if cached is not None and cached[0] == version:
        return cached[1]
    folded, pairs = _fold(model, keep)
    if alignable(folded, keep):
        if folded is model:  # nothing was folded: the caller's model is never changed
            folded = copy.deepcopy(model)
        align_same_padding(folded, keep)
    fuse_conv_activations(folded, pairs)
    _FOLDED[model] = (version, folded)
    return folded
