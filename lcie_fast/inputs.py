"""What can be tagged, and how one input becomes a (3, S, S) uint8 image.

:func:`expand_inputs` flattens the accepted input kinds (paths, folders, globs, lists,
manifests, stdin, in-memory images) into a stream; :func:`decode_input` turns one of them into
a resized image or the reason it could not, and never raises for bad input: a bad file among
millions is an error record, not the end of the run.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.datasets import IMAGE_EXTENSIONS, manifest_paths
from .data.transforms import ImageDecodeError, Preprocess, to_rgb8


@dataclasses.dataclass
class InputItem:
    """One input in the input order: its position, what to decode, its path (None in memory)."""

    index: int
    source: Any  # a path string, or an in-memory image
    path: str | None

    @classmethod
    def numbered(cls, sources: Iterable[Any], start: int = 0) -> Iterator[InputItem]:
        """Items for ``sources`` numbered in order, the first ``start`` left out (resuming)."""
        for index, source in enumerate(sources):
            if index >= start:
                yield cls(index, source, str(source) if isinstance(source, (str, os.PathLike)) else None)


def is_pil_image(obj: Any) -> bool:
    return type(obj).__module__.startswith("PIL.")


def expand_inputs(inputs: Any, *, extensions: Sequence[str] = IMAGE_EXTENSIONS, recursive: bool = True) -> Iterator[Any]:
    """Flatten the accepted input kinds into a stream of paths and in-memory images.

    Accepted: a path or a list of them; ``-`` (paths on stdin, one per line); ``@list.txt`` (a
    file of paths); a directory (image files by extension, recursive, sorted); a glob; a CSV or
    JSONL manifest (its image paths); PIL images; NumPy (H, W, 3) uint8 arrays; torch uint8
    tensors (3, H, W) or (H, W, 3); and (N, H, W, 3) arrays or tensors (N images).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    elif isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == 4:
        inputs = list(inputs)
    elif not isinstance(inputs, Iterable) or isinstance(inputs, (np.ndarray, torch.Tensor)) or is_pil_image(inputs):
        inputs = [inputs]
    exts = {e.lower() for e in extensions}
    for item in inputs:
        if not isinstance(item, (str, os.PathLike)):
            yield item
            continue
        text = str(item)
        if text == "-":
            yield from _lines(sys.stdin)
        elif text.startswith("@"):
            with open(text[1:]) as handle:
                yield from _lines(handle)
        elif Path(text).is_dir():
            pattern = "**/*" if recursive else "*"
            yield from sorted(str(p) for p in Path(text).glob(pattern) if p.is_file() and p.suffix.lower() in exts)
        elif any(ch in text for ch in "*?["):
            yield from sorted(p for p in glob.glob(text, recursive=True) if Path(p).is_file())
        elif Path(text).suffix.lower() in (".csv", ".jsonl") and Path(text).is_file():
            yield from manifest_paths(text)
        else:
            yield text  # a file (a missing one becomes an error record)


def _lines(handle: Iterable[str]) -> Iterator[str]:
    for line in handle:
        if line.strip():
            yield line.strip()


def decode_input(item: InputItem, preprocess: Preprocess) -> tuple[torch.Tensor | None, str | None]:
    """(3, S, S) uint8 and None, or None and why the input cannot be tagged; never raises for bad input."""
    try:
        source = item.source
        if isinstance(source, str):
            return preprocess.load(source), None
        if is_pil_image(source):
            return preprocess.from_array(to_rgb8(source, "<PIL image>")), None
        array = source.detach().cpu() if isinstance(source, torch.Tensor) else np.asarray(source)
        if array.dtype not in (np.uint8, torch.uint8) or array.ndim != 3 or 3 not in (array.shape[0], array.shape[-1]):
            return None, f"in-memory image must be uint8 (H, W, 3) or (3, H, W), got {tuple(array.shape)} {array.dtype}"
        if isinstance(array, torch.Tensor) and array.shape[0] == 3 and array.shape[-1] != 3:
            array = array.permute(1, 2, 0)
        return preprocess.from_array(array), None
    except ImageDecodeError as err:
        return None, str(err)
    except Exception as err:  # noqa: BLE001 - one bad input must never stop a run of millions
        return None, f"{item.path or f'input {item.index}'}: {type(err).__name__}: {err}"
