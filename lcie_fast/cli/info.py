"""``lcie-fast info`` and ``lcie-fast models``."""

from __future__ import annotations

import argparse
import json


def _info(args: argparse.Namespace) -> int:
    from ..info import environment_report, format_environment, format_model_report, model_report

    if args.model:
        report = model_report(args.model, num_classes=args.num_classes)
        print(json.dumps(report, indent=2) if args.json else format_model_report(report))
        return 0
    report = environment_report()
    print(json.dumps(report, indent=2) if args.json else format_environment(report))
    return 0


def add_info_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, devices, backends; or a model's size and FLOPs",
                       description="Show what this machine can run, or (with --model) a preset's "
                                   "parameters and GFLOPs measured with torch's FLOP counter.")
    p.add_argument("--model", metavar="NAME", help="a preset name (see --list-models)")
    p.add_argument("--num-classes", type=int, default=None, help="override the preset's number of labels")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_info)


def _list_models(_: argparse.Namespace) -> int:
    from ..models import list_models

    print("\n".join(list_models()))
    return 0


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered model presets")
    p.set_defaults(func=_list_models)
