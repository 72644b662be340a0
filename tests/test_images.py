"""Image reading for extraction: the fast JPEG path gives PIL's pixels, the one-resample
geometry matches torchvision's resize-then-crop, and thread batching keeps order."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from transferlab.data import images
from transferlab.data.base import image_splits
from transferlab.data.images import ImageListDataset, decode_rgb, image_batches, read_image
from transferlab.errors import BadImageError
from transferlab.features.extract import extract
from transferlab.sources.preprocessing import Preprocessing


def pil_rgb(path) -> np.ndarray:
    with Image.open(path) as handle:
        return np.asarray(handle.convert("RGB"))


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_fast_path_gives_pils_pixels(photo_dir, tmp_path, mode, progressive, monkeypatch):
    path = tmp_path / f"photo_{mode}.jpg"
    Image.open(photo_dir / "chelsea.jpg").convert(mode).save(path, quality=85, progressive=progressive)
    used = []
    original = images._decode_jpeg
    monkeypatch.setattr(images, "_decode_jpeg", lambda data: used.append(1) or original(data))
    decoded = decode_rgb(str(path))
    assert used == [1] and decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decoded), pil_rgb(path))


def test_non_jpeg_files_go_through_pil(photo_dir, tmp_path):
    for suffix in ("png", "bmp", "gif"):
        path = tmp_path / f"photo.{suffix}"
        Image.open(photo_dir / "coffee.jpg").convert("RGB").save(path)
        assert np.array_equal(np.asarray(decode_rgb(str(path))), pil_rgb(path))
    # a JPEG by content with a .png name is still decoded (by its bytes, not its name)
    renamed = tmp_path / "really_a_jpeg.png"
    renamed.write_bytes((photo_dir / "coffee.jpg").read_bytes())
    assert np.array_equal(np.asarray(decode_rgb(str(renamed))), pil_rgb(photo_dir / "coffee.jpg"))


def test_truncated_jpeg_raises_pils_error(photo_dir, tmp_path):
    data = (photo_dir / "rocket.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="truncated"):
        decode_rgb(str(path))


def test_box_crop_is_applied_and_clipped(photo_dir):
    path = str(photo_dir / "chelsea.jpg")
    full = np.asarray(read_image(path))
    assert np.array_equal(np.asarray(read_image(path, (10, 20, 110, 70))), full[20:70, 10:110])
    clipped = read_image(path, (-5, -5, 10_000, 30))
    assert clipped.size == (full.shape[1], 30)


def reference_pixels(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """torchvision's eval transform: resize the short side, then centre crop."""
    modes = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
             "nearest": InterpolationMode.NEAREST}
    resized = F.resize(image, pre.resize_size, interpolation=modes[pre.interpolation])
    return np.asarray(F.center_crop(resized, [pre.input_size, pre.input_size]))


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (451, 300), (256, 256), (1024, 683), (28, 28), (61, 37)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_one_resample_matches_resize_then_crop(photo_dir, size, interpolation):
    photo = Image.open(photo_dir / "astronaut.jpg").convert("RGB").resize(size, Image.Resampling.BILINEAR)
    pre = Preprocessing(input_size=224, crop_pct=0.875, interpolation=interpolation)
    ours = pre.to_pixels(photo).astype(int)
    reference = reference_pixels(photo, pre).astype(int)
    assert ours.shape == reference.shape == (224, 224, 3)
    difference = np.abs(ours - reference)
    # same filter taps; only float rounding of the sample positions may flip a value by one
    assert difference.max() <= 1
    assert (difference > 0).mean() < 0.01


