"""The DeepStream multi-label parser: the C++ library nvinfer loads, and the Python side that emits it.

The library is built with its own Makefile and ``g++ -std=c++17 -Wall -Wextra -Werror`` against the
stub headers in ``tests/deepstream_stub`` (written from DeepStream's documented fields: the ABI is only
checked on a DeepStream machine). ``harness.cpp`` plays nvinfer: it dlopens the library, calls the
parse function by name on one sample's layer and prints the attributes and the description as JSON.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from lcie_fast.deploy.deepstream.parser import (
    CONFIG_HEADER,
    DESCRIPTION_SEPARATOR,
    LIBRARY_NAME,
    PARSE_FUNCTION,
    c_string_literal,
    config_header,
    write_parser,
)
from lcie_fast.errors import InvalidInputError

STUB = Path(__file__).parent / "deepstream_stub"
GXX, MAKE = shutil.which("g++"), shutil.which("make")
needs_toolchain = pytest.mark.skipif(GXX is None or MAKE is None,
                                     reason="g++ and make are needed to build the C++ parser (apt-get install g++ make)")
STRICT = "-O1 -Wall -Wextra -Werror"

# quotes, backslashes, '?', spaces, non-ASCII (2- and 4-byte UTF-8): each must reach nvinfer byte for byte
LABELS = ["car", 'say "hi"', "back\\slash", "café 🚗", "what?? ??/", "bus"]
THRESHOLDS = [0.45, 0.5, 0.3, 0.2, 0.6, 1.0]
TOPK_LABELS = ["a", "b", "c", "d", "e"]


def _build(folder: Path, cxxflags: str = STRICT, extra: tuple[str, ...] = (), **parser_args) -> Path:
    write_parser(folder, **parser_args)
    result = subprocess.run([MAKE, "-C", str(folder), "CUDA_VER=stub", f"INCLUDES=-I{STUB}", f"CXX={GXX}",
                             f"CXXFLAGS={cxxflags}", *extra], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder / LIBRARY_NAME


def _build_harness(out: Path, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([GXX, "-std=c++17", "-Wall", "-Wextra", "-Werror", *flags, f"-I{STUB}",
                           str(STUB / "harness.cpp"), "-o", str(out), "-ldl"], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    if GXX is None or MAKE is None:
        pytest.skip("g++ and make are needed to build the C++ parser (apt-get install g++ make)")
    out = tmp_path_factory.mktemp("harness") / "harness"
    result = _build_harness(out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def plain(tmp_path_factory, harness) -> Path:
    """The parser for LABELS with per-class THRESHOLDS, no top-k, output ``probs``."""
    return _build(tmp_path_factory.mktemp("plain"), labels=LABELS, thresholds=THRESHOLDS)


@pytest.fixture(scope="module")
def topk(tmp_path_factory, harness) -> Path:
    """A parser keeping the 2 best of 5 labels at 0.3, reading an output named ``scores``."""
    return _build(tmp_path_factory.mktemp("topk"), labels=TOPK_LABELS, thresholds=0.3, top_k=2, output_name="scores")


@pytest.fixture(scope="module")
def many(tmp_path_factory, harness) -> tuple[Path, np.ndarray]:
    """A parser for 97 labels with random per-class thresholds (0.05 steps, so probabilities tie with them)."""
    thresholds = np.random.default_rng(0).integers(1, 20, 97) / 20
    folder = tmp_path_factory.mktemp("many")
    return _build(folder, labels=[f"tag{c}" for c in range(97)], thresholds=thresholds.tolist()), thresholds


def _f32(value: float) -> str:
    """``value`` as the shortest text strtof reads back to the same float32."""
    return np.format_float_positional(np.float32(value), unique=True)


def _parse(harness: Path, library: Path, probs, *options: str) -> tuple[dict, str]:
    values = [p if isinstance(p, str) else _f32(p) for p in probs]
    result = subprocess.run([str(harness), str(library), PARSE_FUNCTION, *options, "--", *values],
                            capture_output=True, timeout=60)
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0, stderr
    return json.loads(result.stdout.decode("utf-8")), stderr


def _kept(output: dict) -> list[int]:
    return [a["value"] for a in output["attributes"]]


# ----------------------------------------------------------------------------- the C++ parser
@needs_toolchain
def test_keeps_several_classes_best_first_ignoring_classifier_threshold(harness, plain):
    probs = [0.9, 0.7, 0.31, 0.25, 0.1, 1.0]
    # classifier-threshold 0.95 would keep only "bus": the per-class thresholds decide instead
    out, stderr = _parse(harness, plain, probs, "--classifier-threshold", "0.95")
    assert out["ok"] is True and stderr == ""
    assert _kept(out) == [5, 0, 1, 2, 3]  # 0.1 < 0.6 drops class 4; 1.0 >= 1.0 keeps class 5
    assert [a["index"] for a in out["attributes"]] == [0] * 5
    # the harness prints 9 significant digits: enough to read the float32 back exactly
    assert [np.float32(a["confidence"]) for a in out["attributes"]] == [np.float32(probs[c]) for c in _kept(out)]
    assert [a["label"] for a in out["attributes"]] == [LABELS[c] for c in _kept(out)]
    assert out["description"] == "bus, car, say \"hi\", back\\slash, café 🚗"
    assert DESCRIPTION_SEPARATOR == ", "


@needs_toolchain
@pytest.mark.parametrize("cls", [0, 2, 5])
def test_threshold_is_inclusive_in_float32(harness, plain, cls):
    at = [0.0] * len(LABELS)
    at[cls] = THRESHOLDS[cls]
    below = list(at)
    below[cls] = float(np.nextafter(np.float32(THRESHOLDS[cls]), np.float32(0)))
    assert _kept(_parse(harness, plain, at)[0]) == [cls]
    out, _ = _parse(harness, plain, below)
    assert out == {"ok": True, "attributes": [], "description": ""}


@needs_toolchain
def test_nothing_kept_gives_no_attributes_and_an_empty_description(harness, plain):
    out, stderr = _parse(harness, plain, [0.1, 0.2, 0.05, 0.0, 0.3, 0.5])
    assert out == {"ok": True, "attributes": [], "description": ""} and stderr == ""


@needs_toolchain
def test_non_finite_probabilities_are_never_kept(harness, plain):
    out, _ = _parse(harness, plain, ["nan", "inf", "-inf", "0.5", "nan", "inf"])
    assert out["ok"] is True and _kept(out) == [3]


@needs_toolchain
def test_labels_round_trip_byte_for_byte_and_ties_keep_label_order(harness, plain):
    out, _ = _parse(harness, plain, [1.0] * len(LABELS))
    assert [a["label"] for a in out["attributes"]] == LABELS
    assert out["description"] == DESCRIPTION_SEPARATOR.join(LABELS)


@needs_toolchain
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_the_python_tagger_rule_with_many_ties(harness, many, seed):
    """What :class:`lcie_fast.tagger.Tagger` keeps: float32 probs >= float32 thresholds, stable best-first order."""
    library, thresholds = many
    probs = np.random.default_rng(seed).integers(0, 21, len(thresholds)).astype(np.float32) / np.float32(20)  # (C,)
    order = np.argsort(-probs, kind="stable")
    expected = [int(c) for c in order if probs[c] >= thresholds.astype(np.float32)[c]]
    out, _ = _parse(harness, library, probs.tolist())
    assert len(expected) > 20 and _kept(out) == expected
    assert out["description"] == ", ".join(f"tag{c}" for c in expected)


@needs_toolchain
def test_top_k_keeps_the_best(harness, topk):
    out, _ = _parse(harness, topk, [0.4, 0.9, 0.4, 0.8, 0.1], "--name", "scores")
    assert _kept(out) == [1, 3] and out["description"] == "b, d"
    out, _ = _parse(harness, topk, [0.5, 0.5, 0.5, 0.0, 0.9], "--name", "scores")
    assert _kept(out) == [4, 0]  # a tie goes to the lower class index


@needs_toolchain
def test_output_layer_is_found_by_name_else_the_only_one(harness, topk):
    probs = [0.0, 0.0, 0.0, 0.9, 0.0]
    # the decoy (all 1.0) comes first: reading it would keep a and b
    assert _kept(_parse(harness, topk, probs, "--name", "scores", "--decoy", "probs")[0]) == [3]
    assert _kept(_parse(harness, topk, probs, "--name", "logits")[0]) == [3]
    out, stderr = _parse(harness, topk, probs, "--name", "logits", "--decoy", "probs")
    assert out["ok"] is False and out["attributes"] == []
    assert "'scores'" in stderr and "[probs, logits]" in stderr and "output-blob-names=scores" in stderr
    assert stderr.count("\n") == 1


@needs_toolchain
@pytest.mark.parametrize(("dtype", "name"), [(1, "HALF"), (2, "INT8"), (3, "INT32")])
def test_refuses_other_data_types(harness, plain, dtype, name):
    out, stderr = _parse(harness, plain, [0.9] * len(LABELS), "--dtype", str(dtype))
    assert out == {"ok": False, "attributes": [], "description": ""}
    assert f"data type {name} ({dtype})" in stderr and "FLOAT" in stderr and stderr.count("\n") == 1


@needs_toolchain
@pytest.mark.parametrize("elements", [5, 7, 12])
def test_refuses_a_wrong_element_count(harness, plain, elements):
    # 12 = the batch of 2 counted in: nvinfer's layer for a parser is one sample
    out, stderr = _parse(harness, plain, [0.9] * max(elements, len(LABELS)), "--elements", str(elements))
    assert out == {"ok": False, "attributes": [], "description": ""}
    assert f"has {elements} elements" in stderr and f"{len(LABELS)} labels" in stderr


@needs_toolchain
def test_makefile_needs_cuda_ver_but_not_to_clean(tmp_path):
    write_parser(tmp_path, LABELS, THRESHOLDS)
    env = {name: value for name, value in os.environ.items() if name != "CUDA_VER"}
    result = subprocess.run([MAKE, "-C", str(tmp_path)], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0 and "CUDA_VER is not set" in result.stderr
    (tmp_path / LIBRARY_NAME).write_bytes(b"stale")
    result = subprocess.run([MAKE, "-C", str(tmp_path), "clean"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / LIBRARY_NAME).exists()


@needs_toolchain
def test_memory_is_clean_under_address_sanitizer(tmp_path):
    """Labels are heap copies nvinfer may free(), nothing is read past the layer, nothing leaks."""
    sanitize = "-fsanitize=address,undefined -fno-sanitize-recover=all"
    harness = tmp_path / "harness"
    result = _build_harness(harness, tuple(sanitize.split()))
    if result.returncode != 0:
        pytest.skip(f"this g++ cannot build with {sanitize}: {result.stderr.strip()[-300:]}")
    library = _build(tmp_path / "parser", cxxflags=f"{STRICT} {sanitize}", labels=LABELS, thresholds=THRESHOLDS, top_k=3)
    for options, kept in (((), 3), (("--dtype", "1"), 0), (("--elements", "7"), 0)):
        result = subprocess.run([str(harness), str(library), PARSE_FUNCTION, *options, "--", *["0.9"] * len(LABELS)],
                                capture_output=True, timeout=60, env={"ASAN_OPTIONS": "detect_leaks=1"})
        stderr = result.stderr.decode("utf-8", "replace")
        assert result.returncode == 0 and "Sanitizer" not in stderr and "runtime error" not in stderr, stderr
        assert len(json.loads(result.stdout)["attributes"]) == kept


# ----------------------------------------------------------------------------- the Python side
def test_write_parser_copies_the_templates_and_writes_the_settings(tmp_path):
    written = write_parser(tmp_path / "bundle" / "parser", LABELS, 0.25, top_k=4, output_name="out")
    assert [p.name for p in written] == ["nvdsinfer_lcie_parser.cpp", "Makefile", CONFIG_HEADER]
    templates = resources.files("lcie_fast.deploy.deepstream").joinpath("templates")
    for path in written[:2]:
        assert path.read_bytes() == templates.joinpath(path.name).read_bytes()
    header = written[2].read_text(encoding="utf-8")
    assert "kNumClasses = 6;" in header and "kTopK = 4;" in header and 'kOutputLayer = "out";' in header
    assert header.count("0.25f,") == len(LABELS)
    assert PARSE_FUNCTION in written[0].read_text() and LIBRARY_NAME in written[1].read_text()


def test_c_string_literal_escapes():
    assert c_string_literal('a"b\\c?') == '"a\\"b\\\\c\\?"'
    assert c_string_literal("café") == '"caf\\303\\251"'
    assert c_string_literal("tab\there") == '"tab\\011here"'
    assert c_string_literal("\x7f1") == '"\\1771"'  # octal escapes stop after 3 digits: the 1 stays a 1


def test_thresholds_are_float_literals_that_read_back_to_the_same_float32():
    values = [0.1, 1 / 3, 1e-7, 0.0, 1.0]
    header = config_header(["v", "w", "x", "y", "z"], values)
    body = header[header.index("kThresholds[kNumClasses] = {"):].splitlines()[1:len(values) + 1]
    literals = [line.split("f,")[0].strip() for line in body]  # "    0.1f,  // 0" -> "0.1"
    assert [np.float32(v) for v in literals] == [np.float32(v) for v in values]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"labels": ["car", "a;b"]}, "label 1 'a;b' contains ';'"),
    ({"labels": ["car", "two\nlines"]}, "label 1 'two\\nlines' contains a newline"),
    ({"labels": ["car\r"]}, "contains a carriage return"),
    ({"labels": ["car", "nul\0"]}, "contains a NUL"),
    ({"labels": ["car", ""]}, "label 1 is empty"),
    ({"labels": ["car", 3]}, "label 1 must be a string"),
    ({"labels": "car"}, "labels must be a list"),
    ({"labels": []}, "labels is empty"),
    ({"labels": ["car", "bad\udc80"]}, "cannot be written as UTF-8"),
    ({"thresholds": [0.5, 1.5]}, "threshold 1.5 of label 'bus'"),
    ({"thresholds": [-0.1, 0.5]}, "threshold -0.1 of label 'car'"),
    ({"thresholds": [math.nan, 0.5]}, "threshold nan of label 'car'"),
    ({"thresholds": [0.5, True]}, "threshold True of label 'bus'"),
    ({"thresholds": [0.5]}, "thresholds has 1 values but there are 2 labels"),
    ({"top_k": -1}, "top_k must be None or an integer >= 0"),
    ({"top_k": 1.5}, "top_k must be None or an integer >= 0"),
    ({"output_name": ""}, "output_name must be a non-empty"),
    ({"output_name": "pr\0bs"}, "output_name must be a non-empty"),
])
def test_write_parser_refuses_before_writing(tmp_path, kwargs, message):
    args = {"labels": ["car", "bus"], "thresholds": [0.5, 0.5], **kwargs}
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        write_parser(tmp_path / "parser", **args)
    assert not (tmp_path / "parser").exists()
