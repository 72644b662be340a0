"""One-pass extraction, the FeatureStore, and `transferlab extract`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.cli import main
from transferlab.data.base import Split
from transferlab.errors import BadImageError
from transferlab.features import store as store_module
from transferlab.features.extract import extract
from transferlab.features.store import FeatureStore


def make_split(paths) -> Split:
    paths = [str(p) for p in paths]
    return Split("test", paths, np.zeros(len(paths), dtype=np.int64))


def test_top_avg_equals_timm_pre_logits(lite0, photo_dir, store):
    paths = sorted(photo_dir.glob("*.jpg"))
    feats = extract(lite0, make_split(paths), lite0.resolve_layers([-1]), ["avg"], store=store, progress=False)
    x = torch.stack([lite0.preprocessing.to_tensor(Image.open(p).convert("RGB")) for p in paths])
    with torch.inference_mode():
        reference = lite0.model.forward_head(lite0.model.forward_features(x), pre_logits=True)
    assert np.allclose(feats.get("features", "avg"), reference.numpy(), atol=1e-4)


def test_default_batch_is_small_on_the_cpu_and_results_do_not_depend_on_it(lite0, photo_dir, tmp_path, monkeypatch):
    from transferlab.features.speed import CPU_BATCH, GPU_BATCH, default_batch_size
    from transferlab.study.config import Execution

    assert default_batch_size(torch.device("cpu")) == CPU_BATCH < GPU_BATCH == default_batch_size(torch.device("cuda"))
    assert Execution().batch_size is None  # a study takes the device's default
    paths = sorted(photo_dir.glob("*.jpg"))
    split = make_split(paths * 2)  # 10 images: two batches of the CPU default
    calls = []
    original = lite0.forward_features
    monkeypatch.setattr(lite0, "forward_features", lambda m, x: calls.append(len(x)) or original(m, x))
    layers = lite0.resolve_layers([-1, -3])
    auto = extract(lite0, split, layers, ["avg", "grid2"], store=FeatureStore(tmp_path / "a"), progress=False,
                   device="cpu")
    assert calls == [CPU_BATCH, len(split) - CPU_BATCH]
    whole = extract(lite0, split, layers, ["avg", "grid2"], store=FeatureStore(tmp_path / "b"), progress=False,
                    device="cpu", batch_size=len(split))
    for layer in layers:
        for pooling in ("avg", "grid2"):
            np.testing.assert_allclose(auto.get(layer, pooling), whole.get(layer, pooling), atol=1e-4, rtol=0)


def test_one_forward_per_batch_for_all_layers_and_poolings(lite0, photo_dir, store, monkeypatch):
    calls = []
    original = lite0.forward_features
    monkeypatch.setattr(lite0, "forward_features", lambda m, x: calls.append(len(x)) or original(m, x))
    split = make_split(sorted(photo_dir.glob("*.jpg")))
    layers = lite0.resolve_layers([-1, -2, -3, -4])
    feats = extract(lite0, split, layers, ["avg", "max", "grid2"], store=store, batch_size=8, progress=False)
    assert calls == [5]
    assert feats.get("blocks.5", "grid2").shape == (5, 192 * 4)
    assert feats.get("blocks.4", "max").shape == (5, 112)
    # second identical run: no forward pass at all
    again = extract(lite0, split, layers, ["avg", "max", "grid2"], store=store, progress=False)
    assert calls == [5] and again.forwarded_images == 0
    assert np.array_equal(again.get("blocks.6", "avg"), feats.get("blocks.6", "avg"))


def test_flip_view_equals_flipped_input(lite0, photo_dir, store, tmp_path):
    src = photo_dir / "coffee.jpg"
    flipped = tmp_path / "flipped.png"
    # exact mirror of the preprocessed input needs a symmetric crop: use a square image
    img = Image.open(src).convert("RGB").resize((256, 256))
    img.save(tmp_path / "square.png")
    img.transpose(Image.FLIP_LEFT_RIGHT).save(flipped)
    layers = lite0.resolve_layers([-1])
    a = extract(
        lite0, make_split([tmp_path / "square.png"]), layers, ["avg"], views=["orig", "flip"], store=store,
        progress=False,
    )
    b = extract(lite0, make_split([flipped]), layers, ["avg"], store=store, progress=False)
    assert np.allclose(a.get("features", "avg", "flip"), b.get("features", "avg"), atol=1e-4)
    assert not np.allclose(a.get("features", "avg", "orig"), b.get("features", "avg"), atol=1e-3)


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(store_module, "SHARD_SIZE", 2)


def test_killed_extraction_resumes_with_missing_shards_only(lite0, photo_dir, store, small_shards, monkeypatch):
    split = make_split(sorted(photo_dir.glob("*.jpg")))  # 5 images -> shards of 2, 2, 1
    layers = lite0.resolve_layers([-1, -2])
    real_write = store.write_shard
    written = []

    def write_then_die(key, shard, arrays, bad=()):
        if written:
            raise KeyboardInterrupt  # killed while the second shard was being written
        real_write(key, shard, arrays, bad)
        written.append(shard)

    monkeypatch.setattr(store, "write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        extract(lite0, split, layers, ["avg"], store=store, progress=False, batch_size=2)
    monkeypatch.setattr(store, "write_shard", real_write)
    resumed = extract(lite0, split, layers, ["avg"], store=store, progress=False, batch_size=2)
    assert written == [0] and resumed.forwarded_images == 3
    assert resumed.get("features", "avg").shape == (5, 1280)
    full = extract(lite0, split, layers, ["avg"], store=type(store)(store.root.parent / "fresh"), progress=False)
    assert np.allclose(resumed.get("blocks.6", "avg"), full.get("blocks.6", "avg"), atol=1e-5)
    assert not list(store.root.rglob(".*.tmp-*"))


def test_bad_image_skip_lists_it(lite0, photo_dir, store, tmp_path):
    paths = [photo_dir / "chelsea.jpg", tmp_path / "truncated.jpg", photo_dir / "coffee.jpg"]
    data = (photo_dir / "rocket.jpg").read_bytes()
    paths[1].write_bytes(data[: len(data) // 3])
    split = make_split(paths)
    with pytest.raises(BadImageError, match="truncated.jpg"):
        extract(lite0, split, lite0.resolve_layers([-1]), ["avg"], store=store, progress=False)
    feats = extract(lite0, split, lite0.resolve_layers([-1]), ["avg"], store=store, progress=False,
                    on_bad_image="skip")
    assert feats.bad == [1]
    assert feats.kept.tolist() == [0, 2]
    assert feats.get("features", "avg").shape == (2, 1280)


def image_folder(root, photo_dir):
    for split, names in {"train": ["chelsea", "coffee"], "test": ["astronaut", "rocket"]}.items():
        for k, name in enumerate(names):
            folder = root / split / ("cat" if k == 0 else "other")
            folder.mkdir(parents=True)
            shutil.copy(photo_dir / f"{name}.jpg", folder / f"{name}.jpg")
    return root


def test_cli_extract_exports_arrays_items_and_manifest(photo_dir, tmp_path, capsys):
    data = image_folder(tmp_path / "data", photo_dir)
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    argv = ["extract", "--source", "efficientnet_lite0", "--data", str(data), "--layers", "-1,-2",
            "--pool", "avg,grid2", "--views", "orig,flip", "--out", str(out), "--cache", str(cache),
            "--no-progress", "--json"]
    assert main(argv) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["source"] == "efficientnet_lite0"
    assert manifest["dims"]["features__grid2"] == [1280 * 4]
    assert manifest["splits"] == {"train": 2, "test": 2}
    assert np.load(out / "test" / "blocks.6__grid2__flip.npy").shape == (2, 320 * 4)
    assert np.load(out / "train" / "features__avg.npy").dtype == np.float32
    items = (out / "test" / "items.csv").read_text().splitlines()
    assert items[0] == "path,label" and items[1].endswith("astronaut.jpg,cat")
    assert json.loads((out / "manifest.json").read_text())["weights"].startswith("efficientnet-lite0")
    # again: everything from the cache
    argv[-1] = "--no-progress"
    assert main(argv[:-1]) == 0
    assert "forwarded 0 images" in capsys.readouterr().out
    assert main(["cache", "ls", "--cache", str(cache), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["groups"]) == 4
    assert main(["cache", "rm", "--all", "--cache", str(cache)]) == 0
    assert "removed 4 group(s)" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--layers", "-42"], "out of range"),
    (["--layers", "nolayer"], "no layer 'nolayer'"),
    (["--pool", "median"], "unknown pooling"),
    (["--splits", "val"], "no split 'val'"),
])
def test_cli_extract_bad_options_one_line(photo_dir, tmp_path, capsys, extra, message):
    data = image_folder(tmp_path / "data", photo_dir)
    argv = ["extract", "--source", "efficientnet_lite0", "--data", str(data), "--cache", str(tmp_path / "c"),
            "--no-progress", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.slow
def test_compiled_extraction_matches_eager_and_pads_the_last_batch(photo_dir, tmp_path, capsys, monkeypatch):
    from transferlab.sources import load_source

    source = load_source("timm:test_efficientnet", "none")  # a tiny net: compiles in seconds
    split = make_split(sorted(photo_dir.glob("*.jpg")))  # 5 images, batch 4: last batch padded
    layers = source.resolve_layers([-1, -2])
    eager = extract(source, split, layers, ["avg", "grid2"], store=FeatureStore(tmp_path / "a"), progress=False,
                    batch_size=4)
    shapes = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(
        lambda batch: shapes.append(tuple(batch.shape)) or fn(batch), **kw))
    compiled = extract(source, split, layers, ["avg", "grid2"], store=FeatureStore(tmp_path / "b"),
                       progress=False, batch_size=4, compile_model=True)
    assert compiled.forwarded_images == 5
    assert "torch.compile failed" not in capsys.readouterr().err  # really compiled, no fallback
    assert shapes and {s[0] for s in shapes} == {4}  # the last batch of 1 was padded to 4
    for layer in layers:
        for p in ("avg", "grid2"):
            assert np.allclose(eager.get(layer, p), compiled.get(layer, p), atol=1e-4)


def test_compile_failure_falls_back_to_eager_with_a_note(lite0, photo_dir, store, monkeypatch, capsys):
    def broken_compile(fn, **_):
        def run(batch):
            raise RuntimeError("InductorError: no C++ compiler found\ndetails")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    split = make_split(sorted(photo_dir.glob("*.jpg"))[:3])
    feats = extract(lite0, split, lite0.resolve_layers([-1]), ["avg"], store=store, progress=False,
                    batch_size=2, compile_model=True)
    assert feats.get("features", "avg").shape == (3, 1280)
    err = capsys.readouterr().err
    assert err.count("torch.compile failed (InductorError: no C++ compiler found)") == 1


def test_adding_a_view_forwards_only_that_view(lite0, photo_dir, store, monkeypatch):
    calls = []
    original = lite0.forward_features
    monkeypatch.setattr(lite0, "forward_features", lambda m, x: calls.append(len(x)) or original(m, x))
    split = make_split(sorted(photo_dir.glob("*.jpg")))
    layers = lite0.resolve_layers([-1])
    first = extract(lite0, split, layers, ["avg"], views=["orig"], store=store, progress=False)
    assert calls == [5]
    both = extract(lite0, split, layers, ["avg"], views=["orig", "flip"], store=store, progress=False)
    assert calls == [5, 5]  # the flipped view only; orig came from the store
    assert np.array_equal(both.get("features", "avg", "orig"), first.get("features", "avg", "orig"))
    assert both.get("features", "avg", "flip").shape == (5, 1280)
