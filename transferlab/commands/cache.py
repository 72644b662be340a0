"""`transferlab cache ls|rm`: inspect and clean the FeatureStore."""

from __future__ import annotations

import argparse

from transferlab.commands._common import print_json


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("cache", parents=[parent], help="inspect or clean the feature cache",
                       description="List (ls) or delete (rm) FeatureStore groups.")
    p.add_argument("action", choices=["ls", "rm"])
    p.add_argument("group", nargs="?", help="rm: a group id (prefix); omit with --all to delete everything")
    p.add_argument("--all", action="store_true", help="rm: delete every cached group")
    p.add_argument("--cache", help="FeatureStore folder [$TRANSFERLAB_CACHE/features]")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from transferlab.errors import TransferlabError
    from transferlab.features.store import FeatureStore

    store = FeatureStore(args.cache) if args.cache else FeatureStore()
    if args.action == "ls":
        groups = store.groups()
        if args.json:
            print_json({"root": str(store.root), "groups": groups})
            return 0
        print(f"FeatureStore at {store.root}: {len(groups)} groups, "
              f"{sum(g['bytes'] for g in groups) / 1e6:.1f} MB")
        for g in groups:
            print(f"  {g['group']}  {g.get('source', '?'):<20} {g.get('split', '?'):<8} "
                  f"view={g.get('key', {}).get('view', '?'):<5} n={g.get('n_images', '?'):<6} "
                  f"{len(g['outputs'])} outputs  {g['bytes'] / 1e6:.1f} MB")
        return 0
    if not args.group and not args.all:
        raise TransferlabError("cache rm needs a group id or --all")
    removed = store.remove(None if args.all else args.group)
    foreign = store.foreign_entries()
    if args.json:
        print_json({"root": str(store.root), "removed": removed, "left_in_place": foreign})
        return 0
    print(f"removed {removed} group(s) from {store.root}")
    if foreign:
        shown = ", ".join(foreign[:10]) + (f" (+{len(foreign) - 10} more)" if len(foreign) > 10 else "")
        print(f"left in place (not FeatureStore groups): {shown}")
    return 0
