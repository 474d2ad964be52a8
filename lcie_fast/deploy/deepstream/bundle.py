"""``lcie-fast export-deepstream``: a folder that drops into a DeepStream pipeline.

The bundle (every path relative to the config, so the folder can move):

- ``lcie_ds.onnx``: the DeepStream graph (:mod:`.graph`): raw 0-255 RGB in, ``probs`` out;
- ``config_infer_lcie.txt``: nvinfer's config, whitelisted keys only (:mod:`.config`);
- ``labels.txt``: one line, the labels separated by ``;``;
- ``parser/``: the C++ multi-label parser (``--parser cpp``, the default) with its Makefile;
- ``probe_lcie.py``: a pyds probe turning nvinfer's metadata into lcie-fast records;
- ``lcie_deepstream.json``: what the bundle holds (labels, thresholds, top-k, mode, sha256),
  read by the probe;
- ``README.md``: how to build the parser, a ``gst-launch-1.0`` line, the version notes;
- with ``--engine``: the engine bundle (``lcie_ds.engine`` + its sidecar) nvinfer loads instead
  of building one, when its TensorRT version and GPU match the box.

The folder is assembled beside its destination and renamed into place: a failed export leaves
no half bundle.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ...artifacts import (
    DEEPSTREAM_BUNDLE_FILE,
    DEEPSTREAM_FORMAT,
    DEEPSTREAM_FORMAT_VERSION,
    PRECISIONS,
    PROBS_NAME,
    EngineError,
    artifact_kind,
    graph_paths,
    read_onnx_metadata,
    read_sidecar,
    sidecar_path,
    validate_sidecar,
)
from ...errors import InputNotFoundError, InvalidInputError
from ...io import write_json
from .config import check_label_names, write_config, write_labels
from .graph import write_deepstream_graph

GRAPH_FILE = "lcie_ds.onnx"
CONFIG_FILE = "config_infer_lcie.txt"
LABELS_FILE = "labels.txt"
PROBE_FILE = "probe_lcie.py"
ENGINE_FILE = "lcie_ds.engine"
README_FILE = "README.md"
# what a bundle writes: an --overwrite replaces these (and nvinfer's engines cached from the old graph) and nothing else
BUNDLE_ENTRIES = (GRAPH_FILE, CONFIG_FILE, LABELS_FILE, PROBE_FILE, DEEPSTREAM_BUNDLE_FILE, README_FILE, "parser",
                  ENGINE_FILE, f"{ENGINE_FILE}.json")
NVINFER_ENGINE_CACHE = f"{GRAPH_FILE}_b*_gpu*_*.engine"
MODES = ("primary", "secondary")
PARSERS = ("cpp", "tensor-meta")
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}  # nvinfer's network-mode
DEEPSTREAM_TENSORRT = "10.14"  # the TensorRT DeepStream 9.0 ships
# nvinfer's scaler per input scale (scaling-filter: 1 = bilinear, 3 = super-sampling on the GPU): at 2x
# the graph antialiases and plain bilinear measured closest; at 1x super-sampling (area) aliases least
SCALING_FOR_INPUT_SCALE = {1: "super", 2: "bilinear"}
SCALING_FILTER = {"bilinear": 1, "super": 3}


def nvinfer_engine_name(batch_size: int, precision: str, gpu_id: int = 0) -> str:
    """The file nvinfer serializes the engine it builds from ``onnx-file`` to (and reuses next start)."""
    return f"{GRAPH_FILE}_b{batch_size}_gpu{gpu_id}_{precision}.engine"


def _thresholds(labels: Sequence[str], threshold: float | None, thresholds: str | Path | None) -> list[float]:
    from ...thresholds import read_thresholds

    if threshold is not None and thresholds is not None:
        raise InvalidInputError("give --threshold or --thresholds, not both")
    if thresholds is not None:
        fitted = read_thresholds(thresholds, labels)  # names the file on every problem
        return [float(fitted.get(label, 0.5)) for label in labels]
    value = 0.5 if threshold is None else float(threshold)
    if not 0.0 <= value <= 1.0:
        raise InvalidInputError(f"--threshold must be in [0, 1], got {value}")
    return [value] * len(labels)


def _source_graph(model: Path, precision: str, workdir: Path, calib_data: str | None) -> Path:
    """The exported graph of ``precision`` for ``model`` (a checkpoint is exported into ``workdir`` first)."""
    if not model.is_file():
        raise InputNotFoundError(f"model not found: {model}")
    kind = artifact_kind(model)
    if kind == "onnx":
        source = graph_paths(model)[precision] if read_onnx_metadata(model).precision == "fp32" else model
        if not source.is_file():
            raise InputNotFoundError(f"{source} not found: export it from the checkpoint with lcie-fast export "
                                     f"CHECKPOINT.pt -o {model} --{precision}, or pass the checkpoint (.pt) as MODEL")
        found = read_onnx_metadata(source).precision
        if found != precision:
            raise InvalidInputError(f"{source} is a {found} graph, not {precision}: pass the FP32 model.onnx (its "
                                    f"siblings are found beside it) or --precision {found}")
        return source
    if kind != "checkpoint":
        raise InvalidInputError(f"{model}: export-deepstream takes a checkpoint (.pt) or an exported model.onnx, not a "
                                f"{kind}")
    from ..pipeline import CalibrationOptions, export_graphs

    paths = graph_paths(workdir / "model.onnx")
    export_graphs(model, paths["fp32"], fp16=precision == "fp16", int8=precision == "int8",
                  calibration=CalibrationOptions(data=calib_data), log=lambda line: None)
    return paths[precision]


def _copy_engine(engine: Path, graph_sha256: str, precision: str, batch_size: int, folder: Path) -> dict[str, Any]:
    """Copy an engine bundle built from this very ``lcie_ds.onnx`` into the bundle, or refuse it with the reason."""
    if not engine.is_file():
        raise InputNotFoundError(f"--engine {engine}: not found")
    sidecar = read_sidecar(engine)
    built_meta = validate_sidecar(sidecar, sidecar_path(engine))  # every field read below, or an error naming it
    profile, gpu = sidecar.get("profile"), sidecar.get("gpu")
    if not isinstance(profile, dict) or not isinstance(gpu, dict):
        raise EngineError(f"{sidecar_path(engine)}: fields 'profile' and 'gpu' must be objects")
    built_from = sidecar.get("onnx", {}).get("sha256") if isinstance(sidecar.get("onnx"), dict) else None
    if built_from != graph_sha256:
        raise InvalidInputError(
            f"--engine {engine} was built from another graph (sha256 {str(built_from)[:12]}...), not from this "
            f"{GRAPH_FILE} ({graph_sha256[:12]}...): an engine of model.onnx takes normalised input and returns "
            f"logits, which nvinfer cannot feed or read. Build one from the bundle's graph on the DeepStream machine "
            f"(lcie-fast build-engine BUNDLE/{GRAPH_FILE} --profile ...; the same export writes the same graph), or "
            f"leave --engine out: nvinfer builds the engine from {GRAPH_FILE} on first start and reuses it")
    if built_meta.precision != precision:
        raise InvalidInputError(f"--engine {engine} is a {built_meta.precision} engine; this bundle is {precision}")
    largest = profile.get("max_batch")
    if isinstance(largest, int) and largest < batch_size:
        raise InvalidInputError(f"--engine {engine} takes batches up to {largest}; --batch-size is {batch_size}")
    shutil.copyfile(engine, folder / ENGINE_FILE)
    shutil.copyfile(f"{engine}.json", folder / f"{ENGINE_FILE}.json")
    return {"tensorrt_version": str(sidecar.get("tensorrt_version")), "gpu": gpu, "platform": str(sidecar.get("platform"))}


def export_deepstream(model: str | Path, out_dir: str | Path, *, precision: str = "fp16", batch_size: int = 8,
                      mode: str = "primary", threshold: float | None = None, thresholds: str | Path | None = None,
                      top_k: int | None = None, engine: str | Path | None = None, parser: str = "cpp",
                      gie_id: int | None = None, operate_on_gie_id: int = 1,
                      operate_on_class_ids: Sequence[int] = (), min_object_size: tuple[int, int] = (16, 16),
                      gpu_id: int = 0, input_scale: int = 2, calib_data: str | None = None,
                      overwrite: bool = False) -> dict[str, Any]:
    """Write a DeepStream bundle for ``model`` into ``out_dir``; returns what was written.

    Args:
        model: An exported FP32 ``model.onnx`` (the precision's sibling is used) or a ``.pt``
            checkpoint (exported first; INT8 then needs ``calib_data``).
        out_dir: The bundle folder (refused when it exists and is not empty, unless ``overwrite``).
        precision: ``fp32``, ``fp16`` or ``int8`` (nvinfer's network-mode 0 / 2 / 1).
        batch_size: nvinfer's batch-size (frames in primary mode, objects in secondary mode).
        mode: ``primary`` (whole frames) or ``secondary`` (objects of detector ``operate_on_gie_id``).
        threshold, thresholds: One score threshold, or a thresholds file (``lcie-fast eval
            --fit-thresholds`` JSON, ``{label: t}`` JSON, or one number per line); default 0.5.
        top_k: At most this many tags per frame or object (None: no limit).
        engine: An engine bundle built from this bundle's ``lcie_ds.onnx`` to ship with it.
        parser: ``cpp`` (the multi-label parser library; classifier metadata) or ``tensor-meta``
            (``network-type=100`` + ``output-tensor-meta=1``; the probe applies thresholds).
        gie_id: nvinfer's gie-unique-id (default 1 primary, 2 secondary).
        operate_on_class_ids: Secondary mode: the detector classes classified (default all).
        min_object_size: Secondary mode: (width, height) below which objects are not classified.
        gpu_id: nvinfer's gpu-id.
        input_scale: 2 (default): nvinfer scales to twice the model's size and the graph reduces
            by two with the model's own antialiased filter; 1: nvinfer scales to the model's size.
        calib_data: Calibration images when an INT8 graph must be exported from a checkpoint.

    Raises:
        InvalidInputError: a setting out of range, a label nvinfer's labels file cannot hold, an
            engine not built from this graph.
        InputNotFoundError: the model or the precision's graph is missing.
    """
    model, out_dir = Path(model), Path(out_dir)
    if precision not in PRECISIONS:
        raise InvalidInputError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    if mode not in MODES or parser not in PARSERS:
        raise InvalidInputError(f"--mode must be one of {MODES} and --parser one of {PARSERS}")
    for name, value, least in (("--batch-size", batch_size, 1), ("--top-k", top_k, 1), ("--gpu-id", gpu_id, 0),
                               ("--gie-id", gie_id, 1), ("--operate-on-gie-id", operate_on_gie_id, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise InvalidInputError(f"{name} must be a whole number >= {least}, got {value!r}")
    _check_destination(out_dir, overwrite)
    gie_id = gie_id if gie_id is not None else (1 if mode == "primary" else 2)
    if mode == "secondary" and gie_id == operate_on_gie_id:
        raise InvalidInputError(f"--gie-id {gie_id} equals --operate-on-gie-id: a secondary classifier needs its own id")

    destination = out_dir.resolve()  # "." and symlinked folders: the real folder, staged beside it
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="lcie-ds-export-") as workdir:
            source = _source_graph(model, precision, Path(workdir), calib_data)
            meta = read_onnx_metadata(source)
            labels = list(meta.label_names)
            check_label_names(labels)
            limits = _thresholds(labels, threshold, thresholds)
            graph = write_deepstream_graph(source, staging / GRAPH_FILE, input_scale=input_scale)
        engine_info = _copy_engine(Path(engine), graph["sha256"], precision, batch_size, staging) if engine else None
        size = graph["input_size"]
        written = _write_bundle(staging, meta=meta, graph=graph, labels=labels, thresholds=limits, top_k=top_k,
                                precision=precision, batch_size=batch_size, mode=mode, parser=parser, gie_id=gie_id,
                                operate_on_gie_id=operate_on_gie_id, operate_on_class_ids=operate_on_class_ids,
                                min_object_size=min_object_size, gpu_id=gpu_id, engine_info=engine_info, size=size,
                                input_scale=input_scale)
        _move_into_place(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"folder": str(out_dir), "files": sorted(str(p.relative_to(staging)) for p in written),
            "precision": precision, "mode": mode, "parser": parser, "graph_sha256": graph["sha256"],
            "source": str(source), "engine": engine_info}


def _check_destination(out_dir: Path, overwrite: bool) -> None:
    """Refuse a destination the bundle must not be written into (before any work)."""
    if not out_dir.exists():
        if out_dir.is_symlink():
            raise InvalidInputError(f"{out_dir} is a broken symbolic link")
        return
    if not out_dir.is_dir():
        raise InvalidInputError(f"{out_dir} exists and is not a folder")
    if not any(out_dir.iterdir()):
        return
    if not (out_dir / DEEPSTREAM_BUNDLE_FILE).is_file():
        raise InvalidInputError(f"{out_dir} holds files but no bundle ({DEEPSTREAM_BUNDLE_FILE}): write the bundle into "
                                f"a new or empty folder (--overwrite replaces only an earlier bundle's files)")
    if not overwrite:
        raise InvalidInputError(f"{out_dir} holds a bundle; pass --overwrite to replace it")


def _move_into_place(staging: Path, destination: Path) -> None:
    """A new folder is renamed into place in one step; into an existing (empty, or earlier bundle's) folder
    the bundle's entries are replaced one by one, with nvinfer's engines cached from the old graph,
    and every other file is kept."""
    if not destination.exists():
        staging.rename(destination)
        return
    stale = [destination / name for name in BUNDLE_ENTRIES] + list(destination.glob(NVINFER_ENGINE_CACHE))
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for entry in staging.iterdir():
        os.replace(entry, destination / entry.name)


def _write_bundle(folder: Path, *, meta: Any, graph: dict[str, Any], labels: list[str], thresholds: list[float],
                  top_k: int | None, precision: str, batch_size: int, mode: str, parser: str, gie_id: int,
                  operate_on_gie_id: int, operate_on_class_ids: Sequence[int], min_object_size: tuple[int, int],
                  gpu_id: int, engine_info: dict[str, Any] | None, size: int, input_scale: int) -> list[Path]:
    from .parser import LIBRARY_NAME, PARSE_FUNCTION, write_parser

    values: dict[str, Any] = {
        "gpu-id": gpu_id,
        "onnx-file": GRAPH_FILE,
        "model-engine-file": ENGINE_FILE if engine_info else nvinfer_engine_name(batch_size, precision, gpu_id),
        "labelfile-path": LABELS_FILE,
        "batch-size": batch_size,
        "network-mode": NETWORK_MODE[precision],
        "network-type": 1 if parser == "cpp" else 100,
        "process-mode": 1 if mode == "primary" else 2,
        "gie-unique-id": gie_id,
        "model-color-format": 0,
        "net-scale-factor": 1.0,
        "offsets": (0.0, 0.0, 0.0),
        "infer-dims": (3, size, size),
        "maintain-aspect-ratio": 0,
        "scaling-filter": SCALING_FILTER[SCALING_FOR_INPUT_SCALE[input_scale]],
        "scaling-compute-hw": 1,
        "output-blob-names": PROBS_NAME,
    }
    if mode == "primary":
        values["interval"] = 0
    else:
        values["operate-on-gie-id"] = operate_on_gie_id
        if operate_on_class_ids:
            values["operate-on-class-ids"] = tuple(int(c) for c in operate_on_class_ids)
        values["input-object-min-width"], values["input-object-min-height"] = min_object_size
        values["classifier-async-mode"] = 0
    written = []
    if parser == "cpp":
        values["classifier-threshold"] = float(min(thresholds))
        values["custom-lib-path"] = f"parser/{LIBRARY_NAME}"
        values["parse-classifier-func-name"] = PARSE_FUNCTION
        written += write_parser(folder / "parser", labels, thresholds, top_k=top_k, output_name=PROBS_NAME)
    else:
        values["output-tensor-meta"] = 1
    comments = [f"lcie-fast export-deepstream: {meta.preset}, {len(labels)} labels, {precision}, {mode} mode, "
                f"parser {parser}",
                "Normalisation and the sigmoid are inside lcie_ds.onnx: keep net-scale-factor=1.0 and offsets=0;0;0.",
                "Paths are relative to this file. Only documented nvinfer keys are written (a typo is ignored by nvinfer)."]
    written.append(write_config(folder / CONFIG_FILE, values, comments))
    written.append(write_labels(folder / LABELS_FILE, labels))
    templates = resources.files("lcie_fast.deploy.deepstream") / "templates"
    (folder / PROBE_FILE).write_text((templates / PROBE_FILE).read_text(encoding="utf-8"), encoding="utf-8")
    written.append(folder / PROBE_FILE)
    bundle = {"format": DEEPSTREAM_FORMAT, "format_version": DEEPSTREAM_FORMAT_VERSION, "labels": labels,
              "thresholds": thresholds, "top_k": top_k, "mode": mode, "parser": parser, "gie_unique_id": gie_id,
              "output": PROBS_NAME, "precision": precision, "input_size": size, "input_scale": input_scale,
              "model_input_size": meta.preprocess.input_size, "batch_size": batch_size,
              "onnx": GRAPH_FILE, "onnx_sha256": graph["sha256"], "engine": engine_info, "metadata": meta.to_dict()}
    write_json(bundle, folder / DEEPSTREAM_BUNDLE_FILE)
    written.append(folder / DEEPSTREAM_BUNDLE_FILE)
    readme = (templates / "README.md").read_text(encoding="utf-8")
    (folder / "README.md").write_text(readme.format(**_readme_fields(values, bundle, engine_info)), encoding="utf-8")
    written.append(folder / "README.md")
    written.append(folder / GRAPH_FILE)
    if engine_info:
        written += [folder / ENGINE_FILE, folder / f"{ENGINE_FILE}.json"]
    with contextlib.suppress(OSError):
        folder.chmod(0o755)  # mkdtemp made it 0700 (it becomes the bundle folder when that is new)
    return written


PARSER_ROW = "| `parser/` | C++ multi-label parser: thresholds and top-k baked in (build it: below) |\n"
PARSER_SECTION = """## Why a custom parser
nvinfer's built-in classifier parser keeps only the best class per output layer, so a sigmoid
output would give at most one tag per frame. `parser/` keeps every label at or above its own
threshold (best first, at most top-k; `classifier-threshold` is not used by it) and sets the
description string nvinfer needs to attach anything.

## Build the parser (on the DeepStream machine)

    cd parser && make CUDA_VER=12.8        # your DeepStream's CUDA version; DS_PATH=/opt/nvidia/deepstream/deepstream by default

The parser was compiled and tested by lcie-fast only against a stub of `nvdsinfer_custom_impl.h`
written from the documented structures: its ABI is checked only when you build it against the
real DeepStream headers, here.
"""
TENSOR_META_SECTION = """## Raw scores as tensor metadata
This bundle sets `network-type=100` and `output-tensor-meta=1`: nvinfer attaches the raw `probs`
tensor to each frame (or object) and `probe_lcie.py` applies the thresholds and top-k. No parser
library is needed (nvinfer's built-in classifier parser would keep one label per frame).
"""


def _readme_fields(values: dict[str, Any], bundle: dict[str, Any], engine_info: dict[str, Any] | None) -> dict[str, str]:
    engine = (f"`{ENGINE_FILE}` was built with TensorRT {engine_info['tensorrt_version']} for "
              f"{(engine_info.get('gpu') or {}).get('name', '?')} (sm {(engine_info.get('gpu') or {}).get('compute_capability', '?')}) "
              f"on {engine_info.get('platform')}: nvinfer uses it only on that GPU with that TensorRT; anywhere else "
              f"it builds a new engine from `{GRAPH_FILE}`." if engine_info else
              f"No engine is shipped: on first start nvinfer builds one from `{GRAPH_FILE}` (minutes on a Jetson) and "
              f"saves it as `{values['model-engine-file']}` beside the config, which later starts reuse.")
    return {"labels": ", ".join(bundle["labels"]), "count": str(len(bundle["labels"])), "precision": bundle["precision"],
            "mode": bundle["mode"], "parser": bundle["parser"], "size": str(bundle["input_size"]),
            "batch": str(bundle["batch_size"]), "engine_note": engine, "trt": DEEPSTREAM_TENSORRT,
            "tags_limit": (f"at most {bundle['top_k']} tags per frame or object" if bundle["top_k"]
                           else "every label at or above its threshold is a tag (no top-k limit)"),
            "parser_row": PARSER_ROW if bundle["parser"] == "cpp" else "",
            "parser_section": PARSER_SECTION if bundle["parser"] == "cpp" else TENSOR_META_SECTION,
            "gie": str(bundle["gie_unique_id"]),
            "scale_note": (f"; the graph halves it to the model's {bundle['model_input_size']} with the model's own "
                           f"antialiased filter" if bundle["input_scale"] == 2 else ""),
            "thresholds": json.dumps(dict(zip(bundle["labels"], [round(t, 4) for t in bundle["thresholds"]])))}
