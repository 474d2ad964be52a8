"""The artefact contract: what a checkpoint, an ONNX graph, an engine bundle and an AOTInductor
package look like.

Producers (:mod:`lcie_fast.deploy`, :mod:`lcie_fast.models.checkpoint`) write artefacts and
consumers (:mod:`lcie_fast.runtime`, the tagger, bench) read them; both sides import this
module and never each other's internals. It holds:

- the kind of a file (:func:`artifact_kind`): ``checkpoint``, ``onnx``, ``engine`` or ``aoti``;
- the ONNX I/O names (:data:`INPUT_NAME`, :data:`OUTPUT_NAME`) and the metadata embedded in a
  graph under :data:`METADATA_KEY` (:func:`write_onnx_metadata`, :func:`read_onnx_metadata`);
- sibling naming: ``model.onnx`` -> ``model.fp16.onnx`` / ``model.int8.onnx`` (TensorRT target)
  / ``model.int8-cpu.onnx`` (ONNX Runtime CPU target) (:func:`graph_paths`,
  :func:`cpu_int8_sibling`), each INT8 graph's target (:func:`graph_target`) and each quantised
  graph's calibration manifest;
- the engine bundle: ``model.engine`` + ``model.engine.json`` (:func:`engine_sidecar` writes
  its schema, :func:`read_sidecar` reads it) and the rules for loading one on this machine
  (:func:`compatibility_problems`, :func:`check_bundle`);
- the AOTInductor package ``model.pt2``: its lcie-fast metadata, read without loading the
  native library (:func:`read_aoti_info`, :func:`read_aoti_metadata`).
"""

from __future__ import annotations

import json
import platform
import zipfile
from pathlib import Path
from typing import Any, Literal

from ._optional import require
from .errors import UserError
from .metadata import MetadataError, ModelMetadata

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
PROBS_NAME = "probs"  # the sigmoid output of DeepStream graphs and of Triton models served --with-probs
METADATA_KEY = "lcie_fast"
PRECISIONS = ("fp32", "fp16", "int8")
INT8_TARGETS = ("tensorrt", "cpu")  # who an INT8 graph is placed for: TensorRT's Q/DQ rules or ORT's CPU kernels

BUNDLE_FORMAT = "lcie_fast.engine"
BUNDLE_VERSION = 1

ArtifactKind = Literal["checkpoint", "onnx", "engine", "aoti"]


class EngineError(UserError, RuntimeError):
    """An engine that cannot be built, or a bundle that must not be loaded here, with the reason."""


class PackageError(UserError, RuntimeError):
    """A ``.pt2`` AOTInductor package that is damaged or not from lcie-fast."""


class GraphError(UserError, ValueError):
    """An ONNX file that is damaged, or whose inputs and outputs contradict its own metadata."""


def artifact_kind(path: str | Path) -> ArtifactKind:
    """``engine`` for ``.engine`` bundles, ``onnx`` for ``.onnx`` graphs, ``aoti`` for AOTInductor
    packages (``.pt2``), ``checkpoint`` otherwise."""
    suffix = Path(path).suffix.lower()
    return {".engine": "engine", ".onnx": "onnx", ".pt2": "aoti"}.get(suffix, "checkpoint")


# ----------------------------------------------------------------------------- ONNX graphs
def graph_paths(onnx_path: str | Path, int8_target: str = "tensorrt") -> dict[str, Path]:
    """``model.onnx`` -> its FP16 and INT8 siblings.

    Args:
        onnx_path: The FP32 graph.
        int8_target: ``tensorrt`` names the Q/DQ graph TensorRT compiles, ``model.int8.onnx``;
            ``cpu`` the graph quantised for ONNX Runtime's CPU kernels, ``model.int8-cpu.onnx``.

    Returns:
        ``{"fp32": model.onnx, "fp16": model.fp16.onnx, "int8": <the int8_target's graph>}``.
    """
    if int8_target not in INT8_TARGETS:
        raise ValueError(f"int8_target must be one of {INT8_TARGETS}, got {int8_target!r}")
    onnx_path = Path(onnx_path)
    stem = onnx_path.name[:-5] if onnx_path.name.endswith(".onnx") else onnx_path.name
    int8 = f"{stem}.int8.onnx" if int8_target == "tensorrt" else f"{stem}.int8-cpu.onnx"
    return {"fp32": onnx_path, "fp16": onnx_path.with_name(f"{stem}.fp16.onnx"), "int8": onnx_path.with_name(int8)}


