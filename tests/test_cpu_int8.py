"""The CPU-target INT8 graph (``lcie-fast export --int8 --target cpu``): what it holds, what it
records, that the ONNX Runtime backend picks it, and its parity with eager on a small set.

Parity contract of the CPU INT8 graph of an untrained lcie_tiny against eager FP32 on the
synthetic shapes: mean cosine >= 0.98 and tag agreement >= 0.9 (the real gate, 0.99 / 0.97,
is for trained models on real photos; a tiny random model's logits sit close together, so
8-bit steps move them relatively more).
"""

from __future__ import annotations

import pytest
import torch

from lcie_fast import create_model
from lcie_fast.data.datasets import load_data_spec
from lcie_fast.data.synthetic import make_synthetic_set
from lcie_fast.data.transforms import Preprocess

pytest.importorskip("onnx", reason="needs the deploy extra: pip install 'lcie-fast[deploy]'")
pytest.importorskip("onnxruntime", reason="needs the deploy extra: pip install 'lcie-fast[deploy]'")

from lcie_fast.artifacts import graph_paths, graph_target, read_onnx_metadata  # noqa: E402
from lcie_fast.models.checkpoint import save_checkpoint  # noqa: E402

LABELS = [f"shape{k}" for k in range(5)]
MIN_COSINE, MIN_AGREEMENT = 0.98, 0.9


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_synthetic_set(tmp_path_factory.mktemp("shapes"), splits={"train": 32, "valid": 24}, size=64)


@pytest.fixture(scope="module")
def exported(shapes, tmp_path_factory):
    """lcie_tiny exported by the CLI with both INT8 graphs: ``--int8 --target cpu tensorrt``."""
    from lcie_fast.cli import main

    torch.manual_seed(0)
    model = create_model("lcie_tiny", num_classes=5).eval()
    folder = tmp_path_factory.mktemp("cpu_int8")
    checkpoint = save_checkpoint(folder / "model.pt", model, label_names=LABELS)
    assert main(["export", str(checkpoint), "-o", str(folder / "model.onnx"), "--int8", "--target", "cpu", "tensorrt",
                 "--calib-data", str(shapes / "train"), "--calib-images", "16"]) == 0
    return model, folder


def test_sibling_names_come_from_graph_paths(tmp_path):
    from lcie_fast.artifacts import cpu_int8_sibling

    assert graph_paths(tmp_path / "m.onnx")["int8"].name == "m.int8.onnx"
    assert graph_paths(tmp_path / "m.onnx", int8_target="cpu")["int8"].name == "m.int8-cpu.onnx"
    assert cpu_int8_sibling(tmp_path / "m.int8.onnx") == tmp_path / "m.int8-cpu.onnx"
    assert cpu_int8_sibling(tmp_path / "m.onnx") is None and cpu_int8_sibling(tmp_path / "m.fp16.onnx") is None
    with pytest.raises(ValueError, match="int8_target"):
        graph_paths(tmp_path / "m.onnx", int8_target="gpu")


def test_cpu_graph_records_target_and_runs_integer_kernels(exported):
    import onnx

    from lcie_fast.deploy.graphs import cpu_int8_report

    _, folder = exported
    path = graph_paths(folder / "model.onnx", int8_target="cpu")["int8"]
    meta = read_onnx_metadata(path)
    assert meta.precision == "int8" and graph_target(meta) == "cpu" and list(meta.label_names) == LABELS
    assert meta.extra["int8"]["source_sha256"] and meta.extra["int8"]["kept_float"]
    assert path.with_name("model.int8-cpu.calib.json").is_file()
    report = cpu_int8_report(path)
    print(report)
    assert report["quantize_nodes"] and report["dequantize_nodes"]
    assert sum(report["integer_compute"].values()) >= 10
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops or "QLinearConv" in ops


