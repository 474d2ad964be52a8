"""Triton's own ``config.pbtxt`` parser, without grpcio: ``tritonclient``'s generated
``grpc/model_config_pb2.py``, loaded by file path, with ``google.protobuf.text_format``.

Importing ``tritonclient.grpc`` would import grpcio; the generated module needs only protobuf.
It carries Triton's ``ModelConfig`` schema, so an unknown field, a wrong enum or a stray brace
fails here exactly as it fails in the server (``text_format.ParseError``).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from .._optional import MissingDependencyError, install_hint
from ..errors import UserError


class TritonConfigError(UserError, ValueError):
    """A ``config.pbtxt`` Triton would refuse, or a model repository with problems (each named)."""


@functools.cache
def model_config_pb2() -> ModuleType:
    """tritonclient's ``model_config_pb2`` module, loaded by file path (grpcio is never imported).

    Raises:
        MissingDependencyError: tritonclient (or protobuf) is not installed.
    """
    spec = importlib.util.find_spec("tritonclient")
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py" if spec else None
    if path is None or not path.is_file():
        raise MissingDependencyError(f"checking Triton configs needs tritonclient's grpc/model_config_pb2.py, which is "
                                     f"not installed here. Install it with: {install_hint('tritonclient')}")
    module_spec = importlib.util.spec_from_file_location("lcie_fast_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except ImportError as err:
        raise MissingDependencyError(f"loading {path} needs protobuf ({err}). Install it with: "
                                     f"{install_hint('tritonclient')}") from err
    return module


def parse_model_config(text: str, source: Any = "config.pbtxt") -> Any:
    """``text`` parsed as Triton parses it: an ``inference.ModelConfig`` message.

    Raises:
        TritonConfigError: the text does not parse (unknown field, bad value, syntax), naming ``source``.
    """
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, model_config_pb2().ModelConfig())
    except text_format.ParseError as err:
        raise TritonConfigError(f"{source}: Triton cannot parse it: {err}") from None


def config_as_json(config: Any) -> dict[str, Any]:
    """The JSON view of a parsed config, as Triton's ``/v2/models/<name>/config`` returns it."""
    from google.protobuf import json_format

    return json_format.MessageToDict(config, preserving_proto_field_name=True)
