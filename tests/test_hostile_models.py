"""Hostile model files and videos (issue 11): each is refused up front, naming the file and field.

Checkpoints whose metadata implies another (or an absurd) architecture, garbage or mismatched
ONNX graphs, malformed engine sidecars, a sidecar that asks for host code, audio-only and
partly corrupt videos.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lcie_fast import create_model
from lcie_fast.artifacts import EngineError, check_bundle, compatibility_problems, platform_tag, read_engine_metadata
from lcie_fast.errors import UserError
from lcie_fast.metadata import metadata_for
from lcie_fast.models.checkpoint import CheckpointError, model_from_checkpoint, save_checkpoint

LABELS = [f"label{i}" for i in range(5)]


@pytest.fixture(scope="module")
def tiny5():
    torch.manual_seed(0)
    return create_model("lcie_tiny", num_classes=5).eval()


def _tampered_checkpoint(model, path, **config_changes):
    """A checkpoint of ``model`` whose metadata claims ``config_changes``."""
    save_checkpoint(path, model, label_names=LABELS)
    payload = torch.load(path, weights_only=True)
    payload["meta"]["model_config"].update(config_changes)
    torch.save(payload, path)
    return path


# ------------------------------------------------------------------------- item 1: checkpoints
def test_checkpoint_whose_metadata_implies_other_shapes_is_refused_before_building(tiny5, tmp_path, monkeypatch):
    from lcie_fast.models import lcie

    built_devices = []
    real_build = lcie.build

    def spy(*args, **kwargs):
        model = real_build(*args, **kwargs)
        built_devices.append({p.device.type for p in model.parameters()})
        return model

    monkeypatch.setattr(lcie, "build", spy)
    path = _tampered_checkpoint(tiny5, tmp_path / "wide.pt", ffn_dim=4096)
    with pytest.raises(CheckpointError) as info:
        model_from_checkpoint(path)
    message = str(info.value)
    print(message)
    assert "wide.pt" in message and "ffn" in message and "4096" in message
    assert built_devices and all(devices == {"meta"} for devices in built_devices), built_devices

    more_layers = _tampered_checkpoint(tiny5, tmp_path / "deep.pt", encoder_layers=6)
    with pytest.raises(CheckpointError, match=r"deep\.pt.*encoder\.layers\.2"):
        model_from_checkpoint(more_layers)
    assert all(devices == {"meta"} for devices in built_devices)


def test_checkpoint_with_absurd_config_values_is_refused_by_metadata(tiny5, tmp_path):
    for field, value in [("ffn_dim", 2_000_000), ("num_heads", 100_000), ("decoder_layers", 10_000),
                         ("img_size", 1_000_000), ("ffn_dim", 0), ("encoder_layers", -1)]:
        path = _tampered_checkpoint(tiny5, tmp_path / f"absurd_{field}.pt", **{field: value})
        with pytest.raises(CheckpointError, match=rf"absurd_{field}\.pt.*{field}"):
            model_from_checkpoint(path)


def test_a_sound_checkpoint_still_loads(tiny5, tmp_path):
    path = save_checkpoint(tmp_path / "ok.pt", tiny5, label_names=LABELS)
    model, meta = model_from_checkpoint(path)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(images), tiny5(images), rtol=0, atol=0)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(b.device.type == "cpu" for b in model.buffers())


# ------------------------------------------------------------------------- items 2-4: ONNX
def _graph(path, meta, *, size, classes, dynamic_size=False, dynamic_classes=False):
    """A small graph with lcie-fast's I/O names: (N, 3, S, S) -> mean over pixels -> (N, classes)."""
    onnx = pytest.importorskip("onnx", reason="needs the deploy extra: pip install 'lcie-fast[deploy]'")
    from onnx import TensorProto, helper, numpy_helper

    from lcie_fast.artifacts import INPUT_NAME, OUTPUT_NAME, write_onnx_metadata

    side = "side" if dynamic_size else size
    width = "classes" if dynamic_classes else classes
    weight = numpy_helper.from_array(np.linspace(-1, 1, 3 * classes, dtype=np.float32).reshape(3, classes), "w")
    nodes = [helper.make_node("GlobalAveragePool", [INPUT_NAME], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], [OUTPUT_NAME])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, side, side])],
                              [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", width])],
                              initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    write_onnx_metadata(model, meta)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def meta5(tiny5):
    return metadata_for(tiny5, LABELS)


def test_garbage_onnx_file_is_a_user_error_naming_it(tmp_path):
    pytest.importorskip("onnx", reason="needs the deploy extra: pip install 'lcie-fast[deploy]'")
    pytest.importorskip("onnxruntime", reason="needs the deploy extra: pip install 'lcie-fast[deploy]'")
    from lcie_fast.artifacts import read_artifact_metadata
    from lcie_fast.runtime.onnxruntime import OnnxRuntimeBackend

    path = tmp_path / "garbage.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for load in (read_artifact_metadata, OnnxRuntimeBackend):
        with pytest.raises(UserError, match=r"garbage\.onnx.*not a valid ONNX"):
            load(path)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match=r"empty\.onnx"):
        OnnxRuntimeBackend(empty)


