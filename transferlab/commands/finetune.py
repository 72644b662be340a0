"""`transferlab finetune`: train a source on target task(s) with new heads; the result is a
source (`--source finetuned:OUT`)."""

from __future__ import annotations

import argparse

from transferlab.commands._common import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    print_json,
)


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "finetune", parents=[parent],
        help="fine-tune a source on one or several tasks; the result is a new source",
        description="Fine-tune a source network on target task(s), one new linear head per task "
        "(several --task = joint fine-tuning). The whole network trains, or only its top K "
        "blocks (--blocks K; 0 = heads only). Cosine schedule, flip/crop augmentation, early "
        "stopping on validation, a checkpoint after every epoch: rerun the same command to "
        "resume. The result in --out is a source: --source finetuned:OUT.",
        epilog="examples: transferlab finetune --source efficientnet_lite0 --task digits --out ft/ "
        "--blocks 2 --epochs 5;  transferlab finetune --source efficientnet_lite0 --task voc2007 "
        "--root data/VOC2007 --task cub --root data/CUB_200_2011 --out joint/",
    )
    p.add_argument("--source", required=True, help="built-in name, timm:ARCH, torchvision:ARCH, finetuned:PATH, ...")
    p.add_argument("--weights", help="weights file for timm:/torchvision: sources, or 'none' for random init")
    p.add_argument("--task", action="append", required=True, metavar="T",
                   help="task name or dataset folder; repeat for joint fine-tuning")
    p.add_argument("--root", action="append", default=[], metavar="DIR",
                   help="folder of a benchmark task: one per --task, or one for every non-built-in task")
    p.add_argument("--out", required=True,
                   help="output folder (checkpoint.pt, model.safetensors, heads.safetensors, source.json)")
    p.add_argument("--blocks", default="all",
                   help="'all' (whole network), K (top K representation blocks) or 0 (heads only) [all]")
    p.add_argument("--epochs", type=positive_int, default=10, help="maximum epochs [10]")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=positive_float, help="peak learning rate [0.01 sgd, 1e-4 adamw]")
    p.add_argument("--head-lr-scale", type=positive_float,
                   help="the heads' learning rate is lr x this [1 sgd, 10 adamw]")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--weight-decay", type=non_negative_float, help="[1e-4 sgd, 0.01 adamw]")
    p.add_argument("--patience", type=non_negative_int, default=3,
                   help="early stopping: epochs without validation gain; 0 = off [3]")
    p.add_argument("--input-size", type=positive_int,
                   help="train and evaluate at this input size instead of the source's")
    p.add_argument("--resolution", type=positive_int, metavar="R",
                   help="load the source at R px (timm transformers with dynamic_img_size; the fine-tuned "
                        "source keeps it) [native]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="built-in tasks: the small quick version")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda [auto]")
    p.add_argument("--workers", type=non_negative_int, help="DataLoader decoding workers [auto]")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars and epoch lines")
    p.add_argument("--json", action="store_true", help="print the test metrics with the full configuration as JSON")
    p.set_defaults(func=run)


def parse_blocks(text: str) -> int | None:
    from transferlab.errors import TransferlabError

    if text.strip().lower() in ("all", "whole", ""):
        return None
    try:
        return int(text)
    except ValueError:
        raise TransferlabError(f"--blocks must be 'all' or an integer, got {text!r}") from None


def load_tasks(names: list[str], roots: list[str], quick: bool) -> list:
    """Pair each --task with its --root (one each, or one --root for every task that needs
    one) and read them; built-in tasks read with quick=True under --quick."""
    from transferlab.data.generic import load_dataset
    from transferlab.data.tasks import TASKS, all_tasks, load_task
    from transferlab.errors import TransferlabError

    all_tasks()  # registers every task
    if len(roots) == len(names):
        pairs: list[tuple[str, str | None]] = list(zip(names, roots, strict=True))
    elif len(roots) == 1:
        pairs = [(n, None if n not in TASKS or TASKS[n].builtin else roots[0]) for n in names]
        if all(root is None for _, root in pairs):
            raise TransferlabError("--root was given but no --task needs one (built-in tasks and folders take none)")
    elif not roots:
        pairs = [(n, None) for n in names]
    else:
        raise TransferlabError(f"{len(roots)} --root for {len(names)} --task: give one per task, or one for all")
    tasks = []
    for name, root in pairs:
        builtin = name in TASKS and TASKS[name].builtin
        options = {"quick": True} if quick and builtin else {}
        tasks.append(load_task(name, root, **options) if root else load_dataset(name, **options))
    return tasks


def run(args: argparse.Namespace) -> int:
    from transferlab.heads.finetune import finetune
    from transferlab.sources import load_source
    from transferlab.sources.concat import concat_members

    if concat_members(args.source):
        from transferlab.errors import TransferlabError

        raise TransferlabError(f"--source {args.source}: fine-tuning trains one network; a concat:[...] source is "
                               "several side by side (fine-tune each member, then concat:[finetuned:A,finetuned:B])")
    blocks = parse_blocks(args.blocks)
    tasks = load_tasks(args.task, args.root, args.quick)
    source = load_source(args.source, args.weights, resolution=args.resolution)
    result = finetune(
        source, tasks, args.out, blocks=blocks, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay, head_lr_scale=args.head_lr_scale,
        patience=args.patience or None, input_size=args.input_size, device=args.device,
        num_workers=args.workers, seed=args.seed, progress=not args.no_progress,
    )
    if args.json:
        print_json(result.to_dict())
        return 0
    print(f"fine-tuned {source.name} ({result.blocks}) on {', '.join(t.name for t in tasks)}: "
          f"best epoch {result.best_epoch} of {result.epochs_completed}"
          + (" (stopped early)" if result.stopped_early else ""))
    for task in tasks:
        metrics = result.metrics.get(task.name) or {}
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "per_class")
        print(f"  {task.name}: test {shown or '(no test split)'}; val {result.val.get(task.name, float('nan')):.4f}")
    print(f"saved to {result.out}; use it with --source finetuned:{result.out}")
    return 0
