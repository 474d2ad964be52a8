"""The artefact contract: what a checkpoint, an ONNX graph and an engine bundle look like.

Producers (:mod:`lcie_fast.deploy`, :mod:`lcie_fast.models.checkpoint`) write artefacts and
consumers (:mod:`lcie_fast.runtime`, the tagger, bench) read them; both sides import this
module and never each other's internals. It holds:

- the kind of a file (:func:`artifact_kind`): ``checkpoint``, ``onnx`` or ``engine``;
- the ONNX I/O names (:data:`INPUT_NAME`, :data:`OUTPUT_NAME`) and the metadata embedded in a
  graph under :data:`METADATA_KEY` (:func:`write_onnx_metadata`, :func:`read_onnx_metadata`);
- sibling naming: ``model.onnx`` -> ``model.fp16.onnx`` / ``model.int8.onnx``
  (:func:`graph_paths`) and each quantised graph's calibration manifest;
- the engine bundle: ``model.engine`` + ``model.engine.json`` (:func:`engine_sidecar` writes
  its schema, :func:`read_sidecar` reads it) and the rules for loading one on this machine
  (:func:`compatibility_problems`, :func:`check_bundle`).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Literal

from ._optional import require
from .errors import UserError
from .metadata import MetadataError, ModelMetadata

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
METADATA_KEY = "lcie_fast"
PRECISIONS = ("fp32", "fp16", "int8")

BUNDLE_FORMAT = "lcie_fast.engine"
BUNDLE_VERSION = 1

ArtifactKind = Literal["checkpoint", "onnx", "engine"]


class EngineError(UserError, RuntimeError):
    """An engine that cannot be built, or a bundle that must not be loaded here, with the reason."""


def artifact_kind(path: str | Path) -> ArtifactKind:
    """``engine`` for ``.engine`` bundles, ``onnx`` for ``.onnx`` graphs, ``checkpoint`` otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix == ".engine":
        return "engine"
    if suffix == ".onnx":
        return "onnx"
    return "checkpoint"


# ----------------------------------------------------------------------------- ONNX graphs
def graph_paths(onnx_path: str | Path) -> dict[str, Path]:
    """``model.onnx`` -> its FP16 and INT8 siblings ``model.fp16.onnx``, ``model.int8.onnx``."""
    onnx_path = Path(onnx_path)
    stem = onnx_path.name[:-5] if onnx_path.name.endswith(".onnx") else onnx_path.name
    return {"fp32": onnx_path, "fp16": onnx_path.with_name(f"{stem}.fp16.onnx"),
            "int8": onnx_path.with_name(f"{stem}.int8.onnx")}


def calibration_manifest_path(graph_path: str | Path) -> Path:
    """``model.int8.onnx`` -> ``model.int8.calib.json``."""
    graph_path = Path(graph_path)
    return graph_path.with_name(graph_path.stem + ".calib.json")


def write_onnx_metadata(model_proto: Any, meta: ModelMetadata) -> None:
    """Store ``meta`` (and the I/O contract) as JSON in the graph's ``metadata_props``."""
    data = meta.to_dict()
    data["io"] = {"input": INPUT_NAME, "output": OUTPUT_NAME, "layout": "NCHW", "dtype": "float32",
                  "normalised": True}
    for prop in list(model_proto.metadata_props):
        if prop.key == METADATA_KEY:
            model_proto.metadata_props.remove(prop)
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(data)


def read_onnx_metadata(path_or_proto: Any) -> ModelMetadata:
    """The ModelMetadata embedded in an ONNX file (or ModelProto) by ``lcie-fast export``.

    Raises:
        MetadataError: the graph carries no lcie_fast metadata.
    """
    onnx = require("onnx", "reading ONNX metadata")
    proto = path_or_proto
    if not hasattr(proto, "metadata_props"):
        proto = onnx.load(str(path_or_proto), load_external_data=False)
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return ModelMetadata.from_dict(json.loads(prop.value))
    raise MetadataError(f"{path_or_proto if isinstance(path_or_proto, (str, Path)) else 'graph'} carries no "
                        f"'{METADATA_KEY}' metadata: it was not exported by lcie-fast")


def graph_has_qdq(path: str | Path) -> bool:
    """True when the graph holds QuantizeLinear/DequantizeLinear nodes (an INT8 graph)."""
    onnx = require("onnx", "inspecting ONNX graphs")
    proto = onnx.load(str(path), load_external_data=False)
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in proto.graph.node)


# --------------------------------------------------------------------------- engine bundles
def sidecar_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    return Path(str(engine_path) + ".json")


def platform_tag() -> str:
    """``linux-x86_64``, ``linux-aarch64`` (Jetson) ...: engines do not cross platforms."""
    return f"{platform.system().lower()}-{platform.machine()}"


