"""`transferlab sources [NAME]`: list sources, or one source's layers."""

from __future__ import annotations

import argparse

from transferlab.commands._common import print_json


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "sources", parents=[parent], help="list source networks, or the layers of one",
        description="Without NAME: the built-in sources and the source kinds. With NAME: its "
        "representation layers (index from the top, module name, kind, channels, stride, grid, poolings).",
        epilog="examples: transferlab sources; transferlab sources efficientnet_lite0; "
        "transferlab sources timm:resnet50 --weights none; "
        "transferlab sources timm:vit_small_patch16_224 --weights none",
    )
    p.add_argument("name", nargs="?", help="a source spec, e.g. efficientnet_lite0 or timm:resnet50")
    p.add_argument("--weights", help="weights file for timm:/torchvision: sources, or 'none'")
    p.add_argument("--resolution", type=int, metavar="R", help="its layers at R px input [native]")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from transferlab.sources.registry import list_builtin_sources, load_source, source_kinds

    if not args.name:
        builtin = list_builtin_sources()
        kinds = {"timm:ARCH": "any timm ConvNet or vision transformer with --weights FILE|none",
                 "torchvision:ARCH": "a torchvision ConvNet with --weights FILE|none",
                 **{f"{k}:..." if k != "handcrafted" else k: v for k, v in source_kinds().items()},
                 "concat:[a,b]": "concatenation of several sources' representations"}
        if args.json:
            print_json({"builtin": builtin, "kinds": kinds})
            return 0
        print("Built-in sources (real ImageNet weights, offline):")
        for s in builtin:
            print(f"  {s['name']:<20} {s['description']}")
        print("Other sources:")
        for spec, text in kinds.items():
            print(f"  {spec:<20} {text}")
        return 0
    source = load_source(args.name, args.weights, resolution=args.resolution)
    info = source.describe()
    if args.json:
        print_json(info)
        return 0
    pre = source.preprocessing
    print(f"{source.name}  ({source.arch}, weights {source.weights_id})")
    print(f"preprocessing: {pre.interpolation} resize to {pre.resize_size}, centre crop {pre.input_size}, "
          f"mean {pre.mean}, std {pre.std}")
    print(f"{'index':>5}  {'layer':<16} {'kind':<7} {'channels':>8} {'stride':>6}  {'grid':<9} poolings")
    for layer in reversed(source.layers):
        stride = "-" if layer.stride is None else str(layer.stride)
        print(f"{layer.index:>5}  {layer.name:<16} {layer.kind:<7} {layer.channels:>8} {stride:>6}  "
              f"{layer.describe_grid():<9} {_poolings(layer)}")
    head = f"-1 pooled {source.head_pooling}" if source.layers[-1].kind != "vector" else "-1"
    print(f"({head} is the model's own pre-logits vector; grid = rows x columns of the map or patch "
          "grid, +N prefix tokens (class, registers); any module name of the model is accepted too)")
    return 0


def _poolings(layer) -> str:
    from transferlab.features.pooling import poolings_for

    names = poolings_for(layer)
    grids = [n for n in names if n.startswith("grid")]
    shown = [n for n in names if not n.startswith("grid")]
    if grids:
        shown.insert(shown.index("gem") + 1 if "gem" in shown else len(shown), "gridK")
    return ",".join(shown)
