"""Fine-tuning: block rule, losses, checkpoints/resume, NaN handling, joint heads, the
`finetuned:PATH` round trip and `transferlab finetune`.

Training runs use timm's tiny ``test_resnet`` (random init) at 32 px on the quick built-in
``digits`` task, on the CPU, one or two epochs each.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from transferlab.cli import main
from transferlab.data.base import Split, TaskData
from transferlab.data.tasks import load_task
from transferlab.errors import BadImageError, TransferlabError
from transferlab.evaluate import evaluate_classification
from transferlab.features.extract import extract
from transferlab.heads.finetune import (
    TaskHeads,
    TrainingDiverged,
    _training_copy,
    finetune,
    joint_loss,
)
from transferlab.heads.finetune_blocks import plan_blocks
from transferlab.heads.finetune_data import FinetuneTask, prepare_task
from transferlab.heads.finetune_store import CHECKPOINT
from transferlab.sources import load_source
from transferlab.sources.finetuned import load_heads
from transferlab.training.checkpoint import load_checkpoint
from transferlab.training.schedule import cosine_lr

FAST = dict(input_size=32, num_workers=0, device="cpu", progress=False, batch_size=20)


def _small(task: TaskData, sizes: dict[str, int]) -> TaskData:
    """The first ``sizes[split]`` images of each split (the quick tasks are class-ordered,
    so take an even spread): keeps every training run to a few seconds."""
    splits = {}
    for name, n in sizes.items():
        split = task.splits[name]
        rows = np.linspace(0, len(split) - 1, n).round().astype(int)
        splits[name] = Split(name, [split.paths[i] for i in rows], split.labels[rows])
    return TaskData(task.name, task.kind, task.classes, splits)


@pytest.fixture(scope="module")
def digits() -> TaskData:
    return _small(load_task("digits", quick=True), {"train": 40, "val": 20, "test": 20})


@pytest.fixture(scope="module")
def base(digits):
    """timm's tiny test_resnet at 32 px, random weights with BatchNorm statistics measured on
    the training images, so that its eval-mode features are at a trained network's scale."""
    source = _training_copy(load_source("timm:test_resnet", "none"), 32)
    images = torch.stack([source.preprocessing.to_tensor(Image.open(p).convert("RGB"))
                          for p in digits.splits["train"].paths])
    norms = [m for m in source.model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    source.model.train()
    with torch.no_grad():
        source.forward_features(source.model, images)
    for norm in norms:
        norm.momentum = 0.1
    source.model.eval()
    return source


@pytest.fixture(scope="module")
def whole(base, digits, tmp_path_factory):
    """One epoch of whole-network fine-tuning, shared by the read-only tests."""
    out = tmp_path_factory.mktemp("ft") / "whole"
    return finetune(base, digits, out, epochs=1, **FAST)


def _copy_run(result, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(result.out, dest)
    return dest


# ------------------------------------------------------------------------ pure functions
def _info(name: str, kind: str, k: int) -> FinetuneTask:
    empty = Split("x", [], np.zeros(0, dtype=np.int64))
    return FinetuneTask(name, kind, [str(i) for i in range(k)], "accuracy", empty, empty, None, "val")


def test_joint_loss_routes_each_sample_to_its_own_head():
    single, multi = _info("a", "single", 2), _info("b", "multilabel", 3)
    head_a, head_b = nn.Linear(2, 2, bias=False), nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        head_a.weight.copy_(torch.eye(2))  # logits = features
        head_b.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    features = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, -1.0]])
    task_ids = torch.tensor([0, 1, 0])
    labels = torch.tensor([[0, 0, 0], [1, -1, 0], [1, 0, 0]])  # sample 1: third label unknown
    loss, correct, counted = joint_loss(features, lambda t, x: [head_a, head_b][t](x), task_ids, labels,
                                        [single, multi])
    # task a: CE([2,0], 0) = log(1+e^-2); CE([1,-1], 1) = log(1+e^2)
    ce = math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2))
    # task b, logits [0,0,0]: BCE(0, 1) = BCE(0, 0) = log 2, averaged over the 2 known labels
    bce = math.log(2)
    assert loss.item() == pytest.approx((ce + bce) / 3, rel=1e-6)
    assert (correct, counted) == (1, 2)


