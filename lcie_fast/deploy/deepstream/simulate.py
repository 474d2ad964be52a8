"""Accuracy of the DeepStream graph under a simulation of nvinfer's input path, on real images.

nvinfer scales each frame (or object crop) to the network size itself: with the bundle's
config (``maintain-aspect-ratio=0``, ``scaling-filter=1``) a bilinear stretch that, unlike
lcie-fast's own resize, does not antialias when shrinking, into an 8-bit RGBA surface; then
``y = net-scale-factor * (x - offsets)`` = ``x`` feeds ``lcie_ds.onnx``. This module rebuilds
that path on the CPU (:func:`nvinfer_resize`: bilinear, half-pixel centres, no antialiasing,
rounded to uint8) and scores the graph's logits against the reference model fed lcie-fast's
own preprocessing, with the parity machinery (:func:`~lcie_fast.deploy.parity.compare`,
:func:`~lcie_fast.deploy.parity.gate_checks`, a paired bootstrap interval of the mAP difference).

Two rows separate the two causes of any difference: the DeepStream graph on lcie-fast's
preprocessing (the graph edits and the precision), and on the simulated nvinfer scaling (plus
the scaling). Not simulated: the decoder's colour conversion (NV12 -> RGBA) and the exact
rounding of the VIC or CUDA scaler, which only a DeepStream machine shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...artifacts import OUTPUT_NAME, artifact_kind, read_onnx_metadata
from ...data.transforms import ImageDecodeError, Preprocess, resize_image
from ...errors import InvalidInputError
from .graph import build_deepstream_graph

SCALING_FILTERS = {"bilinear": 1, "super": 3}  # nvinfer scaling-filter values (NvBufSurfTransformInter)
# The bar for another scaler in front of the same graph: the INT8 gate. A change between two antialiased
# filters the model was not trained with (bilinear -> bicubic) already moves a trained model's logits to a
# cosine near 0.995 (measured on traffic5, README), far from the FP32 / FP16 gates, which bound numeric
# error only; the precision gate's verdict is reported beside this one.
SCALING_GATE = {"max_abs_dmap": 0.5, "min_cosine": 0.99, "min_agreement": 0.97}


def nvinfer_resize(image: np.ndarray, size: int, scaling: str = "super") -> torch.Tensor:
    """An RGB uint8 (H, W, 3) image stretched to (3, size, size) uint8 as nvinfer's GPU scaler does.

    ``bilinear`` (``scaling-filter=1``): half-pixel centres, no antialiasing. ``super``
    (``scaling-filter=3`` on the GPU, ``scaling-compute-hw=1``: NPP's super-sampling): each output
    pixel the area-weighted mean of the input pixels it covers when shrinking (PIL's box filter),
    bilinear when enlarging. Both rounded to 8 bits.
    """
    if scaling not in SCALING_FILTERS:
        raise InvalidInputError(f"scaling must be one of {sorted(SCALING_FILTERS)}, got {scaling!r}")
    height, width = image.shape[:2]
    if scaling == "super" and height >= size and width >= size:
        from PIL import Image

        box = Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.Resampling.BOX)
        return torch.from_numpy(np.array(box)).permute(2, 0, 1).contiguous()
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0).float()
    out = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)[0]


def deepstream_parity(reference: str | Path, graph: str | Path, data_spec: str | Path, *, max_images: int = 0,
                      batch_size: int = 16, input_scale: int = 2, scaling: str | None = None,
                      gates: dict[str, dict[str, float]] | None = None, draws: int = 1000,
                      progress: bool = True) -> dict[str, Any]:
    """Score the DeepStream graph built from ``graph`` against ``reference`` on labelled images.

    Args:
        reference: The model as lcie-fast runs it: a ``.pt`` checkpoint (eager FP32) or the FP32
            ``model.onnx`` (ONNX Runtime), fed lcie-fast's preprocessing.
        graph: The exported graph the DeepStream graph is made from (``model.onnx``,
            ``model.fp16.onnx`` or ``model.int8.onnx``); rebuilt here with its logits kept.
        data_spec: Labelled images (e.g. a validation split).
        max_images: Score only the first N images (0: all).
        input_scale: The DeepStream graph's input scale (see :mod:`.graph`).
        scaling: The nvinfer scaler simulated: ``super`` (``scaling-filter=3``) or ``bilinear``
            (``scaling-filter=1``); default: what the bundle writes for ``input_scale``
            (:data:`~lcie_fast.deploy.deepstream.bundle.SCALING_FOR_INPUT_SCALE`).
        gates: Per-precision gates (default :data:`~lcie_fast.deploy.parity.DEFAULT_GATES`); the
            graph's precision picks the gate.
        draws: Bootstrap resamples for the paired interval of each mAP difference.

    Returns:
        ``{"rows": [...], "images": N, "failed": [...], "precision": p, "gate": {...}}``; each row
        has ``label``, ``mAP``, ``dmAP``, ``dmAP_ci95``, ``cosine``, ``min_cosine``, ``max_abs``,
        ``agreement``, ``passed``, ``failed_checks``.
    """
    from tqdm.auto import tqdm

    from ...data.datasets import load_data_spec
    from ...metrics import bootstrap_interval
    from ...runtime import open_backend
    from ...runtime.onnxruntime import ort_session
    from ..parity import DEFAULT_GATES, compare, gate_checks
    from .bundle import SCALING_FOR_INPUT_SCALE

    meta = read_onnx_metadata(graph)
    scaling = scaling or SCALING_FOR_INPUT_SCALE[input_scale]
    gates = gates or DEFAULT_GATES
    backend = open_backend(reference, "onnxruntime" if artifact_kind(reference) == "onnx" else "eager", "cpu")
    if list(backend.meta.label_names) != list(meta.label_names):
        raise InvalidInputError(f"{graph} and {reference} describe different labels")
    data = load_data_spec(str(data_spec), label_names=meta.label_names)
    if max_images:
        data = data.subset(range(min(max_images, len(data))))
    preprocess = Preprocess(meta.preprocess)
    size = preprocess.size
    reference_inputs, own, simulated, kept, failed = [], [], [], [], []
    for index, path in enumerate(tqdm(data.paths, desc="decode", unit="img", disable=not progress, leave=False)):
        try:
            decoded = preprocess.decode(path)
        except ImageDecodeError as err:
            failed.append({"path": str(path), "reason": str(err)})
            continue
        reference_inputs.append(resize_image(decoded, size, meta.preprocess.interpolation))
        own.append(reference_inputs[-1] if input_scale == 1 else
                   resize_image(decoded, size * input_scale, meta.preprocess.interpolation))
        simulated.append(nvinfer_resize(decoded, size * input_scale, scaling))
        kept.append(index)
    if not kept:
        raise InvalidInputError(f"no image of {data_spec} could be decoded")
    own_images, simulated_images = torch.stack(own), torch.stack(simulated)
    targets = data.targets[np.array(kept)]

    def batches(images: torch.Tensor):
        return (images[i:i + batch_size] for i in range(0, len(images), batch_size))

    model_images = torch.stack(reference_inputs)
    reference_logits = np.concatenate([backend.infer_numpy(preprocess.normalize(chunk, channels_last=False))
                                       for chunk in batches(model_images)]).astype(np.float64)
    backend.close()
    session = ort_session_from_proto(build_deepstream_graph(graph, input_scale=input_scale, keep_logits=True), ort_session)
    gate = gates.get(meta.precision, {})
    rows = []
    # the second row is also held to SCALING_GATE: see its comment
    reference_map = None
    network = f"{size * input_scale}x{size * input_scale}"
    for label, images in ((f"lcie_ds.onnx {meta.precision} ({network} in), lcie-fast resize", own_images),
                          (f"lcie_ds.onnx {meta.precision} ({network} in), simulated nvinfer {scaling} scaling",
                           simulated_images)):
        logits = np.concatenate([session.run([OUTPUT_NAME], {"images": chunk.float().numpy()})[0]
                                 for chunk in batches(images)])
        numbers = compare(reference_logits, logits, targets, list(meta.label_names))
        if reference_map is None:
            reference_map = compare(reference_logits, reference_logits, targets, list(meta.label_names))["mAP"]
        dmap = numbers["mAP"] - reference_map
        interval = bootstrap_interval(logits, targets, reference=reference_logits, draws=draws) if draws else None
        failed_checks = gate_checks(gate, dmap, interval, numbers)
        scaling_checks = gate_checks(SCALING_GATE, dmap, interval, numbers) if rows else None
        rows.append({"label": label, **numbers, "dmAP": dmap, "dmAP_ci95": interval, "passed": not failed_checks,
                     "failed_checks": failed_checks, "scaling_gate_passed": None if scaling_checks is None
                     else not scaling_checks, "scaling_failed_checks": scaling_checks})
    return {"rows": rows, "reference": {"label": backend.label, "mAP": reference_map}, "images": len(kept),
            "failed": failed, "precision": meta.precision, "gate": gate, "source": str(data_spec),
            "input_scale": input_scale, "scaling": scaling}


def ort_session_from_proto(proto: Any, make_session: Any) -> Any:
    """An ONNX Runtime session of an in-memory graph (written to a temporary file first: the
    session helper decides the optimisation level from the file)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lcie-ds-") as folder:
        path = Path(folder) / "lcie_ds_analysis.onnx"
        path.write_bytes(proto.SerializeToString())
        return make_session(path)


def markdown_table(report: dict[str, Any]) -> str:
    """The report as a Markdown table (mAP in points)."""
    lines = [f"Reference: {report['reference']['label']}, mAP {report['reference']['mAP']:.2f} on "
             f"{report['images']} images of {report['source']}; gate ({report['precision']}): {report['gate']}", "",
             "| variant | mAP | dmAP | 95% interval | mean cosine | min cosine | max abs dlogit | tag agreement | "
             f"{report['precision']} gate | scaling gate {SCALING_GATE} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        low, high = row["dmAP_ci95"] or (float("nan"), float("nan"))
        verdict = "pass" if row["passed"] else "FAIL: " + "; ".join(row["failed_checks"])
        scaling = ("-" if row["scaling_failed_checks"] is None else "pass" if row["scaling_gate_passed"]
                   else "FAIL: " + "; ".join(row["scaling_failed_checks"]))
        lines.append(f"| {row['label']} | {row['mAP']:.2f} | {row['dmAP']:+.3f} | [{low:+.3f}, {high:+.3f}] | "
                     f"{row['cosine']:.6f} | {row['min_cosine']:.6f} | {row['max_abs']:.4f} | "
                     f"{100 * row['agreement']:.2f}% | {verdict} | {scaling} |")
    return "\n".join(lines)
