"""Adapters that give timm and torchvision models one interface: forward_features,
forward_head and an ordered list of representation layers (bottom to top).

The top representation is what ``forward_features`` returns (named ``features``), pooled
as the model's own head pools it (``head_pooling``: ``cls`` for class-token transformers,
``avg`` for ConvNets and Swin), so ``-1`` equals timm's ``forward_head(..., pre_logits=True)``.
When no parameter-free pooling of a transformer's tokens reproduces that vector (a norm
after the pooling as in BEiT/EVA/"gap" ViTs, an attention pool, DeiT's distillation average),
the vector itself becomes the top layer ``pre_logits``. (ConvNets keep their last map as -1
even where the head does more, as MobileNetV3's conv head after the pooling.) Transformers' token
layers are described by ``TokenFormat``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.sources.base import (
    FEATURES_OUTPUT,
    PRE_LOGITS,
    TokenFormat,
    describe_output,
    head_pool,
)

# The model is typed Any: adapters reach children by attribute (m.features, m.fc), which
# nn.Module's __getattr__ types as Tensor | Module.
ModelCall = Callable[[Any, torch.Tensor], torch.Tensor]


@dataclass
class Adapter:
    layer_names: list[str]
    forward_features: ModelCall
    forward_head: ModelCall | None
    head_prefixes: tuple[str, ...]
    tokens: TokenFormat | None = None
    map_layout: str = "NCHW"
    head_pooling: str = "avg"
    pre_logits: ModelCall | None = None
    classifier: ModelCall | None = None
    shapes: dict[str, tuple[int, ...]] | None = None  # every layer's output shape at shapes_size px
    shapes_size: int = 0


# ---------------------------------------------------------------------------- timm
def timm_adapter(model: nn.Module, input_size: int | None = None) -> Adapter:
    names = _timm_stage_names(model)
    tokens = _token_format(model)
    layout = "NHWC" if str(getattr(model, "output_fmt", "NCHW")) == "NHWC" else "NCHW"
    size = input_size or int(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-1])
    outputs, top, pre = _dry_forward(model, names, size)
    last = outputs.get(names[-1]) if names else None
    if last is not None and last.shape == top.shape and torch.equal(last, top):
        names = names[:-1]  # the last stage *is* the forward_features output
    probe = _Described(model, tokens, layout)
    head_pooling, matched, needs_vector = _head_pooling(
        top, pre, describe_output(FEATURES_OUTPUT, tuple(top.shape), size, probe))
    names = names + [FEATURES_OUTPUT] + ([PRE_LOGITS] if needs_vector else [])
    shapes = {name: tuple(out.shape) for name, out in outputs.items()}
    shapes[FEATURES_OUTPUT] = tuple(top.shape)
    if needs_vector:
        shapes[PRE_LOGITS] = tuple(pre.shape)
    return Adapter(
        layer_names=names,
        forward_features=lambda m, x: m.forward_features(x),
        forward_head=lambda m, f: m.forward_head(f),
        head_prefixes=_timm_head_prefixes(model),
        tokens=tokens,
        map_layout=layout,
        head_pooling=head_pooling,
        pre_logits=(lambda m, f: m.forward_head(f, pre_logits=True)) if pre is not None else None,
        # logits straight from the pooled top vector, where that vector is the head's own
        classifier=(lambda m, v: m.get_classifier()(v))
        if (matched or needs_vector) and hasattr(model, "get_classifier") else None,
        shapes=shapes if all(name in shapes for name in names) else None,
        shapes_size=size,
    )


@dataclass
class _Described:
    """Enough of a Source for ``describe_output`` while the Source is being built."""

    model: nn.Module
    tokens: TokenFormat | None
    map_layout: str
    name: str = "model"


def _token_format(model: nn.Module) -> TokenFormat | None:
    """timm transformers expose ``num_prefix_tokens`` (class + register/distillation tokens)."""
    prefix = getattr(model, "num_prefix_tokens", None)
    if prefix is None:
        return None
    has_class = getattr(model, "has_class_token", None)
    if has_class is None:
        has_class = getattr(model, "cls_token", None) is not None
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch_size = ((int(patch[0]), int(patch[1])) if isinstance(patch, (tuple, list))
                  else ((int(patch),) * 2 if patch else None))
    return TokenFormat(int(prefix), bool(has_class), patch_size)


def _dry_forward(model: Any, names: list[str], size: int):
    """One forward of a seeded random image: every named module's output, the features
    output and the head's pre-logits vector (None when ``forward_head`` has no ``pre_logits``)."""
    captured: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda _m, _i, out, name=name: captured.__setitem__(name, out)) for name in names]
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, size, size, generator=generator)
    try:
        with torch.inference_mode():
            top = model.forward_features(image)
            try:
                pre = model.forward_head(top, pre_logits=True)
            except TypeError:
                pre = None
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return captured, top, pre