def cpu_int8_sibling(graph_path: str | Path) -> Path | None:
    """``model.int8.onnx`` -> ``model.int8-cpu.onnx`` (which may not exist); None for a graph not
    named as the TensorRT-target INT8 sibling of :func:`graph_paths`."""
    graph_path = Path(graph_path)
    if not graph_path.name.endswith(".int8.onnx"):
        return None
    fp32 = graph_path.with_name(graph_path.name[: -len(".int8.onnx")] + ".onnx")
    return graph_paths(fp32, int8_target="cpu")["int8"]


def fp32_sibling(graph_path: str | Path) -> Path | None:
    """``model.fp16.onnx`` -> ``model.onnx`` (which may not exist); None for a graph not named as
    the FP16 sibling of :func:`graph_paths`."""
    graph_path = Path(graph_path)
    if not graph_path.name.endswith(".fp16.onnx"):
        return None
    return graph_path.with_name(graph_path.name[: -len(".fp16.onnx")] + ".onnx")


def graph_target(meta: ModelMetadata) -> str | None:
    """``cpu`` or ``tensorrt`` for an INT8 graph (``extra["target"]``; INT8 graphs written before
    targets existed are TensorRT's), None for FP32 / FP16 graphs, which serve every target."""
    if meta.precision != "int8":
        return None
    return str(meta.extra.get("target", "tensorrt"))


def calibration_manifest_path(graph_path: str | Path) -> Path:
    """``model.int8.onnx`` -> ``model.int8.calib.json``."""
    graph_path = Path(graph_path)
    return graph_path.with_name(graph_path.stem + ".calib.json")


def write_onnx_metadata(model_proto: Any, meta: ModelMetadata, io: dict[str, Any] | None = None) -> None:
    """Store ``meta`` (and the I/O contract: by default normalised ``images`` in, ``logits`` out) as
    JSON in the graph's ``metadata_props``."""
    data = meta.to_dict()
    data["io"] = io or {"input": INPUT_NAME, "output": OUTPUT_NAME, "layout": "NCHW", "dtype": "float32",
                        "normalised": True}
    for prop in list(model_proto.metadata_props):
        if prop.key == METADATA_KEY:
            model_proto.metadata_props.remove(prop)
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(data)


def load_onnx(path: str | Path) -> Any:
    """The ModelProto of ``path`` (external data not loaded), or a :class:`GraphError` naming it."""
    onnx = require("onnx", "reading ONNX graphs")
    try:
        return onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise GraphError(f"ONNX file not found: {path}") from None
    except Exception as err:  # noqa: BLE001 - protobuf raises several kinds on damaged bytes
        raise GraphError(f"{path} is not a valid ONNX file ({type(err).__name__}: {err})") from None


def read_onnx_metadata(path_or_proto: Any, source: Any = None) -> ModelMetadata:
    """The ModelMetadata embedded in an ONNX file (or ModelProto) by ``lcie-fast export``.

    Raises:
        GraphError: the file is not an ONNX file.
        MetadataError: the graph carries no (or malformed) lcie_fast metadata.
    """
    proto = path_or_proto
    where = source or (path_or_proto if isinstance(path_or_proto, (str, Path)) else "graph")
    if not hasattr(proto, "metadata_props"):
        proto = load_onnx(path_or_proto)
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                return ModelMetadata.from_dict(json.loads(prop.value))
            except (MetadataError, json.JSONDecodeError) as err:
                raise MetadataError(f"{where}: '{METADATA_KEY}' metadata: {err}") from None
    raise MetadataError(f"{where} carries no '{METADATA_KEY}' metadata: it was not exported by lcie-fast")


def graph_has_qdq(path: str | Path) -> bool:
    """True when the graph holds QuantizeLinear/DequantizeLinear nodes (an INT8 graph)."""
    proto = load_onnx(path)
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in proto.graph.node)


