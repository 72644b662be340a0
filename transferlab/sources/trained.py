"""The ``trained:DIR[@EPOCH]`` source kind: a folder written by ``transferlab train-source``
(``sources/train.py``). Its format is owned here::

    DIR/source.json                      architecture, preprocessing, layers, classes, training record
    DIR/model.safetensors                final weights          -> source ``trained:DIR``
    DIR/snapshots/epoch_003.safetensors  weights after epoch 3  -> source ``trained:DIR@3``
    DIR/checkpoint.pt                    last finished epoch, for resuming (transferlab/training)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from transferlab.atomic import atomic_write_text
from transferlab.errors import TransferlabError
from transferlab.sources.architectures import (
    ArchSpec,
    build_network,
    forward_features,
    forward_head,
    representation_layers,
)
from transferlab.sources.base import Source, probe_layers
from transferlab.sources.preprocessing import Preprocessing

FORMAT = "transferlab-trained-source"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
META_FILE = "source.json"

CHANCE_MARGIN = 0.05  # a source within 5 points of 1/classes on its own val split has not learnt


def near_chance(val_accuracy: float | None, classes: int) -> bool | None:
    """True when a source's own validation accuracy is within ``CHANCE_MARGIN`` of chance
    (1/classes); None without a validation split."""
    if val_accuracy is None or classes < 1:
        return None
    return val_accuracy < 1.0 / classes + CHANCE_MARGIN


# ------------------------------------------------------------------------------ record
@dataclass
class TrainRecord:
    """What a training run did; stored in ``source.json`` under ``training``."""

    out: str
    arch: str
    width: str
    resolution: int
    num_classes: int
    class_names: list[str]
    settings: dict
    parameters: int = 0
    train_images: int = 0
    val_images: int = 0
    history: list[dict] = field(default_factory=list)
    snapshots: dict[int, str] = field(default_factory=dict)
    final: str | None = None
    final_epoch: int | None = None
    status: str = "running"
    device: str = "cpu"

    @property
    def epochs_done(self) -> int:
        return self.history[-1]["epoch"] if self.history else 0

    def val_accuracy_at(self, epoch: int | None = None) -> float | None:
        """The source's own validation accuracy after ``epoch`` (default: the last one done)."""
        rows = [r for r in self.history if epoch is None or r["epoch"] == epoch]
        return rows[-1].get("val_accuracy") if rows else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["snapshots"] = {str(k): v for k, v in sorted(self.snapshots.items())}
        data["epochs_done"] = self.epochs_done
        val = self.val_accuracy_at()
        data["val_accuracy"] = val
        data["chance"] = round(1.0 / self.num_classes, 6) if self.num_classes else None
        data["near_chance"] = near_chance(val, self.num_classes)
        seconds = sum(r.get("seconds") or 0.0 for r in self.history)
        data["train_seconds"] = round(seconds, 1)
        seen = sum(r.get("images_seen") or 0 for r in self.history)
        data["images_per_second"] = round(seen / seconds, 1) if seconds > 0 and seen else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainRecord:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["snapshots"] = {int(k): v for k, v in data.get("snapshots", {}).items()}
        return cls(**fields)



# ------------------------------------------------------------------------------ source.json
def write_source_json(out: Path, spec: ArchSpec, pre: Preprocessing, layers: list[dict], record: TrainRecord) -> None:
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "architecture": spec.to_dict(),
        "preprocessing": pre.to_dict(),
        "class_names": record.class_names,
        "layers": layers,
        "training": record.to_dict(),
    }
    atomic_write_text(out / META_FILE, json.dumps(payload, indent=2) + "\n")


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TransferlabError(f"{path}: unreadable ({exc})") from None


