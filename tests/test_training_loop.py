"""The shared training loop (transferlab/training), driven directly with a tiny real torch
model on seeded synthetic data: resume, divergence, schedule, checkpoints, best epoch and
early stopping."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.training.checkpoint import FORMAT, check_settings, load_checkpoint, save_checkpoint
from transferlab.training.loop import StepResult, TrainingDiverged, TrainingLoop, Validation
from transferlab.training.schedule import Schedule, cosine_lr, step_lr

N, BATCH = 40, 8
STEPS = N // BATCH
X = torch.randn(N, 4, generator=torch.Generator().manual_seed(0))
Y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()  # 3 classes a small MLP can learn


class Stop(Exception):
    pass


def make(ckpt, *, epochs=3, lr=0.1, patience=None, keep_best=False, settings=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    loop = TrainingLoop({"model": model}, opt, kind="test", checkpoint=ckpt,
                        settings=settings or {"lr": lr, "epochs": epochs}, schedule=Schedule("cosine", epochs, STEPS),
                        lr=lr, seed_of=lambda e: 1000 + e, device=torch.device("cpu"), patience=patience,
                        keep_best=keep_best, progress=False)
    return model, loop


def batches(epoch, seed):
    order = torch.randperm(N, generator=torch.Generator().manual_seed(seed))
    for start in range(0, N, BATCH):
        idx = order[start:start + BATCH]
        yield X[idx], Y[idx]


def run(model, loop, *, after=None, scores=None, **kwargs):
    def step(batch):
        x, y = batch
        logits = model(x)
        return StepResult(nn.functional.cross_entropy(logits, y), len(y), (logits.argmax(1) == y).sum(), len(y))

    def validate(epoch):
        if scores is not None:
            return Validation(scores[epoch - 1], {"score": scores[epoch - 1]})
        model.eval()
        with torch.no_grad():
            accuracy = float((model(X).argmax(1) == Y).float().mean())
        return Validation(accuracy, {"accuracy": accuracy})

    def end_epoch(result):
        return {"epoch": result.epoch, "train_loss": result.train_loss, "lr": result.lr}

    return loop.run(batches=batches, step=step, validate=validate, end_epoch=end_epoch,
                    after_checkpoint=after, **kwargs)


def test_resume_after_an_interrupt_gives_exactly_the_uninterrupted_weights(tmp_path):
    straight_model, straight = make(tmp_path / "a.pt")
    straight.resume()
    run(straight_model, straight)

    def interrupt(result, row):
        if result.epoch == 1:
            raise Stop

    model, loop = make(tmp_path / "b.pt")
    loop.resume()
    with pytest.raises(Stop):
        run(model, loop, after=interrupt)
    assert load_checkpoint(tmp_path / "b.pt", "test")["epoch"] == 1
    model, loop = make(tmp_path / "b.pt")  # a new process: fresh model, state from the checkpoint
    assert loop.resume().epoch == 1
    torch.manual_seed(12345)  # another process's random stream: epochs must not depend on it
    state = run(model, loop)
    assert [row["epoch"] for row in state.history] == [1, 2, 3]
    assert state.history == straight.state.history
    a, b = straight_model.state_dict(), model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.glob("*.tmp*")) and sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt"]


def test_training_leaves_the_callers_random_stream_alone(tmp_path):
    model, loop = make(tmp_path / "c.pt", epochs=1)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    run(model, loop)
    assert torch.equal(torch.rand(3), expected)


def test_a_diverging_run_stops_with_one_line_and_saves_nothing(tmp_path):
    model, loop = make(tmp_path / "d.pt", lr=1e9)
    with pytest.raises(TrainingDiverged) as info:
        run(model, loop)
    message = str(info.value)
    assert isinstance(info.value, TransferlabError) and "\n" not in message
    assert "at epoch 1, step" in message and "No epoch finished, so nothing was saved" in message
    assert info.value.what in ("loss", "weights") and info.value.checkpoint_epoch == 0
    assert not (tmp_path / "d.pt").exists()


def test_divergence_after_a_good_epoch_names_that_checkpoint(tmp_path):
    model, loop = make(tmp_path / "e.pt")

    def poison(result, row):
        if result.epoch == 1:
            with torch.no_grad():
                model[0].weight.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"the training loss became NaN at epoch 2, step 1 \(lr 0\.1\); "
                                                rf"training stopped\. The last good checkpoint is {tmp_path / 'e.pt'} "
                                                r"\(epoch 1\); lower --lr") as info:
        run(model, loop, after=poison, advice=lambda good: f"lower --lr, or export epoch {good}")
    assert info.value.checkpoint_epoch == 1
    assert torch.isfinite(load_checkpoint(tmp_path / "e.pt", "test")["model"]["0.weight"]).all()


def test_non_finite_validation_scores_are_divergence_too(tmp_path):
    model, loop = make(tmp_path / "f.pt")
    from transferlab.training.loop import NonFinite

    def validate(epoch):
        raise NonFinite("the validation scores of task t became NaN/inf")

    with pytest.raises(TrainingDiverged, match=r"validation scores of task t became NaN/inf at epoch 1, step 5"):
        loop.run(batches=batches, step=lambda b: StepResult(nn.functional.cross_entropy(model(b[0]), b[1]), len(b[1])),
                 validate=validate, end_epoch=lambda r: {})


def test_schedule_values_at_start_middle_and_end():
    cosine = Schedule("cosine", epochs=2, steps_per_epoch=10)
    assert cosine.lr(0.1, 0, 0) == pytest.approx(0.1)  # start: the peak
    assert cosine.lr(0.1, 1, 0) == pytest.approx(0.05)  # middle: half
    assert cosine.lr(0.1, 1, 9) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 19 / 20)))  # last step
    assert cosine.lr(0.1, 2, 0) == pytest.approx(0.0, abs=1e-12)  # end: zero, and never below
    assert cosine_lr(0.1, 30, 20) == pytest.approx(0.0, abs=1e-12)
    step = Schedule("step", epochs=4, steps_per_epoch=10)
    assert [step.lr(0.1, e, 5) for e in range(4)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert step_lr(0.1, 0, 1) == pytest.approx(0.1)  # one epoch: no milestone inside the run
    # A longer run resumed from a shorter one stretches the cosine from where it stands.
    assert Schedule("cosine", 4, 10).lr(0.1, 2, 0) == pytest.approx(0.05)
    with pytest.raises(TransferlabError, match="unknown schedule 'linear'; choose from cosine, step"):
        Schedule("linear", 1, 1)


def test_the_rows_report_the_scheduled_learning_rate(tmp_path):
    model, loop = make(tmp_path / "g.pt", epochs=2)
    state = run(model, loop)
    assert [row["lr"] for row in state.history] == pytest.approx(
        [cosine_lr(0.1, STEPS - 1, 2 * STEPS), cosine_lr(0.1, 2 * STEPS - 1, 2 * STEPS)])
    assert loop.optimizer.param_groups[0]["lr"] == pytest.approx(state.history[-1]["lr"])


def test_best_epoch_is_kept_and_patience_stops_early(tmp_path):
    model, loop = make(tmp_path / "h.pt", epochs=6, patience=2, keep_best=True)
    state = run(model, loop, scores=[0.5, 0.7, 0.6, 0.65, 0.9, 0.95])
    assert (state.epoch, state.stopped_early, state.best["epoch"], state.best["score"]) == (4, True, 2, 0.7)
    assert state.best["val"] == {"score": 0.7}
    best_weights = state.best["model"]
    loop.restore_best()
    assert all(torch.equal(model.state_dict()[k], best_weights[k]) for k in best_weights)
    # resumed, a run that stopped early trains nothing more
    model, loop = make(tmp_path / "h.pt", epochs=6, patience=2, keep_best=True)
    assert loop.resume().stopped_early
    assert run(model, loop, scores=[0.0] * 6).epoch == 4


def test_an_undefined_validation_score_counts_as_the_best_with_a_warning(tmp_path):
    model, loop = make(tmp_path / "i.pt", epochs=2, patience=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = run(model, loop, scores=[0.8, float("nan")])
    assert state.best["epoch"] == 2 and not state.stopped_early
    assert any("validation score is undefined" in str(w.message) for w in caught)


def test_a_checkpoint_resumes_only_its_own_run(tmp_path):
    model, loop = make(tmp_path / "j.pt", epochs=1)
    run(model, loop)
    _, other = make(tmp_path / "j.pt", epochs=2, lr=0.2, settings={"lr": 0.2, "epochs": 2})
    with pytest.raises(TransferlabError, match=r"j.pt was written by a run with different settings "
                                               r"\(lr: 0.2 here, 0.1 in the checkpoint\); use another --out"):
        other.resume()
    longer_model, longer = make(tmp_path / "j.pt", epochs=2, settings={"lr": 0.1, "epochs": 2})
    assert longer.resume().epoch == 1  # more epochs extend the run
    check_settings({"a": [1, 2], "b": None}, {"a": [1, 2], "b": None}, tmp_path / "x")  # equal: no error
    with pytest.raises(TransferlabError, match=r"b: 3 here, none in the checkpoint"):
        check_settings({"b": None}, {"b": 3}, tmp_path / "x")


def test_checkpoints_of_the_earlier_trainers_resume(tmp_path):
    """Checkpoints written before the shared loop (train-source's and finetune's own formats)
    hold the same fields and resume as they are."""
    model, loop = make(tmp_path / "k.pt", epochs=1)
    run(model, loop)
    old = torch.load(tmp_path / "k.pt", weights_only=True)
    for name in ("kind", "step", "bad_epochs", "stopped_early", "best", "schedule"):
        del old[name]
    old.update(format="transferlab-trained-source", version=1)
    torch.save(old, tmp_path / "k.pt")
    checkpoint = load_checkpoint(tmp_path / "k.pt", "train-source")
    assert checkpoint["format"] == FORMAT and checkpoint["epoch"] == 1 and checkpoint["best"] is None
    with pytest.raises(TransferlabError, match="is a train-source checkpoint, not a finetune one; use another --out"):
        load_checkpoint(tmp_path / "k.pt", "finetune")


def test_bad_checkpoint_files_are_one_line_errors(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(TransferlabError, match=r"bad.pt: unreadable test checkpoint \(.*\); delete it to start over"):
        load_checkpoint(path, "test")
    torch.save({"format": "something else"}, path)
    with pytest.raises(TransferlabError, match="bad.pt: not a transferlab test checkpoint; use another --out"):
        load_checkpoint(path, "test")
    save_checkpoint(path, "test", {"epoch": 1})
    with pytest.raises(TransferlabError, match="checkpoint without 'settings'; delete it to start over"):
        load_checkpoint(path, "test")
    torch.save({"format": FORMAT, "kind": "test", "weights": nn.Linear(2, 2)}, path)  # a pickled module
    with pytest.raises(TransferlabError, match="unreadable test checkpoint"):
        load_checkpoint(path, "test")  # weights_only=True refuses arbitrary objects
