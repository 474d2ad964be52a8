"""Static check of the TensorRT code: every TensorRT name it uses exists in both the 10.16 and
the 11.4 Python bindings, and none of the names TensorRT 11 removed is used.

TensorRT cannot be installed here (notes/tensorrt.md), so the code cannot run; the identifier
lists in tests/data were extracted from the real bindings wheels by
scripts/list_trt_identifiers.py. The linker stores a short string as the tail of a longer one,
so a name counts as present when a listed string ends with it: a pass means "not missing",
and the removed names are checked by name as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "lcie_fast" / "deploy" / "tensorrt.py", ROOT / "lcie_fast" / "runtime" / "tensorrt.py"]
# variables (or self attributes) that hold TensorRT objects in those files
TRT_OBJECTS = {"trt", "builder", "network", "parser", "config", "optimization", "runtime", "engine", "context",
               "timing_cache", "logger"}
# removed in TensorRT 11 (migration guide) or legacy API that 10.x deprecated
REMOVED = {"FP16", "BF16", "INT8", "FP8", "int8_calibrator", "IInt8EntropyCalibrator2", "IInt8Calibrator",
           "IInt8MinMaxCalibrator", "EXPLICIT_BATCH", "platform_has_fast_fp16", "platform_has_fast_int8",
           "device_memory_size", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
           "execute_async_v2", "get_binding_index", "max_batch_size", "build_engine", "set_flag_fp16"}


def _identifiers(version: str) -> list[str]:
    path = ROOT / "tests" / "data" / f"trt_identifiers_{version}.txt"
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def _present(name: str, identifiers: list[str]) -> bool:
    return any(s.endswith(name) for s in identifiers)


def _root(node: ast.AST) -> str | None:
    """The name a chain like ``self.context.set_input_shape(...)`` or ``trt.Logger.WARNING`` hangs on."""
    while True:
        if isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return node.attr
            node = node.value
        elif isinstance(node, ast.Name):
            return node.id
        else:
            return None


def used_trt_names() -> dict[str, set[str]]:
    """Every attribute name used on a TensorRT object, by source file."""
    used: dict[str, set[str]] = {}
    for source in SOURCES:
        names = set()
        for node in ast.walk(ast.parse(source.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                continue  # self.<object> itself is ours
            if _root(node.value) in TRT_OBJECTS:
                names.add(node.attr)
        used[source.name if source.parent.name == "runtime" else f"deploy/{source.name}"] = names
    return used


def test_identifier_lists_are_real_and_tell_the_versions_apart():
    v10, v11 = _identifiers("10.16"), _identifiers("11.4")
    assert len(v10) > 3000 and len(v11) > 3000
    for name in ("build_serialized_network", "execute_async_v3", "set_tensor_address", "STRONGLY_TYPED"):
        assert _present(name, v10) and _present(name, v11), name
    for removed in ("EXPLICIT_BATCH", "int8_calibrator", "platform_has_fast_fp16"):
        assert _present(removed, v10) and not _present(removed, v11), removed


def test_the_code_uses_a_known_set_of_tensorrt_names():
    used = used_trt_names()
    everything = set().union(*used.values())
    print("TensorRT names used:", sorted(everything))
    for expected in ("build_serialized_network", "STRONGLY_TYPED", "set_input_shape", "set_tensor_address",
                     "execute_async_v3", "deserialize_cuda_engine", "create_optimization_profile"):
        assert expected in everything  # the collector sees the calls it is meant to check


@pytest.mark.parametrize("version", ["10.16", "11.4"])
def test_every_tensorrt_name_exists_in_the_bindings(version):
    identifiers = _identifiers(version)
    missing = {f"{where}: {name}" for where, names in used_trt_names().items() for name in names
               if not _present(name, identifiers)}
    assert not missing, f"not in the TensorRT {version} bindings: {sorted(missing)}"


def test_no_name_removed_in_tensorrt_11_is_used():
    used = set().union(*used_trt_names().values())
    assert not used & REMOVED, f"removed/legacy TensorRT API used: {sorted(used & REMOVED)}"
