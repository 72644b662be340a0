"""A/B two versions of the probe solver in one process: old and new fits alternate, medians compared.

Usage: ``.venv/bin/python benchmarks/ab_probe.py OLD_DIR CELL [--threads 2] [--loss squared_hinge]
[--rounds 8]``. ``OLD_DIR`` holds the other version's ``probe.py`` and ``probe_solver.py``
(e.g. ``git show HEAD~1:transferlab/heads/probe.py > old/probe.py``); CELL is ``real`` (EfficientNet-Lite0
``blocks.5`` on the built-in fashion_mnist, as in bench_probe's 500x192x10) or ``NxDxK`` (bench_probe's
synthetic cell). Both versions see the same arrays, the same thread count and alternate order, so the
ratio is not moved by the machine's state the way two separate runs are. Prints the medians, their
ratio, the chosen Cs, the CG / Newton step counts and the largest coefficient difference.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_probe  # noqa: E402

import transferlab.heads.probe as current  # noqa: E402
from transferlab.features.postprocess import build_postprocess  # noqa: E402


def load_old(folder: Path) -> types.ModuleType:
    """The other version's probe module, importing its own solver (module names kept apart)."""
    def load(name: str, path: Path, source: str) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__file__ = str(path)
        sys.modules[name] = module
        exec(compile(source, str(path), "exec"), module.__dict__)
        return module

    solver = folder / "probe_solver.py"
    load("ab_old_probe_solver", solver, solver.read_text())
    probe = folder / "probe.py"
    return load("ab_old_probe", probe, probe.read_text().replace(
        "from transferlab.heads.probe_solver import", "from ab_old_probe_solver import"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("cell")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loss", default="squared_hinge")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    old = load_old(args.old)
    if args.cell == "real":
        parts, labels, _ = bench_probe.real("blocks.5")
    else:
        n, d, k = map(int, args.cell.split("x"))
        parts, labels, _ = bench_probe.synthetic(n, d, k)
    l2 = build_postprocess("l2")
    (Xtr, Xva, Xte), (ytr, yva, yte) = tuple(l2.fit_transform(p) for p in parts), labels
    X, y, split = current.stack_validation(Xtr, ytr, Xva, yva)
    times: dict[str, list[float]] = {"old": [], "new": []}
    fitted = {}
    for round_ in range(args.rounds):
        order = (("old", old), ("new", current)) if round_ % 2 == 0 else (("new", current), ("old", old))
        for name, module in order:
            start = time.perf_counter()
            probe = module.LinearProbe(loss=args.loss, Cs=bench_probe.CS, device="cpu", cv=split,
                                       n_threads=args.threads).fit(X, y)
            times[name].append(time.perf_counter() - start)
            fitted[name] = probe
    o, n_ = (float(np.median(times[k])) for k in ("old", "new"))
    a, b = fitted["old"], fitted["new"]
    diff = np.abs(a.coef_ - b.coef_).max() / np.abs(a.coef_).max()
    print(f"{args.cell} {args.loss}: old {o:.4f} s, new {n_:.4f} s, old/new {o / n_:.3f}; C {a.C_:g} / {b.C_:g}; "
          f"CG {a.solver_stats_['cg']} / {b.solver_stats_['cg']}; Newton {a.solver_stats_['newton']} / "
          f"{b.solver_stats_['newton']}; test acc. {a.score(Xte, yte):.4f} / {b.score(Xte, yte):.4f}; "
          f"largest coefficient difference {diff:.2e} of the largest coefficient")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
