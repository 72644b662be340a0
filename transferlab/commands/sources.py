"""`transferlab sources [NAME]`: list sources, or one source's layers."""

from __future__ import annotations

import argparse

from transferlab.commands._common import print_json


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "sources", parents=[parent], help="list source networks, or the layers of one",
        description="Without NAME: the built-in sources and the source kinds. With NAME: its "
        "representation layers (index from the top, module name, channels, stride).",
        epilog="examples: transferlab sources; transferlab sources efficientnet_lite0; "
        "transferlab sources timm:resnet50 --weights none",
    )
    p.add_argument("name", nargs="?", help="a source spec, e.g. efficientnet_lite0 or timm:resnet50")
    p.add_argument("--weights", help="weights file for timm:/torchvision: sources, or 'none'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from transferlab.sources.registry import list_builtin_sources, load_source, source_kinds

    if not args.name:
        builtin = list_builtin_sources()
        kinds = {"timm:ARCH": "any timm ConvNet with --weights FILE|none",
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
    source = load_source(args.name, args.weights)
    info = source.describe()
    if args.json:
        print_json(info)
        return 0
    pre = source.preprocessing
    print(f"{source.name}  ({source.arch}, weights {source.weights_id})")
    print(f"preprocessing: {pre.interpolation} resize to {pre.resize_size}, centre crop {pre.input_size}, "
          f"mean {pre.mean}, std {pre.std}")
    print(f"{'index':>5}  {'layer':<16} {'channels':>8} {'stride':>6}")
    for layer in reversed(source.layers):
        stride = "-" if layer.stride is None else str(layer.stride)
        print(f"{layer.index:>5}  {layer.name:<16} {layer.channels:>8} {stride:>6}")
    print("(-1 is the pre-logits representation; any module name of the model is accepted too)")
    return 0
