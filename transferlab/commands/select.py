"""`transferlab select`: rank (source, layer, pooling) by a transferability score, confirm the top few."""

from __future__ import annotations

import argparse
import math

from transferlab.commands._common import non_negative_int, parse_cs, parse_csv_list, print_json
from transferlab.heads.probe_grid import cs_text


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "select", parents=[parent], help="pick a source/layer/pooling by transferability score, confirm with probes",
        description="Extract every layer and pooling of each source in one pass (FeatureStore cached), score "
        "every (source, layer, pooling) candidate with a transferability score on the L2-normalised train "
        "features, rank them, and run real linear probes (the study's protocol) on the top --confirm. "
        "--full probes every candidate and reports how well the score's ranking agrees with the probe's.",
        epilog="example: transferlab select --task digits --quick --sources efficientnet_lite0,mobilenet_v2 "
        "--layers -1,-2,-3,-4 --pool avg,max,grid2 --score logme --confirm 3",
    )
    p.add_argument("--task", help="task name (see transferlab tasks)")
    p.add_argument("--root", help="the task's folder (benchmarks)")
    p.add_argument("--quick", action="store_true", help="built-in tasks: the small version")
    p.add_argument("--sources", default="", help="comma list of source specs (see transferlab sources); "
                   "concat:[a,b] puts a's and b's features side by side")
    p.add_argument("--features", action="append", default=[], metavar="DIR",
                   help="a folder written by `transferlab extract --out` instead of --task/--sources (repeat to "
                   "rank several; every exported layer, the --pool poolings)")
    p.add_argument("--weights", help="weights file (or 'none') for every source in --sources")
    p.add_argument("--layers", default="-1,-2,-3,-4", help="comma list, from the top or module names [-1,-2,-3,-4]")
    p.add_argument("--pool", default="avg,max,grid2", help="comma list of poolings [avg,max,grid2]")
    from transferlab.analysis.transferability import FEATURE_SCORES

    p.add_argument("--score", choices=list(FEATURE_SCORES), default="logme",
                   help="; ".join(f"{s.name}: {s.title}" for s in FEATURE_SCORES.values()) + " [logme]")
    p.add_argument("--confirm", type=non_negative_int, default=3, help="probe the top K candidates [3]")
    p.add_argument("--full", action="store_true", help="probe every candidate; report score-probe agreement")
    p.add_argument("--Cs", default=cs_text(), help=f"probe C grid, comma separated [{cs_text()}]")
    from transferlab.commands.extract import add_runtime_arguments

    add_runtime_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _layers(text: str) -> list[int | str]:
    return [int(part) if part.lstrip("-").isdigit() else part for part in parse_csv_list(text)]


def run(args: argparse.Namespace) -> int:
    from transferlab.data.tasks import get_task, load_task
    from transferlab.errors import TransferlabError
    from transferlab.features.store import FeatureStore
    from transferlab.study.config import ProbeConfig
    from transferlab.study.select import select

    Cs = parse_cs(args.Cs)
    from transferlab.sources.concat import split_specs

    sources, layers, poolings = split_specs(args.sources), _layers(args.layers), parse_csv_list(args.pool)
    if not (sources or args.features) or not layers or not poolings:
        raise TransferlabError("--sources (or --features), --layers and --pool each need at least one value")
    from transferlab.features.pooling import validate_pooling

    for pooling in poolings:
        validate_pooling(pooling)
    handles = {}
    if args.features:
        if sources or args.task:
            raise TransferlabError("--features ranks exported folders on their own task: give it without "
                                   "--task and --sources")
        task, metric, handles = _exported(args.features)
    elif not args.task:
        raise TransferlabError("give --task (and --sources), or --features DIR")
    else:
        metric = get_task(args.task).metric
        task = load_task(args.task, args.root, **({"quick": True} if args.quick else {}))
    store = FeatureStore(args.cache) if args.cache else FeatureStore()
    result = select(
        task, metric, sources, layers, poolings, score=args.score, confirm=args.confirm, full=args.full,
        handles=handles,
        probe=ProbeConfig(Cs=Cs), weights=args.weights, resolution=args.resolution, store=store, device=args.device,
        batch_size=args.batch_size, num_workers=args.workers, on_bad_image=args.on_bad_image,
        progress=not args.no_progress, jpeg_draft=args.jpeg_draft, compile_model=args.compile,
    )
    if args.json:
        print_json(result.to_dict())
    else:
        print_selection(result)
    return 0


