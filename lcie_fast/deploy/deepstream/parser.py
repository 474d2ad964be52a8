"""The C++ multi-label classifier parser of a DeepStream bundle (its ``parser/`` folder).

nvinfer's built-in classifier parser keeps only the best class of each output layer, so a C-way
sigmoid output would give at most one tag. :func:`write_parser` copies a parser source and its
Makefile (package data under ``templates/``) and writes ``lcie_parser_config.h``, which bakes in
the labels, the per-class thresholds, the top-k cut and the output layer name. Building it on the
DeepStream machine (``make CUDA_VER=X.Y``) gives :data:`LIBRARY_NAME`, which nvinfer loads through
``custom-lib-path`` and calls as :data:`PARSE_FUNCTION` (``parse-classifier-func-name``).

What the parser does is written at the top of ``templates/nvdsinfer_lcie_parser.cpp``: a class is
kept when its probability is finite and >= its threshold (float32 on both sides, as
:class:`lcie_fast.tagger.Tagger` compares), best first with ties in label order, at most ``top_k``;
nvinfer's own ``classifier-threshold`` is ignored; the description string is the kept labels joined
by :data:`DESCRIPTION_SEPARATOR`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from ...errors import InvalidInputError

PARSE_FUNCTION = "NvDsInferParseCustomLcieMultiLabel"
LIBRARY_NAME = "libnvdsinfer_lcie_parser.so"
SOURCE_NAME = "nvdsinfer_lcie_parser.cpp"
MAKEFILE_NAME = "Makefile"
CONFIG_HEADER = "lcie_parser_config.h"
DESCRIPTION_SEPARATOR = ", "  # between labels in nvinfer's description string; labels may hold spaces
DEFAULT_OUTPUT_NAME = "probs"

_TEMPLATES = (SOURCE_NAME, MAKEFILE_NAME)
# A label nvinfer's labels file cannot hold (';' separates labels, a newline ends the line), or C cannot.
_REFUSED = {";": "';' (DeepStream's labels file separates labels with it)", "\n": "a newline", "\r": "a carriage return",
            "\0": "a NUL character"}


def c_string_literal(text: str, what: str = "text") -> str:
    """``text`` as a C/C++ string literal of its UTF-8 bytes.

    Printable ASCII stays as it is except ``"``, ``\\`` and ``?`` (escaped); every other byte
    (control characters, each byte of a non-ASCII character) becomes a three-digit octal escape,
    which, unlike ``\\x``, never swallows the characters after it.

    Args:
        text: The string.
        what: What it is, for the error message.

    Returns:
        The literal, quotes included: ``"caf\\303\\251"`` for ``café``.

    Raises:
        InvalidInputError: ``text`` cannot be encoded as UTF-8 (a lone surrogate).
    """
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidInputError(f"{what} {text!r} cannot be written as UTF-8: {err.reason}") from err
    out = []
    for byte in data:
        char = chr(byte)
        if char in '"\\?':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _float_literal(value: float) -> str:
    """The float32 nearest ``value`` as a C++ ``float`` literal that reads back to the same float32."""
    return np.format_float_positional(np.float32(value), unique=True, trim="0") + "f"


def _check_labels(labels: Sequence[str]) -> list[str]:
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise InvalidInputError(f"labels must be a list of strings, got {type(labels).__name__}")
    if not labels:
        raise InvalidInputError("labels is empty: the parser needs one label per output class")
    for position, label in enumerate(labels):
        if not isinstance(label, str):
            raise InvalidInputError(f"label {position} must be a string, got {type(label).__name__} {label!r}")
        if not label:
            raise InvalidInputError(f"label {position} is empty: nvinfer would show an empty tag")
        for char, name in _REFUSED.items():
            if char in label:
                raise InvalidInputError(f"label {position} {label!r} contains {name}, which a DeepStream bundle cannot hold; "
                                        "rename the label")
        c_string_literal(label, f"label {position}")
    return list(labels)


def _check_thresholds(thresholds: float | Sequence[float], labels: Sequence[str]) -> list[float]:
    if isinstance(thresholds, numbers.Real):
        values = [thresholds] * len(labels)
    else:
        values = list(thresholds)
        if len(values) != len(labels):
            raise InvalidInputError(f"thresholds has {len(values)} values but there are {len(labels)} labels: "
                                    "give one threshold per label, in label order")
    checked = []
    for label, value in zip(labels, values):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not 0 <= value <= 1:
            raise InvalidInputError(f"threshold {value!r} of label {label!r} must be a number in [0, 1]")
        checked.append(float(value))
    return checked


def _check_top_k(top_k: int | None) -> int:
    if top_k is None:
        return 0
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0:
        raise InvalidInputError(f"top_k must be None or an integer >= 0 (0 keeps every label above its threshold), "
                                f"got {top_k!r}")
    return int(top_k)


def config_header(labels: Sequence[str], thresholds: float | Sequence[float], top_k: int | None = None,
                  output_name: str = DEFAULT_OUTPUT_NAME) -> str:
    """The text of ``lcie_parser_config.h``: what the parser bakes in.

    Args:
        labels: The model's labels, in output order (C of them).
        thresholds: One threshold in [0, 1] per label, in label order, or one for every label.
        top_k: Keep at most this many labels per frame or object; ``None`` or 0: no limit.
        output_name: The output layer the parser reads (``probs``: sigmoid applied in the graph).

    Returns:
        The header text, which declares in namespace ``lcie``: ``kNumClasses``, ``kTopK``,
        ``kOutputLayer``, ``kDescriptionSeparator``, ``kLabels[C]``, ``kThresholds[C]``.

    Raises:
        InvalidInputError: a label that is empty, not a string, or holds ``;``, a newline or NUL;
            a threshold outside [0, 1] or a count other than the labels'; ``top_k`` < 0; an empty
            ``output_name`` or one that holds NUL.
    """
    labels = _check_labels(labels)
    values = _check_thresholds(thresholds, labels)
    k = _check_top_k(top_k)
    if not isinstance(output_name, str) or not output_name or "\0" in output_name:
        raise InvalidInputError(f"output_name must be a non-empty layer name without NUL, got {output_name!r}")
    rows = "\n".join(f"    {c_string_literal(label)},  // {position}" for position, label in enumerate(labels))
    limits = "\n".join(f"    {_float_literal(value)},  // {position}" for position, value in enumerate(values))
    return f"""\
