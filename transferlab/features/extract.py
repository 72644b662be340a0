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
from transferlab.device import resolve_device  # noqa: F401  (re-exported for callers)
from transferlab.errors import BadImageError, TransferlabError
from transferlab.features.images import ImageListDataset, extraction_workers, image_batches
from transferlab.features.pooling import default_windows, pool, pooled_shape, validate_pooling
from transferlab.features.store import FeatureStore, GroupKey, dataset_fingerprint, output_name
from transferlab.sources.base import FEATURES_OUTPUT, Layer, Source, named_module
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
               jpeg_draft: bool = False) -> dict[str, GroupKey]:
    fingerprint = dataset_fingerprint(paths, boxes)
    # the pixel recipe is part of the identity: rows decoded or resampled another way never mix
    recipe = PIXEL_RECIPE + ("+jpeg-draft" if jpeg_draft else "")
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
    batch_size: int = 32,
    num_workers: int | None = None,
    on_bad_image: str = "error",
    progress: bool = True,
    desc: str | None = None,
    jpeg_draft: bool = False,
    compile_model: bool = False,
    shards: Collection[int] | None = None,
) -> SplitFeatures:
    """Fill the store with every (layer, pooling, view) of ``split``; one forward per image
    and view, only for shards not already on disk. ``jpeg_draft`` decodes large JPEGs at a
    reduced scale (``features.images.read_image``), stored apart from full decodes.
    ``compile_model`` runs the one-pass forward through ``torch.compile`` (``CompiledForward``).
    ``shards``: forward only these shards (one unit of work of a distributed executor)."""
    store = store or FeatureStore()
    poolings = [validate_pooling(p) for p in poolings]
    for view in views:
        if view not in VIEWS:
            raise TransferlabError(f"unknown view {view!r}; choose from {', '.join(VIEWS)}")
    if on_bad_image not in ("error", "skip"):
        raise TransferlabError("--on-bad-image must be 'error' or 'skip'")
    if len(split) == 0:
        raise TransferlabError(f"split {split.name} has no images")
    windows = default_windows()
    wanted = [(layer, p) for layer in layers for p in poolings if _pool_applies(layer, p)]
    if not wanted:
        raise TransferlabError("no (layer, pooling) pair applies: vector layers take only avg/max")
    outputs = [output_name(layer.name, p) for layer, p in wanted]
    keys = group_keys(source, split.paths, split.boxes, views, jpeg_draft)
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
            num_workers, on_bad_image, progress, desc, jpeg_draft, compile_model)
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


def _pool_applies(layer: Layer, pooling: str) -> bool:
    return layer.spatial or pooling in ("avg", "max")


def decode_hint(decode_seconds: float, seconds: float, jpeg_draft: bool) -> str | None:
    """A one-line suggestion when waiting for decoded images dominated a long extraction."""
    if jpeg_draft or seconds < 20 or decode_seconds < 0.3 * seconds:
        return None
    return (f"note: {decode_seconds / seconds:.0%} of {seconds:.0f} s went to decoding images; for large "
            "JPEG photos --jpeg-draft (study: execution.jpeg_draft) decodes at reduced scale, 2-5x faster")


def _run(source, split, wanted, windows, views, keys, store, todo, device, batch_size, num_workers,
         on_bad_image, progress, desc, jpeg_draft, compile_model) -> tuple[int, float]:
    from tqdm.auto import tqdm

    dev = resolve_device(device)
    model = source.model.to(dev).eval()
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

    by_layer: dict[str, list[str]] = {}
    for layer, p in wanted:
        by_layer.setdefault(layer.name, []).append(p)
    pooled = PooledForward(source, model, by_layer, windows)
    forward = CompiledForward(pooled, batch_size, channels_last) if compile_model else pooled
    shard_of = {i: i // _shard_size() for i in indices}
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
                good = {k for k, r in enumerate(reasons) if not r}
                for k, reason in enumerate(reasons):
                    if reason:
                        i = int(idx[k])
                        if on_bad_image == "error":
                            raise BadImageError(split.paths[i], reason)
                        bad_in_shard.setdefault(shard_of[i], []).append(i - shard_of[i] * _shard_size())
                per_view = {}
                for view in views:
                    batch = images if view == "orig" else images.flip(-1)
                    with autocast:
                        outputs = forward(batch)
                    per_view[view] = {name: t.cpu().numpy() for name, t in outputs.items()}
                for k in range(len(idx)):
                    i = int(idx[k])
                    shard = shard_of[i]
                    buf = buffers.setdefault(shard, {})
                    if k in good:
                        for view, arrays in per_view.items():
                            for out, arr in arrays.items():
                                if out in todo[shard]:
                                    buf.setdefault(f"{view}\0{out}", []).append(arr[k])
                    remaining[shard] -= 1
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


class PooledForward:
    """One forward pass returning every requested (layer, pooling) vector.

    Hooks pool each layer's activation as soon as it is produced, so no full feature map
    outlives its layer. ``by_layer`` maps a layer name to its poolings."""

    def __init__(self, source: Source, model: torch.nn.Module, by_layer: dict[str, list[str]], windows: list):
        self.source = source
        self.model = model
        self.by_layer = by_layer
        self.windows = windows
        self.captured: dict[str, torch.Tensor] = {}
        self.handles = [
            named_module(model, name).register_forward_hook(self._hook(name))
            for name in by_layer if name != FEATURES_OUTPUT
        ]

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            activation = output.float()  # once per layer (a copy under bf16 autocast)
            for p in self.by_layer[name]:
                self.captured[output_name(name, p)] = pool(activation, p, self.windows)
        return hook

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        self.captured = {}
        top = self.source.forward_features(self.model, batch)
        top = top.float()
        for p in self.by_layer.get(FEATURES_OUTPUT, ()):
            self.captured[output_name(FEATURES_OUTPUT, p)] = pool(top, p, self.windows)
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


def _flush(store, keys, shard, buf, outputs, wanted, windows, bad) -> None:
    for view, key in keys.items():
        arrays = {}
        for layer, p in wanted:
            out = output_name(layer.name, p)
            if out not in outputs:
                continue
            rows = buf.get(f"{view}\0{out}", [])
            shape = pooled_shape(layer.channels, layer.spatial, p, len(windows))
            arrays[out] = np.stack(rows).astype(np.float32) if rows else np.zeros((0, *shape), np.float32)
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
    """Rough CPU time for a forward pass over ``n_images`` (EfficientNet-Lite0 ~25 ms at 224)."""
    size = source.preprocessing.input_size
    return n_images * views * 0.025 * math.pow(size / 224, 2)
