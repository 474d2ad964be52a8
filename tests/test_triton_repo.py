"""``export-triton`` and ``check-triton``: Triton model repositories written and checked on a CPU machine.

Configs are parsed with Triton's own schema (tritonclient's ``model_config_pb2``), the with-probs
graph runs in ONNX Runtime, engine bundles are fake (dummy bytes + a real sidecar: TensorRT cannot
run here), and each broken repository fails the check with a message naming the problem. What
only a Triton server can check (that it loads the graphs and plans) is out of reach here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="needs onnx: pip install 'lcie-fast[deploy]'")
pytest.importorskip("onnxruntime", reason="needs onnxruntime: pip install 'lcie-fast[deploy]'")
pytest.importorskip("tritonclient", reason="needs tritonclient: pip install 'lcie-fast[triton-client]'")

from lcie_fast.artifacts import (  # noqa: E402
    PROBS_NAME,
    TRITON_METADATA_FILE,
    TRITON_METADATA_PARAMETER,
    engine_sidecar,
    read_onnx_metadata,
    read_triton_model_metadata,
    sidecar_path,
    write_onnx_metadata,
)
from lcie_fast.deploy import triton as triton_export  # noqa: E402
from lcie_fast.deploy.triton import export_triton  # noqa: E402
from lcie_fast.deploy.triton_check import check_triton  # noqa: E402
from lcie_fast.deploy.triton_proto import TritonConfigError, model_config_pb2, parse_model_config  # noqa: E402
from lcie_fast.errors import InvalidInputError  # noqa: E402
from lcie_fast.io import sha256_file, write_json  # noqa: E402

GOLDEN = Path(__file__).parent / "data" / "triton"
LABELS = ["bus", "car", "motorbike", "person", "truck"]


# ------------------------------------------------------------------------------ fixtures
def _retagged(source: Path, target: Path, *, qdq: bool = False, **changes) -> Path:
    """A copy of ``source`` whose embedded metadata has ``changes`` (precision, extra, label_names);
    ``qdq`` puts a QuantizeLinear/DequantizeLinear pair on the input, as INT8 graphs have."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(source))
    meta = dataclasses.replace(read_onnx_metadata(proto), **changes)
    write_onnx_metadata(proto, meta)
    if qdq:
        for node in proto.graph.node:
            node.input[:] = ["images_dq" if name == "images" else name for name in node.input]
        proto.graph.initializer.extend([numpy_helper.from_array(np.array(0.05, np.float32), "q_scale"),
                                        numpy_helper.from_array(np.array(0, np.int8), "q_zero")])
        nodes = [helper.make_node("QuantizeLinear", ["images", "q_scale", "q_zero"], ["images_q"]),
                 helper.make_node("DequantizeLinear", ["images_q", "q_scale", "q_zero"], ["images_dq"])]
        existing = list(proto.graph.node)
        del proto.graph.node[:]
        proto.graph.node.extend(nodes + existing)
    onnx.save(proto, str(target))
    return target


@pytest.fixture(scope="module")
def graphs(tiny5_onnx, tmp_path_factory) -> dict[str, Path]:
    """The tiny model's FP32 graph (exported once per session) and FP16 / INT8 stand-ins with the same weights."""
    folder = tmp_path_factory.mktemp("graphs")
    fp32 = Path(shutil.copyfile(tiny5_onnx, folder / "model.onnx"))
    return {
        "fp32": fp32,
        "fp16": _retagged(fp32, folder / "model.fp16.onnx", precision="fp16"),
        "int8": _retagged(fp32, folder / "model.int8.onnx", qdq=True, precision="int8", extra={"target": "tensorrt"}),
        "int8_cpu": _retagged(fp32, folder / "model.int8-cpu.onnx", qdq=True, precision="int8", extra={"target": "cpu"}),
    }


