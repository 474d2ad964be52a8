"""Rerun the paper's Table 3 ablation at small scale: every row with the same budget and seeds.

Rows (paper Table 3): backbone + GAP + linear; + MLFF; + LCIE; + Spatial + Full; + Partial
(shared encoder). Each row trains with identical data, schedule, input size and seeds; only
the model switches differ. Hyperparameters are fixed in advance, not tuned on the validation
split. Writes ``table3.md`` and ``table3.json`` to ``--output``.

Example (2 CPU cores, frozen backbone, 256x256):

    python benchmarks/table3_ablation.py --train ../shared/data/traffic5/train \
        --val ../shared/data/traffic5/valid --output runs/table3 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROWS = {
    "backbone + GAP + linear": dict(mlff=False, lcie=False, spatial=False, full=False, partial=False),
    "+ MLFF": dict(mlff=True, lcie=False, spatial=False, full=False, partial=False),
    "+ LCIE": dict(mlff=True, lcie=True, spatial=False, full=False, partial=False),
    "+ Spatial + Full": dict(mlff=True, lcie=True, spatial=True, full=True, partial=False),
    "+ Partial (shared encoder)": dict(mlff=True, lcie=True, spatial=True, full=True, partial=True),
}
KEYS = ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True)
    parser.add_argument("--val", required=True)
    parser.add_argument("--output", default="runs/table3")
    parser.add_argument("--model", default="lcie_effl0_448")
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--full-finetune", action="store_true", help="train the backbone too (default: frozen)")
    args = parser.parse_args()

    from lcie_fast.config import DataConfig, RunConfig, TrainConfig
    from lcie_fast.train.trainer import Trainer

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    for row, switches in ROWS.items():
        for seed in args.seeds:
            run_dir = out / f"{row.strip('+ ').replace(' ', '_').replace('(', '').replace(')', '')}_seed{seed}"
            config = RunConfig(
                model=args.model,
                model_overrides={"img_size": args.img_size, **switches},
                pretrained=True,
                data=DataConfig(train=args.train, val=args.val, loader="torch", workers=2),
                train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer="adamw", lr=args.lr,
                                  weight_decay=1e-2, schedule="onecycle", freeze_backbone=not args.full_finetune,
                                  seed=seed, eval_every=args.epochs, log_every=20),
                output=str(run_dir),
            )
            start = time.perf_counter()
            metrics = Trainer(config, device="cpu", progress=False).fit()
            metrics["seconds"] = time.perf_counter() - start
            results.setdefault(row, []).append({k: metrics[k] for k in (*KEYS, "AP", "seconds")})
            print(f"{row:32s} seed {seed}: mAP {metrics['mAP']:.2f}  ({metrics['seconds']:.0f} s)", flush=True)
            (out / "table3.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))

    lines = [f"Table 3 at small scale: {args.model} on {args.train}, {args.img_size}x{args.img_size}, "
             f"{'full fine-tune' if args.full_finetune else 'frozen backbone'}, {args.epochs} epochs, AdamW one-cycle "
             f"lr {args.lr}, batch {args.batch_size}, seeds {args.seeds}; mean (min-max) over seeds, on {args.val}.", "",
             "| row | " + " | ".join(KEYS) + " |", "|---|" + "---|" * len(KEYS)]
    for row, runs in results.items():
        cells = []
        for key in KEYS:
            values = [r[key] for r in runs]
            cells.append(f"{statistics.mean(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    (out / "table3.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