Dim = int | str | None  # a graph dimension: fixed size, symbolic name or unknown


def onnx_io_problems(meta: ModelMetadata, input_shape: list[Dim] | None, output_shape: list[Dim] | None) -> list[str]:
    """Where a graph's I/O shapes contradict its metadata (empty when they agree).

    The input must be (batch, 3, S, S) with S the metadata's ``preprocess.input_size`` and the
    output (batch, C) with C its number of labels; a symbolic or unknown dimension agrees
    with anything (it is checked on the first result instead).
    """
    problems = []
    size = meta.preprocess.input_size
    if input_shape is None:
        problems.append(f"the graph has no input '{INPUT_NAME}'")
    elif len(input_shape) != 4:
        problems.append(f"input '{INPUT_NAME}' has rank {len(input_shape)}, expected 4 (batch, 3, {size}, {size})")
    else:
        fixed = [(axis, dim, want) for axis, (dim, want) in enumerate(zip(input_shape[1:], (3, size, size)), 1)
                 if isinstance(dim, int) and dim > 0 and dim != want]
        if fixed:
            problems.append(f"input '{INPUT_NAME}' is {_shape_text(input_shape)} but the metadata's "
                            f"preprocess.input_size is {size} (expected (batch, 3, {size}, {size}))")
    if output_shape is None:
        problems.append(f"the graph has no output '{OUTPUT_NAME}'")
    elif len(output_shape) != 2:
        problems.append(f"output '{OUTPUT_NAME}' has rank {len(output_shape)}, expected 2 (batch, {meta.num_classes})")
    elif isinstance(output_shape[1], int) and output_shape[1] > 0 and output_shape[1] != meta.num_classes:
        problems.append(output_width_problem(output_shape[1], meta))
    return problems


def output_width_problem(width: int, meta: ModelMetadata) -> str:
    """The message for logits of ``width`` columns from a model with other labels."""
    return f"output '{OUTPUT_NAME}' has {width} columns but the metadata names {meta.num_classes} labels"


def _shape_text(shape: list[Dim]) -> str:
    return "(" + ", ".join(str(dim) if dim not in (None, "") else "?" for dim in shape) + ")"


def read_onnx_io(path_or_proto: Any) -> dict[str, Any]:
    """The I/O contract embedded beside the metadata (``input``, ``output``, ``normalised`` ...);
    ``consumer: "deepstream"`` marks a DeepStream graph (raw pixels in, ``probs`` out)."""
    proto = path_or_proto if hasattr(path_or_proto, "metadata_props") else load_onnx(path_or_proto)
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                io = json.loads(prop.value).get("io")
            except (json.JSONDecodeError, AttributeError):
                io = None
            return io if isinstance(io, dict) else {}
    return {}


def is_deepstream_io(io: dict[str, Any]) -> bool:
    """Whether an I/O contract (of a graph or an engine sidecar) is a DeepStream graph's."""
    return io.get("consumer") == "deepstream"


def check_onnx_graph(path: str | Path, meta: ModelMetadata | None = None) -> ModelMetadata:
    """The metadata of an lcie-fast graph whose I/O shapes agree with it; :class:`GraphError` otherwise.
    A DeepStream graph is checked against its own contract (input side, ``probs`` output)."""
    proto = load_onnx(path)
    meta = meta or read_onnx_metadata(proto)
    io = read_onnx_io(proto)
    if is_deepstream_io(io):
        return _check_deepstream_graph(path, proto, meta, io)

    def shape(values: Any, name: str) -> list[Dim] | None:
        for value in values:
            if value.name == name:
                dims = value.type.tensor_type.shape.dim
                return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
        return None

    problems = onnx_io_problems(meta, shape(proto.graph.input, INPUT_NAME), shape(proto.graph.output, OUTPUT_NAME))
    if problems:
        raise GraphError(f"{path}: " + "; ".join(problems))
    return meta