def _bundle(folder: Path, graph: Path, capability: str, *, min_batch: int = 1, max_batch: int = 32,
            trt_version: str = "10.14.1") -> Path:
    """A fake engine bundle: dummy engine bytes and the sidecar build-engine would write."""
    folder.mkdir(parents=True, exist_ok=True)
    engine = folder / "model.engine"
    engine.write_bytes(b"not a real TensorRT engine " + capability.encode())
    profile = {"name": "test", "precision": "fp16", "min_batch": min_batch, "opt_batch": min(8, max_batch),
               "max_batch": max_batch, "workspace_mib": 1024, "optimization_level": 3, "timing_cache": True,
               "compatibility": "none"}
    sidecar = engine_sidecar(read_onnx_metadata(graph), trt_version=trt_version,
                             gpu={"name": f"GPU sm{capability}", "compute_capability": capability}, profile=profile,
                             onnx_path=graph, onnx_sha256=sha256_file(graph), build_seconds=12.0, key="k" + capability)
    write_json(sidecar, sidecar_path(engine))
    return engine


@pytest.fixture(scope="module")
def engines(graphs, tmp_path_factory) -> list[Path]:
    """Two bundles of the FP16 graph, for compute capabilities 8.9 and 8.6."""
    folder = tmp_path_factory.mktemp("engines")
    return [_bundle(folder / "l4", graphs["fp16"], "8.9"), _bundle(folder / "a10", graphs["fp16"], "8.6")]


@pytest.fixture(scope="module")
def good_repo(graphs, engines, tmp_path_factory) -> Path:
    """ONNX FP32 + FP16 with probs, and the two engines, in one repository (two exports)."""
    repo = tmp_path_factory.mktemp("triton") / "repo"
    export_triton([graphs["fp32"], graphs["fp16"]], repo, with_probs=True, preferred=[4, 8])
    export_triton(engines, repo, preferred=[8])
    return repo


@pytest.fixture
def repo_copy(good_repo, tmp_path) -> Path:
    """A fresh copy of the good repository, for a test to break."""
    return Path(shutil.copytree(good_repo, tmp_path / "repo"))


def _config(repo: Path, model: str):
    path = repo / model / "config.pbtxt"
    return parse_model_config(path.read_text(), path)


def _write_config(repo: Path, model: str, config) -> None:
    from google.protobuf import text_format

    (repo / model / "config.pbtxt").write_text(text_format.MessageToString(config, as_utf8=True))


def _only_problem(repo: Path, *fragments: str) -> str:
    problems = check_triton(repo)["problems"]
    print("\n".join(problems))
    assert len(problems) == 1, problems
    for fragment in fragments:
        assert fragment in problems[0], (fragment, problems[0])
    return problems[0]


def _cli(argv: list[str]) -> int:
    from lcie_fast.cli.triton import add_check_triton_parser, add_export_triton_parser

    parser = argparse.ArgumentParser(prog="lcie-fast")
    sub = parser.add_subparsers(dest="command")
    add_export_triton_parser(sub)
    add_check_triton_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


# ------------------------------------------------------------------------- what export writes
def test_good_repository_has_one_folder_per_artefact_and_passes_the_check(good_repo):
    assert sorted(p.name for p in good_repo.iterdir()) == ["lcie_onnx_fp16", "lcie_onnx_fp32", "lcie_trt_fp16"]
    assert not list(good_repo.parent.glob(".repo.export-*")), "the staging folder was left behind"
    result = check_triton(good_repo)
    assert result["problems"] == []
    assert set(result["models"]) == {"lcie_onnx_fp16", "lcie_onnx_fp32", "lcie_trt_fp16"}
    assert result["models"]["lcie_onnx_fp32"]["input"][0]["dims"] == ["3", "64", "64"]  # int64 as JSON strings


@pytest.mark.parametrize("model", ["lcie_onnx_fp32", "lcie_trt_fp16"])
def test_configs_match_golden_files(good_repo, model):
    """Every field but the lcie_metadata parameter (it embeds version and sha256) equals the golden config."""
    config = _config(good_repo, model)
    assert TRITON_METADATA_PARAMETER in config.parameters
    del config.parameters[TRITON_METADATA_PARAMETER]
    golden = parse_model_config((GOLDEN / f"{model}.pbtxt").read_text(), GOLDEN / f"{model}.pbtxt")
    assert config == golden, f"{config}\n!=\n{golden}"


