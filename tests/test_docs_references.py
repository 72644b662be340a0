"""The README and docs/ name modules, functions and files; after a module is split or moved
those names must still exist, or the docs send a newcomer to a place that is gone."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOTTED = re.compile(r"`(transferlab(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
# a path with at least one folder: `features/pooling.py`, `transferlab/heads/probe.py`
PATH = re.compile(r"`((?:transferlab/|benchmarks/|tests/)?(?:[a-z_]+/)+[a-z_0-9]+\.py)`")


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attribute in parts[k:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def test_dotted_names_in_docs_exist():
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        for match in DOTTED.finditer(text):
            if not _resolves(match.group(1)):
                missing.append(f"{doc.relative_to(ROOT)}:{_line(text, match.start())}: {match.group(1)}")
    assert not missing, "docs name what the code no longer has:\n" + "\n".join(missing)


def test_file_paths_in_docs_exist():
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        for match in PATH.finditer(text):
            path = match.group(1)
            if not any((base / path).exists() for base in (ROOT, ROOT / "transferlab")):
                missing.append(f"{doc.relative_to(ROOT)}:{_line(text, match.start())}: {path}")
    assert not missing, "docs name files that do not exist:\n" + "\n".join(missing)
