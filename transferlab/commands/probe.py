"""`transferlab probe`: a linear probe on one representation of one task."""

from __future__ import annotations

import argparse

from transferlab.commands._common import non_negative_int, parse_cs, print_json
from transferlab.commands.extract import add_runtime_arguments
from transferlab.heads.probe_grid import cs_text
from transferlab.results.factors import NORMALISATIONS, VIEWS, extracted_views, get_factor


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "probe", parents=[parent], help="train and score a linear probe on one representation",
        description="Extract (or reuse) one layer/pooling of a source on a task, post-process it, "
        "fit the linear probe (C chosen on val, else by k-fold) and score test with the task's "
        "own metric. Or probe arrays exported by `transferlab extract --out` (--features DIR).",
        epilog="examples: transferlab probe --source efficientnet_lite0 --task digits --layer -2 "
        "--pool grid2 --json;  transferlab probe --features feats/ --layer features --pool avg",
    )
    p.add_argument("--source", help="source spec (see transferlab sources)")
    p.add_argument("--weights", help="weights file for timm:/torchvision: sources, or 'none'")
    p.add_argument("--task", help="task name (see transferlab tasks)")
    p.add_argument("--root", help="the task's folder (benchmarks)")
    p.add_argument("--features", help="a folder written by `transferlab extract --out` instead of --source/--task")
    p.add_argument("--quick", action="store_true", help="built-in tasks: the small version")
    add_setting_arguments(p)
    p.add_argument("--loss", choices=["squared_hinge", "logistic"], default="squared_hinge")
    p.add_argument("--Cs", default=cs_text(), help=f"C grid, comma separated [{cs_text()}]")
    p.add_argument("--class-weight", choices=["balanced"], default=None)
    add_runtime_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def add_setting_arguments(p: argparse.ArgumentParser) -> None:
    """The post-learning factors as options; their defaults are the factor table's (results.factors)."""
    layer, pool, norm, pca, views = (get_factor(name).default for name in ("layer", "pooling", "normalisation",
                                                                             "pca", "views"))
    p.add_argument("--layer", default=str(layer),
                   help=f"layer index from the top (-1, -2, ...) or module name [{layer}]")
    p.add_argument("--pool", default=pool, help="pooling: avg, max, gem, gridK, rmac; token layers also cls, "
                   f"cls+avg [{pool}]")
    p.add_argument("--norm", default=norm, choices=list(NORMALISATIONS), help=f"normalisation [{norm}]")
    p.add_argument("--pca", type=non_negative_int, default=pca, help=f"PCA dims, 0 = none [{pca}]")
    p.add_argument("--views", default=views, choices=list(VIEWS), help=f"flip augmentation [{views}]")


def setting_from(args: argparse.Namespace, qe: int = 0):
    from transferlab.features.pooling import validate_pooling
    from transferlab.study.plan import Setting

    validate_pooling(args.pool)  # grid0, unknown names: one line before anything loads
    layer: int | str = int(args.layer) if args.layer.lstrip("-").isdigit() else args.layer
    return Setting(layer=layer, pooling=args.pool, normalisation=args.norm, pca=args.pca,
                   views=args.views, qe=qe)


# pooled in the same pass as whatever pooling is asked for: they cost next to nothing beside
# the forward, and the next command that wants one of them reads it from the store instead of
# forwarding every image again
COMPANION_POOLINGS = ("avg", "max", "gem", "grid2")


def _with_companions(source, layer, pooling: str) -> list[str]:
    from transferlab.features.pooling import check_pooling, poolings_for

    resolved = source.resolve_layers([layer])[0]
    check_pooling(resolved, pooling, source.name)  # one line naming the layer and the pooling
    return [pooling] + [p for p in poolings_for(resolved, COMPANION_POOLINGS) if p != pooling]


def task_and_features(args: argparse.Namespace, layer, pooling: str, views: list[str]):
    """Load the task and extract (or reuse from the FeatureStore) what one setting needs."""
    from transferlab.data.tasks import load_task
    from transferlab.errors import TransferlabError
    from transferlab.features.export import extract_task
    from transferlab.features.handle import features_of
    from transferlab.features.store import FeatureStore
    from transferlab.sources.concat import load_members

    if not args.source or not args.task:
        raise TransferlabError("give --source and --task (or --features DIR)")
    options = {"quick": True} if args.quick else {}
    task = load_task(args.task, args.root, **options)
    store = FeatureStore(args.cache) if args.cache else FeatureStore()
    parts = []
    for source in load_members(args.source, args.weights, getattr(args, "resolution", None)):
        parts.append(extract_task(source, task, [layer], _with_companions(source, layer, pooling), views,
                                  store=store, device=args.device,
                                  batch_size=args.batch_size, num_workers=args.workers,
                                  on_bad_image=args.on_bad_image, progress=not args.no_progress,
                                  jpeg_draft=args.jpeg_draft, compile_model=args.compile))
    return task, features_of(parts)


def check_splits_not_empty(task, features, names: list[str]) -> None:
    """A split whose images were all skipped as unreadable cannot be probed; say which and why
    before any fit (otherwise: an obscure shape error from deep inside the probe)."""
    from transferlab.errors import TransferlabError

    for name in names:
        if name in task.splits and len(features.kept(name)) == 0:
            total = len(task.splits[name])
            raise TransferlabError(
                f"task {task.name}: split {name} has no images left: all {total} were skipped as unreadable "
                "(--on-bad-image skip); fix or replace them, then clear them with `transferlab cache rm`")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from transferlab.data.tasks import get_task
    from transferlab.errors import TransferlabError
    from transferlab.study.config import ProbeConfig
    from transferlab.study.evaluation import evaluate_probe_job
    from transferlab.study.plan import Job

    setting = setting_from(args)
    Cs = parse_cs(args.Cs)
    probe = ProbeConfig(loss=args.loss, Cs=Cs, class_weight=args.class_weight)
    if args.features:
        from transferlab.features.exported import exported_task_and_features

        task, features, metric = exported_task_and_features(args.features)
    else:
        task, features = task_and_features(args, setting.layer, setting.pooling, extracted_views([setting.views]))
        metric = get_task(args.task).metric
    if task.kind == "retrieval":
        raise TransferlabError(f"task {task.name} is a retrieval task; use `transferlab retrieve`")
    check_splits_not_empty(task, features, ["train", "test", *(["val"] if "val" in task.splits else [])])
    row = evaluate_probe_job(Job(args.source or "features", task.name, setting, "probe"), task, features,
                             probe, metric)
    payload = {"task": task.name, "metric": metric, "value": row.value,
               "metrics": {k: v for k, v in row.metrics.items() if not isinstance(v, (list, np.ndarray))},
               "config": {"source": args.source, "features": args.features, **row.factors,
                          "loss": args.loss, "Cs": Cs, "class_weight": args.class_weight, **row.extra}}
    if args.json:
        print_json(payload)
    else:
        print(f"{task.name}: {metric} = {row.value:.4f}  (layer {row.factors['layer_name']}, {setting.pooling}, "
              f"{setting.postprocess_spec()}, C={row.extra['C']:g}, {row.extra['n_train']} train / "
              f"{row.extra['n_test']} test)")
    return 0
