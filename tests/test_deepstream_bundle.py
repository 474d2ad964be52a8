"""``export-deepstream``: the bundle's files, its config as nvinfer's parser reads it, the graph's
numbers against the model's own preprocessing, and the simulated nvinfer input path.

The C++ parser and the pyds probe have their own tests (test_deepstream_parser.py,
test_deepstream_probe.py); what only a DeepStream machine can check (the parser's ABI, nvinfer's
real scaler and colour conversion, the engine build) is out of reach here.
"""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("onnxruntime", reason="needs onnxruntime: pip install 'lcie-fast[deploy]'")

from lcie_fast.artifacts import (  # noqa: E402
    DEEPSTREAM_BUNDLE_FILE,
    engine_sidecar,
    read_onnx_metadata,
    write_onnx_metadata,
)
from lcie_fast.cli import main  # noqa: E402
from lcie_fast.deploy.deepstream.bundle import export_deepstream  # noqa: E402
from lcie_fast.deploy.deepstream.config import NVINFER_KEYS, config_text  # noqa: E402
from lcie_fast.deploy.deepstream.simulate import nvinfer_resize  # noqa: E402
from lcie_fast.errors import InvalidInputError  # noqa: E402
from lcie_fast.io import write_json  # noqa: E402
from lcie_fast.runtime.onnxruntime import ort_session  # noqa: E402

LABELS = ["bus", "car", "motorbike", "person", "truck"]
GLIB_PYTHON = shutil.which("python3", path="/usr/bin:/bin")


def _config(bundle: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keys keep their case, as GLib's do
    parser.read(bundle / "config_infer_lcie.txt")
    assert parser.sections() == ["property"]
    return dict(parser["property"])


@pytest.fixture(scope="module")
def bundles(tiny5_onnx, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    thresholds = root / "thresholds.json"
    thresholds.write_text(json.dumps({"bus": 0.3, "car": 0.6}))
    return {
        "primary": Path(export_deepstream(tiny5_onnx, root / "primary", precision="fp32", thresholds=thresholds,
                                          top_k=2)["folder"]),
        "secondary": Path(export_deepstream(tiny5_onnx, root / "secondary", precision="fp32", mode="secondary",
                                            parser="tensor-meta", operate_on_class_ids=[0, 2], min_object_size=(32, 24),
                                            input_scale=1, batch_size=16)["folder"]),
    }


def test_primary_bundle_files_and_config(bundles, tiny5_onnx):
    bundle = bundles["primary"]
    assert sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()) == [
        "README.md", "config_infer_lcie.txt", "labels.txt", DEEPSTREAM_BUNDLE_FILE, "lcie_ds.onnx", "parser/Makefile",
        "parser/lcie_parser_config.h", "parser/nvdsinfer_lcie_parser.cpp", "probe_lcie.py"]
    config = _config(bundle)
    assert set(config) <= set(NVINFER_KEYS)
    size = 2 * read_onnx_metadata(tiny5_onnx).preprocess.input_size
    assert config["infer-dims"] == f"3;{size};{size}" and config["net-scale-factor"] == "1.0"
    assert config["offsets"] == "0.0;0.0;0.0" and config["maintain-aspect-ratio"] == "0"
    assert config["network-mode"] == "0" and config["network-type"] == "1" and config["process-mode"] == "1"
    assert config["parse-classifier-func-name"] == "NvDsInferParseCustomLcieMultiLabel"
    assert config["output-blob-names"] == "probs" and config["scaling-filter"] == "1"
    for key in ("onnx-file", "labelfile-path"):  # relative to the config, present in the bundle
        assert not Path(config[key]).is_absolute() and (bundle / config[key]).is_file()
    assert (bundle / config["custom-lib-path"]).parent == bundle / "parser"
    assert (bundle / "labels.txt").read_text() == ";".join(LABELS) + "\n"
    described = json.loads((bundle / DEEPSTREAM_BUNDLE_FILE).read_text())
    assert described["thresholds"] == [0.3, 0.6, 0.5, 0.5, 0.5] and described["top_k"] == 2
    header = (bundle / "parser" / "lcie_parser_config.h").read_text()
    assert all(f'"{label}"' in header for label in LABELS)


def test_secondary_tensor_meta_bundle(bundles):
    bundle = bundles["secondary"]
    config = _config(bundle)
    assert config["process-mode"] == "2" and config["operate-on-gie-id"] == "1" and config["gie-unique-id"] == "2"
    assert config["operate-on-class-ids"] == "0;2"
    assert (config["input-object-min-width"], config["input-object-min-height"]) == ("32", "24")
    assert config["network-type"] == "100" and config["output-tensor-meta"] == "1" and config["scaling-filter"] == "3"
    assert "custom-lib-path" not in config and not (bundle / "parser").exists()
    assert config["batch-size"] == "16"


@pytest.mark.skipif(GLIB_PYTHON is None, reason="needs the system python3 with python3-gi (GLib's key-file parser)")
@pytest.mark.parametrize("which", ["primary", "secondary"])
def test_config_reads_back_through_glib_key_file(bundles, which):
    """GLib's key-file parser is the one nvinfer uses: every key and list must come back as written."""
    script = ("import json, sys\n"
              "from gi.repository import GLib\n"
              "k = GLib.KeyFile.new()\n"
              "k.load_from_file(sys.argv[1], GLib.KeyFileFlags.NONE)\n"
              "keys = k.get_keys('property')[0]\n"
              "print(json.dumps({'groups': k.get_groups()[0], 'values': {key: k.get_string('property', key) for key in keys},"
              " 'offsets': k.get_double_list('property', 'offsets'), 'dims': k.get_integer_list('property', 'infer-dims')}))\n")
    done = subprocess.run([GLIB_PYTHON, "-c", script, str(bundles[which] / "config_infer_lcie.txt")],
                          capture_output=True, text=True, timeout=60)
    if done.returncode and "No module named 'gi'" in done.stderr:
        pytest.skip("the system python3 has no python3-gi")
    assert done.returncode == 0, done.stderr
    read = json.loads(done.stdout)
    assert read["groups"] == ["property"]
    assert read["values"] == _config(bundles[which])
    assert read["offsets"] == [0.0, 0.0, 0.0] and read["dims"][0] == 3


def test_config_writer_refuses_keys_outside_the_whitelist():
    with pytest.raises(InvalidInputError, match="net-scale-facter"):
        config_text({"net-scale-facter": 1.0})
    with pytest.raises(InvalidInputError, match="line break"):
        config_text({"onnx-file": "a\nb.onnx"})


def _raw_batch(size: int, count: int = 3) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (count, 3, size, size)).astype(np.float32)


