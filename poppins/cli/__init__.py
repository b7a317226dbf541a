"""The command line: ``python -m poppins COMMAND ...`` (also installed as ``poppins``).

One module per command in this package; each defines ``add_parser(subparsers)`` and
``run(args) -> int``.  A user's mistake (:class:`poppins.errors.PoppinsError`) is printed as
``FILE:LINE: message`` lines on stderr with exit code 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from .._version import __version__
from ..errors import PoppinsError

#: Command modules, in the order ``--help`` lists them.
COMMANDS = ["bootstrap", "train", "infer", "chat", "serve", "eval", "bench", "tokenize", "export",
            "info"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poppins",
        description="Train a small ternary language model on your CPU from a train.xml file.")
    parser.add_argument("--version", action="version", version=f"poppins {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # a command that is not part of this build yet
            raise
        module.add_parser(sub)
    parser.set_defaults(_subparsers=sub)
    return parser


def _check_empty_values(parser: argparse.ArgumentParser, args) -> None:
    """Python < 3.12 parses ``--flag=--`` (and ``-f--``) as an empty list instead of an error;
    refuse it as argparse does ``--flag`` with no value (exit 2, naming the flag)."""
    sub = getattr(args, "_subparsers", None)
    sp = sub.choices.get(args.command, parser) if sub is not None else parser
    for act in sp._actions:
        if not act.option_strings or act.nargs is not None:
            continue
        v = getattr(args, act.dest, None)
        if isinstance(act, argparse._StoreAction):
            bad = isinstance(v, list) and not v
        elif isinstance(act, argparse._AppendAction):
            bad = isinstance(v, list) and any(isinstance(x, list) and not x for x in v)
        else:
            continue
        if bad:
            sp.error(f"argument {'/'.join(act.option_strings)}: expected one argument")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    _check_empty_values(parser, args)
    try:
        return int(args.run(args) or 0)
    except PoppinsError as exc:
        for problem in exc.problems:
            print(f"poppins: {problem}" if not problem.file else str(problem), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("poppins: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
