"""The ``lcie-fast`` command line (also ``python -m lcie_fast``).

Each subcommand lives in its own module; those modules import their heavy dependencies
(ONNX, ModelOpt, DALI, TensorRT ...) only when the subcommand runs, so every command starts
quickly and works without the extras it does not use.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Sequence

from . import __version__
from .errors import UserError


def _info(args: argparse.Namespace) -> int:
    from .info import environment_report, format_environment, format_model_report, model_report

    if args.model:
        report = model_report(args.model, num_classes=args.num_classes)
        print(json.dumps(report, indent=2) if args.json else format_model_report(report))
        return 0
    report = environment_report()
    print(json.dumps(report, indent=2) if args.json else format_environment(report))
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, devices, backends; or a model's size and FLOPs",
                       description="Show what this machine can run, or (with --model) a preset's "
                                   "parameters and GFLOPs measured with torch's FLOP counter.")
    p.add_argument("--model", metavar="NAME", help="a preset name (see --list-models)")
    p.add_argument("--num-classes", type=int, default=None, help="override the preset's number of labels")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_info)


def _list_models(_: argparse.Namespace) -> int:
    from .models import list_models

    print("\n".join(list_models()))
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered model presets")
    p.set_defaults(func=_list_models)


# Subcommands, in the order `lcie-fast --help` shows them: (module, function adding its parser).
SUBCOMMANDS: list[tuple[str, str]] = [
    ("lcie_fast.train.commands", "add_train_parser"),
    ("lcie_fast.train.commands", "add_eval_parser"),
    ("lcie_fast.deploy.commands", "add_export_parser"),
    ("lcie_fast.deploy.commands", "add_build_engine_parser"),
    ("lcie_fast.deploy.commands", "add_parity_parser"),
    ("lcie_fast.tag_commands", "add_tag_parser"),
    ("lcie_fast.tag_commands", "add_tag_video_parser"),
    ("lcie_fast.benchmark", "add_bench_parser"),
    ("lcie_fast.demo", "add_demo_parser"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lcie-fast",
        description="Fast multi-label image tagging with the LCIE recogniser (ECCV 2024).",
    )
    parser.add_argument("--version", action="version", version=f"lcie-fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_info(sub)
    _add_models(sub)
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
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (UserError, ValueError, KeyError, FileNotFoundError, ImportError) as err:
        # Errors a user can act on: print the message, not a traceback.
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"lcie-fast {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
