"""The packages are layered: a module imports only from its own layer or the ones below.

Every import statement counts, including imports inside functions, and so does a module named
in a string (``importlib.import_module("transferlab.x")`` lists, section modules): a lazy
import that reaches upwards is still an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "transferlab"

# Bottom to top. Units in one layer may import each other; a unit may import any lower layer.
LAYERS: list[set[str]] = [
    {"__init__", "errors", "atomic", "paths", "device", "metrics"},
    {"data", "results", "training"},
    {"evaluate", "sources"},
    {"features"},
    {"heads"},
    {"analysis"},
    {"study"},
    {"report"},
    {"commands", "cli", "__main__"},
]
LAYER_OF = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _unit(module: str) -> str:
    """``transferlab.study.plan`` -> ``study``; ``transferlab.errors`` -> ``errors``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, module: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every transferlab import and module-naming string."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = module or _module_of(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("transferlab")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "transferlab":
                found += [(node.lineno, f"transferlab.{a.name}") for a in node.names]
            elif target.startswith("transferlab."):
                found.append((node.lineno, target))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if text.startswith("transferlab.") and text.replace(".", "").replace("_", "").isalnum():
                found.append((node.lineno, text))
    return found


def _units() -> set[str]:
    return {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
            if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}


def test_every_package_has_a_layer():
    missing = sorted(_units() - set(LAYER_OF))
    assert not missing, f"give these a place in LAYERS: {missing}"


def test_no_upward_imports():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(_module_of(path)) if path.parent != PACKAGE else path.stem
        for line, target in _imports(path):
            target_unit = _unit(target)
            if target_unit not in LAYER_OF:
                continue  # a string that only looks like a module (e.g. a logger name)
            if LAYER_OF[target_unit] > LAYER_OF[unit]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({unit}) imports {target}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


@pytest.mark.parametrize("source, expected", [
    ("from transferlab.study.plan import Job\n", ["transferlab.study.plan"]),
    ("def f():\n    from ..report import html\n", ["transferlab.report"]),
    ("MODULES = ('transferlab.heads.finetune',)\n", ["transferlab.heads.finetune"]),
])
def test_the_scanner_sees_lazy_relative_and_string_imports(tmp_path, source, expected):
    # Read as if it were transferlab/features/probe_file.py: all three forms must resolve.
    fake = tmp_path / "probe_file.py"
    fake.write_text(source)
    assert [m for _, m in _imports(fake, "transferlab.features.probe_file")] == expected