def _check_deepstream_graph(path: Any, proto: Any, meta: ModelMetadata, io: dict[str, Any]) -> ModelMetadata:
    shapes = {value.name: [d.dim_value or None for d in value.type.tensor_type.shape.dim]
              for value in (*proto.graph.input, *proto.graph.output)}
    size = io.get("input_size", meta.preprocess.input_size)
    want = {INPUT_NAME: [None, 3, size, size], PROBS_NAME: [None, meta.num_classes]}
    problems = [f"{name} is {shapes.get(name)}, expected {shape} (None: dynamic batch)"
                for name, shape in want.items() if shapes.get(name) != shape]
    if problems:
        raise GraphError(f"{path}: DeepStream graph: " + "; ".join(problems))
    return meta


# --------------------------------------------------------------------------- engine bundles
def sidecar_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    return Path(str(engine_path) + ".json")


def platform_tag() -> str:
    """``linux-x86_64``, ``linux-aarch64`` (Jetson) ...: engines do not cross platforms."""
    return f"{platform.system().lower()}-{platform.machine()}"


def engine_sidecar(meta: ModelMetadata, *, trt_version: str, gpu: dict[str, str], profile: dict[str, Any],
                   onnx_path: str | Path, onnx_sha256: str, build_seconds: float, key: str,
                   graph_io: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sidecar of a freshly built bundle: everything a loader checks before deserializing.
    ``graph_io``: the graph's I/O contract (:func:`read_onnx_io`) when it is not the default one
    (a DeepStream graph: raw pixels in, ``probs`` out, recorded as ``io.consumer``)."""
    deepstream = is_deepstream_io(graph_io or {})
    size = (graph_io or {}).get("input_size", meta.preprocess.input_size) if deepstream else meta.preprocess.input_size
    shape = {name: [profile[f"{name}_batch"], 3, size, size] for name in ("min", "opt", "max")}
    output = PROBS_NAME if deepstream else OUTPUT_NAME
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
               "output": {"name": output, "dtype": "float32", "shape": ["batch", meta.num_classes]},
               **({"consumer": "deepstream", "normalised": False} if deepstream else {})},
        "build_seconds": round(build_seconds, 1),
        "key": key,
    }


def read_sidecar(engine_path: str | Path) -> dict[str, Any]:
    """The JSON sidecar beside an engine file (a JSON object), or a clear error."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise EngineError(f"{engine_path}: no sidecar {path.name}; bundles are built by lcie-fast build-engine")
    try:
        sidecar = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EngineError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(sidecar, dict):
        raise EngineError(f"{path}: not a JSON object (got a {type(sidecar).__name__}); not an lcie_fast engine sidecar")
    return sidecar


_MISSING = object()
_JSON_NAMES = {dict: "an object", str: "a string", list: "an array", int: "an integer"}


def _field(sidecar: dict[str, Any], name: str, kind: type | tuple[type, ...], source: Any,
           default: Any = _MISSING) -> Any:
    """``sidecar[a][b]...`` for ``name`` = ``"a.b"``, checked to be of ``kind``; EngineError otherwise."""
    value: Any = sidecar
    for part in name.split("."):
        value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING:
            break
    if value is _MISSING and default is not _MISSING:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    expected = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
    if value is _MISSING:
        raise EngineError(f"{source}: field '{name}' is missing (expected {expected})")
    if not isinstance(value, kind):
        raise EngineError(f"{source}: field '{name}' must be {expected}, got {value!r:.80}")
    return value


def read_engine_metadata(engine_path: str | Path) -> ModelMetadata:
    """The model metadata recorded in a bundle's sidecar."""
    sidecar = read_sidecar(engine_path)
    source = sidecar_path(engine_path)
    if sidecar.get("format") != BUNDLE_FORMAT:
        raise EngineError(f"{source} is not an lcie_fast engine sidecar (format {sidecar.get('format')!r:.40})")
    return _sidecar_metadata(sidecar, source)


def _sidecar_metadata(sidecar: dict[str, Any], source: Any) -> ModelMetadata:
    try:
        return ModelMetadata.from_dict(_field(sidecar, "metadata", dict, source))
    except MetadataError as err:
        raise EngineError(f"{source}: field 'metadata': {err}") from None


def validate_sidecar(sidecar: dict[str, Any], source: Any = "the sidecar") -> ModelMetadata:
    """Check every field a loader reads beyond :func:`compatibility_problems`; the metadata.

    Raises:
        EngineError: naming ``source`` and the first field that is missing or malformed.
    """
    meta = _sidecar_metadata(sidecar, source)
    _field(sidecar, "io", dict, source)
    for name in ("io.input.name", "io.output.name"):
        if not _field(sidecar, name, str, source):
            raise EngineError(f"{source}: field '{name}' is empty")
    largest = _field(sidecar, "io.input.max", list, source)
    if len(largest) != 4 or not all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 1 for dim in largest):
        raise EngineError(f"{source}: field 'io.input.max' must be 4 positive integers (batch, 3, S, S), "
                          f"got {largest!r:.80}")
    return meta