# ------------------------------------------------------------------------------ loading
def parse_trained_spec(arg: str) -> tuple[Path, int | None]:
    """``DIR`` -> (DIR, None); ``DIR@7`` -> (DIR, 7)."""
    text = arg.strip()
    if not text:
        raise TransferlabError("trained: needs a folder, e.g. trained:runs/alexnet-tiny or trained:runs/alexnet-tiny@5")
    head, sep, tail = text.rpartition("@")
    if sep and tail.isdigit():
        return Path(head), int(tail)
    if sep and not Path(text).exists():
        raise TransferlabError(f"trained:{text}: the part after '@' must be an epoch number")
    return Path(text), None


def load_trained_source(arg: str, weights: str | None = None) -> Source:
    """The ``trained:DIR[@EPOCH]`` source kind: final weights or the snapshot of EPOCH."""
    from transferlab.sources.weights import file_sha256, fit_state_dict, load_state_dict_file

    if weights not in (None, "", "builtin"):
        raise TransferlabError("trained: sources load their weights from their folder; drop --weights")
    directory, epoch = parse_trained_spec(arg)
    meta_path = directory / "source.json"
    meta = read_json(meta_path)
    if meta is None:
        raise TransferlabError(
            f"{meta_path} not found: {directory} is not a folder written by `transferlab train-source`")
    try:
        spec = ArchSpec.from_dict(meta["architecture"])
        pre = Preprocessing.from_dict(meta["preprocessing"])
        training = meta.get("training", {})
    except (KeyError, TypeError, ValueError) as exc:
        raise TransferlabError(f"{meta_path}: missing or bad field ({exc})") from None
    snapshots = {int(k): v for k, v in training.get("snapshots", {}).items()}
    final_epoch = training.get("final_epoch")
    if epoch is None:
        if not training.get("final") or not (directory / "model.safetensors").is_file():
            raise TransferlabError(
                f"{directory}: training has not finished (status: {training.get('status', '?')}, "
                f"{training.get('epochs_done', 0)} epochs done); snapshots: {_list_snapshots(directory, snapshots)}; "
                "use trained:DIR@EPOCH or resume the training"
            )
        path = directory / "model.safetensors"
    elif epoch in snapshots:
        path = directory / snapshots[epoch]
    elif epoch == final_epoch:
        path = directory / "model.safetensors"
    else:
        raise TransferlabError(
            f"{directory} has no snapshot of epoch {epoch}; "
            f"available: {_list_snapshots(directory, snapshots, final_epoch)}"
        )
    model = build_network(spec)
    fit_state_dict(model, load_state_dict_file(path), path)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    source = as_source(model, spec, pre, name=f"trained:{arg.strip()}",
                        weights_id=f"{path.name}:{file_sha256(path)[:16]}",
                        class_names=list(meta.get("class_names") or []) or None)
    source.info = {"epoch": epoch if epoch is not None else final_epoch, "folder": str(directory),
                   "tasks": training.get("settings", {}).get("tasks"), "status": training.get("status")}
    source._layers = probe_layers(source, keep_all=True)
    return source


def _list_snapshots(directory: Path, snapshots: dict[int, str], final_epoch: int | None = None) -> str:
    epochs = sorted(set(snapshots) | ({final_epoch} if final_epoch else set()))
    return ", ".join(f"@{e}" for e in epochs) if epochs else "none"


def as_source(model: nn.Module, spec: ArchSpec, pre: Preprocessing, *, name: str, weights_id: str,
               class_names: list[str] | None) -> Source:
    """Wrap a network as a Source. Every representation layer is kept (AlexNet's conv3 and
    conv4 have the same shape, which the generic stage-end heuristic would merge)."""
    source = Source(
        name=name, model=model, preprocessing=pre, layer_names=representation_layers(spec.arch),
        forward_features=forward_features, forward_head=forward_head, weights_id=weights_id,
        arch=f"{spec.arch}-{spec.width}-{spec.resolution}px", num_classes=spec.num_classes,
        class_names=class_names,
    )
    return source


def _register() -> None:
    from transferlab.sources.registry import register_source_kind

    register_source_kind(
        "trained", load_trained_source,
        "a network trained by `transferlab train-source`: trained:DIR (final) or trained:DIR@EPOCH (snapshot)",
    )


_register()