def test_metadata_file_equals_config_parameter_and_labels_file(good_repo, graphs):
    for folder in good_repo.iterdir():
        config = _config(good_repo, folder.name)
        assert config.name == folder.name
        from_file = json.loads((folder / TRITON_METADATA_FILE).read_text())
        from_config = json.loads(config.parameters[TRITON_METADATA_PARAMETER].string_value)
        assert from_file == from_config
        meta, data = read_triton_model_metadata(from_config)
        assert list(meta.label_names) == LABELS == (folder / "labels.txt").read_text().splitlines()
        assert data["precision"] == ("fp32" if folder.name.endswith("fp32") else "fp16")
        if folder.name.startswith("lcie_onnx"):
            assert data["sha256"] == sha256_file(folder / "1" / "model.onnx") and data["kind"] == "onnx"
        else:
            assert data["sha256"] == sha256_file(graphs["fp16"]) and data["kind"] == "tensorrt"


def test_with_probs_graph_runs_and_probs_are_the_sigmoid_of_logits(good_repo, graphs):
    import onnxruntime as ort

    config = _config(good_repo, "lcie_onnx_fp32")
    assert [o.name for o in config.output] == ["logits", PROBS_NAME]
    assert [o.label_filename for o in config.output] == ["", "labels.txt"]  # clients read classes from probs
    served = ort.InferenceSession(str(good_repo / "lcie_onnx_fp32" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    source = ort.InferenceSession(str(graphs["fp32"]), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(3).standard_normal((3, 3, 64, 64)).astype(np.float32)
    logits, probs = served.run(["logits", PROBS_NAME], {"images": images})
    assert probs.shape == (3, 5)
    np.testing.assert_allclose(probs, 1.0 / (1.0 + np.exp(-logits)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(logits, source.run(["logits"], {"images": images})[0], rtol=0, atol=1e-6)


def test_engine_bundles_map_by_compute_capability_without_a_default(good_repo, engines):
    config = _config(good_repo, "lcie_trt_fp16")
    assert config.platform == "tensorrt_plan" and not config.backend
    assert dict(config.cc_model_filenames) == {"8.6": "model_sm86.plan", "8.9": "model_sm89.plan"}
    assert config.default_model_filename == ""
    assert "default_model_filename" not in (good_repo / "lcie_trt_fp16" / "config.pbtxt").read_text()
    assert config.max_batch_size == 32  # the profiles' max batch
    version = good_repo / "lcie_trt_fp16" / "1"
    assert (version / "model_sm89.plan").read_bytes() == engines[0].read_bytes()
    assert json.loads((version / "model_sm86.plan.json").read_text()) == json.loads(sidecar_path(engines[1]).read_text())


def test_ort_tensorrt_accelerator_and_cpu_instances(graphs, tmp_path):
    with pytest.raises(InvalidInputError, match="INT8 enabled; use --ort-trt int8"):
        export_triton([graphs["int8"]], tmp_path / "gpu", ort_trt="fp16")
    export_triton([graphs["fp16"]], tmp_path / "gpu", ort_trt="fp16", max_batch=16, preferred=[8])
    export_triton([graphs["int8"]], tmp_path / "gpu", ort_trt="int8", max_batch=16)
    for model, mode, opt in (("lcie_onnx_fp16", "FP16", 8), ("lcie_onnx_int8", "INT8", 16)):
        accelerators = _config(tmp_path / "gpu", model).optimization.execution_accelerators.gpu_execution_accelerator
        assert [a.name for a in accelerators] == ["tensorrt"]
        assert dict(accelerators[0].parameters) == {
            "precision_mode": mode, "trt_profile_min_shapes": "images:1x3x64x64",
            "trt_profile_opt_shapes": f"images:{opt}x3x64x64", "trt_profile_max_shapes": "images:16x3x64x64"}
    report = export_triton([graphs["fp32"], graphs["int8_cpu"]], tmp_path / "cpu", kind="cpu", instances=2)
    assert [m["name"] for m in report["models"]] == ["lcie_onnx_fp32", "lcie_onnx_int8_cpu"]
    pb = model_config_pb2()
    group = _config(tmp_path / "cpu", "lcie_onnx_int8_cpu").instance_group[0]
    assert (group.kind, group.count) == (pb.ModelInstanceGroup.KIND_CPU, 2)
    assert any("VNNI" in note for note in report["notes"])
    assert check_triton(tmp_path / "cpu")["problems"] == []


# ------------------------------------------------------------------------- what export refuses
@pytest.mark.parametrize("case, message", [
    ("same capability twice", "both built for compute capability 8.9"),
    ("max batch above profile", "--max-batch 64 is above the profile max batch 32"),
    ("profile from batch 4", "profile starts at batch 4"),
    ("probs from an engine", "has no output 'probs'"),
    ("engine on cpu", "TensorRT plans run on GPUs only"),
    ("int8 ort-trt without qdq", "needs an explicit Q/DQ graph"),
    ("int8 ort-trt on the cpu graph", "quantised for ONNX Runtime's CPU kernels"),
    ("ort-trt on cpu", "cannot be combined with --kind cpu"),
    ("preferred above max batch", "every preferred batch size must be at most --max-batch 8"),
    ("label with a newline", "contains a line break"),
    ("two graphs, one name", "would all be model 'lcie_onnx_fp32'"),
])
def test_export_refuses_with_the_reason(case, message, graphs, engines, tmp_path):
    if case == "same capability twice":
        args, kwargs = [engines[0], _bundle(tmp_path / "other", graphs["fp16"], "8.9")], {}
    elif case == "max batch above profile":
        args, kwargs = engines, {"max_batch": 64}
    elif case == "profile from batch 4":
        args, kwargs = [_bundle(tmp_path / "b4", graphs["fp16"], "9.0", min_batch=4)], {}
    elif case == "probs from an engine":
        args, kwargs = engines, {"with_probs": True}
    elif case == "engine on cpu":
        args, kwargs = engines, {"kind": "cpu"}
    elif case == "int8 ort-trt without qdq":
        args, kwargs = [graphs["fp32"]], {"ort_trt": "int8"}
    elif case == "int8 ort-trt on the cpu graph":
        args, kwargs = [graphs["int8_cpu"]], {"ort_trt": "int8"}
    elif case == "ort-trt on cpu":
        args, kwargs = [graphs["fp32"]], {"ort_trt": "fp16", "kind": "cpu"}
    elif case == "preferred above max batch":
        args, kwargs = [graphs["fp32"]], {"max_batch": 8, "preferred": [16]}
    elif case == "label with a newline":
        args, kwargs = [_retagged(graphs["fp32"], tmp_path / "m.onnx", label_names=("a\nb", "c", "d", "e", "f"))], {}
    else:
        copy = tmp_path / "copy" / "model.onnx"
        copy.parent.mkdir()
        args, kwargs = [graphs["fp32"], shutil.copyfile(graphs["fp32"], copy)], {}
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        export_triton(args, tmp_path / "repo", **kwargs)
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_existing_folder_is_replaced_only_with_overwrite(graphs, tmp_path):
    repo = tmp_path / "repo"
    export_triton([graphs["fp32"]], repo, max_batch=8)
    with pytest.raises(InvalidInputError, match="lcie_onnx_fp32 exist; pass --overwrite"):
        export_triton([graphs["fp32"]], repo, max_batch=16)
    assert _config(repo, "lcie_onnx_fp32").max_batch_size == 8
    export_triton([graphs["fp32"]], repo, max_batch=16, overwrite=True, name="tagger")
    export_triton([graphs["fp32"]], repo, max_batch=16, overwrite=True)
    assert _config(repo, "lcie_onnx_fp32").max_batch_size == 16
    assert sorted(p.name for p in repo.iterdir()) == ["lcie_onnx_fp32", "tagger_onnx_fp32"]
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # no staging or replaced folder left


def test_a_failed_check_leaves_the_repository_untouched(graphs, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    export_triton([graphs["fp32"]], repo)
    before = sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))
    monkeypatch.setattr(triton_export, "check_triton",
                        lambda staging: {"repository": str(staging), "models": {}, "problems": ["model x: broken"]})
    with pytest.raises(TritonConfigError, match="model x: broken"):
        export_triton([graphs["fp32"], graphs["fp16"]], repo, overwrite=True)
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]


# ------------------------------------------------------------------------- what check finds
def test_check_names_an_unknown_field_with_its_line(repo_copy):
    path = repo_copy / "lcie_onnx_fp32" / "config.pbtxt"
    lines = path.read_text().splitlines()
    at = lines.index("max_batch_size: 64") + 1
    path.write_text("\n".join(lines[:at] + ["max_batch: 64"] + lines[at:]) + "\n")
    _only_problem(repo_copy, "model lcie_onnx_fp32: lcie_onnx_fp32/config.pbtxt", f"line {at + 1}", '"max_batch"')


def test_check_names_dims_that_include_the_batch(repo_copy):
    config = _config(repo_copy, "lcie_onnx_fp16")
    config.input[0].dims[:] = [-1, 3, 64, 64]
    _write_config(repo_copy, "lcie_onnx_fp16", config)
    _only_problem(repo_copy, "model lcie_onnx_fp16: lcie_onnx_fp16/config.pbtxt", "input 'images'",
                  "dims [-1, 3, 64, 64] include the batch dimension", "dims must be [3, 64, 64]")


def test_check_names_a_label_count_mismatch(repo_copy):
    with open(repo_copy / "lcie_trt_fp16" / "labels.txt", "a") as handle:
        handle.write("bicycle\n")
    _only_problem(repo_copy, "lcie_trt_fp16/labels.txt", "has 6 lines but output 'logits' has 5 columns")


def test_check_names_a_max_batch_above_the_engine_profile(repo_copy):
    config = _config(repo_copy, "lcie_trt_fp16")
    config.max_batch_size = 64
    _write_config(repo_copy, "lcie_trt_fp16", config)
    problems = check_triton(repo_copy)["problems"]
    assert len(problems) == 2, problems  # one per engine
    assert all("max_batch_size 64 is above the engine profile's max batch 32" in p for p in problems)
    assert {p.split("(")[-1] for p in problems} == {"model_sm86.plan.json); lower max_batch_size or rebuild the engine",
                                                    "model_sm89.plan.json); lower max_batch_size or rebuild the engine"}


def test_check_names_a_missing_model_file(repo_copy):
    (repo_copy / "lcie_trt_fp16" / "1" / "model_sm89.plan").unlink()
    _only_problem(repo_copy, "lcie_trt_fp16/1/model_sm89.plan", "missing model file", "compute capability 8.9")
    (repo_copy / "lcie_onnx_fp32" / "1" / "model.onnx").unlink()
    assert any("lcie_onnx_fp32/1/model.onnx: missing model file" in p for p in check_triton(repo_copy)["problems"])


def test_check_names_a_name_that_differs_from_its_folder(repo_copy):
    (repo_copy / "lcie_onnx_fp32").rename(repo_copy / "tagger")
    _only_problem(repo_copy, "model tagger: tagger/config.pbtxt", "name 'lcie_onnx_fp32' differs from its folder 'tagger'")


def test_check_refuses_a_default_filename_beside_cc_filenames(repo_copy):
    config = _config(repo_copy, "lcie_trt_fp16")
    config.default_model_filename = "model_sm89.plan"
    _write_config(repo_copy, "lcie_trt_fp16", config)
    _only_problem(repo_copy, "default_model_filename 'model_sm89.plan' beside cc_model_filenames",
                  "built for another GPU")


def test_check_finds_metadata_that_differs_from_the_config(repo_copy):
    path = repo_copy / "lcie_onnx_fp16" / TRITON_METADATA_FILE
    data = json.loads(path.read_text())
    data["thresholds"] = {"car": 0.3}
    path.write_text(json.dumps(data))
    _only_problem(repo_copy, "parameter 'lcie_metadata' differs from lcie_metadata.json (fields thresholds)")


def _edit_config(repo: Path, model: str, edit) -> None:
    config = _config(repo, model)
    edit(config)
    _write_config(repo, model, config)


@pytest.mark.parametrize("case, fragments", [
    ("preferred above max batch", ("lcie_onnx_fp32/config.pbtxt", "preferred_batch_size 128 is outside 1..max_batch_size (64)")),
    ("no version folder", ("lcie_onnx_fp16/1", "no numeric version folder")),
    ("plan mapped to another GPU", ("lcie_trt_fp16/1/model_sm86.plan.json",
                                    "built for compute capability 8.9, but cc_model_filenames maps it to 8.6")),
    ("labels of another model", ("lcie_onnx_fp16/labels.txt", "differs from the labels of lcie_metadata.json (first at line 2)")),
])
def test_check_finds_other_problems(case, fragments, repo_copy):
    if case == "preferred above max batch":
        _edit_config(repo_copy, "lcie_onnx_fp32", lambda c: c.dynamic_batching.preferred_batch_size.append(128))
    elif case == "no version folder":
        (repo_copy / "lcie_onnx_fp16" / "1").rename(repo_copy / "lcie_onnx_fp16" / "v1")
    elif case == "plan mapped to another GPU":
        path = repo_copy / "lcie_trt_fp16" / "1" / "model_sm86.plan.json"
        sidecar = json.loads(path.read_text())
        sidecar["gpu"]["compute_capability"] = "8.9"
        path.write_text(json.dumps(sidecar))
    else:
        (repo_copy / "lcie_onnx_fp16" / "labels.txt").write_text("bus\nbicycle\nmotorbike\nperson\ntruck\n")
    _only_problem(repo_copy, *fragments)


def test_check_compares_data_types_with_every_plan(repo_copy):
    pb = model_config_pb2()
    _edit_config(repo_copy, "lcie_trt_fp16", lambda c: setattr(c.output[0], "data_type", pb.TYPE_FP16))
    assert sorted(check_triton(repo_copy)["problems"]) == [
        f"model lcie_trt_fp16: lcie_trt_fp16/config.pbtxt: output 'logits' is TYPE_FP16 but model_sm{cc}.plan has TYPE_FP32"
        for cc in (86, 89)]


def test_check_names_a_version_folder_triton_ignores_beside_a_served_one(repo_copy):
    """Triton ignores version folders named 0, 007 ...: one beside version 1 is named, the model still checks."""
    shutil.copytree(repo_copy / "lcie_onnx_fp16" / "1", repo_copy / "lcie_onnx_fp16" / "0")
    _only_problem(repo_copy, "model lcie_onnx_fp16: lcie_onnx_fp16/0: version folder '0' starts with 0",
                  "Triton ignores")
    (repo_copy / "lcie_onnx_fp16" / "1").rename(repo_copy / "lcie_onnx_fp16" / "01")
    problems = check_triton(repo_copy)["problems"]
    assert len(problems) == 3 and any("no numeric version folder Triton serves" in p for p in problems), problems


def _label_filename(repo: Path, name: str) -> None:
    _edit_config(repo, "lcie_onnx_fp32", lambda c: setattr(c.output[1], "label_filename", name))


def test_check_names_an_absolute_label_filename_and_where_triton_reads_it(repo_copy, tmp_path):
    outside = tmp_path / "elsewhere" / "labels.txt"
    outside.parent.mkdir()
    shutil.copyfile(repo_copy / "lcie_onnx_fp32" / "labels.txt", outside)  # a good file: still not what Triton reads
    _label_filename(repo_copy, str(outside))
    _only_problem(repo_copy, "lcie_onnx_fp32/config.pbtxt: label_filename of output 'probs'",
                  f"'{outside}' is an absolute path", f"would read lcie_onnx_fp32{outside}")


def test_check_names_a_label_filename_that_leaves_the_model_folder(repo_copy):
    shutil.copyfile(repo_copy / "lcie_onnx_fp32" / "labels.txt", repo_copy / "shared_labels.txt")
    _label_filename(repo_copy, "../shared_labels.txt")
    _only_problem(repo_copy, "lcie_onnx_fp32/config.pbtxt", "'../shared_labels.txt' leads out of the model folder "
                                                            "(to shared_labels.txt)")
    _label_filename(repo_copy, "../../nowhere/labels.txt")  # outside the repository, and missing: named, no crash
    problems = check_triton(repo_copy)["problems"]
    print("\n".join(problems))
    missing = (repo_copy.parent / "nowhere" / "labels.txt").as_posix()
    assert len(problems) == 2 and problems[1] == (f"model lcie_onnx_fp32: {missing}: missing (label_filename of "
                                                  f"output 'probs')"), problems


def test_check_resolves_model_filenames_as_triton_does(repo_copy):
    """An absolute default_model_filename is read from inside the version folder (Triton's JoinPath), not a crash."""
    _edit_config(repo_copy, "lcie_onnx_fp16", lambda c: setattr(c, "default_model_filename", "/opt/model.onnx"))
    _only_problem(repo_copy, "lcie_onnx_fp16/1/opt/model.onnx: missing model file")


@pytest.mark.parametrize("ends", [b"\r\n", b"\r"], ids=["crlf", "cr"])
def test_check_names_carriage_returns_in_a_label_file(ends, repo_copy):
    path = repo_copy / "lcie_trt_fp16" / "labels.txt"
    path.write_bytes(path.read_bytes().replace(b"\n", ends))
    problems = check_triton(repo_copy)["problems"]
    print("\n".join(problems))
    assert problems[0].startswith("model lcie_trt_fp16: lcie_trt_fp16/labels.txt: has a carriage return ('\\r') in "
                                  "line 1"), problems
    # CRLF keeps the line count (getline splits at '\n'); lone CRs make the whole file one line
    assert len(problems) == (1 if ends == b"\r\n" else 2), problems


def test_graph_with_external_data_is_copied_whole(graphs, tmp_path):
    import onnx
    import onnxruntime as ort

    source = tmp_path / "src" / "model.onnx"
    source.parent.mkdir()
    onnx.save(onnx.load(str(graphs["fp32"])), str(source), save_as_external_data=True, location="weights.bin")
    assert (source.parent / "weights.bin").stat().st_size > source.stat().st_size
    export_triton([source], tmp_path / "repo", with_probs=True)
    version = tmp_path / "repo" / "lcie_onnx_fp32" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "weights.bin"]
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(5).standard_normal((2, 3, 64, 64)).astype(np.float32)
    logits, probs = session.run(["logits", PROBS_NAME], {"images": images})
    np.testing.assert_allclose(probs, 1.0 / (1.0 + np.exp(-logits)), rtol=1e-6, atol=1e-6)


# -------------------------------------------------------------------------------- command line
def test_cli_exit_codes_and_output(good_repo, repo_copy, graphs, tmp_path, capsys):
    assert _cli(["check-triton", str(good_repo)]) == 0
    out = capsys.readouterr().out
    assert "no problems in 3 models" in out and "tensorrt_plan sm86,sm89" in out
    (repo_copy / "lcie_onnx_fp32" / "labels.txt").write_text("bus\n")
    assert _cli(["check-triton", str(repo_copy), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["problems"] == ["model lcie_onnx_fp32: lcie_onnx_fp32/labels.txt: has 1 lines but output 'probs' "
                                  "has 5 columns (one label per line)"]
    assert _cli(["export-triton", str(graphs["fp32"]), "-o", str(tmp_path / "new"), "--name", "demo",
                 "--max-batch", "8", "--preferred", "2", "4", "--thresholds", str(_thresholds(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "demo_onnx_fp32/" in out and "1/model.onnx" in out and "no problems in 1 model" in out
    data = json.loads((tmp_path / "new" / "demo_onnx_fp32" / TRITON_METADATA_FILE).read_text())
    assert data["thresholds"] == {"car": 0.25, "truck": 0.7}
    assert list(_config(tmp_path / "new", "demo_onnx_fp32").dynamic_batching.preferred_batch_size) == [2, 4]


def _thresholds(tmp_path: Path) -> Path:
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"car": 0.25, "truck": 0.7}))
    return path