COMPATIBILITY = ("none", "version", "hardware")


def host_code_decision(sidecar: dict[str, Any], allow_host_code: bool, source: Any = "the sidecar") -> tuple[bool, str]:
    """Whether TensorRT may run host code embedded in this bundle, and why not when it is needed.

    A version-compatible engine carries a lean runtime that TensorRT runs as host code; the
    sidecar only says so, and a sidecar is a file anyone can write: it can never widen what
    the engine may run. Only the caller can, with ``allow_host_code=True``.

    Returns:
        ``(allowed, reason)``: ``allowed`` only when the bundle needs host code and the caller
        opted in; ``reason`` is non-empty when the bundle needs host code the caller did not allow.
    """
    compat = _field(sidecar, "profile.compatibility", str, source, default="none")
    if compat != "version":
        return False, ""
    if allow_host_code:
        return True, ""
    return False, ("it is a version-compatible engine, which runs host code embedded in the file; load it only "
                   "from a source you trust, opting in with --allow-host-code (lcie-fast tag / bench), "
                   "open_backend(path, allow_host_code=True) or Tagger.load(path, allow_host_code=True)")


def compatibility_problems(sidecar: dict[str, Any], trt_version: str, gpu: dict[str, str],
                           source: Any = "the sidecar") -> list[str]:
    """Why a bundle must not be deserialized here (empty when it may).

    Rules: the sidecar must be an lcie_fast engine sidecar; without version compatibility the
    TensorRT version must match exactly, with it the major version must match and the runtime
    be at least as new; without hardware compatibility the compute capability must match,
    with it the GPU must be Ampere (8.0) or newer; the platform must match.

    Raises:
        EngineError: a field these rules read is missing or malformed (named, with ``source``).
    """
    if not isinstance(sidecar, dict) or sidecar.get("format") != BUNDLE_FORMAT:
        return ["the sidecar is not an lcie_fast engine sidecar"]
    problems = []
    built_trt = _field(sidecar, "tensorrt_version", str, source)
    _field(sidecar, "profile", dict, source)
    compat = _field(sidecar, "profile.compatibility", str, source, default="none")
    if compat not in COMPATIBILITY:
        raise EngineError(f"{source}: field 'profile.compatibility' must be one of {', '.join(COMPATIBILITY)}, "
                          f"got {compat!r:.40}")
    _field(sidecar, "gpu", dict, source)
    built_name = _field(sidecar, "gpu.name", str, source, default="another GPU")
    built_capability = _field(sidecar, "gpu.compute_capability", str, source)
    built_platform = _field(sidecar, "platform", str, source, default="")
    if compat == "version":
        if built_trt.split(".")[0] != trt_version.split(".")[0]:
            problems.append(f"built with TensorRT {built_trt}, this is TensorRT {trt_version} (another major version)")
        elif _version_tuple(trt_version) < _version_tuple(built_trt):
            problems.append(f"built with TensorRT {built_trt}, newer than this TensorRT {trt_version}")
    elif built_trt != trt_version:
        problems.append(f"built with TensorRT {built_trt}, this is TensorRT {trt_version}; rebuild it "
                        f"(or build with a version-compatible profile)")
    if compat == "hardware":
        if _version_tuple(gpu["compute_capability"]) < (8, 0):
            problems.append(f"hardware-compatible engines need an Ampere or newer GPU; this {gpu['name']} is "
                            f"sm {gpu['compute_capability']}")
    elif built_capability != gpu["compute_capability"]:
        problems.append(f"built for {built_name} (sm {built_capability}), this GPU is "
                        f"{gpu['name']} (sm {gpu['compute_capability']}); rebuild it here")
    if built_platform and built_platform != platform_tag():
        problems.append(f"built on {built_platform}, this is {platform_tag()}")
    return problems


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def check_bundle(engine_path: str | Path, trt_version: str, gpu: dict[str, str], *,
                 allow_host_code: bool = False) -> dict[str, Any]:
    """Sidecar of a bundle that may run here; :class:`EngineError` with every reason otherwise.

    Args:
        allow_host_code: The caller trusts the bundle to run embedded host code (needed by
            version-compatible engines, refused without it; see :func:`host_code_decision`).
    """
    sidecar = read_sidecar(engine_path)
    source = sidecar_path(engine_path)
    problems = compatibility_problems(sidecar, trt_version, gpu, source)
    _, reason = host_code_decision(sidecar, allow_host_code, source)
    if reason:
        problems.append(reason)
    if problems:
        raise EngineError(f"{engine_path} is refused: " + "; ".join(problems))
    validate_sidecar(sidecar, source)
    return sidecar