def test_onnx_whose_metadata_declares_another_input_size_is_refused_at_load(meta5, tmp_path):
    pytest.importorskip("onnxruntime", reason="needs the deploy extra: pip install 'lcie-fast[deploy]'")
    from lcie_fast.runtime.onnxruntime import OnnxRuntimeBackend

    good = _graph(tmp_path / "good.onnx", meta5, size=64, classes=5)
    logits = OnnxRuntimeBackend(good).infer_numpy(np.random.default_rng(0).standard_normal((2, 3, 64, 64), np.float32))
    assert logits.shape == (2, 5)
    OnnxRuntimeBackend(_graph(tmp_path / "any_size.onnx", meta5, size=64, classes=5, dynamic_size=True))
    bad = _graph(tmp_path / "size96.onnx", meta5, size=96, classes=5)
    with pytest.raises(UserError, match=r"size96\.onnx.*96.*64|size96\.onnx.*64.*96"):
        OnnxRuntimeBackend(bad)


def test_onnx_whose_output_width_differs_from_its_labels_is_refused(meta5, tmp_path):
    pytest.importorskip("onnxruntime", reason="needs the deploy extra: pip install 'lcie-fast[deploy]'")
    from lcie_fast.runtime.onnxruntime import OnnxRuntimeBackend, ort_session

    static = _graph(tmp_path / "seven.onnx", meta5, size=64, classes=7)
    with pytest.raises(UserError, match=r"seven\.onnx.*7.*5 label"):
        OnnxRuntimeBackend(static)
    # a width ONNX Runtime cannot infer is only known once the graph runs: every result is checked
    backend = OnnxRuntimeBackend(_graph(tmp_path / "five.onnx", meta5, size=64, classes=5))
    assert backend.infer(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 5)
    backend.session = ort_session(_graph(tmp_path / "seven_dynamic.onnx", meta5, size=64, classes=7,
                                         dynamic_classes=True))
    with pytest.raises(UserError, match=r"five\.onnx.*7 columns.*5 label"):
        backend.infer(np.zeros((1, 3, 64, 64), np.float32))


# ------------------------------------------------------------------------- items 5-6: sidecars
GPU = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def _sidecar(meta, **changes):
    sidecar = {"format": "lcie_fast.engine", "format_version": 1, "metadata": meta.to_dict(),
               "tensorrt_version": "10.16.1", "gpu": dict(GPU), "platform": platform_tag(),
               "profile": {"compatibility": "none", "max_batch": 8},
               "io": {"input": {"name": "images", "max": [8, 3, 64, 64]}, "output": {"name": "logits"}}}
    sidecar.update(changes)
    return sidecar


