"""Resolve a source spec string to a loaded Source.

Spec forms:
  ``efficientnet_lite0`` ...        built-in, real ImageNet weights (see sources.builtin)
  ``timm:ARCH``                     any timm ConvNet or vision transformer; ``weights`` =
                                    file or ``none``
  ``torchvision:ARCH``              any supported torchvision ConvNet; same weights rule
  ``PREFIX:ARG``                    kinds registered by other modules with
                                    ``register_source_kind`` (``finetuned:``, ``trained:``)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from transferlab.errors import TransferlabError
from transferlab.sources.adapters import Adapter, timm_adapter, torchvision_adapter
from transferlab.sources.base import Source, layers_from_shapes
from transferlab.sources.builtin import (
    BUILTIN_SOURCES,
    builtin_weights_path,
    efficientnet_pytorch_to_timm,
    imagenet_class_names,
)
from transferlab.sources.checkpoints import convert_timm_checkpoint
from transferlab.sources.preprocessing import Preprocessing
from transferlab.sources.weights import file_sha256, fit_state_dict, load_state_dict_file

SourceFactory = Callable[[str, "str | None"], Source]
_KINDS: dict[str, tuple[SourceFactory, str]] = {}
_KIND_MODULES = ("transferlab.sources.finetuned", "transferlab.sources.trained", "transferlab.sources.handcrafted")


def register_source_kind(prefix: str, factory: SourceFactory, description: str) -> None:
    """Let another module provide sources named ``PREFIX:ARG`` (or just ``PREFIX``); a prefix
    is registered once (a second registration is an error naming both factories)."""
    if prefix in _KINDS and _KINDS[prefix][0] is not factory:
        first = _KINDS[prefix][0]
        raise TransferlabError(f"source kind {prefix!r} is registered twice: "
                               f"by {first.__module__}.{first.__qualname__} "
                               f"and by {factory.__module__}.{factory.__qualname__}")
    if prefix in BUILTIN_SOURCES:
        raise TransferlabError(f"source kind {prefix!r} would hide the built-in source of that name")
    _KINDS[prefix] = (factory, description)


def _load_kind_modules() -> None:
    import importlib

    for module in _KIND_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def source_kinds() -> dict[str, str]:
    _load_kind_modules()
    return {prefix: description for prefix, (_, description) in _KINDS.items()}


def load_source(spec: str, weights: str | None = None, resolution: int | None = None) -> Source:
    """Build the model for ``spec`` on the CPU in eval mode, weights loaded and verified.

    ``resolution``: feed it ``resolution`` px images instead of its native input size (the
    short side resized to ``resolution / crop_pct``, centre crop); timm transformers are built
    with ``dynamic_img_size`` so their position embeddings are interpolated to the grid."""
    spec = spec.strip()
    if resolution is not None:
        resolution = check_resolution(resolution)
    if spec in BUILTIN_SOURCES:
        if weights not in (None, "", "builtin"):
            return _load_arch(BUILTIN_SOURCES[spec].arch, weights, name=spec, resolution=resolution)
        return at_resolution(_load_builtin(spec), resolution)
    prefix, sep, arg = spec.partition(":")
    if sep and prefix in ("timm", "torchvision"):
        return _load_arch(spec, weights, resolution=resolution)
    _load_kind_modules()
    if prefix in _KINDS:
        return at_resolution(_KINDS[prefix][0](arg, weights), resolution)
    known = sorted(BUILTIN_SOURCES) + ["timm:ARCH", "torchvision:ARCH"] + [f"{k}:..." for k in _KINDS]
    raise TransferlabError(f"unknown source {spec!r}; known: {', '.join(known)}")


MIN_RESOLUTION = 16


def check_resolution(resolution: int | str) -> int:
    try:
        value = int(resolution)
    except (TypeError, ValueError):
        raise TransferlabError(f"resolution must be a whole number of pixels, got {resolution!r}") from None
    if value < MIN_RESOLUTION:
        raise TransferlabError(f"resolution must be at least {MIN_RESOLUTION} px, got {value}")
    return value


def at_resolution(source: Source, resolution: int | None) -> Source:
    """``source`` fed ``resolution`` px inputs (same crop ratio); checked by one dry forward,
    so a model that cannot run at that size says so now, not mid-extraction."""
    if resolution is None or resolution == source.preprocessing.input_size:
        return source
    moved = dataclasses.replace(source, preprocessing=dataclasses.replace(source.preprocessing, input_size=resolution),
                                _layers=None)
    try:
        moved.layers  # noqa: B018  (one dry forward at the new size)
    except TransferlabError:
        raise
    except Exception as exc:
        raise TransferlabError(
            f"source {source.name} cannot run at {resolution} px: "
            f"{(str(exc).strip().splitlines() or [type(exc).__name__])[0]}"
        ) from None
    return moved


def _load_builtin(name: str) -> Source:
    spec = BUILTIN_SOURCES[name]
    path = builtin_weights_path(spec)
    state = load_state_dict_file(path)
    family, _, arch = spec.arch.partition(":")
    model, adapter = _build(family, arch)
    if family == "timm":
        state = efficientnet_pytorch_to_timm(state, _stage_lengths(model))
    fit_state_dict(model, state, path)
    return _make_source(name, spec.arch, model, adapter, spec.preprocessing,
                        weights_id=f"{path.name}:{file_sha256(path)[:16]}", imagenet=True)


def _load_arch(spec: str, weights: str | None, name: str | None = None, resolution: int | None = None) -> Source:
    family, _, arch = spec.partition(":")
    if not arch:
        raise TransferlabError(f"source {spec!r} needs an architecture name after '{family}:'")
    if weights is None or weights == "":
        raise TransferlabError(
            f"source {spec} needs --weights FILE (.safetensors/.pth/.bin/.pth.tar) or --weights none for random init"
        )
    if weights.lower() == "none":
        import torch

        torch.manual_seed(0)  # random init is reproducible, so its features can be cached
        model, adapter = _build(family, arch, input_size=resolution)
        weights_id = "random-init:seed0"
    else:
        path = Path(weights)
        state = load_state_dict_file(path)
        model, adapter = _build(family, arch, input_size=resolution)
        if family == "timm":
            state = convert_timm_checkpoint(model, state, path)
        fit_state_dict(model, state, path, allow_missing_head=True, head_keys=adapter.head_prefixes)
        weights_id = f"{path.name}:{file_sha256(path)[:16]}"
    preprocessing = _default_preprocessing(family, model)
    if resolution is not None:
        preprocessing = dataclasses.replace(preprocessing, input_size=resolution)
    source = _make_source(name or spec, spec, model, adapter, preprocessing, weights_id=weights_id)
    return at_resolution(source, resolution)


def source_from_arch(arch: str, state: dict | None, *, name: str, preprocessing: Preprocessing,
                     weights_id: str, num_classes: int | None = None, path: str | Path = "<weights>") -> Source:
    """Build ``arch`` (``timm:X`` or ``torchvision:X``), optionally resize its classifier to
    ``num_classes`` and load ``state`` strictly. For sources saved by transferlab itself
    (fine-tuned checkpoints) that carry their own preprocessing."""
    family, _, model_name = arch.partition(":")
    model, adapter = _build(family, model_name, num_classes, input_size=preprocessing.input_size)
    if state is not None:
        fit_state_dict(model, state, path)
    return _make_source(name, arch, model, adapter, preprocessing, weights_id=weights_id)


def _build(family: str, arch: str, num_classes: int | None = None,
           input_size: int | None = None) -> tuple[nn.Module, Adapter]:
    """The architecture with random weights. For timm, an ``input_size`` other than the
    native one builds it with ``dynamic_img_size`` (position embeddings interpolated to the
    patch grid of each input) when the model takes that option."""
    if family == "timm":
        import timm

        if not timm.is_model(arch):
            raise TransferlabError(f"timm has no architecture {arch!r} (see timm.list_models())")
        kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
        native = _timm_native_size(arch)
        model = None
        if input_size is not None and input_size != native:
            try:
                model = timm.create_model(arch, pretrained=False, dynamic_img_size=True, **kwargs)
            except TypeError:  # a ConvNet: any input size works as it is
                model = None
        if model is None:
            model = timm.create_model(arch, pretrained=False, **kwargs)
        try:
            return model.eval(), timm_adapter(model, input_size)
        except TransferlabError:
            raise
        except Exception as exc:
            if input_size is None:
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise TransferlabError(f"timm:{arch} cannot run at {input_size} px: {first}") from None
    if family == "torchvision":
        import torchvision

        try:
            kwargs = {} if num_classes is None else {"num_classes": num_classes}
            model = torchvision.models.get_model(arch, weights=None, **kwargs)
        except ValueError:
            raise TransferlabError(f"torchvision has no architecture {arch!r}") from None
        return model.eval(), torchvision_adapter(arch, model)
    raise TransferlabError(f"unknown model family {family!r}")


def _timm_native_size(arch: str) -> int:
    """The input size of timm's default pretrained config (offline: configs ship with timm)."""
    import timm

    try:
        cfg = timm.get_pretrained_cfg(arch)
    except Exception:  # an architecture without a registered config
        cfg = None
    size = getattr(cfg, "input_size", None) or (3, 224, 224)
    return int(size[-1])


