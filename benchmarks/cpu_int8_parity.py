"""Parity of both INT8 graphs of one export against eager FP32, side by side.

``lcie-fast parity --graphs`` scores the INT8 graph the ONNX Runtime backend picks, which is the
CPU-target sibling when one fits; this script also scores the TensorRT-target graph as given
(``prefer_cpu_graph=False``), so the two placements are compared on the same images and gates.

    python benchmarks/cpu_int8_parity.py CKPT GRAPHS_DIR/model.onnx --data ../shared/data/traffic5/valid \
        --output runs/cpu_int8_parity
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("onnx", help="the FP32 graph; model.int8.onnx and model.int8-cpu.onnx beside it")
    parser.add_argument("--data", required=True, help="labelled evaluation images")
    parser.add_argument("--output", required=True, help="report folder")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()

    from lcie_fast.artifacts import graph_paths
    from lcie_fast.cpu import cpu_description
    from lcie_fast.data.datasets import load_data_spec
    from lcie_fast.data.transforms import Preprocess
    from lcie_fast.deploy.parity import markdown_table, run_parity, write_report
    from lcie_fast.models.checkpoint import model_from_checkpoint
    from lcie_fast.runtime.onnxruntime import OnnxRuntimeBackend
    from lcie_fast.runtime.variants import Variant, backend_variants

    model, meta = model_from_checkpoint(args.checkpoint)
    paths = graph_paths(args.onnx)
    variants = [v for v in backend_variants(model, meta, "cpu", graphs=[paths["fp32"]]) if "fast ops" not in v.label]
    variants += [
        Variant("onnxruntime int8 tensorrt-target graph (cpu)", "int8",
                lambda: OnnxRuntimeBackend(paths["int8"], prefer_cpu_graph=False)),
        Variant("onnxruntime int8 cpu-target graph (cpu)", "int8",
                lambda: OnnxRuntimeBackend(graph_paths(args.onnx, int8_target="cpu")["int8"])),
    ]
    data = load_data_spec(args.data, label_names=meta.label_names)
    report = run_parity(variants, data, Preprocess(meta.preprocess), batch_size=args.batch_size,
                        draws=args.bootstrap)
    report["written"] = write_report(report, Path(args.output))
    print(cpu_description())
    print(markdown_table(report))
    return 0 if all(row.passed for row in report["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
