"""Training source networks from scratch: architectures, snapshots as sources, resume,
divergence, Hybrid unions and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from transferlab.cli import main
from transferlab.data.tasks import load_task
from transferlab.errors import TransferlabError
from transferlab.features.extract import extract
from transferlab.sources import load_source
from transferlab.sources.architectures import ArchSpec, alexnet_stem, build_network, widths
from transferlab.sources.train import augment, train_source
from transferlab.sources.train_data import union_tasks
from transferlab.training.schedule import lr_at

SMALL = dict(classes=3, images_per_class=6, batch_size=8, progress=False)  # 18 images, 3 steps


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks gain nothing from intra-op threads, and on a busy machine OpenMP
    threads waiting for each other make each step many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fashion():
    return load_task("fashion_mnist", quick=True)


@pytest.fixture(scope="module")
def digits():
    return load_task("digits", quick=True)


def weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# ----------------------------------------------------------------------------- architectures
def test_width_table_and_large_is_the_standard_network():
    assert widths("alexnet", "large") == ((96, 256, 384, 384, 256), 4096)
    assert widths("alexnet", "tiny") == ((12, 32, 48, 48, 32), 512)
    assert widths("vgg16", "medium") == ((32, 64, 128, 256, 256), 2048)
    with torch.device("meta"):  # shapes only: no memory, no time
        vgg = build_network(ArchSpec("vgg16", "large", 224, 1000))
    # torchvision's VGG16 has 138,357,544 parameters; ours differs only by BatchNorm (+8,448)
    # and conv biases dropped in front of it (-4,224).
    assert sum(p.numel() for p in vgg.parameters()) == 138_357_544 + 8_448 - 4_224
    convs = [m for m in vgg.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in vgg.modules() if isinstance(m, torch.nn.Linear)]
    assert (len(convs), len(linears)) == (13, 3)
    alex = build_network(ArchSpec("alexnet", "tiny", 32, 10, batch_norm=False))
    assert len([m for m in alex.modules() if isinstance(m, torch.nn.Conv2d)]) == 5


@pytest.mark.parametrize("resolution, stem, pool5", [(32, (5, 1, 2), 3), (64, (7, 2, 3), 3),
                                                     (128, (11, 4, 2), 3), (224, (11, 4, 2), 6)])
def test_alexnet_stem_scales_with_resolution(resolution, stem, pool5):
    assert alexnet_stem(resolution) == stem
    with torch.device("meta"):
        assert build_network(ArchSpec("alexnet", "large", resolution, 5)).pool5_size == pool5


def test_vgg_pool5_is_resolution_over_32():
    with torch.device("meta"):
        assert [build_network(ArchSpec("vgg16", "large", r, 5)).pool5_size for r in (32, 64, 96, 224)] == [1, 2, 3, 7]


# ----------------------------------------------------------------------------- the Done-when test
@pytest.mark.parametrize("arch, below, pool5", [
    ("alexnet", ["features.pool5", "features.conv4", "features.conv3"], 32),
    ("vgg16", ["features.pool5", "features.pool4", "features.pool3"], 64),
])
def test_train_tiny_source_and_extract_from_its_snapshot(tmp_path, fashion, capsys, arch, below, pool5):
    out = tmp_path / arch
    code = main(["train-source", "--arch", arch, "--width", "tiny", "--task", "fashion_mnist", "--quick",
                 "--classes", "4", "--images-per-class", "8", "--epochs", "1", "--snapshots", "1",
                 "--batch-size", "16", "--out", str(out), "--no-progress", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["num_classes"] == 4 and record["train_images"] == 32 and record["val_images"] == 20
    assert record["status"] == "finished" and record["epochs_done"] == 1
    assert record["snapshots"] == {"1": "snapshots/epoch_001.safetensors"}
    assert math.isfinite(record["history"][0]["train_loss"]) and 0 <= record["history"][0]["val_accuracy"] <= 1
    meta = json.loads((out / "source.json").read_text())
    assert meta["architecture"]["arch"] == arch and meta["preprocessing"]["input_size"] == 32
    assert len(meta["class_names"]) == 4 and set(meta["class_names"]) <= set(fashion.classes)

    source = load_source(f"trained:{out}@1")
    assert source.num_classes == 4 and source.preprocessing.crop_pct == 1.0
    assert [layer.name for layer in source.layers[-5:]] == below[::-1] + ["fc6", "features"]
    top, fc6, third = source.resolve_layers([-1, -2, -3])
    assert (top.channels, fc6.channels, top.spatial, fc6.spatial) == (512, 512, False, False)
    assert third.name == "features.pool5" and third.channels == pool5 and third.spatial
    # The snapshot of the last epoch holds the same weights as the final model.
    final = load_source(f"trained:{out}")
    assert final.weights_id.split(":")[1] == source.weights_id.split(":")[1]

    split = fashion.split("test")
    feats = extract(source, split, [top, fc6, third], ["avg"], store=None, device="cpu", progress=False)
    fc7, fc6_rows, pool5_rows = (feats.get(layer, "avg") for layer in (top, fc6, third))
    assert fc7.shape == (len(split), 512) and pool5_rows.shape == (len(split), pool5)
    assert (fc7 >= 0).all() and (fc6_rows >= 0).all()  # post-ReLU representations
    # Layer -1 is exactly the network's fc7 for the first test image.
    x = source.preprocessing.to_tensor(__import__("PIL.Image").Image.open(split.paths[0]).convert("RGB"))
    with torch.inference_mode():
        direct = source.forward_features(source.model, x[None])[0].numpy()
    np.testing.assert_allclose(fc7[0], direct, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- resume
def test_resume_repeats_the_uninterrupted_run(tmp_path, fashion):
    straight = train_source("alexnet", "tiny", [fashion], tmp_path / "a", epochs=2, snapshots=[1], **SMALL)

    class Stop(Exception):
        pass

    def stop_after_first(row):
        raise Stop

    with pytest.raises(Stop):
        train_source("alexnet", "tiny", [fashion], tmp_path / "b", epochs=2, snapshots=[1],
                     callback=stop_after_first, **SMALL)
    checkpoint = torch.load(tmp_path / "b" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 1 and not (tmp_path / "b" / "model.safetensors").exists()
    with pytest.raises(TransferlabError, match="training has not finished"):
        load_source(f"trained:{tmp_path / 'b'}")
    resumed = train_source("alexnet", "tiny", [fashion], tmp_path / "b", epochs=2, snapshots=[1], **SMALL)
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert resumed.history[1]["train_loss"] == straight.history[1]["train_loss"]
    a, b = weights(tmp_path / "a" / "model.safetensors"), weights(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_written_before_the_shared_loop_resumes(tmp_path, fashion):
    """train-source's own checkpoint format (before transferlab/training) resumes as it is."""
    straight = train_source("alexnet", "tiny", [fashion], tmp_path / "a", epochs=2, **SMALL)

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_source("alexnet", "tiny", [fashion], tmp_path / "b", epochs=2, callback=stop, **SMALL)
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    old = {"format": "transferlab-trained-source", "version": 1, "epoch": ckpt["epoch"],
           "settings": ckpt["settings"], "model": ckpt["model"],
           "optimizer": {"state": ckpt["optimizer"]["state"],
                         "param_groups": [{k: v for k, v in group.items() if k != "base_lr"}
                                          for group in ckpt["optimizer"]["param_groups"]]},
           "history": ckpt["history"]}
    torch.save(old, tmp_path / "b" / "checkpoint.pt")
    resumed = train_source("alexnet", "tiny", [fashion], tmp_path / "b", epochs=2, **SMALL)
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    a, b = weights(tmp_path / "a" / "model.safetensors"), weights(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history[1]["train_loss"] == straight.history[1]["train_loss"]


def test_more_epochs_continue_from_the_checkpoint(tmp_path, fashion):
    first = train_source("vgg16", "tiny", [fashion], tmp_path, epochs=1, **SMALL)
    second = train_source("vgg16", "tiny", [fashion], tmp_path, epochs=2, snapshots=[2], **SMALL)
    assert [row["epoch"] for row in second.history] == [1, 2]
    assert second.history[0] == first.history[0]
    assert second.final_epoch == 2 and set(second.snapshots) == {2}
    again = train_source("vgg16", "tiny", [fashion], tmp_path, epochs=2, **SMALL)  # nothing left to do
    assert again.history == second.history and again.status == "finished"


def test_resume_with_other_settings_is_refused(tmp_path, fashion, capsys):
    train_source("alexnet", "tiny", [fashion], tmp_path, epochs=1, **SMALL)
    with pytest.raises(TransferlabError, match=r"lr: 0.05 here, 0.02 in the checkpoint"):
        train_source("alexnet", "tiny", [fashion], tmp_path, epochs=2, lr=0.05, **SMALL)
    with pytest.raises(TransferlabError, match=r"width: small here, tiny"):
        train_source("alexnet", "small", [fashion], tmp_path, epochs=2, **SMALL)
    code = main(["train-source", "--arch", "alexnet", "--width", "tiny", "--task", "fashion_mnist", "--quick",
                 "--classes", "3", "--images-per-class", "6", "--batch-size", "8", "--epochs", "2",
                 "--seed", "1", "--out", str(tmp_path), "--no-progress"])
    assert code == 2
    assert "seed: 1 here, 0 in the checkpoint" in capsys.readouterr().err


def test_checkpoint_beyond_the_requested_epochs_is_refused(tmp_path, fashion):
    train_source("alexnet", "tiny", [fashion], tmp_path, epochs=1, **SMALL)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    ckpt["epoch"] = 3  # as left by a 3-epoch run
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    with pytest.raises(TransferlabError, match=r"already at epoch 3, beyond --epochs 2; use a snapshot"):
        train_source("alexnet", "tiny", [fashion], tmp_path, epochs=2, **SMALL)


def test_weights_without_checkpoint_are_not_overwritten(tmp_path, fashion):
    train_source("alexnet", "tiny", [fashion], tmp_path, epochs=1, **SMALL)
    (tmp_path / "checkpoint.pt").unlink()
    with pytest.raises(TransferlabError, match="holds trained weights but no checkpoint.pt"):
        train_source("alexnet", "tiny", [fashion], tmp_path, epochs=1, **SMALL)


# ----------------------------------------------------------------------------- divergence
def test_huge_learning_rate_stops_with_a_message(tmp_path, fashion):
    with pytest.raises(TransferlabError, match=r"training diverged at epoch 1.*no snapshot.*Lower --lr \(was 1e\+12\)"):
        train_source("alexnet", "tiny", [fashion], tmp_path, epochs=2, snapshots=[1], lr=1e12,
                     batch_norm=False, **SMALL)
    meta = json.loads((tmp_path / "source.json").read_text())
    assert meta["training"]["status"].startswith("diverged at epoch 1")
    assert not (tmp_path / "checkpoint.pt").exists()


def test_divergence_keeps_the_last_good_snapshot(tmp_path, fashion):
    train_source("alexnet", "tiny", [fashion], tmp_path, epochs=1, snapshots=[1], **SMALL)
    (tmp_path / "model.safetensors").unlink()  # as if epoch 1 of a 3-epoch run had just finished
    good = weights(tmp_path / "snapshots" / "epoch_001.safetensors")
    # The weights go bad during epoch 2 (here: a NaN written into the checkpoint it resumes from).
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    ckpt["model"]["fc8.weight"][0, 0] = float("nan")
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    with pytest.raises(
        TransferlabError,
        match=rf"diverged at epoch 2, step \d+: loss nan; snapshots kept: trained:{tmp_path}@1; "
        r"checkpoint.pt holds epoch 1",
    ):
        train_source("alexnet", "tiny", [fashion], tmp_path, epochs=3, snapshots=[1, 2], **SMALL)
    assert not (tmp_path / "snapshots" / "epoch_002.safetensors").exists()
    kept = weights(tmp_path / "snapshots" / "epoch_001.safetensors")
    assert all(torch.equal(kept[k], good[k]) for k in good)
    source = load_source(f"trained:{tmp_path}@1")
    assert source.info["status"].startswith("diverged at epoch 2")
    with pytest.raises(TransferlabError, match="no snapshot of epoch 2; available: @1"):
        load_source(f"trained:{tmp_path}@2")


# ----------------------------------------------------------------------------- data
def test_hybrid_concatenates_label_spaces(fashion, digits):
    data = union_tasks([fashion, digits])
    assert len(data.class_names) == len(fashion.classes) + len(digits.classes) == 20
    assert data.class_names[0] == f"fashion_mnist/{fashion.classes[0]}" and data.class_names[10] == "digits/0"
    n_fashion = len(fashion.split("train"))
    assert np.array_equal(data.train.labels[:n_fashion], fashion.split("train").labels)  # rows keep order
    assert np.array_equal(data.train.labels[n_fashion:], digits.split("train").labels + 10)
    assert len(data.val) == len(fashion.split("val")) + len(digits.split("val"))


def test_hybrid_training_has_the_summed_class_count(tmp_path, fashion, digits, capsys):
    code = main(["train-source", "--arch", "alexnet", "--width", "tiny", "--task", "fashion_mnist",
                 "--task", "digits", "--quick", "--images-per-class", "1", "--batch-size", "20",
                 "--epochs", "1", "--out", str(tmp_path), "--no-progress", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["num_classes"] == 20 and record["train_images"] == 20
    source = load_source(f"trained:{tmp_path}")
    assert source.model.fc8.out_features == 20 and source.class_names[19] == "digits/9"


def test_subset_is_seeded_and_class_balanced(fashion):
    a = union_tasks([fashion], classes=3, images_per_class=4, seed=0)
    b = union_tasks([fashion], classes=3, images_per_class=4, seed=0)
    c = union_tasks([fashion], classes=3, images_per_class=4, seed=1)
    assert a.train.paths == b.train.paths and a.fingerprint == b.fingerprint
    assert a.train.paths != c.train.paths and a.fingerprint != c.fingerprint
    assert np.bincount(a.train.labels).tolist() == [4, 4, 4]
    names = {i: fashion.classes.index(n) for i, n in enumerate(a.class_names)}
    original = {p: int(y) for p, y in zip(fashion.split("train").paths, fashion.split("train").labels, strict=True)}
    assert all(original[p] == names[int(y)] for p, y in zip(a.train.paths, a.train.labels, strict=True))
    assert set(a.val.labels.tolist()) == {0, 1, 2} and len(a.val) == 3 * 5  # every val image of the 3


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, message", [
    (dict(arch="resnet"), "unknown architecture 'resnet'; choose from alexnet, vgg16"),
    (dict(width="huge"), "unknown width 'huge'; choose from tiny, small, medium, large"),
    (dict(resolution=24), "resolution 24 px is too small for alexnet: the minimum is 32 px"),
    (dict(classes=11), r"--classes 11 asks for more classes than the source has \(10 in fashion_mnist\)"),
    (dict(images_per_class=11), r"10 classes x 11 images per class = 110 training images .* has only 10"),
    (dict(snapshots=[5]), r"snapshot epochs \[5\] are outside 1..2"),
    (dict(schedule="linear"), "unknown schedule 'linear'"),
])
def test_bad_settings_are_clear_errors(tmp_path, fashion, kwargs, message):
    settings = dict(arch="alexnet", width="tiny", epochs=2, progress=False) | kwargs
    arch, width = settings.pop("arch"), settings.pop("width")
    with pytest.raises(TransferlabError, match=message):
        train_source(arch, width, [fashion], tmp_path, **settings)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_cli_bad_width_and_non_single_label_task(tmp_path, capsys):
    assert main(["train-source", "--width", "xl", "--task", "digits", "--out", str(tmp_path)]) == 2
    assert "unknown width 'xl'" in capsys.readouterr().err
    assert main(["train-source", "--width", "tiny", "--task", "shape_attributes", "--quick",
                 "--out", str(tmp_path)]) == 2
    assert "shape_attributes is attributes; a source network is trained on single-label" in capsys.readouterr().err
    assert main(["train-source", "--task", "digits", "--task", "fashion_mnist", "--root", str(tmp_path),
                 "--out", str(tmp_path)]) == 2
    assert "--root goes with a single --task; for a Hybrid write --task NAME=ROOT" in capsys.readouterr().err
    assert main(["train-source", "--task", "digits", "--snapshots", "1,x", "--out", str(tmp_path)]) == 2
    assert "--snapshots must be a comma list of epochs, got '1,x'" in capsys.readouterr().err


def test_trained_spec_errors(tmp_path):
    with pytest.raises(TransferlabError, match="not a folder written by `transferlab train-source`"):
        load_source(f"trained:{tmp_path}")
    with pytest.raises(TransferlabError, match="drop --weights"):
        load_source(f"trained:{tmp_path}", "some.safetensors")


# ----------------------------------------------------------------------------- schedule, augmentation
def test_learning_rate_schedules():
    cosine = {"lr": 0.1, "schedule": "cosine"}
    assert lr_at(cosine, 2, 0, 0, 10) == pytest.approx(0.1)
    assert lr_at(cosine, 2, 1, 0, 10) == pytest.approx(0.05)  # half way
    assert lr_at(cosine, 2, 1, 5, 10) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.75)))
    step = {"lr": 0.1, "schedule": "step"}
    assert [lr_at(step, 4, e, 3, 10) for e in range(4)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert [lr_at(step, 10, e, 0, 5) for e in (4, 5, 7, 8)] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    assert lr_at(step, 1, 0, 0, 5) == pytest.approx(0.1)


def test_augment_is_a_padded_crop_or_its_mirror():
    batch = torch.arange(6 * 3 * 16 * 16, dtype=torch.float32).view(6, 3, 16, 16) + 1
    out = augment(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape
    padded = torch.nn.functional.pad(batch, (2, 2, 2, 2))
    flips = 0
    for i in range(6):
        crops = [padded[i, :, y:y + 16, x:x + 16] for y in range(5) for x in range(5)]
        plain = any(torch.equal(out[i], c) for c in crops)
        mirrored = any(torch.equal(out[i], c.flip(-1)) for c in crops)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 0 < flips < 6  # both cases occur with this seed


def test_channel_stats_match_torch_and_sample_at_most_the_limit():
    import numpy as np
    import torch

    from transferlab.sources.train_data import channel_stats

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (700, 3, 8, 8), dtype=np.uint8)
    pixels = torch.from_numpy(images).double() / 255
    mean, std = channel_stats(images)
    assert mean == tuple(round(float(v), 6) for v in pixels.mean(dim=(0, 2, 3)))
    assert np.allclose(std, pixels.std(dim=(0, 2, 3)).numpy(), atol=2e-6)
    # 700 images, limit 300: every 3rd image (234 of them), not every 2nd (350 > 300)
    sub = torch.from_numpy(images[::3]).double() / 255
    assert channel_stats(images, limit=300)[0] == tuple(round(float(v), 6) for v in sub.mean(dim=(0, 2, 3)))