def test_to_tensor_is_pixels_then_normalize(photo_dir):
    pre = Preprocessing(input_size=240, crop_pct=0.882, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    photo = Image.open(photo_dir / "coffee.jpg").convert("RGB")
    tensor = pre.to_tensor(photo)
    pixels = torch.from_numpy(pre.to_pixels(photo).copy()).permute(2, 0, 1).float()
    assert tensor.shape == (3, 240, 240)
    assert torch.allclose(tensor, (pixels / 255 - 0.5) / 0.5, atol=1e-6)
    batch = pre.normalize(torch.from_numpy(pre.to_pixels(photo).copy())[None])
    assert batch.is_contiguous(memory_format=torch.channels_last)


def test_thread_batches_equal_worker_batches_in_order(photo_dir):
    paths = [str(p) for p in sorted(photo_dir.glob("*.jpg"))]
    dataset = ImageListDataset(paths, None, Preprocessing(input_size=64), list(range(len(paths)))[::-1])
    threaded = list(image_batches(dataset, 2, num_workers=0))
    workers = list(image_batches(dataset, 2, num_workers=1))
    assert [b[1].tolist() for b in threaded] == [b[1].tolist() for b in workers]
    assert [b[1].tolist() for b in threaded][0] == [len(paths) - 1, len(paths) - 2]
    for (a, _, ra), (b, _, rb) in zip(threaded, workers, strict=True):
        assert a.dtype == torch.uint8 and a.shape[1:] == (64, 64, 3)
        assert torch.equal(a, b) and ra == rb == [""] * len(ra)


def test_thread_batches_flag_bad_files_without_raising(photo_dir, tmp_path):
    bad = tmp_path / "empty.jpg"
    bad.write_bytes(b"")
    paths = [str(photo_dir / "chelsea.jpg"), str(bad)]
    dataset = ImageListDataset(paths, None, Preprocessing(input_size=32), [0, 1])
    (pixels, indices, reasons), = list(image_batches(dataset, 8, num_workers=0))
    assert indices.tolist() == [0, 1] and reasons[0] == "" and reasons[1]
    assert not pixels[1].any()


def test_extraction_names_a_corrupt_file_in_a_thread_batch(lite0, photo_dir, tmp_path, store):
    from transferlab.data.base import Split

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff" + b"not a jpeg at all" * 10)
    paths = [str(photo_dir / "coffee.jpg"), str(corrupt)]
    split = Split("t", paths, np.zeros(2, dtype=np.int64))
    with pytest.raises(BadImageError, match="corrupt.jpg"):
        extract(lite0, split, lite0.resolve_layers([-1]), ["avg"], store=store, progress=False)


def test_in_memory_jpeg_bytes_roundtrip():
    """The fast path reads the file's bytes; a JPEG PIL writes decodes to PIL's own pixels."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    decoded = images._decode_jpeg(buffer.getvalue())
    assert decoded is not None
    assert np.array_equal(np.asarray(decoded), np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))


# ----------------------------------------------------------------------- --jpeg-draft
@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory, photo_dir):
    """A 2048x1536 photo: libjpeg can decode it at 1/4 scale and keep a short side >= 256."""
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    Image.open(photo_dir / "chelsea.jpg").convert("RGB").resize((2048, 1536), Image.Resampling.BICUBIC).save(
        path, quality=92)
    return path


def test_jpeg_draft_decodes_large_photos_reduced_but_not_below_the_target(big_jpeg):
    pre = Preprocessing()  # resize short side to 256
    reduced = read_image(str(big_jpeg), draft_short_side=pre.resize_size)
    assert reduced.size == (512, 384)  # 1/4: 1/8 would give a short side of 192 < 256
    full = pre.to_pixels(read_image(str(big_jpeg))).astype(int)
    fast = pre.to_pixels(reduced).astype(int)
    assert np.abs(full - fast).mean() < 2.0  # DCT-domain scaling vs resampling: ~1/255 off
    assert np.abs(full - fast).max() < 64


def test_jpeg_draft_with_a_box_keeps_the_box_region(big_jpeg):
    pre = Preprocessing()
    box = (400.0, 300.0, 1700.0, 1300.0)  # 1300 x 1000 original pixels: 1/2 scale keeps 500 >= 256
    reduced = read_image(str(big_jpeg), box, draft_short_side=pre.resize_size)
    assert reduced.size == (650, 500)
    full = pre.to_pixels(read_image(str(big_jpeg), box)).astype(int)
    assert np.abs(full - pre.to_pixels(reduced).astype(int)).mean() < 2.0


def test_jpeg_draft_changes_nothing_on_small_jpegs_and_other_formats(photo_dir, tmp_path):
    small = photo_dir / "coffee.jpg"  # 400 x 300: no 1/2 scale keeps 256
    assert np.array_equal(np.asarray(read_image(str(small), draft_short_side=256)), pil_rgb(small))
    png = tmp_path / "big.png"
    Image.open(photo_dir / "coffee.jpg").convert("RGB").resize((1600, 1200)).save(png)
    assert read_image(str(png), draft_short_side=256).size == (1600, 1200)


def test_jpeg_draft_features_are_stored_apart_and_named_in_the_manifest(big_jpeg, photo_dir, tmp_path, capsys):
    import json

    from transferlab.cli import main

    data = tmp_path / "data"
    for split in ("train", "test"):
        for label, source in (("cat", big_jpeg), ("cup", photo_dir / "coffee.jpg")):
            (data / split / label).mkdir(parents=True)
            (data / split / label / f"{label}.jpg").write_bytes(source.read_bytes())
    base = ["extract", "--source", "timm:resnet18", "--weights", "none", "--data", str(data), "--layers", "-1",
            "--pool", "avg", "--cache", str(tmp_path / "cache"), "--no-progress", "--json"]

    def run(*extra):
        assert main(base + list(extra) + ["--out", str(tmp_path / "out")]) == 0
        manifest = json.loads(capsys.readouterr().out)
        full_rows = np.load(tmp_path / "out" / "train" / "features__avg.npy")
        return manifest, full_rows

    plain, plain_rows = run()
    draft, draft_rows = run("--jpeg-draft")
    assert "resample-v1" in plain["pixels"]
    assert draft["pixels"] == plain["pixels"].replace("resample-v1", "resample-v1+jpeg-draft")
    # the big photo's features moved a little; the small one's not at all
    assert not np.array_equal(plain_rows[0], draft_rows[0])
    assert np.allclose(plain_rows[1], draft_rows[1], atol=1e-6)
    # a rerun of either is free: both entries are in the store, side by side
    from transferlab.data.generic import load_dataset
    from transferlab.features.store import FeatureStore
    from transferlab.sources import load_source

    source = load_source("timm:resnet18", "none")
    split = image_splits(load_dataset(str(data)))["train"]
    store = FeatureStore(tmp_path / "cache")
    for draft in (False, True):
        again = extract(source, split, source.resolve_layers([-1]), ["avg"], store=store, progress=False,
                        jpeg_draft=draft)
        assert again.forwarded_images == 0


def test_decode_hint_only_when_decoding_dominated_a_long_run():
    from transferlab.features.extract import decode_hint

    assert decode_hint(decode_seconds=40, seconds=100, jpeg_draft=False).startswith("note: 40% of 100 s")
    assert decode_hint(decode_seconds=20, seconds=100, jpeg_draft=False) is None  # forward-bound
    assert decode_hint(decode_seconds=8, seconds=10, jpeg_draft=False) is None  # too short to matter
    assert decode_hint(decode_seconds=60, seconds=100, jpeg_draft=True) is None  # already on


def test_extraction_reports_time_spent_waiting_for_images(lite0, photo_dir, store):
    from transferlab.data.base import Split

    paths = [str(p) for p in sorted(photo_dir.glob("*.jpg"))]
    feats = extract(lite0, Split("t", paths, np.zeros(len(paths), dtype=np.int64)), lite0.resolve_layers([-1]),
                    ["avg"], store=store, progress=False)
    assert 0 < feats.decode_seconds < feats.seconds


def test_without_torchvisions_decoder_jpegs_go_through_pil(photo_dir, monkeypatch):
    import torchvision.io

    monkeypatch.delattr(torchvision.io, "decode_jpeg")  # as in a torchvision that dropped it
    path = photo_dir / "chelsea.jpg"
    assert images._decode_jpeg(path.read_bytes()) is None
    assert np.array_equal(np.asarray(decode_rgb(str(path))), pil_rgb(path))


def test_decode_threads_follow_the_torch_threads_a_worker_was_given():
    """A Ray actor of 1 CPU sets torch to 1 thread; its decoding must not spread over every core."""
    from transferlab.data.images import decode_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert decode_threads() == 1
        torch.set_num_threads(2)
        assert decode_threads() == min(2, len(os.sched_getaffinity(0)))
    finally:
        torch.set_num_threads(before)
