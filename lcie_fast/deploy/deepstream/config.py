"""nvinfer's configuration file and labels file for the DeepStream graph.

nvinfer reads ``config_infer_*.txt`` with GLib's key-file parser and only warns about keys it
does not know: a misspelt key silently changes behaviour. So every key written here comes
from :data:`NVINFER_KEYS`, a whitelist of keys documented for Gst-nvinfer ([property] group),
and the writer refuses anything else. Lists are ``;``-separated (GLib's list separator),
paths are relative to the config file (nvinfer resolves them from the config's folder).

The classifier labels file is one line per output layer with the labels separated by ``;``:
the DeepStream graph has one output layer, so ``labels.txt`` is one line, and a label holding
``;`` or a line break cannot be written (refused, naming it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import InvalidInputError
from ...io import atomic_write

# Gst-nvinfer [property] keys this project writes, with what each does (DeepStream 9.0 documentation).
NVINFER_KEYS: dict[str, str] = {
    "gpu-id": "GPU to run on",
    "onnx-file": "ONNX graph nvinfer builds a TensorRT engine from when no usable engine file is given",
    "model-engine-file": "serialized TensorRT engine (used only when its TensorRT version and GPU match)",
    "labelfile-path": "labels: one line per output layer, labels separated by ';'",
    "batch-size": "frames or objects per inference call",
    "network-mode": "0=FP32, 1=INT8, 2=FP16",
    "network-type": "0=detector, 1=classifier, 2=segmentation, 3=instance segmentation, 100=other (tensor meta only)",
    "process-mode": "1=primary (whole frame), 2=secondary (objects from an upstream detector)",
    "gie-unique-id": "unique id of this nvinfer; metadata carries it",
    "operate-on-gie-id": "secondary mode: the detector whose objects are classified",
    "operate-on-class-ids": "secondary mode: detector classes classified (';'-separated)",
    "input-object-min-width": "secondary mode: smaller objects are not classified",
    "input-object-min-height": "secondary mode: smaller objects are not classified",
    "interval": "primary mode: frames skipped between inferences",
    "model-color-format": "0=RGB, 1=BGR, 2=GRAY",
    "net-scale-factor": "y = net-scale-factor * (x - offsets[c])",
    "offsets": "per-channel offsets subtracted before scaling (';'-separated)",
    "infer-dims": "C;H;W of the network input",
    "maintain-aspect-ratio": "0=stretch to the network size, 1=keep the aspect ratio and pad",
    "scaling-filter": "interpolation of the frame or object scaling: 0=nearest, 1=bilinear",
    "scaling-compute-hw": "0=platform default, 1=GPU, 2=VIC (Jetson)",
    "output-blob-names": "output layers handed to the parser (';'-separated)",
    "classifier-threshold": "minimum confidence handed to the classifier parser",
    "classifier-async-mode": "secondary mode: classify asynchronously (needs a tracker)",
    "custom-lib-path": "library holding the custom parser",
    "parse-classifier-func-name": "custom classifier parser function in custom-lib-path",
    "output-tensor-meta": "1 attaches the raw output tensors as NvDsInferTensorMeta user meta",
    "workspace-size": "TensorRT builder workspace in MiB",
}
PROPERTY_GROUP = "property"


def check_label_names(labels: Sequence[str]) -> None:
    """Refuse label names the labels file (or the parser's C strings) cannot carry, or that repeat, naming the label."""
    repeated = sorted({label for label in labels if list(labels).count(label) > 1})
    if repeated:
        raise InvalidInputError(f"labels {repeated} appear more than once: nvinfer's metadata and the probe name tags by "
                                f"label, so each must be unique")
    for label in labels:
        bad = [name for char, name in ((";", "';'"), ("\n", "a line break"), ("\r", "a carriage return"),
                                       ("\0", "a NUL byte")) if char in label]
        if bad or not label.strip():
            why = f"holds {bad[0]}" if bad else "is empty"
            raise InvalidInputError(f"label {label!r} {why}: nvinfer's labels file separates labels with ';' on one "
                                    f"line; rename it (e.g. export from a checkpoint trained with other names)")


def config_text(values: dict[str, Any], comments: Sequence[str] = ()) -> str:
    """The ``[property]`` group of ``values`` as GLib key-file text; every key must be whitelisted.

    Values: str, int, float (written with ``repr`` precision), or a list/tuple (``;``-separated).

    Raises:
        InvalidInputError: a key outside :data:`NVINFER_KEYS`, or a value holding a line break.
    """
    unknown = sorted(set(values) - set(NVINFER_KEYS))
    if unknown:
        raise InvalidInputError(f"nvinfer config keys {unknown} are not in the whitelist of documented keys "
                                f"(nvinfer would ignore them with only a warning)")
    lines = [f"# {line}" for line in comments] + [f"[{PROPERTY_GROUP}]"]
    for key, value in values.items():
        text = ";".join(_scalar(v) for v in value) if isinstance(value, (list, tuple)) else _scalar(value)
        if "\n" in text or "\r" in text:
            raise InvalidInputError(f"nvinfer config key {key}: the value holds a line break")
        lines.append(f"{key}={text}")
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_config(path: str | Path, values: dict[str, Any], comments: Sequence[str] = ()) -> Path:
    """Write the config (atomically) and return its path."""
    with atomic_write(path, "w") as handle:
        handle.write(config_text(values, comments))
    return Path(path)


def write_labels(path: str | Path, labels: Sequence[str]) -> Path:
    """Write the classifier labels file: one line, labels separated by ``;`` (one output layer)."""
    check_label_names(labels)
    with atomic_write(path, "w") as handle:
        handle.write(";".join(labels) + "\n")
    return Path(path)