def _exported(folders: list[str]):
    """The task of exported folders (all of one task: the same images and labels) and a
    handle on each folder's arrays, named by the folder."""
    from transferlab.errors import TransferlabError
    from transferlab.features.exported import exported_task_and_features

    task, metric, handles = None, "", {}
    for folder in folders:
        this, handle, this_metric = exported_task_and_features(folder)
        if task is None:
            task, metric = this, this_metric
        elif [s.paths for s in this.splits.values()] != [s.paths for s in task.splits.values()]:
            raise TransferlabError(f"{folder}: exports another task's images than {folders[0]}; rank folders of "
                                   "one task together")
        handles[folder] = handle
    return task, metric, handles


def print_selection(result) -> None:
    from transferlab.study.select import SCORE_NAMES

    n = len(result.candidates)
    probed = result.probed
    sec = result.seconds
    print(f"{result.task}: {n} candidates (source x layer x pooling), ranked by {SCORE_NAMES[result.score]} "
          f"on the L2-normalised train features")
    print()
    print("stage       seconds  detail")
    extract_note = "all from the FeatureStore" if result.forwarded_images == 0 else (
        f"forwarded {result.forwarded_images} images")
    print(f"extraction  {sec['extract']:7.1f}  {extract_note}")
    print(f"scoring     {sec['score']:7.1f}  {n} candidates, {sec['score'] / n:.2f} s each")
    if probed:
        each = sec["probe"] / len(probed)
        tail = "" if len(probed) == n else f"; probing all {n} would take ~{each * n:.0f} s"
        print(f"probing     {sec['probe']:7.1f}  {len(probed)} candidates, {each:.1f} s each{tail}")
    print()
    width = max(len(c.source) for c in result.candidates)
    print(f"rank  {'source':<{width}}  layer               pooling  {'dim':>6}  {result.score:>9}  {result.metric}")
    for i, c in enumerate(result.candidates, start=1):
        layer = f"{c.layer} ({c.layer_name})" if c.layer != c.layer_name else str(c.layer)
        score = f"{c.score:9.4f}" if math.isfinite(c.score) else f"{'nan':>9}"
        probe = f"{c.probe:.4f}" if c.probe is not None else ""
        print(f"{i:<4}  {c.source:<{width}}  {layer:<18}  {c.pooling:<7}  {c.dim:>6}  {score}  {probe}")
    best = result.best
    if best is not None:
        rank_of = result.candidates.index(best) + 1
        print()
        print(f"confirmed by probes: best {result.metric} = {best.probe:.4f} from {best.source} layer {best.layer} "
              f"({best.layer_name}), {best.pooling} pooling (rank {rank_of} by {result.score}, C = {best.C:g})")
    agreement = result.agreement()
    if agreement is not None and result.full:
        k = agreement["top_k"]
        rho = "n/a" if agreement["status"] != "ok" else f"{agreement['spearman']:+.2f} (p = {agreement['p_value']:.2g})"
        print(f"agreement with full probing over {agreement['candidates']} candidates: Spearman {rho}; "
              f"top-1 {'hit' if agreement['top1_hit'] else 'miss'}; top-{k} overlap {agreement['top3_overlap']}/{k}; "
              f"best of the top {k} by score {agreement['confirmed_best']:.4f} (regret {agreement['regret']:.4f})")
    for note in result.notes:
        print(f"note: {note}")