def test_tensorrt_graph_stays_tensorrt_shaped(exported):
    """The TensorRT-target graph: target recorded, symmetric, per-channel, no int32 bias Q/DQ."""
    from lcie_fast.deploy.graphs import qdq_report

    _, folder = exported
    path = graph_paths(folder / "model.onnx")["int8"]
    assert graph_target(read_onnx_metadata(path)) == "tensorrt"
    report = qdq_report(path)
    assert report["problems"] == [] and report["per_channel_weights"] > 0


def test_backend_runs_the_cpu_sibling(exported, tmp_path):
    import dataclasses
    import shutil

    import onnx

    from lcie_fast.artifacts import write_onnx_metadata
    from lcie_fast.runtime import open_backend
    from lcie_fast.runtime.onnxruntime import OnnxRuntimeBackend

    _, folder = exported
    paths = graph_paths(folder / "model.onnx")
    backend = open_backend(paths["int8"])
    assert backend.path.name == "model.int8-cpu.onnx" and backend.target == "cpu"
    assert "cpu-target graph model.int8-cpu.onnx for model.int8.onnx" in backend.label
    assert not backend.basic_optimizations or not read_onnx_metadata(backend.path).extra["int8"]["reduce_range"]
    as_given = OnnxRuntimeBackend(paths["int8"], prefer_cpu_graph=False)
    assert as_given.path == paths["int8"] and as_given.target == "tensorrt"
    assert OnnxRuntimeBackend(paths["fp32"]).path == paths["fp32"]
    # a CPU graph made from another FP32 graph is not swapped in
    for name in ("model.onnx", "model.int8.onnx"):
        shutil.copy(folder / name, tmp_path / name)
    stale = read_onnx_metadata(folder / "model.int8-cpu.onnx")
    proto = onnx.load(str(folder / "model.int8-cpu.onnx"))
    write_onnx_metadata(proto, dataclasses.replace(stale, extra={**stale.extra, "int8": {
        **stale.extra["int8"], "source_sha256": "0" * 64}}))
    onnx.save(proto, str(tmp_path / "model.int8-cpu.onnx"))
    assert OnnxRuntimeBackend(tmp_path / "model.int8.onnx").path == tmp_path / "model.int8.onnx"


def test_cpu_graph_parity_with_eager(exported, shapes):
    from lcie_fast.deploy.graphs import calibration_set
    from lcie_fast.deploy.parity import compare
    from lcie_fast.runtime.onnxruntime import OnnxRuntimeBackend

    model, folder = exported
    data = load_data_spec(str(shapes / "valid"))
    drawn = calibration_set(data, Preprocess(model.config.preprocess), len(data), seed=0)
    images = drawn.images  # (N, 3, 64, 64), in the seeded order
    targets = data.targets[[data.paths.index(f["path"]) for f in drawn.manifest["files"]]]
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    rows = {}
    for target in ("cpu", "tensorrt"):
        path = graph_paths(folder / "model.onnx", int8_target=target)["int8"]
        logits = OnnxRuntimeBackend(path, prefer_cpu_graph=False).infer_numpy(images)
        rows[target] = compare(reference, logits, targets, LABELS)
        print(f"{target} INT8 graph vs eager: cosine {rows[target]['cosine']:.5f}, agreement "
              f"{rows[target]['agreement']:.3f}, max |d| {rows[target]['max_abs']:.3e}")
    assert rows["cpu"]["cosine"] >= MIN_COSINE and rows["cpu"]["agreement"] >= MIN_AGREEMENT


def test_reduce_range_keeps_the_first_three_convolutions_float(exported):
    # 7-bit weights (CPUs without VNNI) cost the early layers most: there the stem and the two
    # convolutions after it stay float; with 8-bit weights only the stem does.
    import onnx

    from lcie_fast.deploy.graphs import cpu_float_nodes

    _, folder = exported
    nodes = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    eight_bit, seven_bit = cpu_float_nodes(folder / "model.onnx"), cpu_float_nodes(folder / "model.onnx", True)
    assert [name for name in eight_bit if name in convs] == convs[:1]
    assert [name for name in seven_bit if name in convs] == convs[:3]
    assert set(seven_bit) - set(eight_bit) == set(convs[1:3])