// Generated by lcie-fast (lcie_fast.deploy.deepstream.parser): the settings the multi-label parser
// bakes in. Labels are UTF-8, non-ASCII bytes as octal escapes; thresholds are float32 and a class
// is kept when its probability >= its threshold. Edit and run make again to change them.
#ifndef LCIE_PARSER_CONFIG_H
#define LCIE_PARSER_CONFIG_H

namespace lcie {{

constexpr unsigned int kNumClasses = {len(labels)};
constexpr unsigned int kTopK = {k};  // keep at most this many, best first; 0: no limit
constexpr const char *kOutputLayer = {c_string_literal(output_name, "output_name")};
constexpr const char *kDescriptionSeparator = {c_string_literal(DESCRIPTION_SEPARATOR)};

constexpr const char *kLabels[kNumClasses] = {{
{rows}
}};

constexpr float kThresholds[kNumClasses] = {{
{limits}
}};

}}  // namespace lcie

#endif  // LCIE_PARSER_CONFIG_H
"""


def write_parser(out_dir: str | Path, labels: Sequence[str], thresholds: float | Sequence[float], top_k: int | None = None,
                 output_name: str = DEFAULT_OUTPUT_NAME) -> list[Path]:
    """Write the parser's source, Makefile and baked-in settings into ``out_dir``.

    Everything is checked before anything is written. Files already there are replaced; a library
    built earlier is rebuilt by ``make`` because the settings header is newer.

    Args:
        out_dir: The bundle's ``parser/`` folder (created if missing).
        labels: The model's labels, in output order.
        thresholds: One threshold in [0, 1] per label, in label order, or one for every label.
        top_k: Keep at most this many labels per frame or object; ``None`` or 0: no limit.
        output_name: The output layer the parser reads.

    Returns:
        The paths written: the C++ source, the Makefile and ``lcie_parser_config.h``.

    Raises:
        InvalidInputError: see :func:`config_header`; also ``out_dir`` being a file.
    """
    header = config_header(labels, thresholds, top_k, output_name)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"parser folder {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    templates = resources.files(__package__).joinpath("templates")
    written = []
    for name in _TEMPLATES:
        target = out_dir / name
        target.write_bytes(templates.joinpath(name).read_bytes())
        written.append(target)
    target = out_dir / CONFIG_HEADER
    target.write_text(header, encoding="utf-8", newline="\n")
    written.append(target)
    return written
