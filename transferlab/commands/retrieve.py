"""`transferlab retrieve`: instance retrieval with one representation, scored by the task's protocol."""

from __future__ import annotations

import argparse

from transferlab.commands._common import non_negative_int, positive_float, print_json
from transferlab.commands.extract import add_runtime_arguments
from transferlab.commands.probe import add_setting_arguments, setting_from, task_and_features


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "retrieve", parents=[parent], help="rank a retrieval task's database for its queries",
        description="Extract (or reuse) one layer/pooling for the database and the (box-cropped) "
        "queries, then the retrieval pipeline of the study (heads.retrieval.retrieve): post-process "
        "(PCA-whitening fit on the database or on --whiten-on) -> database-side augmentation -> rank "
        "-> query expansion -> re-rank (or spatial search), scored with the task's own protocol.",
        epilog="examples: transferlab retrieve --source mobilenet_v2 --task photo_copies --pool rmac --qe 2; "
        "transferlab retrieve --source mobilenet_v2 --task photo_copies --pool rmac --dba 3 --qe 2 --alpha 3; "
        "transferlab retrieve --source efficientnet_lite2 --task oxford5k --root data/oxford5k "
        "--pca 256 --whiten-on paris6k --whiten-root data/paris6k --spatial-search",
    )
    p.add_argument("--source", required=True)
    p.add_argument("--weights")
    p.add_argument("--task", required=True)
    p.add_argument("--root")
    p.add_argument("--quick", action="store_true", help="built-in tasks: the small version")
    add_setting_arguments(p)
    p.add_argument("--whiten-on", help="a retrieval task whose database fits the PCA-whitening (e.g. paris6k)")
    p.add_argument("--whiten-root", help="folder of the --whiten-on task")
    p.add_argument("--qe", type=non_negative_int, default=0, help="query expansion with the top K [0 = off]")
    p.add_argument("--dba", type=non_negative_int, default=0,
                   help="database-side augmentation: each database vector averaged with its K nearest, itself "
                   "included [0 = off]")
    p.add_argument("--alpha", type=positive_float,
                   help="alpha-QE / alpha-DBA: weigh each neighbour by max(cos, 0)**A [default: plain means, AQE]")
    p.add_argument("--spatial-search", action="store_true",
                   help="Razavian et al. spatial search over sub-windows (overrides --pool)")
    p.add_argument("--metric", choices=["cosine", "l2"], default="cosine")
    add_runtime_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from transferlab.data.tasks import get_task
    from transferlab.errors import TransferlabError
    from transferlab.heads.retrieval import RetrievalSettings
    from transferlab.study.config import RetrievalConfig
    from transferlab.study.evaluation import evaluate_retrieval_job
    from transferlab.study.plan import Job

    if args.spatial_search:
        args.pool = "windows"
    # checked before any image is read: e.g. DBA or QE with spatial search is one line here
    RetrievalSettings(metric=args.metric, dba=args.dba, qe=args.qe, alpha=args.alpha, spatial=args.spatial_search)
    setting = setting_from(args, qe=args.qe)
    if setting.views != "orig":
        raise TransferlabError("--views orig+flip is for probes; retrieval uses the original images")
    task, features = task_and_features(args, setting.layer, setting.pooling, ["orig"])
    if task.kind != "retrieval":
        raise TransferlabError(f"task {task.name} is not a retrieval task; use `transferlab probe`")
    held_out = None
    if args.whiten_on:
        root, name = args.root, args.task
        args.task, args.root = args.whiten_on, args.whiten_root
        _, whiten_feats = task_and_features(args, setting.layer, setting.pooling, ["orig"])
        args.task, args.root = name, root
        held_out = whiten_feats.split("db", setting.layer, setting.pooling)
    metric = get_task(task.name).metric
    config = RetrievalConfig(metric=args.metric, dba=args.dba, alpha=args.alpha)
    row = evaluate_retrieval_job(Job(args.source, task.name, setting, "retrieval"), task, features, config,
                                 metric, held_out)
    official = float(row.metrics.get("official", row.value))  # every query: nothing is selected here
    payload = {"task": task.name, "metric": metric, "value": official,
               "metrics": {k: v for k, v in row.metrics.items() if not isinstance(v, (list, np.ndarray))},
               "config": {"source": args.source, **row.factors, "whiten_on": args.whiten_on,
                          "distance": args.metric, "spatial_search": args.spatial_search, **row.extra}}
    if args.json:
        print_json(payload)
    else:
        extras = ", ".join(f"{k} {v:.4f}" for k, v in payload["metrics"].items()
                           if k != metric and isinstance(v, float))
        print(f"{task.name}: {metric} = {official:.4f}" + (f" ({extras})" if extras else "")
              + f"  [layer {row.factors['layer_name']}, {setting.pooling}, {row.extra['n_queries']} queries, "
              f"{row.extra['n_db']} images]")
    return 0