MISSING = object()
MALFORMED = {
    "a list": ([1, 2, 3], "not a JSON object"),
    "gpu a string": ({"gpu": "H100"}, "gpu"),
    "gpu without capability": ({"gpu": {"name": "H100"}}, "gpu.compute_capability"),
    "missing metadata": ({"metadata": MISSING}, "metadata"),
    "metadata null": ({"metadata": None}, "metadata"),
    "metadata a list": ({"metadata": [1]}, "metadata"),
    "profile null": ({"profile": None}, "profile"),
    "profile missing": ({"profile": MISSING}, "profile"),
    "gpu null": ({"gpu": None}, "gpu"),
    "compatibility a number": ({"profile": {"compatibility": 3}}, "profile.compatibility"),
    "tensorrt_version a list": ({"tensorrt_version": [10, 16]}, "tensorrt_version"),
    "platform a number": ({"platform": 7}, "platform"),
    "io a string": ({"io": "images"}, "io"),
    "input name missing": ({"io": {"input": {"max": [8, 3, 64, 64]}, "output": {"name": "logits"}}}, "io.input.name"),
    "max batch not a number": ({"io": {"input": {"name": "images", "max": ["x"]}, "output": {"name": "logits"}}},
                               "io.input.max"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_sidecars_are_engine_errors_naming_the_field(meta5, tmp_path, case):
    changes, field = MALFORMED[case]
    sidecar = changes if isinstance(changes, list) else _sidecar(meta5, **changes)
    if isinstance(sidecar, dict):
        sidecar = {k: v for k, v in sidecar.items() if v is not MISSING}
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not really an engine")
    (tmp_path / "model.engine.json").write_text(json.dumps(sidecar))
    calls = [lambda: check_bundle(engine, "10.16.1", GPU)]
    if field in ("metadata", "not a JSON object"):  # the only field read_engine_metadata reads
        calls.append(lambda: read_engine_metadata(engine))
    for call in calls:
        with pytest.raises(EngineError) as info:
            call()
        message = str(info.value)
        print(message)
        assert "model.engine.json" in message and field in message, message
    if field.split(".")[0] in READ_BY_RULES:  # the rule function refuses it too, without an AttributeError
        with pytest.raises(EngineError, match=field.replace(".", r"\.")):
            compatibility_problems(sidecar, "10.16.1", GPU)


READ_BY_RULES = {"gpu", "profile", "tensorrt_version", "platform"}


def test_a_well_formed_sidecar_still_passes(meta5, tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not really an engine")
    (tmp_path / "model.engine.json").write_text(json.dumps(_sidecar(meta5)))
    assert check_bundle(engine, "10.16.1", GPU)["gpu"] == GPU
    assert read_engine_metadata(engine).label_names == tuple(LABELS)


def test_a_version_compatible_sidecar_does_not_turn_on_host_code_by_itself(meta5, tmp_path):
    from lcie_fast.artifacts import host_code_decision

    version = _sidecar(meta5, profile={"compatibility": "version"})
    plain = _sidecar(meta5)
    allowed, reason = host_code_decision(version, allow_host_code=False)
    assert not allowed and "allow_host_code=True" in reason
    assert host_code_decision(version, allow_host_code=True) == (True, "")
    assert host_code_decision(plain, allow_host_code=False) == (False, "")
    assert host_code_decision(plain, allow_host_code=True) == (False, "")  # never widened beyond need
    # check_bundle refuses the version-compatible bundle unless the caller opted in
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not really an engine")
    (tmp_path / "model.engine.json").write_text(json.dumps(version))
    with pytest.raises(EngineError, match=r"model\.engine.*allow_host_code"):
        check_bundle(engine, "10.17.0", GPU, allow_host_code=False)
    assert check_bundle(engine, "10.17.0", GPU, allow_host_code=True)["profile"]["compatibility"] == "version"


class _FakeTensorRT:
    """Just enough of ``tensorrt`` for TensorRTBackend's constructor, recording what it is told."""

    __version__ = "10.17.0"
    runtimes: list = []

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class Runtime:
        def __init__(self, logger):
            _FakeTensorRT.runtimes.append(self)

        def deserialize_cuda_engine(self, data):
            return type("Engine", (), {"create_execution_context": lambda engine: object()})()


def test_tensorrt_backend_runs_host_code_only_when_its_caller_allows_it(meta5, tmp_path, monkeypatch):
    from lcie_fast.runtime import tensorrt

    monkeypatch.setattr(tensorrt, "trt_module", lambda: _FakeTensorRT)
    monkeypatch.setattr(tensorrt, "current_gpu", lambda device=0: dict(GPU))
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not really an engine")
    sidecar = tmp_path / "model.engine.json"
    sidecar.write_text(json.dumps(_sidecar(meta5, tensorrt_version="10.16.1", profile={"compatibility": "version"})))
    _FakeTensorRT.runtimes.clear()
    with pytest.raises(EngineError, match="allow_host_code=True"):
        tensorrt.TensorRTBackend(engine)  # the default: no host code
    assert _FakeTensorRT.runtimes == []  # refused before a runtime existed
    tensorrt.TensorRTBackend(engine, allow_host_code=True)
    assert _FakeTensorRT.runtimes[-1].engine_host_code_allowed is True
    sidecar.write_text(json.dumps(_sidecar(meta5, tensorrt_version="10.17.0")))
    tensorrt.TensorRTBackend(engine, allow_host_code=True)  # a plain engine needs none: none is allowed
    assert not hasattr(_FakeTensorRT.runtimes[-1], "engine_host_code_allowed")


# ------------------------------------------------------------------------- item 7: video
def _write_clip(path, frames=30, fps=10, size=64):
    av = pytest.importorskip("av", reason="needs PyAV to write the test clip: pip install 'lcie-fast[video]'")
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.gop_size = 5
        for _ in range(frames):
            frame = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def _write_audio(path):
    av = pytest.importorskip("av", reason="needs PyAV to write an audio-only file: pip install 'lcie-fast[video]'")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        stream.layout = "mono"
        samples = (np.sin(np.arange(8000) / 10) * 3000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.mark.parametrize("reader", ["av", "opencv"])
def test_audio_only_file_is_refused_naming_it(tmp_path, reader):
    from lcie_fast.errors import InvalidInputError
    from lcie_fast.video import iter_frames

    if reader == "opencv":
        pytest.importorskip("cv2", reason="needs OpenCV for the opencv reader")
    audio = _write_audio(tmp_path / "voice.wav")
    with pytest.raises(InvalidInputError, match=r"voice\.wav.*no video stream"):
        list(iter_frames(audio, reader=reader))


def test_pyav_skips_corrupt_packets_and_reports_them(tmp_path):
    from lcie_fast.video import iter_frames

    clip = _write_clip(tmp_path / "clip.mp4")
    assert len(list(iter_frames(clip, reader="av"))) == 30
    data = bytearray(clip.read_bytes())
    rng = np.random.default_rng(1)
    start, stop = len(data) * 2 // 5, len(data) * 3 // 5
    data[start:stop] = rng.integers(0, 256, stop - start, dtype=np.uint8).tobytes()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    reports = []
    frames = list(iter_frames(broken, reader="av", report=reports.append))
    print(len(frames), [round(t, 1) for _, t, _ in frames], reports)
    assert frames[-1][1] >= 2.5  # decoding went on past the damage to the end of the 3 s clip
    assert len(reports) == 1 and "broken.mp4" in reports[0] and "skipped" in reports[0]
    assert [i for i, _, _ in frames] == list(range(len(frames)))


def test_tag_video_reports_skipped_packets_and_keeps_its_records(tiny5, tmp_path):
    from lcie_fast.tagger import Tagger
    from lcie_fast.video import tag_video

    clip = _write_clip(tmp_path / "clip.mp4")
    data = bytearray(clip.read_bytes())
    data[len(data) // 2: len(data) // 2 + 2000] = bytes(2000)
    broken = tmp_path / "zeroed.mp4"
    broken.write_bytes(bytes(data))
    tagger = Tagger.load(save_checkpoint(tmp_path / "m.pt", tiny5, label_names=LABELS))
    reports = []
    records, _ = tag_video(tagger, broken, batch_size=8, report=reports.append)
    print(len(records), reports)
    assert records and reports and "zeroed.mp4" in reports[0]