def _head_pooling(top: torch.Tensor, pre: torch.Tensor | None, layer) -> tuple[str, bool, bool]:
    """(pooling, matched, needs_vector): which parameter-free pooling of ``top`` the head
    applies, checked numerically on the dry forward; when none does, a transformer's
    pre-logits vector becomes a layer of its own (needs_vector)."""
    if pre is None or pre.dim() != 2:
        return ("cls" if layer.kind == "tokens" and layer.class_token else "avg"), False, False
    candidates = {"vector": ["avg"], "map": ["avg", "max"], "tokens": ["avg", "max"]}[layer.kind]
    if layer.kind == "tokens" and layer.class_token:
        candidates = ["cls", *candidates]
    for name in candidates:
        pooled = head_pool(top.float(), layer, name)
        if pooled.shape == pre.shape and torch.allclose(pooled, pre.float(), rtol=1e-4, atol=1e-5):
            return name, True, False
    # transformers only: a ConvNet's -1 stays its last map (MobileNetV3's conv head after the
    # pooling is not a representation layer of the paper's kind)
    return "avg", False, layer.kind == "tokens"


def _timm_stage_names(model: nn.Module) -> list[str]:
    modules = dict(model.named_modules())
    # EfficientNet / MobileNet families: every stage of `blocks`, plus the stem.
    if "blocks" in modules and isinstance(modules["blocks"], nn.Sequential) and "conv_head" in modules:
        stem = ["bn1"] if "bn1" in modules else []
        return stem + [f"blocks.{i}" for i in range(len(modules["blocks"]))]
    info = getattr(model, "feature_info", None)
    if not info:
        raise TransferlabError(
            f"timm model {type(model).__name__} has no feature_info (its stages or blocks); "
            "name its modules in --layers instead")
    # ConvNets: one entry per stage; transformers: one per block (`blocks.0` ...)
    return [entry["module"] for entry in info if entry.get("module")]


def _timm_head_prefixes(model: nn.Module) -> tuple[str, ...]:
    classifier = getattr(model, "default_cfg", {}).get("classifier", "classifier")
    if isinstance(classifier, (list, tuple)):
        return tuple(f"{c}." for c in classifier)
    return (f"{classifier}.",)


# ---------------------------------------------------------------------- torchvision
def torchvision_adapter(name: str, model: nn.Module) -> Adapter:
    if name.startswith(("alexnet", "vgg")):
        return _fc_family(model)
    if hasattr(model, "features") and hasattr(model, "classifier"):
        return _features_classifier_family(model)
    if all(hasattr(model, attr) for attr in ("layer4", "fc", "avgpool")):
        return _resnet_family(model)
    raise TransferlabError(
        f"torchvision architecture {name!r} is not supported; use its timm version (timm:NAME)"
    )


def _features_classifier_family(model: Any) -> Adapter:
    """mobilenet_v2/v3, efficientnet, convnext, densenet-like: `features` then pool+classifier."""
    count = len(model.features)
    names = [f"features.{i}" for i in range(count - 1)]

    def head(m: Any, f: torch.Tensor) -> torch.Tensor:
        pooled = m.avgpool(f) if hasattr(m, "avgpool") else nn.functional.adaptive_avg_pool2d(f, 1)
        if not _classifier_flattens(m.classifier):
            pooled = torch.flatten(pooled, 1)
        return m.classifier(pooled)

    return Adapter(names + [FEATURES_OUTPUT], lambda m, x: m.features(x), head, ("classifier.",))


def _classifier_flattens(classifier: nn.Module) -> bool:
    return any(isinstance(layer, nn.Flatten) for layer in classifier.modules())


def _fc_family(model: Any) -> Adapter:
    """AlexNet / VGG: conv stages, pool5, then fc6 and fc7 (the paper's representations)."""
    feats = model.features
    names = [f"features.{i}" for i, layer in enumerate(feats) if isinstance(layer, nn.MaxPool2d)]
    relus = [i for i, layer in enumerate(model.classifier) if isinstance(layer, nn.ReLU)]
    if len(relus) < 2:
        raise TransferlabError("unexpected AlexNet/VGG classifier layout")
    fc6 = f"classifier.{relus[0]}"
    last_relu = relus[1]
    for layer in model.classifier:
        if isinstance(layer, nn.ReLU):
            layer.inplace = False  # hooks must see fc6 before fc7 overwrites nothing

    def features(m: Any, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(m.avgpool(m.features(x)), 1)
        return m.classifier[: last_relu + 1](x)

    def head(m: Any, f: torch.Tensor) -> torch.Tensor:
        return m.classifier[last_relu + 1:](f)

    return Adapter(names + [fc6, FEATURES_OUTPUT], features, head, (f"classifier.{len(model.classifier) - 1}.",))


def _resnet_family(model: nn.Module) -> Adapter:
    def features(m: Any, x: torch.Tensor) -> torch.Tensor:
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))

    def head(m: Any, f: torch.Tensor) -> torch.Tensor:
        return m.fc(torch.flatten(m.avgpool(f), 1))

    names = ["maxpool", "layer1", "layer2", "layer3", FEATURES_OUTPUT]
    return Adapter(names, features, head, ("fc.",))
