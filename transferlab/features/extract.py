"""One-pass multi-layer extraction.

Forward hooks on every requested layer pool the activation the moment it is produced (on
the device), so one forward pass yields every (layer, pooling) pair, full maps are never
kept, and memory is bounded by the batch. Rows stream into the FeatureStore shard by
shard; shards already on disk are not forwarded again.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from transferlab.data.base import Split
from transferlab.data.images import ImageListDataset, extraction_workers, image_batches
from transferlab.device import resolve_device  # noqa: F401  (re-exported for callers)
from transferlab.errors import BadImageError, TransferlabError
from transferlab.features.fold import FOLD_RECIPE
from transferlab.features.pooling import (
    as_grid,
    check_pooling,
    default_windows,
    layer_pooled_shape,
    pool_grid,
    pooling_applies,
    validate_pooling,
)
from transferlab.features.store import FeatureStore, GroupKey, dataset_fingerprint, output_name
from transferlab.sources.base import FEATURES_OUTPUT, PRE_LOGITS, Layer, Source, named_module
from transferlab.sources.preprocessing import PIXEL_RECIPE

VIEWS = ("orig", "flip")


# --------------------------------------------------------------------- extraction
@dataclass
class SplitFeatures:
    """Handle on one split's features in the store (rows exclude skipped images)."""

    store: FeatureStore
    keys: dict[str, GroupKey]
    layers: list[Layer]
    poolings: list[str]
    bad: list[int] = field(default_factory=list)
    bad_reasons: dict[int, str] = field(default_factory=dict)
    forwarded_images: int = 0
    seconds: float = 0.0
    decode_seconds: float = 0.0  # of ``seconds``, waiting for decoded batches

    def get(self, layer: Layer | str, pooling: str, view: str = "orig") -> np.ndarray:
        name = layer.name if isinstance(layer, Layer) else layer
        if view not in self.keys:
            raise TransferlabError(f"view {view!r} was not extracted (have {', '.join(self.keys)})")
        return self.store.load(self.keys[view], output_name(name, pooling))

    @property
    def kept(self) -> np.ndarray:
        """Dataset indices that have a feature row, in row order."""
        n = next(iter(self.keys.values())).n_images
        mask = np.ones(n, dtype=bool)
        mask[self.bad] = False
        return np.flatnonzero(mask)


def group_keys(source: Source, paths: Sequence[str], boxes, views: Sequence[str],
               jpeg_draft: bool = False, fold_bn: bool = True) -> dict[str, GroupKey]:
    fingerprint = dataset_fingerprint(paths, boxes)
    # the pixel recipe is part of the identity: rows decoded or resampled another way never mix
    # (nor rows of a BatchNorm-folded forward, equal only up to float rounding)
    recipe = PIXEL_RECIPE + ("+jpeg-draft" if jpeg_draft else "") + (FOLD_RECIPE if fold_bn else "")
    pre = json.dumps({**source.preprocessing.to_dict(), "pixels": recipe}, sort_keys=True)
    return {
        view: GroupKey(source.name, source.weights_id, pre, view, fingerprint, len(paths))
        for view in views
    }


