"""Shared plumbing for benchmark readers: locating files under a root, reading
annotation lines with their line numbers, and collecting problems.

``Problems`` lets one reader serve two callers: ``load_task`` wants the first problem as an
exception; ``transferlab tasks show`` wants every problem listed at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from transferlab.errors import AnnotationError, TransferlabError


@dataclass
class Problems:
    """Collects dataset problems; raises on the first unless ``collect`` is set."""

    collect: bool = False
    items: list[str] = field(default_factory=list)

    def report(self, error: TransferlabError) -> None:
        if not self.collect:
            raise error
        self.items.append(str(error))

    def annotation(self, path: str | Path, message: str, line: int | None = None, key: str | None = None) -> None:
        self.report(AnnotationError(path, message, line=line, key=key))

    def lines(self, path: Path, source_files: list[str] | None = None) -> list[tuple[int, str]] | None:
        """``read_lines(path)``, recorded in ``source_files``; None (and the problem reported)
        when the file is missing or unreadable, so a reader moves on."""
        try:
            lines = read_lines(path)
        except TransferlabError as exc:
            self.report(exc)
            return None
        if source_files is not None:
            source_files.append(str(path))
        return lines


def require_root(root: str | Path | None, task: str, holding: str) -> Path:
    """``root`` as a Path; without one, a one-line error saying what the folder must hold."""
    if root is None:
        raise TransferlabError(f"task {task} needs --root: {holding}")
    return Path(root)


def find_under(root: Path, relative_candidates: Iterable[str], what: str, max_depth: int = 3) -> Path:
    """Find a file or folder under ``root``: first the given relative paths, then by the last
    path component up to ``max_depth`` levels down (archives often add a top folder).
    Raises a TransferlabError listing what was tried."""
    candidates = list(relative_candidates)
    for rel in candidates:
        path = root / rel
        if path.exists():
            return path
    names = {Path(rel).parts[-1] for rel in candidates}
    tails = {tuple(Path(rel).parts) for rel in candidates}
    for dirpath, dirnames, filenames in _walk(root, max_depth):
        for name in list(dirnames) + list(filenames):
            if name in names:
                path = Path(dirpath) / name
                for tail in tails:
                    if path.parts[-len(tail):] == tail:
                        return path
    raise TransferlabError(
        f"{what} not found under {root} (looked for {', '.join(candidates)})"
    )


def _walk(root: Path, max_depth: int) -> Iterator[tuple[str, list[str], list[str]]]:
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).parts) - base_depth
        if depth >= max_depth:
            dirnames[:] = []
        dirnames.sort()
        yield dirpath, dirnames, filenames


def read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty lines with their 1-based line numbers; CRLF tolerated, trailing newline optional."""
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except FileNotFoundError:
        raise AnnotationError(path, "file not found") from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, f"not UTF-8 text ({exc.reason})") from None
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.rstrip("\r")
        if line.strip():
            out.append((number, line))
    return out


def check_images_exist(paths: Iterable[str], problems: Problems, listed_in: Path | str) -> None:
    """Report every listed image that is not on disk (one os.stat each)."""
    missing = [p for p in paths if not os.path.isfile(p)]
    for p in missing[:20]:
        problems.report(TransferlabError(f"{p}: image listed in {listed_in} is missing"))
    if len(missing) > 20:
        problems.report(TransferlabError(f"... and {len(missing) - 20} more missing images listed in {listed_in}"))
