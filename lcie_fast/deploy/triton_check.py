"""``lcie-fast check-triton``: a Triton model repository checked as far as a machine without Triton can.

For every model folder of the repository:

- ``config.pbtxt`` parses with Triton's own schema (:func:`~lcie_fast.deploy.triton_proto.parse_model_config`:
  an unknown field, a bad enum or a stray brace is a problem naming the file, line and column);
- its ``name`` is the folder's; at least one version folder Triton serves (numerically named, not
  starting with ``0``: Triton ignores ``0``, ``007`` ...; a folder it ignores is named); batch settings
  are coherent (``preferred_batch_size`` <= ``max_batch_size``, dynamic batching only with a batch);
- the model files are there: ``model.onnx`` / ``model.plan`` (or ``default_model_filename``), or
  every ``cc_model_filenames`` value; a plan folder with ``cc_model_filenames`` *and*
  ``default_model_filename`` is a problem (a GPU without its own plan would fall back to an
  engine built for another GPU);
- the inputs and outputs (names, data types, dims) agree with the ONNX graph (its value-info
  shapes) or with each plan's sidecar ``<plan>.json`` (the engine bundle's sidecar, copied beside
  the plan by ``export-triton``); with ``max_batch_size > 0`` the dims exclude the batch, and a
  dims list that includes it is named as such;
- every ``max_batch_size`` lies within each engine's optimisation profile, and no profile starts
  above batch 1 (Triton sends any batch from 1 to ``max_batch_size``);
- ``label_filename`` is a file inside the model folder (Triton joins it to the model folder, so an
  absolute path is read from inside it; a ``../`` path leaves the folder) with ``\n`` line ends (Triton
  reads it with ``std::getline``: a CRLF file serves labels ending in ``\r``) and one line per output
  column; ``lcie_metadata.json`` is there, equals the config's ``lcie_metadata`` parameter and names
  the graph's labels, precision and sha256.

What only a Triton server can check (that the backend loads the graph, that the server's
TensorRT deserializes each plan on its GPU) is not checked here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..artifacts import (
    BUNDLE_FORMAT,
    TRITON_METADATA_FILE,
    TRITON_METADATA_PARAMETER,
    EngineError,
    GraphError,
    load_onnx,
    read_onnx_metadata,
    read_sidecar,
    read_triton_model_metadata,
    sidecar_path,
    validate_sidecar,
)
from ..errors import InputNotFoundError, InvalidInputError
from ..io import sha256_file
from ..metadata import MetadataError, ModelMetadata
from .triton_proto import TritonConfigError, config_as_json, model_config_pb2, parse_model_config

CONFIG_FILE = "config.pbtxt"
ONNX_BACKEND = "onnxruntime"
ONNX_PLATFORM = "onnxruntime_onnx"
PLAN_PLATFORM = "tensorrt_plan"
PLAN_BACKEND = "tensorrt"
DEFAULT_FILENAMES = {"onnx": "model.onnx", "tensorrt": "model.plan"}

# ONNX TensorProto element types and engine-sidecar dtype names -> Triton data types
ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
                  7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64",
                  12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16"}
SIDECAR_TO_TRITON = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int8": "TYPE_INT8",
                     "uint8": "TYPE_UINT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL"}

Shape = list[int | None]  # a model tensor's shape; None = dynamic (symbolic or unknown)


def plan_filename(compute_capability: str) -> str:
    """``8.9`` -> ``model_sm89.plan``: the file a ``cc_model_filenames`` entry names.

    Raises:
        InvalidInputError: not a compute capability of the form ``major.minor``.
    """
    if not re.fullmatch(r"\d{1,3}\.\d{1,3}", compute_capability):
        raise InvalidInputError(f"compute capability {compute_capability!r:.40} is not of the form major.minor (e.g. 8.9)")
    return f"model_sm{compute_capability.replace('.', '')}.plan"


def label_lines(text: str) -> list[str]:
    """The labels of a Triton label file: one per ``\\n``-terminated line (Triton reads it with ``std::getline``).

    ``text`` must be the file's text without newline translation: a ``\\r`` before ``\\n`` stays part of
    the label, as it does in Triton.
    """
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def served_version(name: str) -> bool:
    """Whether Triton serves a version folder of this name: numerically named, not starting with ``0``.

    Triton's model repository documentation: subdirectories "that are not numerically named, or have
    names that start with zero (0) will be ignored".
    """
    return re.fullmatch(r"[1-9][0-9]*", name) is not None


def triton_join(folder: Path, name: str) -> Path:
    """The path Triton reads for a file ``name`` of a config (``label_filename``, ``default_model_filename``).

    Triton's ``JoinPath`` appends even an absolute segment to the folder (``/a/b`` -> ``folder/a/b``);
    Python's ``/`` would replace the folder instead.
    """
    return folder / name.lstrip("/")


def check_triton(repo: str | Path) -> dict[str, Any]:
    """Check every model folder of a Triton model repository (module docstring).

    Args:
        repo: The repository folder (``repo/<model>/config.pbtxt``).

    Returns:
        ``{"repository": str, "models": {folder: JSON view of its config (as the server's
        /v2/models/<name>/config returns it), or None when it does not parse}, "problems": [str]}``;
        each problem names the model, the file (relative to ``repo``, or whole when it lies outside)
        and what is wrong.

    Raises:
        InputNotFoundError: ``repo`` is not a folder.
        MissingDependencyError: tritonclient (which ships Triton's config schema) is not installed.
    """
    repo = Path(repo)
    if not repo.is_dir():
        raise InputNotFoundError(f"{repo}: not a folder; a Triton model repository is a folder of model folders")
    model_config_pb2()  # a missing tritonclient fails once, here, not as a problem per model
    folders = sorted(path for path in repo.iterdir() if path.is_dir() and not path.name.startswith("."))
    problems: list[str] = []
    models: dict[str, Any] = {}
    if not folders:
        problems.append(f"{repo}: no model folders (expected {repo}/<model>/{CONFIG_FILE})")
    for folder in folders:
        checker = _ModelCheck(repo, folder)
        models[folder.name] = checker.run()
        problems.extend(checker.problems)
    return {"repository": str(repo), "models": models, "problems": problems}


class _ModelCheck:
    """The checks of one model folder; ``problems`` collects their messages."""

    def __init__(self, repo: Path, folder: Path) -> None:
        self.repo, self.folder, self.name = repo, folder, folder.name
        self.problems: list[str] = []

    def problem(self, path: Path, message: str) -> None:
        self.problems.append(f"model {self.name}: {self._shown(path)}: {message}")

    def _shown(self, path: Path) -> str:
        """``path`` relative to the repository, or whole (normalised) when it lies outside it."""
        normal = Path(os.path.normpath(path))
        try:
            return normal.relative_to(os.path.normpath(self.repo)).as_posix()
        except ValueError:
            return normal.as_posix()

    def run(self) -> dict[str, Any] | None:
        path = self.folder / CONFIG_FILE
        if not path.is_file():
            self.problem(path, "missing (every model folder needs its config.pbtxt)")
            return None
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            self.problem(path, f"cannot be read as UTF-8 text: {err}")
            return None
        try:
            config = parse_model_config(text, path.name)
        except TritonConfigError as err:
            self.problem(path, _parse_error_text(str(err), path.name))
            return None
        self._check_config(path, config)
        return config_as_json(config)

    # ----------------------------------------------------------------------- the whole folder
    def _check_config(self, path: Path, config: Any) -> None:
        pb = model_config_pb2()
        if config.name and config.name != self.name:
            self.problem(path, f"name {config.name!r} differs from its folder {self.name!r} (Triton refuses the model)")
        kind = _serving_kind(config)
        if kind is None:
            self.problem(path, f"serves platform {config.platform!r} / backend {config.backend!r}; check-triton checks "
                               f"ONNX Runtime (backend \"{ONNX_BACKEND}\") and TensorRT (platform \"{PLAN_PLATFORM}\") "
                               f"models")
            return
        max_batch = config.max_batch_size
        self._check_batching(path, config, max_batch)
        if kind == "tensorrt" and any(group.kind == pb.ModelInstanceGroup.KIND_CPU for group in config.instance_group):
            self.problem(path, "instance_group kind KIND_CPU: TensorRT plans run on GPUs only")
        lcie = self._check_lcie_metadata(path, config)
        numeric = [p for p in self.folder.iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit()]
        versions = sorted((p for p in numeric if served_version(p.name)), key=lambda p: int(p.name))
        for ignored in sorted(p for p in numeric if not served_version(p.name)):
            self.problem(ignored, f"version folder {ignored.name!r} starts with 0: Triton ignores version folders whose "
                                  f"names start with 0; number versions from 1")
        if not versions:
            self.problem(self.folder / "1", "no numeric version folder Triton serves (Triton serves "
                                            "<model>/<version>/<model file>, version 1 or above)")
        for version in versions:
            latest = version == versions[-1]
            if kind == "onnx":
                self._check_onnx_version(path, config, version, lcie, latest)
            else:
                self._check_plan_version(path, config, version, lcie, latest)
        self._check_label_files(config, lcie)

    def _check_batching(self, path: Path, config: Any, max_batch: int) -> None:
        if max_batch < 0:
            self.problem(path, f"max_batch_size {max_batch} is negative")
        if config.HasField("dynamic_batching"):
            if max_batch <= 0:
                self.problem(path, "dynamic_batching needs max_batch_size > 0 (Triton refuses the model)")
            for size in config.dynamic_batching.preferred_batch_size:
                if size < 1 or (max_batch > 0 and size > max_batch):
                    self.problem(path, f"preferred_batch_size {size} is outside 1..max_batch_size ({max_batch})")

    def _check_lcie_metadata(self, path: Path, config: Any) -> tuple[ModelMetadata, dict[str, Any]] | None:
        """The model's lcie_metadata.json, checked against the config's parameter of the same JSON."""
        file = self.folder / TRITON_METADATA_FILE
        found = None
        if not file.is_file():
            self.problem(file, "missing: clients rebuild the model's inputs from it")
        else:
            try:
                found = read_triton_model_metadata(file.read_text(encoding="utf-8"), file.name)
            except (OSError, UnicodeDecodeError) as err:
                self.problem(file, f"cannot be read: {err}")
            except MetadataError as err:
                self.problem(file, str(err))
        if TRITON_METADATA_PARAMETER not in config.parameters:
            self.problem(path, f"no parameter {TRITON_METADATA_PARAMETER!r}: remote clients read {TRITON_METADATA_FILE} "
                               f"from it through /v2/models/{self.name}/config")
            return found
        try:
            _, parameter = read_triton_model_metadata(config.parameters[TRITON_METADATA_PARAMETER].string_value,
                                                      f"parameter {TRITON_METADATA_PARAMETER!r}")
        except MetadataError as err:
            self.problem(path, str(err))
            return found
        if found is not None and found[1] != parameter:
            keys = sorted(key for key in set(found[1]) | set(parameter) if found[1].get(key) != parameter.get(key))
            self.problem(path, f"parameter {TRITON_METADATA_PARAMETER!r} differs from {TRITON_METADATA_FILE} "
                               f"(fields {', '.join(keys)})")
        if found is not None:
            names = sorted(output.name for output in config.output)
            listed = sorted(str(output.get("name")) for output in found[1].get("outputs") or [] if isinstance(output, dict))
            if names != listed:
                self.problem(file, f"lists outputs {listed} but the config serves {names}")
        return found

    # -------------------------------------------------------------------------- ONNX graphs
    def _check_onnx_version(self, path: Path, config: Any, version: Path, lcie: Any, latest: bool) -> None:
        graph_path = triton_join(version, config.default_model_filename or DEFAULT_FILENAMES["onnx"])
        if config.cc_model_filenames:
            self.problem(path, "cc_model_filenames is for TensorRT plans; the ONNX Runtime backend ignores it")
        if not graph_path.is_file():
            self.problem(graph_path, "missing model file")
            return
        try:
            proto = load_onnx(graph_path)
        except GraphError as err:
            self.problem(graph_path, str(err))
            return
        inputs = {value.name: _value_shape(value) for value in proto.graph.input}
        initializers = {tensor.name for tensor in proto.graph.initializer}
        inputs = {name: spec for name, spec in inputs.items() if name not in initializers}
        outputs = {value.name: _value_shape(value) for value in proto.graph.output}
        self._check_io(path, config, graph_path.name, inputs, outputs)
        try:
            meta = read_onnx_metadata(proto)
        except MetadataError as err:
            self.problem(graph_path, str(err))
            return
        self._check_against_metadata(graph_path, meta, lcie, sha256_file(graph_path) if latest else None)

    # ------------------------------------------------------------------------ TensorRT plans
    def _check_plan_version(self, path: Path, config: Any, version: Path, lcie: Any, latest: bool) -> None:
        if config.cc_model_filenames:
            if config.default_model_filename:
                self.problem(path, f"default_model_filename {config.default_model_filename!r} beside cc_model_filenames: "
                                   f"a GPU without its own plan would load {config.default_model_filename}, an engine "
                                   f"built for another GPU; leave default_model_filename out")
            plans = [(capability, triton_join(version, name)) for capability, name in sorted(config.cc_model_filenames.items())]
        else:
            plans = [(None, triton_join(version, config.default_model_filename or DEFAULT_FILENAMES["tensorrt"]))]
        graph_shas = set()
        for capability, plan in plans:
            if not plan.is_file():
                self.problem(plan, "missing model file" + (f" (cc_model_filenames for compute capability {capability})"
                                                            if capability else ""))
                continue
            sidecar = self._plan_sidecar(plan)
            if sidecar is None:
                continue
            meta, io = sidecar
            built_for = io["capability"]
            if capability is not None and built_for != capability:
                self.problem(sidecar_path(plan), f"the engine was built for compute capability {built_for}, but "
                                                 f"cc_model_filenames maps it to {capability}")
            self._check_profile(path, sidecar_path(plan), config.max_batch_size, io["profile"])
            self._check_io(path, config, plan.name, io["inputs"], io["outputs"])
            graph_shas.add(io["onnx_sha256"])
            self._check_against_metadata(sidecar_path(plan), meta, lcie, io["onnx_sha256"] if latest else None)
        if len(graph_shas) > 1:
            self.problem(version, "its plans were built from different ONNX graphs (onnx.sha256 of their sidecars differ); "
                                  "one model folder serves one graph")

    def _plan_sidecar(self, plan: Path) -> tuple[ModelMetadata, dict[str, Any]] | None:
        """The metadata and I/O of a plan's sidecar, or None after naming what is wrong with it."""
        source = sidecar_path(plan)
        try:
            sidecar = read_sidecar(plan)
            if sidecar.get("format") != BUNDLE_FORMAT:
                raise EngineError(f"{source.name} is not an lcie_fast engine sidecar (format {sidecar.get('format')!r:.40})")
            meta = validate_sidecar(sidecar, source.name)
            io = sidecar["io"]
            size = meta.preprocess.input_size
            largest = io["input"]["max"]
            inputs = {io["input"]["name"]: (SIDECAR_TO_TRITON.get(str(io["input"].get("dtype"))),
                                            [None, *largest[1:]])}
            outputs = {}
            for output in [io["output"], *(io.get("outputs") or [])]:
                shape = output.get("shape") or ["batch", meta.num_classes]
                outputs[str(output["name"])] = (SIDECAR_TO_TRITON.get(str(output.get("dtype"))),
                                                [dim if isinstance(dim, int) and not isinstance(dim, bool) else None
                                                 for dim in shape])
            if largest[1:] != [3, size, size]:
                raise EngineError(f"{source.name}: field 'io.input.max' {largest} is not (batch, 3, {size}, {size})")
            profile = sidecar.get("profile") or {}
            batches = [profile.get(f"{name}_batch") for name in ("min", "opt", "max")]
            if not all(isinstance(b, int) and not isinstance(b, bool) for b in batches):
                raise EngineError(f"{source.name}: field 'profile' lacks integer min_batch, opt_batch and max_batch")
            capability = str((sidecar.get("gpu") or {}).get("compute_capability", "?"))
            onnx_sha = str((sidecar.get("onnx") or {}).get("sha256", ""))
        except EngineError as err:
            self.problem(source, str(err))
            return None
        except (KeyError, TypeError, AttributeError) as err:
            self.problem(source, f"malformed engine sidecar ({type(err).__name__}: {err})")
            return None
        return meta, {"inputs": inputs, "outputs": outputs, "profile": batches, "capability": capability,
                      "onnx_sha256": onnx_sha}

    def _check_profile(self, path: Path, source: Path, max_batch: int, profile: list[int]) -> None:
        low, _, high = profile
        if low > 1:
            self.problem(source, f"the engine's profile starts at batch {low}, but Triton sends any batch from 1 to "
                                 f"max_batch_size; rebuild it with min_batch 1")
        if max_batch > high:
            self.problem(path, f"max_batch_size {max_batch} is above the engine profile's max batch {high} "
                               f"({source.name}); lower max_batch_size or rebuild the engine")
        if max_batch == 0:
            self.problem(path, "max_batch_size 0 on an engine with a dynamic batch: set max_batch_size to the "
                               f"profile's max batch ({high}) or less")

    # ----------------------------------------------------------------------- shared checks
    def _check_io(self, path: Path, config: Any, model_file: str, inputs: dict[str, tuple[str | None, Shape]],
                  outputs: dict[str, tuple[str | None, Shape]]) -> None:
        pb = model_config_pb2()
        max_batch = config.max_batch_size
        for kind, declared, found in (("input", config.input, inputs), ("output", config.output, outputs)):
            for tensor in declared:
                where = f"{kind} {tensor.name!r}"
                if tensor.name not in found:
                    self.problem(path, f"{where} is not an {kind} of {model_file} "
                                       f"(it has {sorted(found)})")
                    continue
                dtype, shape = found[tensor.name]
                declared_type = pb.DataType.Name(tensor.data_type)
                if dtype is not None and declared_type != dtype:
                    self.problem(path, f"{where} is {declared_type} but {model_file} has {dtype}")
                message = dims_problem(list(tensor.dims), max_batch, shape)
                if message:
                    self.problem(path, f"{where}: {message} ({model_file} has shape {_shape_text(shape)})")
        missing = sorted(set(inputs) - {tensor.name for tensor in config.input})
        if missing:
            self.problem(path, f"{model_file} has inputs {missing} the config does not declare")

    def _check_against_metadata(self, source: Path, meta: ModelMetadata, lcie: Any, sha256: str | None) -> None:
        if lcie is None:
            return
        lcie_meta, data = lcie
        if tuple(meta.label_names) != tuple(lcie_meta.label_names):
            self.problem(source, f"its labels differ from those of {TRITON_METADATA_FILE} "
                                 f"({len(meta.label_names)} vs {len(lcie_meta.label_names)} labels)")
        if meta.precision != data.get("precision"):
            self.problem(source, f"its precision is {meta.precision}, {TRITON_METADATA_FILE} says {data.get('precision')}")
        if meta.preprocess != lcie_meta.preprocess:
            self.problem(source, f"its preprocessing differs from that of {TRITON_METADATA_FILE}")
        if sha256 is not None and sha256 != data.get("sha256"):
            self.problem(source, f"sha256 {sha256[:12]}... differs from {TRITON_METADATA_FILE}'s "
                                 f"{str(data.get('sha256'))[:12]}...")

    def _check_label_files(self, config: Any, lcie: Any) -> None:
        for output in config.output:
            if not output.label_filename:
                continue
            name, where = output.label_filename, f"label_filename of output {output.name!r}"
            config_file = self.folder / CONFIG_FILE
            if name.startswith("/"):
                read = self._shown(triton_join(self.folder, name))
                self.problem(config_file, f"{where} {name!r} is an absolute path: Triton joins label_filename to the "
                                          f"model folder, so it would read {read}; put the file in the model folder "
                                          f"and name it relative to it")
                continue
            file = self.folder / name
            if os.path.normpath(name).split(os.sep)[0] == os.pardir:
                self.problem(config_file, f"{where} {name!r} leads out of the model folder (to {self._shown(file)}): "
                                          f"keep the label file inside the model folder, the unit that is copied, "
                                          f"moved or fetched from cloud storage")
            if not file.is_file():
                self.problem(file, f"missing ({where})")
                continue
            try:
                text = file.read_bytes().decode("utf-8")  # bytes: no newline translation, a '\r' stays visible
            except OSError as err:
                self.problem(file, f"cannot be read: {err}")
                continue
            except UnicodeDecodeError as err:
                self.problem(file, f"cannot be read as UTF-8 text: {err}")
                continue
            labels = label_lines(text)
            carriage = next((number for number, label in enumerate(labels, 1) if "\r" in label), None)
            if carriage is not None:
                self.problem(file, f"has a carriage return ('\\r') in line {carriage} (Windows line ends?): Triton reads "
                                   f"label files with std::getline, which splits at '\\n' only, so its labels would end "
                                   f"in '\\r'; save it with '\\n' line ends")
            width = _width(list(output.dims), config.max_batch_size)
            if width is not None and len(labels) != width:
                self.problem(file, f"has {len(labels)} lines but output {output.name!r} has {width} columns "
                                   f"(one label per line)")
            elif lcie is not None and carriage is None and labels != list(lcie[0].label_names):
                line = next((i for i, (a, b) in enumerate(zip(labels, lcie[0].label_names), 1) if a != b), len(labels))
                self.problem(file, f"differs from the labels of {TRITON_METADATA_FILE} (first at line {line})")


def dims_problem(dims: list[int], max_batch: int, shape: Shape) -> str | None:
    """Why config ``dims`` do not describe a model tensor of ``shape`` (None when they do).

    With ``max_batch_size > 0`` Triton prepends the batch itself: ``dims`` must be the shape
    without its first (batch) dimension, which the model must leave dynamic. ``-1`` in ``dims``
    and a dynamic model dimension agree with anything.
    """
    expected = shape
    if max_batch > 0:
        if len(dims) == len(shape) and shape:
            return (f"dims {dims} include the batch dimension; with max_batch_size > 0 Triton adds the batch itself, "
                    f"so dims must be {_dims_text(shape[1:])}")
        if shape and shape[0] is not None:
            return (f"the model has a fixed batch of {shape[0]}, but max_batch_size > 0 needs a dynamic first "
                    f"dimension")
        expected = shape[1:]
    if len(dims) != len(expected):
        return f"dims {dims} have rank {len(dims)}, expected {_dims_text(expected)}"
    wrong = [axis for axis, (have, want) in enumerate(zip(dims, expected)) if want is not None and have not in (-1, want)]
    if wrong:
        return f"dims {dims} differ from {_dims_text(expected)} at axis {wrong[0]}"
    return None


def _width(dims: list[int], max_batch: int) -> int | None:
    """The number of columns (labels) an output of ``dims`` has per image; None when dynamic."""
    per_image = dims if max_batch > 0 else dims[1:]
    if not per_image or any(dim < 0 for dim in per_image):
        return None
    width = 1
    for dim in per_image:
        width *= dim
    return width


def _serving_kind(config: Any) -> str | None:
    if config.backend == ONNX_BACKEND or config.platform == ONNX_PLATFORM:
        return "onnx"
    if config.platform == PLAN_PLATFORM or config.backend == PLAN_BACKEND:
        return "tensorrt"
    return None


def _value_shape(value: Any) -> tuple[str | None, Shape]:
    tensor = value.type.tensor_type
    dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim]
    return ONNX_TO_TRITON.get(tensor.elem_type), dims


