"""``lcie-fast export-triton``: a Triton Inference Server model repository from exported graphs
and engine bundles, checked before anything lands in the repository.

One model folder per artefact::

    REPO/<name>/config.pbtxt          Triton's configuration (written through Triton's own schema)
    REPO/<name>/labels.txt            one label per line: the classification extension's label file
    REPO/<name>/lcie_metadata.json    preprocessing, labels, thresholds, precision, sha256 (clients
                                      rebuild inputs from it; also in config.pbtxt ``parameters``)
    REPO/<name>/1/model.onnx          an ONNX graph (FP32, FP16 or INT8), served by ``onnxruntime``
    REPO/<name>/1/model_sm89.plan     TensorRT engines of one graph, one per compute capability,
    REPO/<name>/1/model_sm89.plan.json   each with its bundle's sidecar (``tensorrt_plan``)

Engines are mapped through ``cc_model_filenames`` and the config has no
``default_model_filename``: a GPU without its own engine fails to load the model instead of
deserializing an engine built for another GPU. ``max_batch_size`` is checked against every
engine's optimisation profile (Triton sends any batch from 1 to it), and dims exclude the batch.

Every folder is built in a staging folder beside the repository, checked with
:func:`~lcie_fast.deploy.triton_check.check_triton`, and only then renamed into the repository:
a failed export leaves no half-written model folder, and an existing folder is only replaced
with ``overwrite=True``.

What only a Triton server can check (the backends load the graph and the plans; the server's
TensorRT matches the engines') is said in the report's ``notes``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from .._optional import require
from ..artifacts import (
    BUNDLE_FORMAT,
    INPUT_NAME,
    OUTPUT_NAME,
    PROBS_NAME,
    TRITON_METADATA_FILE,
    TRITON_METADATA_PARAMETER,
    EngineError,
    GraphError,
    artifact_kind,
    graph_target,
    load_onnx,
    onnx_io_problems,
    read_onnx_metadata,
    read_sidecar,
    sidecar_path,
    triton_model_metadata,
    validate_sidecar,
)
from ..errors import InvalidInputError, ModelNotFoundError
from ..io import sha256_file, write_json
from ..metadata import ModelMetadata
from ..thresholds import read_thresholds
from .graph_edits import NORMALISED_NAME, add_probs_output
from .triton_check import CONFIG_FILE, ONNX_BACKEND, PLAN_PLATFORM, check_triton, plan_filename
from .triton_proto import TritonConfigError, model_config_pb2

DEFAULT_ONNX_MAX_BATCH = 64
VERSION = "1"
LABELS_FILE = "labels.txt"
KINDS = ("gpu", "cpu")
ORT_TRT_PRECISIONS = ("fp16", "int8")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclasses.dataclass(frozen=True)
class _Options:
    """The settings every model folder of one export shares (validated by :func:`_options`)."""

    prefix: str
    max_batch: int | None
    preferred: tuple[int, ...]
    queue_delay_us: int
    instances: int
    kind: str
    ort_trt: str | None
    with_probs: bool
    thresholds: Path | None


@dataclasses.dataclass
class _Bundle:
    """One engine bundle going into a plan folder."""

    engine: Path
    sidecar: dict[str, Any]
    capability: str


@dataclasses.dataclass
class _Model:
    """One model folder to write: what it serves and how it is batched."""

    name: str
    kind: str  # "onnx" or "tensorrt"
    meta: ModelMetadata
    sources: list[Path]
    max_batch: int
    outputs: list[str]
    add_probs: bool = False  # ONNX: the served graph gets the sigmoid output
    bundles: list[_Bundle] = dataclasses.field(default_factory=list)
    graph_sha256: str = ""  # engines: the graph they were built from
    accelerator: dict[str, str] = dataclasses.field(default_factory=dict)  # ONNX: ORT's TensorRT EP parameters
    thresholds: dict[str, float] | None = None  # recorded in lcie_metadata.json for clients


def export_triton(models: Sequence[str | Path], repo: str | Path, *, name: str | None = None, max_batch: int | None = None,
                  preferred: Sequence[int] = (), queue_delay_us: int = 100, instances: int = 1, kind: str = "gpu",
                  ort_trt: str | None = None, with_probs: bool = False, thresholds: str | Path | None = None,
                  overwrite: bool = False) -> dict[str, Any]:
    """Write one Triton model folder per artefact into ``repo`` (module docstring) and check them.

    Args:
        models: ONNX graphs from ``lcie-fast export`` (``model.onnx``, ``model.fp16.onnx``,
            ``model.int8.onnx``, ``model.int8-cpu.onnx``) and engine bundles from
            ``lcie-fast build-engine`` (``.engine`` + sidecar). Bundles of the same graph built
            for different GPUs share one model folder.
        repo: The model repository (created when missing; other model folders are left alone).
        name: Prefix of the model names (default ``lcie``): ``<prefix>_onnx_fp16``,
            ``<prefix>_onnx_int8_cpu``, ``<prefix>_trt_int8`` ...
        max_batch: ``max_batch_size`` (default: the engines' smallest profile max batch, or 64 for
            ONNX graphs); above an engine profile's max batch is refused.
        preferred: ``dynamic_batching.preferred_batch_size`` (each at most ``max_batch``).
        queue_delay_us: ``dynamic_batching.max_queue_delay_microseconds``.
        instances: Model instances per device (``instance_group.count``).
        kind: ``gpu`` (KIND_GPU) or ``cpu`` (KIND_CPU: ONNX graphs only).
        ort_trt: ``fp16`` or ``int8``: ONNX Runtime's TensorRT execution provider for ONNX graphs
            (GPU only; ``int8`` only for the explicit Q/DQ graph ``model.int8.onnx``).
        with_probs: Also serve ``probs`` = sigmoid(logits) (the ONNX graph gets the output; an
            engine must already have it), and point the label file at it.
        thresholds: A per-label thresholds file (:func:`lcie_fast.thresholds.read_thresholds`),
            recorded in ``lcie_metadata.json`` for clients.
        overwrite: Replace model folders of the same name already in ``repo``.

    Returns:
        ``{"repository", "models": [{"name", "kind", "precision", "sources", "max_batch_size",
        "outputs", "label_output", "sha256", "files"}], "notes": [str], "check": check_triton's
        result for the folders written}``.

    Raises:
        InvalidInputError: a bad option, an option that does not fit a model (named with the
            reason), labels with line breaks, or model folders that exist (without ``overwrite``).
        ModelNotFoundError: a model file that does not exist.
        GraphError, EngineError, MetadataError: a graph or bundle that is damaged or not lcie-fast's.
        TritonConfigError: the written folders fail :func:`check_triton` (nothing is moved into ``repo``).
        MissingDependencyError: tritonclient (Triton's config schema) or onnx is not installed.
    """
    options = _options(name, max_batch, preferred, queue_delay_us, instances, kind, ort_trt, with_probs, thresholds)
    model_config_pb2()  # tritonclient is needed for the config and its check: fail before any work
    planned = _plan_models([Path(model) for model in models], options)
    notes = _dedupe(note for model in planned for note in _notes(model, options))
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise InvalidInputError(f"{repo}: exists and is not a folder; a Triton model repository is a folder")
    taken = [model.name for model in planned if (repo / model.name).exists()]
    if taken and not overwrite:
        raise InvalidInputError(f"{repo}: model folder(s) {', '.join(taken)} exist; pass --overwrite to replace them")
    for model in planned:
        target = repo / model.name
        if target.exists() and (target.is_symlink() or not target.is_dir()):
            raise InvalidInputError(f"{target}: exists and is not a model folder; remove it first")

    repo.mkdir(parents=True, exist_ok=True)
    staging = _staging_folder(repo)
    try:
        written = [_write_model(staging / model.name, model, options) for model in planned]
        check = check_triton(staging)
        if check["problems"]:
            raise TritonConfigError("the exported repository fails check-triton (nothing was written to "
                                    f"{repo}):\n" + "\n".join(f"- {problem}" for problem in check["problems"]))
        _move_in(staging, repo, [model.name for model in planned])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    check["repository"] = str(repo)
    return {"repository": str(repo), "models": written, "notes": notes, "check": check}


# ------------------------------------------------------------------------------- options
def _options(name: str | None, max_batch: int | None, preferred: Sequence[int], queue_delay_us: int, instances: int,
             kind: str, ort_trt: str | None, with_probs: bool, thresholds: str | Path | None) -> _Options:
    prefix = "lcie" if name is None else name
    if not NAME_PATTERN.fullmatch(prefix):
        raise InvalidInputError(f"--name {prefix!r:.60}: a model name prefix is 1-80 letters, digits, '_', '.' or '-', "
                                f"starting with a letter or digit (it names folders of the repository)")
    if kind not in KINDS:
        raise InvalidInputError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if ort_trt is not None and ort_trt not in ORT_TRT_PRECISIONS:
        raise InvalidInputError(f"--ort-trt must be one of {', '.join(ORT_TRT_PRECISIONS)}, got {ort_trt!r}")
    if ort_trt is not None and kind == "cpu":
        raise InvalidInputError("--ort-trt runs ONNX Runtime's TensorRT execution provider, on GPUs only; it cannot "
                                "be combined with --kind cpu")
    if max_batch is not None and max_batch < 1:
        raise InvalidInputError(f"--max-batch must be at least 1, got {max_batch}")
    if any(size < 1 for size in preferred):
        raise InvalidInputError(f"--preferred batch sizes must be at least 1, got {list(preferred)}")
    if max_batch is not None and any(size > max_batch for size in preferred):
        raise InvalidInputError(f"--preferred {list(preferred)}: every preferred batch size must be at most "
                                f"--max-batch {max_batch}")
    if queue_delay_us < 0:
        raise InvalidInputError(f"--queue-delay-us must be 0 or more, got {queue_delay_us}")
    if instances < 1:
        raise InvalidInputError(f"--instances must be at least 1, got {instances}")
    return _Options(prefix, max_batch, tuple(sorted(set(preferred))), queue_delay_us, instances, kind, ort_trt,
                    with_probs, Path(thresholds) if thresholds is not None else None)


# ------------------------------------------------------------------------------ planning
def _plan_models(paths: list[Path], options: _Options) -> list[_Model]:
    if not paths:
        raise InvalidInputError("no model given: name ONNX graphs (lcie-fast export) or engine bundles "
                                "(lcie-fast build-engine)")
    graphs, engines = [], []
    for path in paths:
        if not path.is_file():
            raise ModelNotFoundError(f"{path}: model file not found")
        kind = artifact_kind(path)
        if kind == "onnx":
            graphs.append(path)
        elif kind == "engine":
            engines.append(path)
        else:
            raise InvalidInputError(f"{path}: a {kind}; export-triton serves ONNX graphs (lcie-fast export) and "
                                    f"TensorRT bundles (lcie-fast build-engine)")
    if engines and options.kind == "cpu":
        raise InvalidInputError(f"{engines[0]}: TensorRT plans run on GPUs only; --kind cpu serves ONNX graphs")
    planned = [_plan_onnx(path, options) for path in graphs] + _plan_engines(engines, options)
    for model_name, count in Counter(model.name for model in planned).items():
        if count > 1:
            sources = [str(source) for model in planned if model.name == model_name for source in model.sources]
            raise InvalidInputError(f"{', '.join(sources)} would all be model {model_name!r}; export them in separate "
                                    f"runs with different --name prefixes")
    for model in planned:
        _check_labels(model)
        if options.thresholds is not None:
            model.thresholds = read_thresholds(options.thresholds, model.meta.label_names)
    return planned


def _plan_onnx(path: Path, options: _Options) -> _Model:
    proto = load_onnx(path)
    meta = read_onnx_metadata(proto)
    values = {value.name: value for value in [*proto.graph.input, *proto.graph.output]}

    def shape(name: str) -> list[Any] | None:
        value = values.get(name)
        if value is None:
            return None
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value.type.tensor_type.shape.dim]

    problems = onnx_io_problems(meta, shape(INPUT_NAME), shape(OUTPUT_NAME))
    if problems:
        raise GraphError(f"{path}: " + "; ".join(problems))
    if any(NORMALISED_NAME in node.input for node in proto.graph.node):
        raise GraphError(f"{path} takes raw 0-255 pixels (its normalisation is folded in, as in a DeepStream graph); "
                         f"serve a graph written by lcie-fast export, whose input is normalised")
    for tensor in (INPUT_NAME, OUTPUT_NAME):
        if values[tensor].type.tensor_type.elem_type != 1:  # TensorProto.FLOAT
            raise GraphError(f"{path}: {tensor!r} is not float32; lcie-fast graphs take and return float32 tensors")
    batch = shape(INPUT_NAME)[0]
    if isinstance(batch, int) and batch > 0:
        raise GraphError(f"{path}: input {INPUT_NAME!r} has a fixed batch of {batch}; Triton's batching needs a dynamic "
                         f"batch (export it with lcie-fast export)")
    target = graph_target(meta)
    qdq = any(node.op_type in _QDQ_OPS for node in proto.graph.node)
    has_probs = any(value.name == PROBS_NAME for value in proto.graph.output)

    suffix = meta.precision + ("_cpu" if target == "cpu" else "")
    max_batch = options.max_batch or DEFAULT_ONNX_MAX_BATCH
    if any(size > max_batch for size in options.preferred):
        raise InvalidInputError(f"--preferred {list(options.preferred)}: above max_batch_size {max_batch} of {path}; "
                                f"raise --max-batch or lower them")
    model = _Model(name=f"{options.prefix}_onnx_{suffix}", kind="onnx", meta=meta, sources=[path], max_batch=max_batch,
                   outputs=[OUTPUT_NAME, PROBS_NAME] if options.with_probs else [OUTPUT_NAME],
                   add_probs=options.with_probs and not has_probs)
    if options.ort_trt:
        model.accelerator = _ort_trt_parameters(path, meta, target, qdq, options, max_batch)
    return model


def _ort_trt_parameters(path: Path, meta: ModelMetadata, target: str | None, qdq: bool, options: _Options,
                        max_batch: int) -> dict[str, str]:
    """The ``gpu_execution_accelerator`` parameters of ONNX Runtime's TensorRT execution provider,
    as the onnxruntime_backend README names them; refused where TensorRT cannot run the graph so."""
    if options.ort_trt == "int8":
        if meta.precision != "int8" or not qdq:
            raise InvalidInputError(
                f"--ort-trt int8 needs an explicit Q/DQ graph (model.int8.onnx from lcie-fast export --int8); {path} is "
                f"{meta.precision} without Q/DQ nodes, which TensorRT would have to calibrate itself from a "
                f"calibration table lcie-fast does not write")
        if target == "cpu":
            raise InvalidInputError(
                f"--ort-trt int8: {path} is the INT8 graph quantised for ONNX Runtime's CPU kernels (model.int8-cpu.onnx: "
                f"Q/DQ placement, zero points and int32 bias quantisation TensorRT does not take); serve the "
                f"TensorRT-target graph model.int8.onnx")
    elif meta.precision == "int8":
        raise InvalidInputError(f"--ort-trt fp16: {path} is an INT8 Q/DQ graph, whose quantised layers TensorRT runs "
                                f"only with INT8 enabled; use --ort-trt int8 (or serve model.onnx / model.fp16.onnx)")
    size = meta.preprocess.input_size
    optimal = max(options.preferred) if options.preferred else max_batch
    return {
        "precision_mode": options.ort_trt.upper(),
        # one TensorRT profile covering every batch Triton can send, so no shape triggers a rebuild
        "trt_profile_min_shapes": f"{INPUT_NAME}:1x3x{size}x{size}",
        "trt_profile_opt_shapes": f"{INPUT_NAME}:{optimal}x3x{size}x{size}",
        "trt_profile_max_shapes": f"{INPUT_NAME}:{max_batch}x3x{size}x{size}",
    }


def _plan_engines(paths: list[Path], options: _Options) -> list[_Model]:
    """One model per graph: bundles of the same graph (equal ONNX sha256) for different GPUs share a folder."""
    groups: dict[str, list[tuple[Path, dict[str, Any], ModelMetadata]]] = {}
    for path in paths:
        source = sidecar_path(path)
        sidecar = read_sidecar(path)
        if sidecar.get("format") != BUNDLE_FORMAT:
            raise EngineError(f"{source} is not an lcie_fast engine sidecar (format {sidecar.get('format')!r:.40})")
        meta = validate_sidecar(sidecar, source)
        graph_sha = (sidecar.get("onnx") or {}).get("sha256")
        if not isinstance(graph_sha, str) or not graph_sha:
            raise EngineError(f"{source}: field 'onnx.sha256' is missing: the graph the engine was built from is unknown")
        groups.setdefault(graph_sha, []).append((path, sidecar, meta))
    return [_plan_engine_group(graph_sha, bundles, options) for graph_sha, bundles in groups.items()]


def _plan_engine_group(graph_sha: str, bundles: list[tuple[Path, dict[str, Any], ModelMetadata]],
                       options: _Options) -> _Model:
    capabilities: dict[str, Path] = {}
    planned = []
    for path, sidecar, _ in bundles:
        source = sidecar_path(path)
        capability = str((sidecar.get("gpu") or {}).get("compute_capability", ""))
        if not capability:
            raise EngineError(f"{source}: field 'gpu.compute_capability' is missing")
        plan_filename(capability)
        if capability in capabilities:
            raise InvalidInputError(f"{capabilities[capability]} and {path} are both built for compute capability "
                                    f"{capability}; Triton maps one plan per compute capability: pass one of them")
        capabilities[capability] = path
        profile = sidecar.get("profile") or {}
        low, high = profile.get("min_batch"), profile.get("max_batch")
        if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in (low, high)):
            raise EngineError(f"{source}: field 'profile' lacks positive integers min_batch and max_batch")
        if low > 1:
            raise InvalidInputError(f"{path}: its profile starts at batch {low}, but Triton sends any batch from 1 to "
                                    f"max_batch_size; rebuild it with min_batch 1")
        if options.max_batch is not None and options.max_batch > high:
            raise InvalidInputError(f"--max-batch {options.max_batch} is above the profile max batch {high} of {path}; "
                                    f"lower --max-batch or rebuild the engine with a larger max_batch")
        if options.with_probs:
            io = sidecar.get("io") or {}
            names = [str(out.get("name")) for out in [io.get("output") or {}, *(io.get("outputs") or [])]]
            if PROBS_NAME not in names:
                raise InvalidInputError(f"--with-probs: the engine {path} has no output {PROBS_NAME!r} (its sidecar lists "
                                        f"{names}), and a TensorRT plan cannot be edited; serve its logits (clients "
                                        f"apply the sigmoid, as lcie_metadata.json says) or build the engine from a "
                                        f"graph with a {PROBS_NAME!r} output")
        planned.append(_Bundle(engine=path, sidecar=sidecar, capability=capability))
    versions = sorted({str(bundle.sidecar.get("tensorrt_version")) for bundle in planned})
    if len(versions) > 1:
        raise InvalidInputError(f"{', '.join(str(b.engine) for b in planned)} were built with TensorRT "
                                f"{', '.join(versions)}; one Triton server runs one TensorRT, so one model folder "
                                f"holds engines of one TensorRT version")
    meta = bundles[0][2]
    for path, _, other in bundles[1:]:
        if other.label_names != meta.label_names or other.preprocess != meta.preprocess or other.precision != meta.precision:
            raise EngineError(f"{path} and {bundles[0][0]} claim the same graph (onnx.sha256) but their metadata differ")
    largest = min(int(bundle.sidecar["profile"]["max_batch"]) for bundle in planned)
    max_batch = options.max_batch or largest
    if any(size > max_batch for size in options.preferred):
        raise InvalidInputError(f"--preferred {list(options.preferred)}: above max_batch_size {max_batch} (the engines' "
                                f"profile max batch); lower them")
    planned.sort(key=lambda bundle: tuple(int(part) for part in bundle.capability.split(".")))
    return _Model(name=f"{options.prefix}_trt_{meta.precision}", kind="tensorrt", meta=meta,
                  sources=[bundle.engine for bundle in planned], max_batch=max_batch,
                  outputs=[OUTPUT_NAME, PROBS_NAME] if options.with_probs else [OUTPUT_NAME], bundles=planned,
                  graph_sha256=graph_sha)


def _check_labels(model: _Model) -> None:
    for label in model.meta.label_names:
        if "\n" in label or "\r" in label:
            raise InvalidInputError(f"{model.sources[0]}: label {label!r:.60} contains a line break; Triton's label file "
                                    f"holds one label per line")


def _notes(model: _Model, options: _Options) -> list[str]:
    """What the user should know about serving ``model`` that only a Triton machine can check."""
    notes = []
    target = graph_target(model.meta) if model.kind == "onnx" else None
    if model.kind == "tensorrt":
        versions = {str(bundle.sidecar.get("tensorrt_version")) for bundle in model.bundles}
        compat = {str((bundle.sidecar.get("profile") or {}).get("compatibility", "none")) for bundle in model.bundles}
        capabilities = ", ".join(bundle.capability for bundle in model.bundles)
        notes.append(f"{model.name}: the engines load only on GPUs of compute capability {capabilities} and on a "
                     f"Triton release whose TensorRT is {', '.join(sorted(versions))}"
                     + (" (same major version or newer, for version-compatible engines)" if "version" in compat else "")
                     + "; other GPUs fail to load the model rather than run a wrong engine")
        if "version" in compat:
            notes.append(f"{model.name}: version-compatible engines run host code; Triton loads them only when started "
                         f"with --backend-config=tensorrt,version-compatible=true")
        if "hardware" in compat:
            notes.append(f"{model.name}: hardware-compatible engines run on any Ampere or newer GPU, but "
                         f"cc_model_filenames maps each only to the compute capability it was built on")
        return notes
    if options.kind == "cpu" and model.meta.precision == "fp16":
        notes.append(f"{model.name}: an FP16 graph on CPU instances runs slower than FP32 (CPUs have no FP16 "
                     f"arithmetic); serve model.onnx there")
    if options.kind == "cpu" and model.meta.precision == "int8":
        notes.append(f"{model.name}: on CPUs without VNNI, ONNX Runtime's fused int8 kernels saturate (logit error "
                     f"about 0.4; notes/tensorrt.md); check the serving CPU"
                     + ("; model.int8-cpu.onnx is the INT8 graph quantised for CPUs" if target == "tensorrt" else ""))
    if options.kind == "gpu" and target == "cpu":
        notes.append(f"{model.name}: this INT8 graph is quantised for ONNX Runtime's CPU kernels; on GPUs serve "
                     f"model.int8.onnx (with --ort-trt int8) or a TensorRT bundle")
    if model.accelerator:
        notes.append(f"{model.name}: ONNX Runtime's TensorRT provider builds its engine when the model loads (minutes "
                     f"for large models); add the parameters trt_engine_cache_enable and trt_engine_cache_path to the "
                     f"accelerator to keep it across restarts")
    return notes


def _dedupe(items: Any) -> list[str]:
    return list(dict.fromkeys(items))


# ------------------------------------------------------------------------------- writing
def _write_model(folder: Path, model: _Model, options: _Options) -> dict[str, Any]:
    """Write one model folder; its entry of the report."""
    version = folder / VERSION
    version.mkdir(parents=True)
    if model.kind == "onnx":
        served = version / "model.onnx"
        _write_graph(model.sources[0], served, model.add_probs)
        sha256 = sha256_file(served)
    else:
        for bundle in model.bundles:
            plan = version / plan_filename(bundle.capability)
            shutil.copyfile(bundle.engine, plan)
            write_json(bundle.sidecar, sidecar_path(plan))
        sha256 = model.graph_sha256
    (folder / LABELS_FILE).write_text("".join(f"{label}\n" for label in model.meta.label_names), encoding="utf-8")
    metadata = triton_model_metadata(model.meta, kind=model.kind, precision=model.meta.precision, artifact_sha256=sha256,
                                     thresholds=model.thresholds, with_probs=PROBS_NAME in model.outputs)
    write_json(metadata, folder / TRITON_METADATA_FILE)
    (folder / CONFIG_FILE).write_text(_config_text(model, options, metadata), encoding="utf-8")
    return {
        "name": model.name,
        "kind": model.kind,
        "precision": model.meta.precision,
        "sources": [str(source) for source in model.sources],
        "max_batch_size": model.max_batch,
        "outputs": list(model.outputs),
        "label_output": _label_output(model),
        "sha256": sha256,
        "files": sorted(path.relative_to(folder.parent).as_posix() for path in folder.rglob("*") if path.is_file()),
    }


def _write_graph(source: Path, target: Path, add_probs: bool) -> None:
    """Copy an ONNX graph (and its external data files) to ``target``, adding the probs output when asked."""
    onnx = require("onnx", "writing ONNX graphs")
    proto = load_onnx(source)
    for location in _external_locations(proto, source):
        destination = target.parent / location
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.parent / location, destination)
    if add_probs:
        add_probs_output(proto)
        onnx.save(proto, str(target))
    else:
        del proto
        shutil.copyfile(source, target)


def _external_locations(proto: Any, source: Path) -> list[str]:
    """The external data files a graph's tensors name (relative paths inside its folder)."""
    tensors = list(proto.graph.initializer)
    for node in proto.graph.node:
        for attribute in node.attribute:
            tensors.extend([attribute.t] if attribute.HasField("t") else [])
            tensors.extend(attribute.tensors)
    locations = []
    for tensor in tensors:
        if tensor.data_location != 1:  # TensorProto.EXTERNAL
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        parts = Path(location).parts
        if not location or Path(location).is_absolute() or ".." in parts:
            raise GraphError(f"{source}: tensor {tensor.name!r} names external data {location!r:.80} outside the graph's "
                             f"folder; only relative paths beside the graph can be copied into the repository")
        if not (source.parent / location).is_file():
            raise GraphError(f"{source}: external data file {location} of tensor {tensor.name!r} not found")
        locations.append(location)
    return list(dict.fromkeys(locations))


def _label_output(model: _Model) -> str:
    """The output whose classes clients read (Triton's classification extension): probs when served."""
    return PROBS_NAME if PROBS_NAME in model.outputs else OUTPUT_NAME


def _config_text(model: _Model, options: _Options, metadata: dict[str, Any]) -> str:
    """``config.pbtxt`` of ``model``, built as a ``ModelConfig`` message of Triton's schema and printed in text format."""
    from google.protobuf import text_format

    pb = model_config_pb2()
    config = pb.ModelConfig(max_batch_size=model.max_batch)
    size = model.meta.preprocess.input_size
    config.input.add(name=INPUT_NAME, data_type=pb.TYPE_FP32, format=pb.ModelInput.FORMAT_NCHW, dims=[3, size, size])
    for output in model.outputs:
        entry = config.output.add(name=output, data_type=pb.TYPE_FP32, dims=[model.meta.num_classes])
        if output == _label_output(model):
            entry.label_filename = LABELS_FILE
    batching = config.dynamic_batching
    batching.SetInParent()
    batching.preferred_batch_size.extend(options.preferred)
    batching.max_queue_delay_microseconds = options.queue_delay_us
    group_kind = pb.ModelInstanceGroup.KIND_GPU if options.kind == "gpu" else pb.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(count=options.instances, kind=group_kind)
    if model.accelerator:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters.update(model.accelerator)
    for bundle in model.bundles:
        config.cc_model_filenames[bundle.capability] = plan_filename(bundle.capability)
    config.parameters[TRITON_METADATA_PARAMETER].string_value = json.dumps(metadata, separators=(",", ":"),
                                                                          ensure_ascii=False)
    header = (f"# Written by lcie-fast {__version__} export-triton; check it with: lcie-fast check-triton <repository>\n"
              f"# {INPUT_NAME}: normalised float32 RGB, NCHW (see {TRITON_METADATA_FILE}); {OUTPUT_NAME}: raw scores"
              + (f", {PROBS_NAME}: sigmoid({OUTPUT_NAME})" if PROBS_NAME in model.outputs else "") + "\n")
    # name and backend / platform first, as people write them (text format prints fields by number)
    serves = f'backend: "{ONNX_BACKEND}"' if model.kind == "onnx" else f'platform: "{PLAN_PLATFORM}"'
    return header + f'name: "{model.name}"\n{serves}\n' + text_format.MessageToString(config, as_utf8=True)


# ------------------------------------------------------------------------------- moving in
def _staging_folder(repo: Path) -> Path:
    """A new hidden folder beside the repository (where Triton does not look) on the same filesystem,
    so the staged model folders move in by rename; inside the repository (hidden) when the folder
    beside it is on another filesystem or not writable."""
    parent = repo.resolve().parent
    try:
        if os.stat(parent).st_dev == os.stat(repo).st_dev:
            return Path(tempfile.mkdtemp(prefix=f".{repo.name}.export-", dir=parent))
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix=".lcie-export-", dir=repo))


def _move_in(staging: Path, repo: Path, names: list[str]) -> None:
    """Rename each staged model folder into ``repo``; a replaced folder is moved aside first and
    restored when the rename fails."""
    for model_name in names:
        target = repo / model_name
        old = None
        if target.exists():
            old = staging / f".replaced-{model_name}"
            os.rename(target, old)
        try:
            os.rename(staging / model_name, target)
        except OSError:
            if old is not None:
                os.rename(old, target)
            raise