def test_heads_standardise_then_fold_into_plain_linear_heads():
    heads = TaskHeads(2, [1])
    heads.fit_standardisation(torch.tensor([[0.0, 0.0], [2.0, 4.0]]))  # mean (1, 2), var (1, 4)
    assert heads.mean.tolist() == [1.0, 2.0]
    assert heads.inv_std.tolist() == pytest.approx([1 / math.sqrt(1.025), 1 / math.sqrt(4.025)])
    with torch.no_grad():
        heads.inv_std.copy_(torch.tensor([0.5, 2.0]))
        heads.heads[0].weight.copy_(torch.tensor([[1.0, 1.0]]))
        heads.heads[0].bias.zero_()
    x = torch.tensor([[3.0, 3.0]])
    assert heads(0, x).item() == pytest.approx(0.5 * 2 + 2.0 * 1)
    folded = heads.folded()
    assert folded["0.weight"].tolist() == [[0.5, 2.0]] and folded["0.bias"].tolist() == [-4.5]
    assert (x @ folded["0.weight"].T + folded["0.bias"]).item() == pytest.approx(3.0)


def test_cosine_schedule_goes_from_lr_to_zero():
    assert cosine_lr(0.1, 0, 100) == pytest.approx(0.1)
    assert cosine_lr(0.1, 50, 100) == pytest.approx(0.05)
    assert cosine_lr(0.1, 100, 100) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lr(0.1, 150, 100) == pytest.approx(0.0, abs=1e-12)  # never past the end


def test_block_rule_resnet(base):
    names = {b: plan_blocks(base, b).trainable for b in (None, 0, 1, 2)}
    assert names[0] == []
    assert names[1] and all(n.startswith("layer4.") for n in names[1])
    assert {n.split(".")[0] for n in names[2]} == {"layer3", "layer4"}
    everything = {n for n, _ in base.model.named_parameters()}
    assert set(names[None]) == {n for n in everything if not n.startswith("fc.")}
    plan = plan_blocks(base, 1)
    assert "bn1" in plan.frozen_norms and "layer1.0.bn1" in plan.frozen_norms
    assert not [n for n in plan.frozen_norms if n.startswith("layer4.")]
    with pytest.raises(TransferlabError, match="between 0 .* and 5"):
        plan_blocks(base, 6)


def test_block_rule_efficientnet_top_block_is_head_conv():
    source = _training_copy(load_source("timm:test_efficientnet", "none"), 32)
    top = {n.rsplit(".", 1)[0] for n in plan_blocks(source, 1).trainable}
    assert top == {"conv_head", "bn2"}
    two = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks.") else "")
           for n in plan_blocks(source, 2).trainable}
    assert two == {"blocks.4", "conv_head", "bn2"}


def test_validation_split_carved_from_train_when_missing(digits):
    task = TaskData("mine", "single", digits.classes, {"train": digits.splits["train"], "test": digits.splits["test"]})
    info = prepare_task(task, seed=0, val_fraction=0.1)
    assert (len(info.train), len(info.val)) == (36, 4)
    assert not set(info.train.paths) & set(info.val.paths)
    assert info.val_source == "10% of train (seed 0)"
    assert prepare_task(task, seed=0, val_fraction=0.1).val.paths == info.val.paths  # seeded


def test_bad_tasks_are_refused(digits):
    train = digits.splits["train"]
    bad = TaskData("bad", "single", ["a", "b"], {"train": train})  # labels go up to 9
    with pytest.raises(TransferlabError, match="label .* outside the 2 classes"):
        prepare_task(bad, 0, 0.1)
    retrieval = TaskData("r", "retrieval", [], {"db": train})
    with pytest.raises(TransferlabError, match="retrieval task"):
        prepare_task(retrieval, 0, 0.1)


