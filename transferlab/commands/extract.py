"""`transferlab extract`: pooled features of many layers from one forward pass."""

from __future__ import annotations

import argparse

from transferlab.commands._common import non_negative_int, parse_csv_list, positive_int, print_json


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "extract", parents=[parent],
        help="extract pooled features of several layers in one pass",
        description="Extract pooled representations of every requested layer in ONE forward pass "
        "per image and view, cache them in the FeatureStore and export .npy arrays.",
        epilog="example: transferlab extract --source efficientnet_lite0 --data photos/ "
        "--layers -1,-2,-3,-4 --pool avg,max,grid2 --out feats/",
    )
    add_source_arguments(p)
    p.add_argument("--data", required=True, help="a task name, or a folder: ROOT/<split>/<class>/<image> (any of "
                   "train/val/test), ROOT/<split>.csv, ROOT/<class>/<image> or a flat folder of photos")
    p.add_argument("--root", help="for a benchmark task given to --data: the folder it was extracted to")
    p.add_argument("--layers", default="-1", help="comma list: -1 (top), -2, ... or module names [-1]")
    p.add_argument("--pool", default="avg", help="comma list of avg,max,gem,gridK (grid1,grid2,...),rmac,windows; "
                   "token layers (ViTs) also cls,cls+avg [avg]")
    p.add_argument("--views", default="orig", help="comma list of orig,flip [orig]")
    p.add_argument("--splits", help="comma list of splits to extract [all]")
    p.add_argument("--out", help="export folder: <split>/<layer>__<pool>[__<view>].npy, items.csv, manifest.json")
    p.add_argument("--quick", action="store_true", help="built-in tasks: the small quick version")
    add_runtime_arguments(p)
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=run)


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="built-in name, timm:ARCH, torchvision:ARCH, finetuned:PATH, ..., "
                   "or concat:[A,B] (the members' features side by side)")
    p.add_argument("--weights", help="weights file for timm:/torchvision: sources, or 'none' for random init")


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    add_resolution_argument(p)
    p.add_argument("--batch-size", type=positive_int,
                   help="images per forward batch [auto: 6 on the CPU, where small batches stay in cache, 32 on a GPU]")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda [auto]")
    p.add_argument("--workers", type=non_negative_int,
                   help="decoding worker processes; 0 decodes each batch on threads "
                   "in this process [auto: 0 on the CPU, up to 8 feeding a GPU]")
    p.add_argument("--cache", help="FeatureStore folder [$TRANSFERLAB_CACHE/features]")
    p.add_argument("--on-bad-image", choices=["error", "skip"], default="error",
                   help="unreadable image: stop with its name, or skip it and list it in the manifest")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--jpeg-draft", action="store_true",
                   help="decode large JPEGs at 1/2-1/8 scale, never below the resize target: several "
                        "times faster on big photos, pixels ~1/255 off a full decode (stored apart)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the forward pass: ~40 s to compile (cached on disk); on 2 CPU cores it "
                        "measured no faster than the default eager forward [auto: eager; --no-compile: never]")


def add_resolution_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resolution", type=int, metavar="R",
                   help="feed R px images instead of the source's native size (short side to R / crop_pct, "
                        "centre crop); timm transformers interpolate their position embeddings [native]")


def run(args: argparse.Namespace) -> int:
    from transferlab.data.generic import load_dataset
    from transferlab.data.tasks import load_task
    from transferlab.errors import TransferlabError
    from transferlab.features.export import export_concat, export_features, extract_task
    from transferlab.features.pooling import validate_pooling
    from transferlab.features.store import FeatureStore
    from transferlab.sources.concat import concat_members, load_members

    for pooling in parse_csv_list(args.pool):  # a bad name fails before any data or model loads
        validate_pooling(pooling)
    options = {"quick": True} if args.quick else {}
    if args.root:
        task = load_task(args.data, args.root, **options)
    else:
        task = load_dataset(args.data, any_layout=True, **options)
    store = FeatureStore(args.cache) if args.cache else FeatureStore()
    members = concat_members(args.source)
    if members is not None and args.weights not in (None, "none"):
        raise TransferlabError("--weights names one network's file; a concat:[...] source takes only "
                               "--weights none (random init for every member)")
    extracted_members = []
    for source in load_members(args.source, args.weights, args.resolution):
        extracted = extract_task(
            source, task, layers=parse_csv_list(args.layers), poolings=parse_csv_list(args.pool),
            views=parse_csv_list(args.views), splits=parse_csv_list(args.splits) if args.splits else None,
            store=store, device=args.device, batch_size=args.batch_size, num_workers=args.workers,
            on_bad_image=args.on_bad_image, progress=not args.no_progress, jpeg_draft=args.jpeg_draft,
            compile_model=args.compile,
        )
        extracted_members.append((source, extracted))
    if members is not None:
        manifest = export_concat(args.source, extracted_members, task, args.out)
        if args.json:
            print_json(manifest)
            return 0
        for name, n in manifest["splits"].items():
            print(f"  {name}: {n} images (kept by every member)")
        print(f"{args.source}: {len(manifest['layers'])} layers x {len(manifest['poolings'])} poolings of "
              f"{len(members)} members side by side; features cached in {store.root}")
        if args.out:
            print(f"exported to {args.out} (manifest.json, <split>/items.csv, <split>/<layer>__<pool>.npy)")
        return 0
    manifest = export_features(source, task, extracted, args.out) if args.out else extracted.manifest(source, task)
    if args.json:
        print_json(manifest)
    else:
        forwarded = sum(f.forwarded_images for f in extracted.splits.values())
        print(f"{source.name}: {len(extracted.layers)} layers x {len(extracted.poolings)} poolings x "
              f"{len(extracted.views)} views; forwarded {forwarded} images "
              f"({'all from cache' if forwarded == 0 else 'rest from cache'})")
        for name, feats in extracted.splits.items():
            skipped = f", skipped {len(feats.bad)} unreadable" if feats.bad else ""
            print(f"  {name}: {len(feats.kept)} images{skipped}")
        print(f"features cached in {store.root}")
        if args.out:
            print(f"exported to {args.out} (manifest.json, <split>/items.csv, <split>/<layer>__<pool>.npy)")
    return 0
