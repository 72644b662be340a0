"""One exception family, so the CLI can print a one-line message instead of a traceback."""

from __future__ import annotations

from pathlib import Path


class TransferlabError(Exception):
    """A problem the user can fix (bad input, missing file, wrong option)."""


class AnnotationError(TransferlabError):
    """A dataset file that does not parse; names the file and, when known, the line or key."""

    def __init__(self, path: str | Path, message: str, line: int | None = None, key: str | None = None):
        self.path = str(path)
        self.line = line
        self.key = key
        where = self.path
        if line is not None:
            where += f":{line}"
        if key is not None:
            where += f" [{key}]"
        super().__init__(f"{where}: {message}")


class BadImageError(TransferlabError):
    """An image that cannot be decoded."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        super().__init__(f"{path}: cannot read image ({reason})")


class InvalidInput(TransferlabError, ValueError):
    """Bad data or parameters given to an estimator (the probe, a post-processing step).

    Also a ``ValueError``, which is what scikit-learn's tools (``cross_val_score``, ``Pipeline``,
    ``check_estimator``) expect from an estimator that rejects its input.
    """