# ---------------------------------------------------------------------------- training
def test_top_block_trains_and_everything_else_stays(base, digits, tmp_path):
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    # 40 images in batches of 13 leave a last batch of 1, which BatchNorm cannot train on
    # (layer4's map is 1x1 at 32 px): it must be dropped, not crash
    result = finetune(base, digits, tmp_path / "b1", blocks=1, epochs=1, **{**FAST, "batch_size": 13})
    after = load_file(str(tmp_path / "b1" / "model.safetensors"))
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    weights = {k for k in changed if k.endswith(".weight")}
    assert weights and all(k.startswith("layer4.") for k in changed)  # frozen BN stats too
    assert "layer4.0.conv1.weight" in changed and "layer4.0.bn1.running_mean" in changed
    assert all(torch.equal(before[k], v) for k, v in base.model.state_dict().items())  # caller's copy untouched
    assert result.trainable_parameters == 10 * 97 + sum(
        p.numel() for n, p in base.model.named_parameters() if n.startswith("layer4."))


def test_finetuned_source_round_trips(whole, base, digits, store):
    source = load_source(f"finetuned:{whole.out}")
    assert source.layer_names == base.layer_names
    assert source.preprocessing.input_size == 32
    assert source.weights_id.startswith("finetuned:")
    assert source.info["finetuned"]["base"]["name"] == "timm:test_resnet"
    test = digits.splits["test"]
    top = source.resolve_layers([-1])
    feats = extract(source, test, top, ["avg"], store=store, device="cpu", num_workers=0, progress=False)
    features = feats.get(top[0], "avg")

    # the same weights loaded by hand into a fresh timm model give the same features
    import timm

    model = timm.create_model("test_resnet", pretrained=False).eval()
    model.load_state_dict(load_file(str(whole.out / "model.safetensors")))
    x = torch.stack([source.preprocessing.to_tensor(Image.open(p).convert("RGB")) for p in test.paths])
    with torch.no_grad():
        direct = model.forward_features(x).mean(dim=(2, 3)).numpy()
    assert np.allclose(features, direct, atol=1e-5)

    # ...and the saved head on the extracted features reproduces the reported test metric
    (weight, bias), = load_heads(whole.out)
    scores = features @ weight.numpy().T + bias.numpy()
    redo = evaluate_classification("accuracy", test.labels, scores)
    assert redo["accuracy"] == whole.metrics["digits"]["accuracy"]
    meta = json.loads((whole.out / "source.json").read_text())
    assert meta["tasks"][0]["test"]["accuracy"] == whole.metrics["digits"]["accuracy"]
    assert meta["arch"] == "timm:test_resnet" and meta["layer_names"] == base.layer_names

    # fine-tuning changed the representation
    with torch.no_grad():
        original = base.model.forward_features(x).mean(dim=(2, 3)).numpy()
    assert not np.allclose(original, direct, atol=1e-3)


def test_tampered_weights_are_refused(whole, tmp_path):
    out = _copy_run(whole, tmp_path)
    state = load_file(str(out / "model.safetensors"))
    state["fc.bias"] = state["fc.bias"] + 1
    from safetensors.torch import save_file

    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(TransferlabError, match="does not match"):
        load_source(f"finetuned:{out}")
    with pytest.raises(TransferlabError, match="own weights"):
        load_source(f"finetuned:{whole.out}", "x.pth")


