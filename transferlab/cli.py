"""The `transferlab` command: one module per subcommand in `transferlab.commands`.

Each command module defines ``register(subparsers, parent)`` which adds its parser (built
with ``parents=[parent]`` so ``--debug`` works everywhere) and sets ``func(args) -> int``.
Heavy imports (torch, timm) happen inside the handlers, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from transferlab.commands._errors import report, wants_json

# Order is the order shown in --help. A module missing from the package is skipped.
COMMAND_MODULES = [
    "sources",
    "tasks",
    "extract",
    "probe",
    "retrieve",
    "finetune",
    "train_source",
    "study",
    "results",
    "report",
    "select",
    "cache",
    "demo",
]


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are also a JSON object on stdout when --json was given
    (sub-parsers inherit the class), so scripts can always parse stdout."""

    json_errors = False

    def error(self, message: str):  # type: ignore[override]
        if _Parser.json_errors:
            import json

            sys.stdout.write(json.dumps({"error": f"{self.prog}: {message}", "type": "UsageError",
                                         "exit_status": 2}) + "\n")
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parent = _Parser(add_help=False)
    parent.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser = _Parser(
        prog="transferlab",
        description="Which ConvNet representation transfers best to my task, and how much does each choice matter?",
        parents=[parent],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"transferlab.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"transferlab.commands.{name}":
                continue
            raise
        module.register(sub, parent)
    return parser


_NEGATIVE_VALUE_OPTIONS = ("--layers", "--layer")


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--layers -1,-2`` would look like an option to argparse; make it ``--layers=-1,-2``."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in _NEGATIVE_VALUE_OPTIONS and i + 1 < len(argv) and argv[i + 1][:2].lstrip("-")[:1].isdigit():
            out.append(f"{token}={argv[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = _join_negative_values(list(sys.argv[1:] if argv is None else argv))
    _Parser.json_errors = wants_json(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    as_json = bool(getattr(args, "json", False) or getattr(args, "show_json", False))
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # e.g. `transferlab ... --json | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        if as_json:
            sys.stdout.write('{"error": "interrupted; finished work is kept, rerun to resume", '
                             '"type": "KeyboardInterrupt", "exit_status": 130}\n')
        print("transferlab: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # one line (commands._errors), never a traceback unless --debug
        if args.debug:
            raise
        return report(exc, as_json)


def entry() -> None:
    """The console script (and ``python -m transferlab``): ``main()``, then a quick exit.

    Once torch and timm are loaded, Python's own shutdown (tearing down some thousand modules
    and collecting them) costs ~0.5 s on 2 cores, a tenth of a 256-image ``extract``. Every
    file transferlab writes is closed when its command returns, so after the atexit handlers
    (Ray, logging) have run and stdout / stderr are flushed the process ends with ``os._exit``.
    ``main()`` called from Python (tests, notebooks) never exits the interpreter.
    """
    import atexit
    import os

    status = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # reader gone / stream closed: nothing left to say
            pass
    os._exit(status)


if __name__ == "__main__":
    entry()