def engine_sidecar(meta: ModelMetadata, *, trt_version: str, gpu: dict[str, str], profile: dict[str, Any],
                   onnx_path: str | Path, onnx_sha256: str, build_seconds: float, key: str) -> dict[str, Any]:
    """The sidecar of a freshly built bundle: everything a loader checks before deserializing."""
    size = meta.preprocess.input_size
    shape = {name: [profile[f"{name}_batch"], 3, size, size] for name in ("min", "opt", "max")}
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "metadata": meta.to_dict(),
        "tensorrt_version": trt_version,
        "gpu": gpu,
        "platform": platform_tag(),
        "profile": profile,
        "onnx": {"path": str(onnx_path), "sha256": onnx_sha256},
        "io": {"input": {"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW", **shape},
               "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", meta.num_classes]}},
        "build_seconds": round(build_seconds, 1),
        "key": key,
    }


def read_sidecar(engine_path: str | Path) -> dict[str, Any]:
    """The JSON sidecar beside an engine file, or a clear error."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise EngineError(f"{engine_path}: no sidecar {path.name}; bundles are built by lcie-fast build-engine")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EngineError(f"{path}: not valid JSON: {err}") from None


def read_engine_metadata(engine_path: str | Path) -> ModelMetadata:
    """The model metadata recorded in a bundle's sidecar."""
    sidecar = read_sidecar(engine_path)
    if sidecar.get("format") != BUNDLE_FORMAT or "metadata" not in sidecar:
        raise EngineError(f"{sidecar_path(engine_path)} is not an lcie_fast engine sidecar")
    return ModelMetadata.from_dict(sidecar["metadata"])


def compatibility_problems(sidecar: dict[str, Any], trt_version: str, gpu: dict[str, str]) -> list[str]:
    """Why a bundle must not be deserialized here (empty when it may).

    Rules: the sidecar must be an lcie_fast engine sidecar; without version compatibility the
    TensorRT version must match exactly, with it the major version must match and the runtime
    be at least as new; without hardware compatibility the compute capability must match,
    with it the GPU must be Ampere (8.0) or newer; the platform must match.
    """
    if sidecar.get("format") != BUNDLE_FORMAT:
        return ["the sidecar is not an lcie_fast engine sidecar"]
    problems = []
    built_trt = str(sidecar.get("tensorrt_version", ""))
    compat = sidecar.get("profile", {}).get("compatibility", "none")
    if compat == "version":
        if built_trt.split(".")[0] != trt_version.split(".")[0]:
            problems.append(f"built with TensorRT {built_trt}, this is TensorRT {trt_version} (another major version)")
        elif _version_tuple(trt_version) < _version_tuple(built_trt):
            problems.append(f"built with TensorRT {built_trt}, newer than this TensorRT {trt_version}")
    elif built_trt != trt_version:
        problems.append(f"built with TensorRT {built_trt}, this is TensorRT {trt_version}; rebuild it "
                        f"(or build with a version-compatible profile)")
    built_gpu = sidecar.get("gpu", {})
    if compat == "hardware":
        if _version_tuple(gpu["compute_capability"]) < (8, 0):
            problems.append(f"hardware-compatible engines need an Ampere or newer GPU; this {gpu['name']} is "
                            f"sm {gpu['compute_capability']}")
    elif built_gpu.get("compute_capability") != gpu["compute_capability"]:
        problems.append(f"built for {built_gpu.get('name')} (sm {built_gpu.get('compute_capability')}), this GPU is "
                        f"{gpu['name']} (sm {gpu['compute_capability']}); rebuild it here")
    if sidecar.get("platform") and sidecar["platform"] != platform_tag():
        problems.append(f"built on {sidecar['platform']}, this is {platform_tag()}")
    return problems


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def check_bundle(engine_path: str | Path, trt_version: str, gpu: dict[str, str]) -> dict[str, Any]:
    """Sidecar of a bundle that may run here; :class:`EngineError` with every reason otherwise."""
    sidecar = read_sidecar(engine_path)
    problems = compatibility_problems(sidecar, trt_version, gpu)
    if problems:
        raise EngineError(f"{engine_path} is refused: " + "; ".join(problems))
    return sidecar


# ------------------------------------------------------------------------------ any artefact
def read_artifact_metadata(path: str | Path) -> ModelMetadata:
    """The metadata of a graph or an engine bundle (checkpoints: ``models.checkpoint``)."""
    kind = artifact_kind(path)
    if kind == "onnx":
        return read_onnx_metadata(path)
    if kind == "engine":
        return read_engine_metadata(path)
    raise MetadataError(f"{path}: checkpoints are read with lcie_fast.models.checkpoint.model_from_checkpoint")