def _dims_text(shape: Shape) -> str:
    return "[" + ", ".join("-1" if dim is None else str(dim) for dim in shape) + "]"


def _shape_text(shape: Shape) -> str:
    return "(" + ", ".join("?" if dim is None else str(dim) for dim in shape) + ")"


def _parse_error_text(message: str, file_name: str) -> str:
    """``config.pbtxt: Triton cannot parse it: 3:5 : Message type ...`` -> ``line 3, column 5: ...``."""
    detail = message.split("Triton cannot parse it: ", 1)[-1]
    match = re.match(r"(\d+):(\d+)\s*:\s*(.*)", detail, re.S)
    if match:
        return f"Triton cannot parse it: line {match[1]}, column {match[2]}: {match[3]}"
    return f"Triton cannot parse it: {detail}"


def format_check(result: dict[str, Any]) -> str:
    """A table of the checked models (what each serves, its batch, inputs and outputs), then the problems."""
    rows = [("model", "serves", "max batch", "inputs", "outputs", "instances")]
    for name, config in result["models"].items():
        if config is None:
            rows.append((name, "(config does not parse)", "", "", "", ""))
            continue
        serves = config.get("backend") or config.get("platform") or "?"
        if config.get("cc_model_filenames"):
            serves += " " + ",".join(f"sm{cc.replace('.', '')}" for cc in sorted(config["cc_model_filenames"]))
        tensors = {}
        for kind in ("input", "output"):
            tensors[kind] = "; ".join(f"{t.get('name')} {t.get('data_type', 'TYPE_INVALID')[5:]} "
                                      f"[{','.join(str(d) for d in t.get('dims', []))}]" for t in config.get(kind, []))
        groups = ", ".join(f"{g.get('count', 1)}x{g.get('kind', 'KIND_AUTO')[5:]}" for g in config.get("instance_group", []))
        rows.append((name, serves, str(config.get("max_batch_size", 0)), tensors["input"], tensors["output"],
                        groups or "auto"))
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    problems = result["problems"]
    lines.append("")
    if problems:
        lines.append(f"{len(problems)} problem{'s' if len(problems) != 1 else ''}:")
        lines.extend(f"- {problem}" for problem in problems)
    else:
        lines.append(f"no problems in {len(result['models'])} model{'s' if len(result['models']) != 1 else ''}")
    return "\n".join(lines)