# ------------------------------------------------------------------------- AOTInductor packages
AOTI_FORMAT = "lcie_fast.aoti"
AOTI_FORMAT_VERSION = 1
AOTI_MODEL_NAME = "model"


def read_aoti_info(path: str | Path) -> dict[str, Any]:
    """The metadata JSON of a package's compiled model, without loading its library.

    Returns:
        torch's keys (``AOTI_DEVICE_KEY`` ...) and, for lcie-fast packages, ``METADATA_KEY``
        decoded: ``{"format", "format_version", "metadata", "io", "build"}``.

    Raises:
        PackageError: not a zip archive, no AOTInductor model in it, or unreadable metadata.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name for name in archive.namelist()
                     if f"/data/aotinductor/{AOTI_MODEL_NAME}/" in f"/{name}" and name.endswith("_metadata.json")]
            if not names:
                raise PackageError(f"{path}: no AOTInductor model '{AOTI_MODEL_NAME}' in the archive; .pt2 packages "
                                f"are written by lcie-fast export --aoti")
            info = json.loads(archive.read(sorted(names)[0]))
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise PackageError(f"{path} is not a valid .pt2 package (a zip archive): {err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PackageError(f"{path}: the compiled model's metadata is not valid JSON: {err}") from None
    if not isinstance(info, dict):
        raise PackageError(f"{path}: the compiled model's metadata is not a JSON object")
    if METADATA_KEY in info:
        try:
            info[METADATA_KEY] = json.loads(info[METADATA_KEY])
        except (TypeError, json.JSONDecodeError) as err:
            raise PackageError(f"{path}: '{METADATA_KEY}' metadata is not valid JSON: {err}") from None
    return info


def read_aoti_metadata(path: str | Path) -> ModelMetadata:
    """The ModelMetadata embedded in a ``.pt2`` package by ``lcie-fast export --aoti``.

    Raises:
        PackageError: a damaged package.
        MetadataError: a package without (or with malformed) lcie-fast metadata.
    """
    return _lcie_metadata(read_aoti_info(path), path)


def _lcie_metadata(info: dict[str, Any], path: Any) -> ModelMetadata:
    entry = info.get(METADATA_KEY)
    if not isinstance(entry, dict) or entry.get("format") != AOTI_FORMAT:
        raise MetadataError(f"{path} carries no '{METADATA_KEY}' metadata: it was not exported by lcie-fast")
    try:
        return ModelMetadata.from_dict(entry["metadata"])
    except (KeyError, TypeError, MetadataError) as err:
        raise MetadataError(f"{path}: '{METADATA_KEY}' metadata: {err}") from None


# ------------------------------------------------------------------------------ any artefact
def read_artifact_metadata(path: str | Path) -> ModelMetadata:
    """The metadata of a graph or an engine bundle (checkpoints: ``models.checkpoint``)."""
    kind = artifact_kind(path)
    if kind == "onnx":
        return read_onnx_metadata(path)
    if kind == "engine":
        return read_engine_metadata(path)
    if kind == "aoti":
        return read_aoti_metadata(path)
    raise MetadataError(f"{path}: checkpoints are read with lcie_fast.models.checkpoint.model_from_checkpoint")


# ------------------------------------------------------------------ serving and edge bundles
TRITON_FORMAT = "lcie_fast.triton"
TRITON_FORMAT_VERSION = 1
TRITON_METADATA_FILE = "lcie_metadata.json"  # in each model folder of a Triton repository
TRITON_METADATA_PARAMETER = "lcie_metadata"  # config.pbtxt parameter holding the same JSON (clients read it remotely)

DEEPSTREAM_FORMAT = "lcie_fast.deepstream"
DEEPSTREAM_FORMAT_VERSION = 1
DEEPSTREAM_BUNDLE_FILE = "lcie_deepstream.json"  # what the bundle holds, read by the pyds probe


def triton_model_metadata(meta: ModelMetadata, *, kind: str, precision: str, artifact_sha256: str,
                          thresholds: dict[str, float] | None = None, with_probs: bool = False) -> dict[str, Any]:
    """What a Triton client needs to rebuild a model's inputs and read its outputs exactly.

    Written as ``lcie_metadata.json`` beside ``config.pbtxt`` and, as the same JSON, into the
    config's ``parameters`` under :data:`TRITON_METADATA_PARAMETER` (the server returns it with
    the model's configuration, so a remote client needs no file).

    Args:
        meta: The model's metadata (labels, preprocessing).
        kind: ``onnx`` or ``tensorrt``: what the model folder serves.
        precision: ``fp32``, ``fp16`` or ``int8``.
        artifact_sha256: sha256 of the served ONNX graph (for an engine: of the graph it was built from).
        thresholds: Per-label thresholds fitted for the model, or None (clients use 0.5).
        with_probs: The model also has the sigmoid output :data:`PROBS_NAME`.
    """
    size = meta.preprocess.input_size
    outputs = [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, meta.num_classes], "activation": "none"}]
    if with_probs:
        outputs.append({"name": PROBS_NAME, "datatype": "FP32", "shape": [-1, meta.num_classes], "activation": "sigmoid"})
    return {
        "format": TRITON_FORMAT,
        "format_version": TRITON_FORMAT_VERSION,
        "kind": kind,
        "precision": precision,
        "sha256": artifact_sha256,
        "labels": list(meta.label_names),
        "thresholds": thresholds,
        "preprocess": meta.to_dict()["preprocess"],
        "input": {"name": INPUT_NAME, "datatype": "FP32", "layout": "NCHW", "shape": [-1, 3, size, size],
                  "normalised": True},
        "outputs": outputs,
        "metadata": meta.to_dict(),
    }


def read_triton_model_metadata(data: str | dict[str, Any], source: Any = "lcie_metadata") -> tuple[ModelMetadata, dict[str, Any]]:
    """The model metadata and the whole document of :func:`triton_model_metadata` (JSON text or parsed).

    Raises:
        MetadataError: not JSON, not this format, a newer format version, or malformed metadata
            (naming ``source`` and the field).
    """
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as err:
            raise MetadataError(f"{source}: not valid JSON: {err}") from None
    if not isinstance(data, dict) or data.get("format") != TRITON_FORMAT:
        raise MetadataError(f"{source} is not lcie-fast Triton metadata (format "
                            f"{data.get('format') if isinstance(data, dict) else None!r:.40}); export the repository "
                            f"with lcie-fast export-triton")
    version = data.get("format_version")
    if not isinstance(version, int) or version > TRITON_FORMAT_VERSION:
        raise MetadataError(f"{source}: format_version {version!r} is newer than this lcie-fast understands "
                            f"({TRITON_FORMAT_VERSION}); upgrade lcie-fast")
    try:
        meta = ModelMetadata.from_dict(data.get("metadata"))
    except MetadataError as err:
        raise MetadataError(f"{source}: field 'metadata': {err}") from None
    if list(meta.label_names) != list(data.get("labels", [])):
        raise MetadataError(f"{source}: field 'labels' differs from the labels of field 'metadata'")
    return meta, data
