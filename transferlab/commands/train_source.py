"""`transferlab train-source`: train an AlexNet-like or VGG16-like source network from scratch."""

from __future__ import annotations

import argparse

from transferlab.commands._common import (
    non_negative_float,
    non_negative_int,
    parse_csv_list,
    positive_float,
    positive_int,
    print_json,
    unit_interval,
)


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train-source", parents=[parent],
        help="train a source ConvNet from scratch (width, depth, snapshots, diversity, Hybrid)",
        description="Train an 8-layer AlexNet-like or 16-layer VGG16-like network on the train split "
        "of a task (or the union of several: Hybrid) and save it as a source: use it with "
        "--source trained:OUT (final weights) or trained:OUT@EPOCH (a snapshot). Rerunning the same "
        "command resumes from OUT/checkpoint.pt.",
        epilog="example: transferlab train-source --arch alexnet --width tiny --task fashion_mnist "
        "--epochs 10 --snapshots 1,2,5 --out runs/alexnet-tiny",
    )
    p.add_argument("--arch", default="alexnet", help="alexnet (5 conv + 3 fc) or vgg16 (13 conv + 3 fc) [alexnet]")
    p.add_argument("--width", default="small", help="tiny (x1/8), small (x1/4), medium (x1/2), large (x1) [small]")
    p.add_argument("--task", action="append", required=True, metavar="T",
                   help="task name, dataset folder or NAME=ROOT; repeat for a Hybrid (union of label spaces)")
    p.add_argument("--root", help="with one benchmark --task: the folder it was extracted to")
    p.add_argument("--quick", action="store_true", help="built-in tasks: the small quick version")
    p.add_argument("--resolution", type=positive_int, default=32, help="input size in px, 32 and up [32]")
    p.add_argument("--epochs", type=positive_int, default=10, help="[10]")
    p.add_argument("--snapshots", default="", help="comma list of epochs whose weights are kept, e.g. 1,2,5")
    p.add_argument("--classes", type=positive_int, help="train on a seeded subset of N classes")
    p.add_argument("--images-per-class", type=positive_int, help="and M seeded training images of each")
    p.add_argument("--lr", type=positive_float, help="SGD learning rate [0.02 with BatchNorm, 0.01 without]")
    p.add_argument("--momentum", type=unit_interval, default=0.9, help="[0.9]")
    p.add_argument("--weight-decay", type=non_negative_float, default=5e-4, help="on conv/fc weights [5e-4]")
    p.add_argument("--schedule", default="cosine", choices=["cosine", "step"],
                   help="cosine to 0, or x0.1 at 50%% and 75%% of the epochs [cosine]")
    p.add_argument("--batch-size", type=positive_int, default=64, help="[64: more steps for short schedules]")
    p.add_argument("--no-batch-norm", action="store_true", help="plain AlexNet/VGG convs (no BatchNorm)")
    p.add_argument("--dropout", type=unit_interval, default=0.0,
                   help="after fc6 and fc7 [0: AlexNet's 0.5 slows these narrow networks' short schedules badly]")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda [auto]")
    p.add_argument("--workers", type=non_negative_int, help="image decoding workers [auto]")
    p.add_argument("--threads", type=positive_int,
                   help="torch threads while training on CPU [1: small nets gain little "
                   "from more, and a busy machine makes OpenMP threads wait for each other]")
    p.add_argument("--seed", type=int, default=0, help="initial weights, subset, shuffles, augmentation [0]")
    p.add_argument("--out", required=True, help="output folder (weights, snapshots, source.json, checkpoint)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--json", action="store_true", help="print the training record as JSON")
    p.set_defaults(func=run)


def read_tasks(specs: list[str], root: str | None, quick: bool) -> list:
    """``--task`` values -> TaskData: a task name (``--root`` when only one), a dataset folder,
    or ``NAME=ROOT``."""
    from transferlab.data.generic import load_dataset
    from transferlab.data.tasks import load_task
    from transferlab.errors import TransferlabError

    if root and len(specs) > 1:
        raise TransferlabError("--root goes with a single --task; for a Hybrid write --task NAME=ROOT for each")
    options = {"quick": True} if quick else {}
    tasks = []
    for spec in specs:
        name, sep, task_root = spec.partition("=")
        if sep:
            tasks.append(load_task(name, task_root, **options))
        elif root:
            tasks.append(load_task(spec, root, **options))
        else:
            tasks.append(load_dataset(spec, **options))
    return tasks


def run(args: argparse.Namespace) -> int:
    from transferlab.errors import TransferlabError
    from transferlab.sources.train import CHANCE_MARGIN, train_source

    try:
        snapshots = [int(v) for v in parse_csv_list(args.snapshots)]
    except ValueError:
        raise TransferlabError(f"--snapshots must be a comma list of epochs, got {args.snapshots!r}") from None
    tasks = read_tasks(args.task, args.root, args.quick)
    record = train_source(
        args.arch, args.width, tasks, args.out, resolution=args.resolution, epochs=args.epochs,
        snapshots=snapshots, classes=args.classes, images_per_class=args.images_per_class,
        seed=args.seed, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        schedule=args.schedule, batch_size=args.batch_size, batch_norm=not args.no_batch_norm,
        dropout=args.dropout, device=args.device, workers=args.workers, progress=not args.no_progress,
        threads=args.threads,
    )
    if args.json:
        print_json(record.to_dict())
        return 0
    last = record.history[-1] if record.history else {}
    val = last.get("val_accuracy")
    print(f"{record.arch}-{record.width} ({record.parameters / 1e6:.2f}M parameters, {record.resolution} px) "
          f"on {'+'.join(record.settings['tasks'])}: {record.num_classes} classes, {record.train_images} "
          f"training images, {record.epochs_done} epochs on {record.device}")
    if last:
        print(f"  last epoch: train loss {last['train_loss']:.3f}, train accuracy {last['train_accuracy']:.3f}"
              + (f", val accuracy {val:.3f}" if val is not None else ""))
    print(f"saved to {record.out}: use --source trained:{record.out}"
          + "".join(f" or trained:{record.out}@{e}" for e in sorted(record.snapshots)))
    summary = record.to_dict()
    if summary["near_chance"]:
        print(f"WARNING: near chance: val accuracy {summary['val_accuracy']:.3f} is within "
              f"{100 * CHANCE_MARGIN:.0f} points of chance ({summary['chance']:.3f} = 1/{record.num_classes}); "
              "this source has not learnt its task: train on more images or for more epochs")
    elif summary["near_chance"] is None:
        print("note: the task has no val split, so the source's own accuracy is unknown")
    return 0