def extract(
    source: Source,
    split: Split,
    layers: Sequence[Layer],
    poolings: Sequence[str],
    views: Sequence[str] = ("orig",),
    store: FeatureStore | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    num_workers: int | None = None,
    on_bad_image: str = "error",
    progress: bool = True,
    desc: str | None = None,
    jpeg_draft: bool = False,
    compile_model: bool | None = None,
    fold_bn: bool = True,
    shards: Collection[int] | None = None,
) -> SplitFeatures:
    """Fill the store with every (layer, pooling, view) of ``split``; one forward per image
    and view, only for shards not already on disk. ``jpeg_draft`` decodes large JPEGs at a
    reduced scale (``features.images.read_image``), stored apart from full decodes.
    ``compile_model`` runs the one-pass forward through ``torch.compile`` (``CompiledForward``);
    None decides by the number of images (``features.speed.compile_pays``). ``fold_bn`` folds
    BatchNorms into their convolutions for the forward (``features.fold``), keyed apart.
    ``shards``: forward only these shards (one unit of work of a distributed executor).
    ``batch_size`` None: ``features.speed.default_batch_size`` (6 on the CPU, 32 on a GPU)."""
    store = store or FeatureStore()
    poolings = [validate_pooling(p) for p in poolings]
    for view in views:
        if view not in VIEWS:
            raise TransferlabError(f"unknown view {view!r}; choose from {', '.join(VIEWS)}")
    if on_bad_image not in ("error", "skip"):
        raise TransferlabError("--on-bad-image must be 'error' or 'skip'")
    if len(split) == 0:
        raise TransferlabError(f"split {split.name} has no images")
    if batch_size is None:
        from transferlab.features.speed import default_batch_size

        batch_size = default_batch_size(resolve_device(device))
    if batch_size < 1:
        raise TransferlabError(f"batch size must be >= 1, got {batch_size}")
    windows = default_windows()
    wanted = usable_pairs(source, layers, poolings)
    outputs = [output_name(layer.name, p) for layer, p in wanted]
    keys = group_keys(source, split.paths, split.boxes, views, jpeg_draft, fold_bn)
    # forward only the views with something missing: another view's shards stay as they are
    todo: dict[int, set[str]] = {}
    run_keys: dict[str, GroupKey] = {}
    for view, key in keys.items():
        for shard, missing in store.missing(key, outputs).items():
            if shards is not None and shard not in shards:
                continue
            todo.setdefault(shard, set()).update(missing)
            run_keys[view] = key
    result = SplitFeatures(store, keys, list(layers), list(poolings))
    if todo:
        start = time.perf_counter()
        result.forwarded_images, result.decode_seconds = _run(
            source, split, wanted, windows, list(run_keys), run_keys, store, todo, device, batch_size,
            num_workers, on_bad_image, progress, desc, jpeg_draft, compile_model, fold_bn)
        result.seconds = time.perf_counter() - start
        hint = decode_hint(result.decode_seconds, result.seconds, jpeg_draft)
        if hint and progress:
            print(hint, file=sys.stderr)
    first = next(iter(keys.values()))
    result.bad = store.bad_indices(first)
    if result.bad and on_bad_image == "error":
        raise BadImageError(split.paths[result.bad[0]], "skipped in an earlier --on-bad-image skip run; "
                            "clear it with `transferlab cache rm` or use --on-bad-image skip")
    return result


def given_poolings(layers: Sequence[Layer], poolings: Sequence[str]) -> list[str]:
    """The poolings that at least one of ``layers`` can give (a study sweeping ``cls`` over
    ViTs and ConvNets asks each source only for what it has)."""
    return [p for p in poolings if any(pooling_applies(layer, p) for layer in layers)]


def usable_pairs(source: Source, layers: Sequence[Layer], poolings: Sequence[str]) -> list[tuple[Layer, str]]:
    """The (layer, pooling) pairs the layers can give (the pooling registry decides). A pairing
    that no requested layer can give is an error naming the layer and the pooling (``cls`` on
    Swin); one that only some layers give is skipped for the others (``grid2`` on fc7 beside
    pool5), as the manifest's dims show."""
    if not layers or not poolings:
        raise TransferlabError(f"nothing to extract from {source.name}: give at least one layer and one pooling")
    for p in poolings:
        if not any(pooling_applies(layer, p) for layer in layers):
            check_pooling(layers[0], p, source.name)
    return [(layer, p) for layer in layers for p in poolings if pooling_applies(layer, p)]


def decode_hint(decode_seconds: float, seconds: float, jpeg_draft: bool) -> str | None:
    """A one-line suggestion when waiting for decoded images dominated a long extraction."""
    if jpeg_draft or seconds < 20 or decode_seconds < 0.3 * seconds:
        return None
    return (f"note: {decode_seconds / seconds:.0%} of {seconds:.0f} s went to decoding images; for large "
            "JPEG photos --jpeg-draft (study: execution.jpeg_draft) decodes at reduced scale, 2-5x faster")


