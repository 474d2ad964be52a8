"""The ``lcie-fast`` command line (also ``python -m lcie_fast``).

A thin layer: each subcommand parses its flags, calls one library function and prints. Nothing
outside this package imports it. Errors deriving from :class:`~lcie_fast.errors.UserError`
print one line and exit 1; anything else is a bug and shows its traceback
(``LCIE_FAST_DEBUG=1`` shows tracebacks for every error).

Each subcommand lives in its own module; those modules import their heavy dependencies
(ONNX, ModelOpt, DALI, TensorRT ...) only when the subcommand runs, so every command starts
quickly and works without the extras it does not use.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from .. import __version__
from ..errors import UserError

# Subcommands, in the order `lcie-fast --help` shows them: (module, function adding its parser).
SUBCOMMANDS: list[tuple[str, str]] = [
    ("lcie_fast.cli.info", "add_info_parser"),
    ("lcie_fast.cli.info", "add_models_parser"),
    ("lcie_fast.cli.train", "add_train_parser"),
    ("lcie_fast.cli.train", "add_eval_parser"),
    ("lcie_fast.cli.deploy", "add_export_parser"),
    ("lcie_fast.cli.deploy", "add_build_engine_parser"),
    ("lcie_fast.cli.deploy", "add_parity_parser"),
    ("lcie_fast.cli.tag", "add_tag_parser"),
    ("lcie_fast.cli.tag", "add_tag_merge_parser"),
    ("lcie_fast.cli.tag", "add_tag_video_parser"),
    ("lcie_fast.cli.deepstream", "add_export_deepstream_parser"),
    ("lcie_fast.cli.triton", "add_export_triton_parser"),
    ("lcie_fast.cli.triton", "add_check_triton_parser"),
    ("lcie_fast.cli.bench", "add_bench_parser"),
    ("lcie_fast.cli.demo", "add_demo_parser"),
]
DEBUG_ENV = "LCIE_FAST_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lcie-fast",
        description="Fast multi-label image tagging with the LCIE recogniser (ECCV 2024).",
    )
    parser.add_argument("--version", action="version", version=f"lcie-fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module, function in SUBCOMMANDS:
        getattr(importlib.import_module(module), function)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lcie-fast`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `lcie-fast tag ... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except UserError as err:
        # an error a user can act on: its message, not a traceback (LCIE_FAST_DEBUG=1 shows it);
        # anything else is a bug and propagates with its traceback
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"lcie-fast {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