def _default_preprocessing(family: str, model: nn.Module) -> Preprocessing:
    if family == "timm":
        cfg = getattr(model, "pretrained_cfg", None) or {}
        return Preprocessing(
            input_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
            crop_pct=float(cfg.get("crop_pct", 0.875)),
            interpolation=str(cfg.get("interpolation", "bicubic")) or "bicubic",
            mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        )
    return Preprocessing(224, 0.875, "bilinear")


def _make_source(name: str, arch: str, model: nn.Module, adapter: Adapter, preprocessing: Preprocessing,
                 weights_id: str, imagenet: bool = False) -> Source:
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if not num_classes:
        last = [m for m in model.modules() if isinstance(m, nn.Linear)]
        num_classes = last[-1].out_features if last else 0
    source = Source(
        name=name,
        model=model,
        preprocessing=preprocessing,
        layer_names=adapter.layer_names,
        forward_features=adapter.forward_features,
        forward_head=adapter.forward_head,
        weights_id=weights_id,
        arch=arch,
        num_classes=num_classes,
        class_names=imagenet_class_names() if imagenet and num_classes == 1000 else None,
        tokens=adapter.tokens,
        map_layout=adapter.map_layout,
        head_pooling=adapter.head_pooling,
        pre_logits=adapter.pre_logits,
        classifier=adapter.classifier,
    )
    if adapter.shapes is not None and adapter.shapes_size == preprocessing.input_size:
        # the adapter's dry forward already measured every layer: no second one
        source._layers = layers_from_shapes(source, adapter.shapes, preprocessing.input_size)
    return source


def list_builtin_sources() -> list[dict]:
    return [
        {"name": spec.name, "arch": spec.arch, "description": spec.description,
         "input_size": spec.preprocessing.input_size}
        for spec in BUILTIN_SOURCES.values()
    ]


def _stage_lengths(model: nn.Module) -> list[int]:
    """Blocks per stage of a timm EfficientNet (``model.blocks`` is a Sequential of stages)."""
    blocks = model.get_submodule("blocks")
    stages = list(blocks.children())
    if not isinstance(blocks, nn.Sequential) or not all(isinstance(s, nn.Sequential) for s in stages):
        raise TransferlabError(f"{type(model).__name__}: expected timm EfficientNet stages in .blocks")
    return [len(list(stage.children())) for stage in stages]