def _run(source, split, wanted, windows, views, keys, store, todo, device, batch_size, num_workers,
         on_bad_image, progress, desc, jpeg_draft, compile_model, fold_bn) -> tuple[int, float]:
    from tqdm.auto import tqdm

    from transferlab.features.fold import folded_for_inference
    from transferlab.features.speed import compile_pays, use_compile_cache

    dev = resolve_device(device)
    model = source.model.to(dev).eval()
    if fold_bn:
        model = folded_for_inference(model, keep={layer.name for layer, _ in wanted})
    channels_last = dev.type == "cpu"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    indices = [i for shard in sorted(todo) for i in range(*store.shard_range(keys[views[0]], shard))]
    dataset = ImageListDataset(split.paths, split.boxes, source.preprocessing, indices, jpeg_draft)
    workers = extraction_workers(dev) if num_workers is None else num_workers
    waited = [0.0]
    batches = _timed(image_batches(dataset, batch_size, workers, pin_memory=dev.type == "cuda"), waited)
    for key in keys.values():
        store.write_meta(key, {"source": source.name, "arch": source.arch, "split": split.name,
                               "n_images": len(split), "first_path": split.paths[0]})

    pooled = PooledForward(source, model, layer_poolings(wanted), windows)
    if compile_model is None:
        compile_model = compile_pays(len(indices) * len(views), source, dev)
    if compile_model:
        use_compile_cache()
    forward = CompiledForward(pooled, batch_size, channels_last) if compile_model else pooled
    shard_size = _shard_size()
    buffers: dict[int, dict[str, list]] = {}
    bad_in_shard: dict[int, list[int]] = {}
    remaining = {shard: len(range(*store.shard_range(keys[views[0]], shard))) for shard in todo}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else _null()
    bar = tqdm(total=len(indices), unit="img", desc=desc or f"{source.name} {split.name}",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        with torch.inference_mode():
            for pixels, idx, reasons in batches:
                images = source.preprocessing.normalize(pixels.to(dev, non_blocking=True))
                good = np.array([not r for r in reasons])
                for k, reason in enumerate(reasons):
                    if reason:
                        i = int(idx[k])
                        if on_bad_image == "error":
                            raise BadImageError(split.paths[i], reason)
                        bad_in_shard.setdefault(i // shard_size, []).append(i % shard_size)
                per_view = {}
                for view in views:
                    batch = images if view == "orig" else images.flip(-1)
                    with autocast:
                        outputs = forward(batch)
                    per_view[view] = {name: t.cpu().numpy() for name, t in outputs.items()}
                # whole-batch slices per shard (indices run in shard order): no per-image work
                shards = idx.numpy() // shard_size
                for shard in np.unique(shards).tolist():
                    in_shard = shards == shard
                    rows = np.flatnonzero(in_shard & good)
                    buf = buffers.setdefault(shard, {})
                    for view, arrays in per_view.items():
                        for out, arr in arrays.items():
                            if out in todo[shard]:
                                buf.setdefault(f"{view}\0{out}", []).append(arr[rows])
                    remaining[shard] -= int(in_shard.sum())
                    if remaining[shard] == 0:
                        _flush(store, keys, shard, buffers.pop(shard, {}), todo[shard], wanted, windows,
                               bad_in_shard.get(shard, []))
                bar.update(len(idx))
    finally:
        bar.close()
        pooled.close()
        if channels_last:
            source.model.to(memory_format=torch.contiguous_format)
    return len(indices), waited[0]


def _timed(iterable, waited: list[float]):
    """Yield from ``iterable``, adding the seconds spent waiting for each item to waited[0]."""
    iterator = iter(iterable)
    while True:
        start = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        waited[0] += time.perf_counter() - start
        yield item


def layer_poolings(wanted: Sequence[tuple[Layer, str]]) -> dict[str, tuple[Layer, list[str]]]:
    """Group (layer, pooling) pairs by layer name: name -> (layer, its poolings)."""
    out: dict[str, tuple[Layer, list[str]]] = {}
    for layer, p in wanted:
        out.setdefault(layer.name, (layer, []))[1].append(p)
    return out


class PooledForward:
    """One forward pass returning every requested (layer, pooling) vector.

    Hooks pool each layer's activation as soon as it is produced, so no full feature map
    outlives its layer. ``by_layer`` maps a layer name to (its Layer, its poolings), or, as
    before, to just its poolings for ConvNet maps and vectors. Token layers are laid back on
    their patch grid (a view) once per layer, prefix tokens aside; channels-last maps are
    permuted (a view)."""

    def __init__(self, source: Source, model: torch.nn.Module, by_layer: dict, windows: list):
        self.source = source
        self.model = model
        self.by_layer: dict[str, tuple[Layer | None, list[str]]] = {
            name: (value if isinstance(value, tuple) else (None, list(value))) for name, value in by_layer.items()}
        self.windows = windows
        self.captured: dict[str, torch.Tensor] = {}
        self.handles = [
            named_module(model, name).register_forward_hook(self._hook(name))
            for name in self.by_layer if name not in (FEATURES_OUTPUT, PRE_LOGITS)
        ]

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self._pool(name, output)
        return hook

    def _pool(self, name: str, output: torch.Tensor) -> None:
        layer, poolings = self.by_layer[name]
        activation = output.float()  # once per layer (a copy under bf16 autocast)
        if layer is None:  # a bare map or vector: its kind follows from its shape
            layer = _plain_layer(name, activation)
        grid, prefix = as_grid(activation, layer)
        for p in poolings:
            self.captured[output_name(name, p)] = pool_grid(grid, prefix, layer, p, self.windows)

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        self.captured = {}
        top = self.source.forward_features(self.model, batch)
        if FEATURES_OUTPUT in self.by_layer:
            self._pool(FEATURES_OUTPUT, top)
        if PRE_LOGITS in self.by_layer:
            assert self.source.pre_logits is not None  # resolve_layers offers pre_logits only then
            self._pool(PRE_LOGITS, self.source.pre_logits(self.model, top))
        return self.captured

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class CompiledForward:
    """``torch.compile`` of a PooledForward (hooks included), every batch padded to one size
    so it compiles once (~40 s for EfficientNet-Lite0 on 2 CPU cores, then ~1.5x faster; worth
    it from a few thousand images). Outputs match eager within float rounding (~1e-5). If
    compilation fails (no C++ compiler, an op it cannot trace) it says so once and runs eager."""

    def __init__(self, pooled: PooledForward, batch_size: int, channels_last: bool):
        self.pooled = pooled
        self.batch_size = batch_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.compiled = torch.compile(lambda batch: dict(pooled(batch)), dynamic=False)
        self.failure: str | None = None

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.failure is not None:
            return self.pooled(batch)
        n = len(batch)
        if n < self.batch_size:
            batch = torch.cat([batch, batch[-1:].repeat(self.batch_size - n, 1, 1, 1)])
        try:
            outputs = self.compiled(batch.contiguous(memory_format=self.memory_format))
        except Exception as exc:  # compilation problems surface on the first call
            self.failure = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            print(f"note: torch.compile failed ({self.failure[:200]}); extracting without it", file=sys.stderr)
            return self.pooled(batch[:n])
        return {name: value[:n] for name, value in outputs.items()}


def _plain_layer(name: str, x: torch.Tensor) -> Layer:
    if x.dim() == 4:
        return Layer(name, int(x.shape[1]), 1, grid=(int(x.shape[2]), int(x.shape[3])))
    if x.dim() == 2:
        return Layer(name, int(x.shape[1]), None)
    raise TransferlabError(f"cannot pool a layer output of shape {tuple(x.shape)}")


def _flush(store, keys, shard, buf, outputs, wanted, windows, bad) -> None:
    for view, key in keys.items():
        arrays = {}
        for layer, p in wanted:
            out = output_name(layer.name, p)
            if out not in outputs:
                continue
            rows = buf.get(f"{view}\0{out}", [])
            shape = layer_pooled_shape(layer, p, len(windows))
            arrays[out] = (np.concatenate(rows).astype(np.float32, copy=False) if rows
                           else np.zeros((0, *shape), np.float32))
        store.write_shard(key, shard, arrays, bad)


def _shard_size() -> int:
    from transferlab.features import store as store_module

    return store_module.SHARD_SIZE


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def estimate_seconds(n_images: int, source: Source, views: int = 1) -> float:
    """Rough CPU time for a forward pass over ``n_images``: EfficientNet-Lite0 at 224 px, 2 cores,
    ~8 ms per image end to end (decoding, forward, pooling, store), scaled by pixel count."""
    size = source.preprocessing.input_size
    return n_images * views * 0.008 * math.pow(size / 224, 2)