def _model_probs(graph: Path, raw: np.ndarray) -> np.ndarray:
    meta = read_onnx_metadata(graph)
    mean = np.array(meta.preprocess.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.array(meta.preprocess.std, np.float32).reshape(1, 3, 1, 1)
    logits = ort_session(graph).run(["logits"], {"images": ((raw / 255 - mean) / std).astype(np.float32)})[0]
    return 1 / (1 + np.exp(-logits.astype(np.float64)))


def test_graph_on_raw_pixels_equals_model_preprocessing_and_sigmoid(bundles, tiny5_onnx):
    size = read_onnx_metadata(tiny5_onnx).preprocess.input_size
    raw = _raw_batch(size)
    session = ort_session(bundles["secondary"] / "lcie_ds.onnx")  # input scale 1
    assert [o.name for o in session.get_outputs()] == ["probs"]
    probs = session.run(["probs"], {"images": raw})[0]
    assert np.abs(probs - _model_probs(tiny5_onnx, raw)).max() < 1e-5


def test_graph_at_input_scale_two_reduces_with_the_models_antialiased_filter(bundles, tiny5_onnx):
    size = read_onnx_metadata(tiny5_onnx).preprocess.input_size
    raw = _raw_batch(2 * size)
    probs = ort_session(bundles["primary"] / "lcie_ds.onnx").run(["probs"], {"images": raw})[0]
    reduced = F.interpolate(torch.from_numpy(raw), size=(size, size), mode="bilinear", align_corners=False,
                            antialias=True).numpy()
    assert np.abs(probs - _model_probs(tiny5_onnx, reduced)).max() < 1e-5


def test_refusals_name_the_problem(tiny5_onnx, tmp_path):
    import onnx

    labelled = tmp_path / "semicolon" / "model.onnx"
    labelled.parent.mkdir()
    proto = onnx.load(str(tiny5_onnx))
    meta = read_onnx_metadata(proto)
    import dataclasses

    write_onnx_metadata(proto, dataclasses.replace(meta, label_names=("bus;coach", *LABELS[1:])))
    onnx.save(proto, str(labelled))
    with pytest.raises(InvalidInputError, match="bus;coach"):
        export_deepstream(labelled, tmp_path / "a", precision="fp32")
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a.*"))  # nothing half-written

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(InvalidInputError, match="--overwrite"):
        export_deepstream(tiny5_onnx, tmp_path / "busy", precision="fp32")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "x"

    with pytest.raises(FileNotFoundError, match="model.fp16.onnx"):
        export_deepstream(tiny5_onnx, tmp_path / "b", precision="fp16")

    engine = tmp_path / "other.engine"
    engine.write_bytes(b"not an engine")
    write_json(engine_sidecar(meta, trt_version="10.14.1", gpu={"name": "Orin", "compute_capability": "8.7"},
                              profile={"min_batch": 1, "opt_batch": 4, "max_batch": 8}, onnx_path="model.onnx",
                              onnx_sha256="0" * 64, build_seconds=1.0, key="k"), f"{engine}.json")
    with pytest.raises(InvalidInputError, match="built from another graph"):
        export_deepstream(tiny5_onnx, tmp_path / "c", precision="fp32", engine=engine)
    assert not (tmp_path / "c").exists()


def test_cli_writes_the_bundle_from_an_engine_profile(tiny5_onnx, tmp_path, capsys):
    profile = tmp_path / "edge.yaml"
    profile.write_text("precision: fp32\nmin_batch: 1\nopt_batch: 2\nmax_batch: 4\n")
    assert main(["export-deepstream", str(tiny5_onnx), "-o", str(tmp_path / "b"), "--profile", str(profile)]) == 0
    assert _config(tmp_path / "b")["batch-size"] == "4"
    assert main(["export-deepstream", str(tiny5_onnx), "-o", str(tmp_path / "b"), "--precision", "fp32"]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_nvinfer_scaling_aliases_where_the_models_resize_does_not():
    """A fine pattern shrunk 2.5x: the model's antialiased resize averages it to near-flat grey; nvinfer's
    bilinear scaler (no antialiasing) keeps a full-strength alias; super-sampling (a box) lies between."""
    from lcie_fast.data.transforms import resize_image

    stripes = np.zeros((640, 640, 3), np.uint8)
    stripes[:, ::2] = 255
    reference = resize_image(stripes, 256).float()
    bilinear, super_ = nvinfer_resize(stripes, 256, "bilinear").float(), nvinfer_resize(stripes, 256, "super").float()
    assert reference.std() < 10
    assert bilinear.std() > 50
    assert (super_ - reference).abs().mean() < 0.5 * (bilinear - reference).abs().mean()


@pytest.mark.slow
def test_simulated_nvinfer_path_scores_through_the_parity_machinery(tiny5_checkpoint, tiny5_onnx, traffic5):
    """The graph's own numbers equal the model's (input scale 1, the model's resize: FP32 gate) and the
    simulated nvinfer path is scored with a paired interval. (A random model's figures say nothing
    about accuracy: the trained model's figures are in the README, from benchmarks/deepstream_parity.py.)"""
    from lcie_fast.deploy.deepstream.simulate import deepstream_parity

    report = deepstream_parity(tiny5_checkpoint, tiny5_onnx, traffic5 / "valid", max_images=48,
                               input_scale=1, draws=50, progress=False)
    own, simulated = report["rows"]
    assert report["images"] == 48 and own["passed"] and own["cosine"] > 0.99999
    assert simulated["dmAP_ci95"][0] <= simulated["dmAP"] <= simulated["dmAP_ci95"][1]
    assert simulated["scaling_gate_passed"] is not None and 0 < simulated["cosine"] <= 1


def test_an_engine_built_from_the_bundles_graph_ships_with_it(bundles, tiny5_onnx, tmp_path):
    """build-engine compiles lcie_ds.onnx as given (TensorRT cannot run here: its sidecar is made the way
    build_engine makes it); the same export writes the same graph, so the engine is accepted and shipped."""
    from lcie_fast.artifacts import check_onnx_graph, read_onnx_io
    from lcie_fast.io import sha256_file

    graph = bundles["primary"] / "lcie_ds.onnx"
    meta = check_onnx_graph(graph)  # the DeepStream contract: raw 2S x 2S input, probs output
    io = read_onnx_io(graph)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine bytes")
    sidecar = engine_sidecar(meta, trt_version="10.14.1", gpu={"name": "Orin", "compute_capability": "8.7"},
                             profile={"min_batch": 1, "opt_batch": 4, "max_batch": 8}, onnx_path=graph,
                             onnx_sha256=sha256_file(graph), build_seconds=1.0, key="k", graph_io=io)
    assert sidecar["io"]["output"]["name"] == "probs" and sidecar["io"]["consumer"] == "deepstream"
    assert sidecar["io"]["input"]["max"] == [8, 3, io["input_size"], io["input_size"]]
    write_json(sidecar, f"{engine}.json")
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps({"bus": 0.3, "car": 0.6}))
    out = export_deepstream(tiny5_onnx, tmp_path / "with_engine", precision="fp32", thresholds=thresholds, top_k=2,
                            engine=engine)
    bundle = Path(out["folder"])
    assert _config(bundle)["model-engine-file"] == "lcie_ds.engine"
    assert (bundle / "lcie_ds.engine").read_bytes() == b"engine bytes" and out["engine"]["gpu"]["name"] == "Orin"
    assert sha256_file(bundle / "lcie_ds.onnx") == sha256_file(graph)
    with pytest.raises(InvalidInputError, match="batches up to 8"):
        export_deepstream(tiny5_onnx, tmp_path / "too_big", precision="fp32", batch_size=16, engine=engine,
                          thresholds=thresholds, top_k=2)
