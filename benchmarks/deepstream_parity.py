"""Accuracy of the DeepStream graph under a simulation of nvinfer's scaling, on real images.

    python benchmarks/deepstream_parity.py --model demo_out/graphs/model.onnx \\
        [--data ../shared/data/traffic5/valid] [--precisions fp32 fp16 int8] [--configs 2:bilinear 1:super]
        [--out ds_parity]

For each precision's graph (``model.onnx`` and its ``.fp16`` / ``.int8`` siblings) and each
configuration ``SCALE:SCALER`` (the graph's input scale and nvinfer's scaler: ``bilinear`` or
``super``; the bundle writes 2:bilinear by default and 1:super with ``--input-scale 1``), :func:`lcie_fast.deploy.deepstream.simulate.deepstream_parity` scores ``lcie_ds.onnx`` against
the FP32 graph fed lcie-fast's own preprocessing (ONNX Runtime, CPU): once on lcie-fast's resize (the
graph edits and the precision alone) and once on the simulated nvinfer scaling. For scale, one more
row: the FP32 model fed an antialiased *bicubic* resize instead of its bilinear one, i.e. how far a
legitimate change of resampler moves this model on its own.

Writes ``OUT/deepstream_parity.md`` and ``.json`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lcie_fast.artifacts import graph_paths, read_onnx_metadata
from lcie_fast.data.datasets import load_data_spec
from lcie_fast.data.transforms import Preprocess, resize_image
from lcie_fast.deploy.deepstream.simulate import deepstream_parity, markdown_table
from lcie_fast.deploy.parity import compare
from lcie_fast.runtime.onnxruntime import ort_session
from lcie_fast.timing import cpu_features, machine_caption, thread_counts


def default_data() -> Path:
    import os

    return Path(os.environ.get("LCIE_FAST_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data") / "traffic5" / "valid"


def bicubic_row(model: Path, data_spec: Path) -> dict:
    """The FP32 model on antialiased bicubic vs its own antialiased bilinear resize."""
    meta = read_onnx_metadata(model)
    preprocess = Preprocess(meta.preprocess)
    data = load_data_spec(str(data_spec), label_names=meta.label_names)
    session = ort_session(model)
    logits = {}
    for mode in ("bilinear", "bicubic"):
        images = torch.stack([resize_image(preprocess.decode(path), preprocess.size, mode) for path in data.paths])
        logits[mode] = np.concatenate([session.run(["logits"], {"images": preprocess.normalize(images[i:i + 32],
                                                                 channels_last=False).numpy()})[0]
                                       for i in range(0, len(images), 32)]).astype(np.float64)
    numbers = compare(logits["bilinear"], logits["bicubic"], data.targets, list(meta.label_names))
    reference = compare(logits["bilinear"], logits["bilinear"], data.targets, list(meta.label_names))["mAP"]
    return {**numbers, "dmAP": numbers["mAP"] - reference}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the FP32 model.onnx (siblings .fp16 / .int8 beside it)")
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "int8"])
    parser.add_argument("--configs", nargs="+", default=["2:bilinear", "1:super"], metavar="SCALE:SCALER")
    parser.add_argument("--out", type=Path, default=Path("ds_parity"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    reports, sections = [], [f"Machine: {machine_caption(thread_counts(), cpu_features())}", ""]
    context = bicubic_row(Path(args.model), args.data)
    sections += [f"Context: the FP32 model fed an antialiased bicubic resize instead of its antialiased bilinear one: "
                 f"dmAP {context['dmAP']:+.3f}, mean cosine {context['cosine']:.6f}, min cosine "
                 f"{context['min_cosine']:.4f}, tag agreement {100 * context['agreement']:.2f}%", ""]
    for precision in args.precisions:
        graph = graph_paths(args.model)[precision]
        for config in args.configs:
            scale, _, scaling = config.partition(":")
            scale = int(scale)
            start = time.perf_counter()
            report = deepstream_parity(args.model, graph, args.data, input_scale=scale, scaling=scaling or None,
                                       progress=False)
            report["seconds"] = round(time.perf_counter() - start, 1)
            reports.append(report)
            sections += [f"### {graph.name}, input scale {scale} ({report['scaling']} scaling)", "",
                         markdown_table(report), ""]
            print("\n".join(sections[-4:]), flush=True)
    text = "\n".join(sections)
    (args.out / "deepstream_parity.md").write_text(text)
    (args.out / "deepstream_parity.json").write_text(json.dumps({"context_bicubic": context, "reports": reports},
                                                                indent=1, default=str))
    print(f"written: {args.out / 'deepstream_parity.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
