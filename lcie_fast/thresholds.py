"""Per-label threshold files, in the three forms users bring them.

- the project's JSON, as ``lcie-fast eval --fit-thresholds`` writes it
  (:func:`lcie_fast.metrics.fit_thresholds`): ``{"thresholds": {label: t}, "f1": ..., "default": ...}``;
- a plain JSON object ``{label: t}`` (some labels only: the others keep their threshold);
- a text file of one number per line, in the model's label order, one per label (as other
  taggers export them); blank lines and ``#`` comments are ignored.

Every value must be a finite number in [0, 1]. Each error names the file, and the line or the
label, so a threshold file from another model or another label order is refused before any
image is tagged rather than silently shifting every label's threshold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import InputNotFoundError, InvalidInputError
from .postprocess import unknown_names_message


def read_thresholds(path: str | Path, labels: Sequence[str]) -> dict[str, float]:
    """The thresholds in the file ``path``, for a model with ``labels``.

    A file whose first non-blank character is ``{`` (or whose name ends in ``.json``) is read
    as JSON; any other as one number per line.

    Args:
        path: The thresholds file.
        labels: The model's labels, in its order.

    Returns:
        {label: threshold} of the labels the file sets (every label for a text file).

    Raises:
        InputNotFoundError: ``path`` does not exist.
        InvalidInputError: unreadable, not JSON or not an object, a line that is not a number (its
            number), a count of lines other than the number of labels (both counts), labels the
            model does not have (listed, with the model's labels), or a value that is not a finite
            number in [0, 1]; names the file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputNotFoundError(f"{path}: thresholds file not found") from None
    except IsADirectoryError:
        raise InvalidInputError(f"{path}: is a folder, not a thresholds file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"{path}: cannot read the thresholds file: {err}") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        return _from_json(path, text, labels)
    return _from_lines(path, text, labels)


def _from_json(path: Path, text: str, labels: Sequence[str]) -> dict[str, float]:
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [name for name, _ in pairs]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise InvalidInputError(f"{path}: {twice} given more than once")
        return dict(pairs)

    try:
        data = json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError as err:
        raise InvalidInputError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("thresholds"), dict):
        data = data["thresholds"]  # the project's format: f1, default ... beside it
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: expected a JSON object {{label: threshold}} (or one under \"thresholds\"), "
                                f"got {type(data).__name__}")
    known = set(labels)
    unknown = [name for name in data if name not in known]
    if unknown:
        raise InvalidInputError(unknown_names_message(f"{path}: thresholds", unknown, labels))
    return {name: _checked(value, f"{path}: threshold for {name!r}") for name, value in data.items()}


def _from_lines(path: Path, text: str, labels: Sequence[str]) -> dict[str, float]:
    values: list[tuple[int, float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        try:
            value = float(content)
        except ValueError:
            raise InvalidInputError(f"{path} line {number}: {content!r} is not a number (expected one threshold per "
                                    "line, in the model's label order)") from None
        values.append((number, value))
    if len(values) != len(labels):
        raise InvalidInputError(f"{path}: {len(values)} thresholds for the model's {len(labels)} labels (one per line, "
                                "in label order)")
    return {label: _checked(value, f"{path} line {number}: threshold for {label!r}")
            for label, (number, value) in zip(labels, values)}


def _checked(value: Any, subject: str) -> float:
    """``value`` as a float when it is a finite number in [0, 1], else InvalidInputError naming ``subject``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise InvalidInputError(f"{subject} must be a finite number in [0, 1], got {value!r}")
    return float(value)
