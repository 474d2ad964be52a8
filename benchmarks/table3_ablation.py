"""Rerun the paper's Table 3 ablation at small scale: every row, the same budget, >= 3 seeds.

Rows: the eight of the paper's Table 3 (backbone + GAP + linear; + MLFF; + LCIE; + LCIE + Full;
MLFF + Spatial + Full without LCIE; + LCIE + Spatial + Full; + Partial with its own encoder
("o"); + Partial sharing the encoder), plus "MLFF + LCIE + Spatial" (no encoder) to separate the
spatial branch from the correlation encoder.

Protocol (fixed before any run; nothing is chosen on the reported split):

- every row trains the heads on the frozen ImageNet backbone with identical data, schedule,
  input size and seeds; only the model switches differ (``--set`` applies the same extra
  overrides to every row);
- training uses the ``fit`` subset of ``--train`` (``?holdout=F&subset=fit``); the epoch kept
  (``best.pt``) is chosen on the ``holdout`` subset of ``--train``; the kept model is then scored
  once on ``--val``, the split reported;
- the backbone's image tokens are computed once per data split and cached on disk
  (``train.cache_features``, ``train.feature_cache_dir``), so the rows cost the heads only.

Reported per row: mean and min-max over seeds of mAP, CF1, OF1 and their top-3 forms, and a
95% bootstrap interval of the seed-mean mAP over the reported images (1,000 resamples, seeded:
each resample scores every seed's model and averages them), so both the training noise (range)
and the noise of a small test set (interval) are visible. With ``--branches``, each LCIE row's
y_ca / y_sp / y_co diagnostics are printed as well. Writes ``table3.md`` and ``table3.json``.
Rerunning the same command after an interruption skips the runs that finished.

Example (2 CPU cores, about 2 hours):

    python benchmarks/table3_ablation.py --train ../shared/data/traffic5/train \\
        --val ../shared/data/traffic5/valid --output runs/table3 --seeds 0 1 2
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
    "+ MLFF + LCIE": dict(mlff=True, lcie=True, spatial=False, full=False, partial=False),
    "+ MLFF + LCIE + Full": dict(mlff=True, lcie=True, spatial=False, full=True, partial=False),
    "+ MLFF + Spatial + Full": dict(mlff=True, lcie=False, spatial=True, full=True, partial=False),
    "+ MLFF + LCIE + Spatial (no encoder)": dict(mlff=True, lcie=True, spatial=True, full=False, partial=False),
    "+ MLFF + LCIE + Spatial + Full": dict(mlff=True, lcie=True, spatial=True, full=True, partial=False),
    "+ Partial, own encoder (o)": dict(mlff=True, lcie=True, spatial=True, full=True, partial=True,
                                       share_encoder=False),
    "+ Partial, shared encoder": dict(mlff=True, lcie=True, spatial=True, full=True, partial=True,
                                      share_encoder=True),
}
KEYS = ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3")


def row_slug(row: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in row.strip("+ ")).strip("_").lower()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="training split (fit and holdout subsets are cut from it)")
    parser.add_argument("--val", required=True, help="the split that is reported")
    parser.add_argument("--output", default="runs/table3")
    parser.add_argument("--model", default="lcie_effl0_448")
    parser.add_argument("--holdout", type=float, default=0.2, help="fraction of --train used to choose the epoch")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=None, help="row names (default: every row)")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="model overrides applied to every row, e.g. branch_init=paper")
    parser.add_argument("--branches", action="store_true", help="branch diagnostics of every LCIE row")
    parser.add_argument("--draws", type=int, default=1000, help="bootstrap resamples of the reported images")
    args = parser.parse_args()

    import numpy as np
    import torch

    from lcie_fast.config import DataConfig, RunConfig, TrainConfig, resolve_run_config
    from lcie_fast.data.datasets import load_data_spec
    from lcie_fast.data.transforms import Preprocess
    from lcie_fast.metrics import average_precision, multilabel_metrics
    from lcie_fast.models.checkpoint import model_from_checkpoint
    from lcie_fast.train.evaluate import branch_report, format_branch_report, predict
    from lcie_fast.train.feature_cache import CachedTokenLoader
    from lcie_fast.train.trainer import Trainer

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    rows = {name: ROWS[name] for name in (args.rows or ROWS)}
    # the library's one override path: typed as ModelConfig's fields, checked before any training
    extra = resolve_run_config([], {}, [f"model_overrides.{item}" for item in args.set]).model_overrides
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = out / "feature_cache"
    fit = f"{args.train}?holdout={args.holdout}&subset=fit"
    holdout = f"{args.train}?holdout={args.holdout}&subset=holdout"
    report_set = None
    results: dict[str, list[dict]] = {}
    logits_by_row: dict[str, list[np.ndarray]] = {}
    for row, switches in rows.items():
        for seed in args.seeds:
            run_dir = out / f"{row_slug(row)}_seed{seed}"
            config = RunConfig(
                model=args.model,
                model_overrides={**switches, **extra},
                pretrained=True,
                data=DataConfig(train=fit, val=holdout, loader="torch", workers=2),
                train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer="adamw", lr=args.lr,
                                  weight_decay=1e-2, schedule="onecycle", freeze_backbone=True, cache_features=True,
                                  feature_cache_dir=str(cache_dir), amp="off", seed=seed, select="best",
                                  log_every=20),
                output=str(run_dir),
            )
            # a rerun after an interruption skips the runs that finished with the same settings
            done = run_dir / "done.json"
            settings = {"config": repr(config)}
            if done.is_file() and json.loads(done.read_text()).get("config") == settings["config"]:
                seconds = json.loads(done.read_text())["seconds"]
            else:
                start = time.perf_counter()
                Trainer(config, device="cpu", progress=False).fit()
                seconds = time.perf_counter() - start
                done.write_text(json.dumps({**settings, "seconds": seconds}))
            model, meta = model_from_checkpoint(run_dir / "best.pt")
            if report_set is None:
                report_set = load_data_spec(args.val, label_names=meta.label_names)
            loader = CachedTokenLoader(model, report_set, Preprocess(meta.preprocess), 64, train=False,
                                       cache_dir=cache_dir, progress=False)
            prediction = predict(model, loader, progress=False, branches=args.branches)
            targets = report_set.targets[prediction.indices]
            metrics = multilabel_metrics(prediction.logits, targets, from_logits=True, class_names=meta.label_names)
            entry = {k: metrics[k] for k in (*KEYS, "AP")}
            entry.update(seed=seed, seconds=seconds, epoch_kept=meta.extra.get("epoch"),
                         holdout_mAP=meta.extra.get("val_mAP"))
            if args.branches and prediction.branches:
                entry["branches"] = branch_report(prediction, report_set.targets, list(meta.label_names), draws=0)
                print(format_branch_report(entry["branches"]), flush=True)
            results.setdefault(row, []).append(entry)
            logits_by_row.setdefault(row, []).append(prediction.logits)
            print(f"{row:40s} seed {seed}: valid mAP {metrics['mAP']:.2f} (holdout {entry['holdout_mAP']:.2f}, "
                  f"epoch {entry['epoch_kept']}; {seconds:.0f} s)", flush=True)
            (out / "table3.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))

    # bootstrap interval of the seed-mean mAP over the reported images (same resamples for every row)
    rng = np.random.default_rng(0)
    n = len(targets)
    picks = [rng.integers(0, n, size=n) for _ in range(args.draws)]
    intervals = {}
    for row, all_logits in logits_by_row.items():
        means = []
        for pick in picks:
            with np.errstate(all="ignore"):
                means.append(100 * np.mean([np.nanmean(average_precision(logits[pick], targets[pick])) for logits in all_logits]))
        intervals[row] = [float(v) for v in np.quantile(means, [0.025, 0.975])]

    lines = [f"Table 3 at small scale: {args.model} heads on the frozen ImageNet backbone, "
             f"{args.epochs} epochs AdamW one-cycle lr {args.lr}, batch {args.batch_size}, fp32, seeds {args.seeds} "
             f"(fixed before any run). Trained on {fit}; epoch chosen on {holdout}; scored on {args.val}. "
             f"Cells: mean (min-max over seeds); mAP also with the 95% bootstrap interval of the seed mean "
             f"({args.draws} resamples of the {n} reported images)."
             + (f" Extra overrides on every row: {extra}." if extra else ""), "",
             "| row | mAP | 95% interval | " + " | ".join(KEYS[1:]) + " | per-class AP (mean) |",
             "|---|---|---|" + "---|" * len(KEYS)]
    for row, runs in results.items():
        cells = []
        for key in KEYS:
            values = [r[key] for r in runs]
            cells.append(f"{statistics.mean(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        low, high = intervals[row]
        per_class = ", ".join(f"{name} {statistics.mean(r['AP'][name] for r in runs):.1f}" for name in runs[0]["AP"])
        lines.append(f"| {row} | {cells[0]} | {low:.2f}-{high:.2f} | " + " | ".join(cells[1:]) + f" | {per_class} |")
    (out / "table3.md").write_text("\n".join(lines) + "\n")
    (out / "table3.json").write_text(json.dumps({"args": vars(args), "results": results, "intervals": intervals},
                                                indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