def test_interrupted_run_resumes_to_the_same_weights(base, digits, tmp_path):
    digits = _small(digits, {"train": 20, "val": 10, "test": 10})
    fast = {**FAST, "batch_size": 10}

    def interrupt(report):
        if report.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(base, digits, tmp_path / "a", epochs=2, on_epoch_end=interrupt, **fast)
    assert load_checkpoint(tmp_path / "a" / CHECKPOINT, "finetune")["epoch"] == 1
    with pytest.raises(TransferlabError, match="has not finished"):
        load_source(f"finetuned:{tmp_path / 'a'}")
    resumed = finetune(base, digits, tmp_path / "a", epochs=2, **fast)
    assert (resumed.resumed_from, resumed.epochs_completed, len(resumed.history)) == (1, 2, 2)

    straight = finetune(base, digits, tmp_path / "b", epochs=2, **fast)
    assert straight.resumed_from == 0
    assert straight.history[0]["train_loss"] == resumed.history[0]["train_loss"]
    assert straight.history[1]["train_loss"] == pytest.approx(resumed.history[1]["train_loss"], rel=1e-5)
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_more_epochs_extend_a_finished_run(whole, base, digits, tmp_path):
    out = _copy_run(whole, tmp_path)
    longer = finetune(base, digits, out, epochs=2, **FAST)
    assert (longer.resumed_from, longer.epochs_completed) == (1, 2)
    assert longer.history[0] == whole.history[0]
    again = finetune(base, digits, out, epochs=2, **FAST)  # finished: nothing to train, same numbers
    assert again.resumed_from == 2 and again.metrics["digits"] == longer.metrics["digits"]


def test_checkpoint_of_other_settings_is_refused(whole, base, digits, tmp_path):
    out = _copy_run(whole, tmp_path)
    with pytest.raises(TransferlabError, match="different settings .*lr: 0.02 here, 0.01 in the checkpoint"):
        finetune(base, digits, out, epochs=1, lr=0.02, **FAST)


def test_nan_in_first_epoch_stops_and_saves_nothing(base, digits, tmp_path):
    with pytest.raises(TrainingDiverged, match=r"(NaN|infinite) at epoch 1.*nothing was saved") as info:
        finetune(base, digits, tmp_path / "nan", epochs=2, lr=1e12, **FAST)
    assert info.value.checkpoint_epoch == 0
    assert not (tmp_path / "nan" / CHECKPOINT).exists()
    assert not (tmp_path / "nan" / "source.json").exists()


def test_nan_later_keeps_the_last_good_checkpoint(base, digits, tmp_path):
    out = tmp_path / "later"

    def poison(report):  # after epoch 1 is on disk, break the live head
        with torch.no_grad():
            report.heads.heads[0].weight.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"epoch 2.*last good checkpoint .*epoch 1") as info:
        finetune(base, digits, out, epochs=2, on_epoch_end=poison, **FAST)
    assert info.value.checkpoint_epoch == 1
    ckpt = load_checkpoint(out / CHECKPOINT, "finetune")
    assert ckpt["epoch"] == 1 and torch.isfinite(ckpt["heads"]["heads.0.weight"]).all()
    assert not (out / "source.json").exists()
    # as the message says: --epochs 1 exports the good epoch without training
    kept = finetune(base, digits, out, epochs=1, **FAST)
    assert kept.best_epoch == 1 and load_source(f"finetuned:{out}").name == f"finetuned:{out}"


def _digit_attributes(digits: TaskData) -> TaskData:
    """A multi-label task on other images of the same digits: odd, >= 5, has a loop (0 6 8 9;
    unknown (0) for 4, whose loop depends on the writer)."""
    splits = {}
    for name, n in {"train": 30, "val": 20, "test": 20}.items():
        split = digits.splits[name]
        y = np.asarray(split.labels)[::-1][:n]
        labels = np.stack([np.where(y % 2 == 1, 1, -1), np.where(y >= 5, 1, -1),
                           np.where(np.isin(y, (0, 6, 8, 9)), 1, np.where(y == 4, 0, -1))], axis=1)
        splits[name] = Split(name, split.paths[::-1][:n], labels.astype(np.int8))
    return TaskData("digit_attributes", "multilabel", ["odd", "large", "loop"], splits)


