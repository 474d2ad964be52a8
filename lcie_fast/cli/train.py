"""``lcie-fast train`` and ``lcie-fast eval``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import resolve_run_config
from ..errors import InvalidInputError


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train or fine-tune a model (works under torchrun)",
        description="Train a preset on a data spec. Settings come from the defaults (the paper's recipe), "
                    "then YAML files (-c), then flags, then key=value overrides (e.g. train.epochs=5). "
                    "Multi-GPU / multi-node: torchrun --nproc_per_node=N -m lcie_fast train ...",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=0.001")
    p.add_argument("-c", "--config", action="append", default=[], metavar="YAML", help="config file (repeatable)")
    p.add_argument("--model", help="preset name (default lcie_r101_448)")
    p.add_argument("--data", help="training data spec (folder with labels.csv, .csv, .jsonl, coco:/voc:/nuswide:ROOT)")
    p.add_argument("--val-data", help="validation data spec")
    p.add_argument("--output", help="run folder (default runs/lcie)")
    p.add_argument("--loader", choices=["auto", "torch", "dali"], help="image loader")
    p.add_argument("--resume", metavar="LAST_PT", help="continue an interrupted run exactly (or 'auto')")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: a GPU when visible")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from ..train.trainer import Trainer

    # typed values, set as they are: --output 2024 names the folder "2024", --data yes reads "yes"
    flags = {"model": args.model, "data.train": args.data, "data.val": args.val_data, "output": args.output,
             "data.loader": args.loader}
    config = resolve_run_config(args.config, flags, args.overrides)
    trainer = Trainer(config, resume=args.resume, device=args.device, progress=not args.no_progress)
    trainer.fit()
    from ..train import distributed

    distributed.teardown()
    return 0


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score a checkpoint on a labelled data spec (Table 1 metrics)",
                       description="Print mAP with its 95% bootstrap interval, CP, CR, CF1, OP, OR, OF1 (all and "
                                   "top-3) and per-class AP with support counts; write JSON. --branches also scores "
                                   "y_ca, y_sp, y_co alone and every partial sum of them.")
    p.add_argument("checkpoint", help="an lcie_fast checkpoint (.pt)")
    p.add_argument("--data", required=True, help="data spec with labels")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--loader", choices=["auto", "torch", "dali"], default="auto")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="off",
                   help="autocast dtype for the forward (default off: fp32)")
    p.add_argument("--json", metavar="PATH", help="where to write the metrics (default: <checkpoint>.eval.json)")
    p.add_argument("--branches", action="store_true",
                   help="also score each branch's logits (y_ca, y_sp, y_co) alone and every partial sum of them")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="DRAWS",
                   help="resamples of the images for the 95%% interval of mAP (0: none; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    p.add_argument("--against", metavar="CKPT",
                   help="also score this checkpoint on the same images and report the mAP difference with its "
                        "paired 95%% bootstrap interval (is a fine-tuned model really better than its start?)")
    p.add_argument("--fit-thresholds", metavar="PATH",
                   help="also fit per-class thresholds (best F1 per class on this data) and write them as JSON "
                        "for lcie-fast tag --thresholds")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from ..data.datasets import load_data_spec
    from ..data.transforms import Preprocess
    from ..io import write_json
    from ..metrics import format_metrics
    from ..models.checkpoint import model_from_checkpoint
    from ..train import distributed
    from ..train.amp import AmpPolicy
    from ..train.evaluate import compare_predictions, predict, score
    from ..train.trainer import make_loader

    info = distributed.setup(args.device)
    amp = AmpPolicy(args.amp, info.device)

    def load_and_predict(checkpoint, data=None, branches=False):
        model, meta = model_from_checkpoint(checkpoint)
        if branches and model.baseline_head is not None:
            raise InvalidInputError(f"{checkpoint} is a baseline model (backbone + GAP + linear): --branches needs "
                             f"the label decoder or the spatial branch")
        if data is None:
            data = load_data_spec(args.data, label_names=meta.label_names)
        elif list(meta.label_names) != list(data.label_names):
            raise InvalidInputError(f"--against {checkpoint}: its labels {list(meta.label_names)} differ from "
                             f"{args.checkpoint}'s {list(data.label_names)}")
        model.to(info.device).to(memory_format=torch.channels_last)
        loader = make_loader(data, Preprocess(meta.preprocess), args.batch_size, train=False, kind=args.loader,
                             seed=0, workers=args.workers, info=info, channels_last=True)
        return predict(model, loader, autocast=amp.autocast, info=info, progress=not args.no_progress,
                       branches=branches), meta, data

    prediction, meta, data = load_and_predict(args.checkpoint, branches=args.branches)
    result = score(prediction, data.targets, list(meta.label_names), args.threshold)
    result.update({"checkpoint": str(args.checkpoint), "data": args.data, "images_per_s": prediction.images_per_second,
                   "failed": [{"path": p, "reason": r} for _, p, r in prediction.failed]})
    if args.bootstrap > 0:
        from ..metrics import bootstrap_interval

        result["mAP_ci95"] = list(bootstrap_interval(prediction.logits, data.targets[prediction.indices],
                                                     draws=args.bootstrap, seed=args.seed))
        result["bootstrap_draws"] = args.bootstrap
    if args.against:
        result["against"] = compare_predictions(prediction, load_and_predict(args.against, data)[0], data.targets,
                                                draws=max(args.bootstrap, 1), seed=args.seed)
        result["against"]["checkpoint"] = str(args.against)
    if args.branches:
        from ..train.evaluate import branch_report, format_branch_report

        result["branches"] = branch_report(prediction, data.targets, list(meta.label_names),
                                           draws=args.bootstrap, seed=args.seed)
    if info.is_main:
        print(f"{args.checkpoint} on {args.data}: {len(prediction.indices)} images"
              + (f", {len(prediction.failed)} unreadable (skipped)" if prediction.failed else ""))
        print(format_metrics(result))
        if args.against:
            versus = result["against"]
            print(f"against {args.against}: mAP {versus['reference_mAP']:.2f} -> {result['mAP']:.2f}, difference "
                  f"{versus['dmAP']:+.2f}, paired 95% interval {versus['dmAP_ci95'][0]:+.2f} to "
                  f"{versus['dmAP_ci95'][1]:+.2f} ({versus['images']} images, {versus['draws']} resamples)")
        if args.branches:
            print("\nbranches (logits of y = y_ca + y_sp + y_co, alone and summed):")
            print(format_branch_report(result["branches"]))
        out = Path(args.json) if args.json else Path(str(args.checkpoint) + ".eval.json")
        write_json(result, out)
        print(f"metrics written to {out}")
        if args.fit_thresholds:
            from ..metrics import fit_thresholds

            fitted = fit_thresholds(prediction.logits, data.targets[prediction.indices], from_logits=True,
                                    class_names=list(meta.label_names))
            fitted["fitted_on"] = args.data
            write_json(fitted, args.fit_thresholds)
            print("per-class thresholds (best F1): " + ", ".join(
                f"{name} {value:.3f}" for name, value in fitted["thresholds"].items()) + f" -> {args.fit_thresholds}")
    distributed.teardown()
    return 0
