"""``lcie-fast demo``: parse, then :func:`lcie_fast.demo.run_demo`."""

from __future__ import annotations

import argparse


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    from .. import demo

    defaults = demo.DemoOptions()
    p = sub.add_parser("demo", help="the main job end to end on traffic5 (or a generated set)",
                       description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=defaults.output)
    p.add_argument("--model", default=defaults.model)
    p.add_argument("--img-size", type=int, default=defaults.img_size)
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--synthetic", action="store_true", help="use the generated set even where traffic5 exists")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from ..demo import DemoOptions, run_demo

    run_demo(DemoOptions(output=args.output, model=args.model, img_size=args.img_size, epochs=args.epochs,
                         synthetic=args.synthetic))
    return 0