def test_joint_fine_tuning_has_one_head_per_task(base, digits, tmp_path):
    attributes = _digit_attributes(digits)
    result = finetune(base, [digits, attributes], tmp_path / "joint", blocks=0, epochs=1, **FAST)
    assert set(result.metrics) == {"digits", "digit_attributes"}
    assert "accuracy" in result.metrics["digits"] and "map" in result.metrics["digit_attributes"]
    heads = load_file(str(tmp_path / "joint" / "heads.safetensors"))
    assert heads["0.weight"].shape == (10, 96) and heads["1.weight"].shape == (3, 96)
    meta = json.loads((tmp_path / "joint" / "source.json").read_text())
    assert [t["name"] for t in meta["tasks"]] == ["digits", "digit_attributes"]
    assert result.trainable_parameters == 10 * 97 + 3 * 97  # heads only: weights and biases
    saved = load_file(str(tmp_path / "joint" / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in base.model.state_dict().items())


def test_unreadable_training_image_is_named(base, digits, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    train = digits.splits["train"]
    split = Split("train", [str(broken)] * 4 + train.paths[:4], np.concatenate([[0] * 4, train.labels[:4]]))
    task = TaskData("broken", "single", digits.classes, {"train": split, "val": digits.splits["val"]})
    with pytest.raises(BadImageError, match="broken.png"):
        finetune(base, task, tmp_path / "bad", epochs=1, **FAST)


# ---------------------------------------------------------------------------------- CLI
def test_cli_json_prints_metrics_and_configuration(digits, tmp_path, capsys):
    folder = tmp_path / "mydigits"  # a dataset folder in the generic image-folder layout
    for name, split in digits.splits.items():
        for i, (path, label) in enumerate(zip(split.paths, split.labels, strict=True)):
            if i % 2 == 0:
                (folder / name / str(label)).mkdir(parents=True, exist_ok=True)
                shutil.copy(path, folder / name / str(label) / f"{i}.png")
    out = tmp_path / "cli"
    code = main(["finetune", "--source", "timm:test_resnet", "--weights", "none", "--task", str(folder),
                 "--out", str(out), "--epochs", "1", "--blocks", "2", "--input-size", "32",
                 "--device", "cpu", "--workers", "0", "--no-progress", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    accuracy = payload["metrics"]["mydigits"]["accuracy"]
    assert 0.0 <= accuracy <= 1.0
    config = payload["config"]
    assert (config["blocks"], config["lr"], config["optimizer"], config["epochs"]) == (2, 0.01, "sgd", 1)
    assert config["preprocessing"]["input_size"] == 32 and config["trained"].startswith("top 2")
    assert payload["source"] == f"finetuned:{out}"
    assert json.loads((out / "source.json").read_text())["tasks"][0]["test"]["accuracy"] == accuracy


@pytest.mark.parametrize("argv, message", [
    (
        ["--task", "digits", "--task", "fashion_mnist", "--root", "a", "--root", "b", "--root", "c"],
        "3 --root for 2 --task",
    ),
    (["--task", "digits", "--blocks", "top"], "--blocks must be 'all' or an integer"),
    (["--task", "digits", "--root", "{tmp}"], "takes no root"),
])
def test_cli_bad_arguments(argv, message, tmp_path, capsys):
    code = main(["finetune", "--source", "timm:test_resnet", "--weights", "none", "--out", str(tmp_path / "o"),
                 "--quick", *[a.replace("{tmp}", str(tmp_path)) for a in argv]])
    assert code == 2
    assert message in capsys.readouterr().err


def test_unknown_finetuned_path_is_a_clear_error(tmp_path):
    with pytest.raises(TransferlabError, match="not a fine-tuned source folder"):
        load_source(f"finetuned:{tmp_path}")


def test_validation_images_are_decoded_once_across_epochs(base, digits, tmp_path, monkeypatch):
    from transferlab.data import images

    decoded = []
    original = images.read_image
    monkeypatch.setattr(images, "read_image", lambda path, *a, **k: decoded.append(path) or original(path, *a, **k))
    finetune(base, digits, tmp_path / "v", epochs=3, patience=None, **FAST)
    val = set(digits.splits["val"].paths)
    assert sorted(p for p in decoded if p in val) == sorted(val)  # 3 epochs, one decode each
