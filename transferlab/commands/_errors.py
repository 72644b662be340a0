"""Every error that reaches the command line, as one line (or, under ``--json``, one JSON
object on stdout): what went wrong, the path it concerns and what to do. ``--debug`` shows
the traceback instead. Finished work is never lost by an error: caches and results are
written atomically and committed as they finish, so the message says "rerun to resume".

Kept free of heavy imports: the CLI imports it before any command runs.
"""

from __future__ import annotations

import errno
import json
import os
import sys

from transferlab.errors import TransferlabError

EXIT_USER = 2  # bad input, a fault of the environment (disk, permissions): fix and rerun
EXIT_INTERNAL = 1  # an exception nobody anticipated: a bug in transferlab

_RESUME = "finished work is kept; rerun to resume"

# errno -> (what it means, what to do); the path is put in front
_OS_ADVICE = {
    errno.ENOSPC: ("no space left on the device",
                   f"free space or point --cache / --out / TRANSFERLAB_CACHE at another disk; {_RESUME}"),
    errno.EDQUOT: ("disk quota exceeded", f"free space or use another disk; {_RESUME}"),
    errno.EROFS: ("read-only file system", "give a writable folder (--cache, --out or TRANSFERLAB_CACHE)"),
    errno.EACCES: ("permission denied", "check the file's permissions, or give a folder you can read and write"),
    errno.EPERM: ("operation not permitted", "check the file's permissions"),
    errno.ENOTDIR: ("a part of this path is a file, not a folder",
                    "check --out, --cache and TRANSFERLAB_CACHE: they must name folders"),
    errno.EISDIR: ("is a folder where a file was expected", "give the path of a file"),
    errno.EEXIST: ("already exists", "remove it or choose another path"),
    errno.ELOOP: ("symbolic link loop", "remove or repair the link"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EIO: ("input/output error (a failing disk or a network file system)", f"check the disk; {_RESUME}"),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or lower --workers"),
    errno.ENOMEM: ("out of memory", "lower --batch-size or --workers"),
}


def _shown(path: object) -> str:
    """A path printable on any terminal (names that are not valid UTF-8 are escaped)."""
    text = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def describe(exc: BaseException) -> tuple[str, int]:
    """(one-line message, exit status) for an exception that reached the command line."""
    if isinstance(exc, TransferlabError):
        return _shown(exc), EXIT_USER
    if isinstance(exc, OSError):
        fallback = exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        meaning, advice = _OS_ADVICE.get(exc.errno or 0, (fallback, f"{_RESUME} once it is fixed"))
        where = ""
        if exc.filename is not None:
            where = _shown(exc.filename)
            if exc.filename2 is not None:
                where += f" -> {_shown(exc.filename2)}"
            where += ": "
        return f"{where}{meaning}; {advice}", EXIT_USER
    module = type(exc).__module__
    if module == "sqlite3" or module.startswith("sqlite3."):
        text = str(exc)
        if "full" in text or "disk I/O" in text:
            return (f"the results database (RUN_DIR/results.sqlite) could not be written: {text} (a full or "
                    f"failing disk); free space on "
                    f"the run directory's disk or give --out on another disk; {_RESUME}"), EXIT_USER
        if "readonly" in text or "read-only" in text:
            return f"the results database is read-only ({text}); give a writable --out", EXIT_USER
        if "not a database" in text or "malformed" in text:
            return (f"the results database is damaged ({text}); move RUN_DIR/results.sqlite aside and rerun",
                    EXIT_USER)
        return f"results database error: {text}; check the run directory (RUN_DIR/results.sqlite)", EXIT_USER
    if isinstance(exc, UnicodeError):
        return (f"text that is not valid UTF-8 ({_shown(exc)}); save the file as UTF-8 or rename the file",
                EXIT_USER)
    if isinstance(exc, MemoryError):
        return "out of memory; lower --batch-size or use fewer layers/poolings per run", EXIT_USER
    first = (str(exc).strip().splitlines() or [""])[0]
    return (f"internal error {type(exc).__name__}: {_shown(first)[:300]} (a bug in transferlab: rerun with --debug "
            "for the traceback and report it)"), EXIT_INTERNAL


def report(exc: BaseException, as_json: bool) -> int:
    """Print the error (stderr line; with ``as_json`` also a JSON object on stdout)."""
    message, status = describe(exc)
    if as_json:
        payload = {"error": message, "type": type(exc).__name__, "exit_status": status}
        path = getattr(exc, "filename", None) or getattr(exc, "path", None)
        if path is not None:
            payload["path"] = _shown(path)
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()
    print(f"transferlab: error: {message}", file=sys.stderr)
    if status == EXIT_USER and not isinstance(exc, TransferlabError):
        print("transferlab: (--debug shows the traceback)", file=sys.stderr)
    return status


def wants_json(argv: list[str]) -> bool:
    return "--json" in argv
