"""What can be tagged, and how one input becomes a (3, S, S) uint8 image.

:func:`expand_inputs` flattens the accepted input kinds (paths, folders, globs, lists,
manifests, stdin, WebDataset shards, URLs, in-memory images) into a stream; :func:`decode_input`
turns one of them into a resized image (and the hash of its bytes) or the reason it could not,
and never raises for bad input: a bad file among millions is an error record, not the end of
the run. Expanding reads names and headers only; the bytes of files, shard members
(:mod:`.webdataset`) and URLs (:mod:`.remote`) are read by :func:`decode_input`, in the decoder pool.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import hashlib
import logging
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import remote
from .data.datasets import IMAGE_EXTENSIONS, manifest_paths
from .data.transforms import Preprocess, read_image_bytes, to_rgb8
from .errors import InputNotFoundError, InvalidInputError, UserError
from .io import special_file_kind
from .outputs.records import HASH_NAMES
from .remote import RemotePath, is_url
from .webdataset import (
    DEFAULT_IMAGE_KEYS,
    FailedInput,
    TarMember,
    check_image_keys,
    expand_shards,
    is_shard_name,
    read_member,
    shard_samples,
)

logger = logging.getLogger(__name__)


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


class ListedPath(str):
    """A path read from a list (``@list.txt`` or stdin) that remembers where: ``origin`` is
    ``"<list> line <n>"``, added to any error about it."""

    origin: str

    def __new__(cls, text: str, origin: str) -> ListedPath:
        path = super().__new__(cls, text)
        path.origin = origin
        return path


SkipHandler = Callable[[str, str], None]


def is_pil_image(obj: Any) -> bool:
    return type(obj).__module__.startswith("PIL.")


def image_array(image: Any, name: str) -> np.ndarray | torch.Tensor:
    """The one check of an in-memory image: ``image`` as an (H, W, 3) uint8 array or CPU/GPU tensor.

    Accepts NumPy or torch, (H, W, 3) or a tensor (3, H, W). Floats are refused rather than
    guessed at: [0, 1] and [0, 255] floats look alike, and a cast would tag a black image.

    Raises:
        InvalidInputError: not uint8, not three colour channels, or empty; names ``name``.
    """
    array = image if isinstance(image, torch.Tensor) else np.asarray(image)
    dtype_ok = array.dtype in (np.uint8, torch.uint8)
    shape = tuple(array.shape)
    shape_ok = len(shape) == 3 and 3 in (shape[0], shape[-1]) and min(shape) > 0
    if not (dtype_ok and shape_ok):
        hint = " (for floats in [0, 1], multiply by 255 and convert to uint8)" if not dtype_ok and (
            array.dtype.is_floating_point if isinstance(array, torch.Tensor) else np.issubdtype(array.dtype, np.floating)
        ) else ""
        raise InvalidInputError(f"{name}: in-memory image must be uint8 (H, W, 3) or (3, H, W), got "
                                f"{shape} {array.dtype}{hint}")
    if isinstance(array, torch.Tensor) and shape[0] == 3 and shape[-1] != 3:
        array = array.permute(1, 2, 0)  # (3, H, W) -> (H, W, 3)
    return array


def expand_inputs(inputs: Any, *, extensions: Sequence[str] = IMAGE_EXTENSIONS, recursive: bool = True,
                  on_skip: SkipHandler | None = None, wds_image_keys: str | Sequence[str] = DEFAULT_IMAGE_KEYS,
                  quiet_suffixes: Sequence[str] = ()) -> Iterator[Any]:
    """Flatten the accepted input kinds into a stream of paths and in-memory images.

    Accepted: a path or a list of them; ``-`` (paths on stdin, one per line); ``@list.txt`` (a
    file of paths); a directory (image files by extension, recursive, sorted); a glob; a CSV or
    JSONL manifest (its image paths); PIL images; NumPy (H, W, 3) uint8 arrays; torch uint8
    tensors (3, H, W) or (H, W, 3); and (N, H, W, 3) arrays or tensors (N images).

    WebDataset shards: a path or URL ending in ``.tar``, a brace pattern (``shard-{000..099}.tar``)
    or a glob of them gives one :class:`~lcie_fast.webdataset.TarMember` per sample (record path
    ``shard.tar#key``; its image the first member whose extension is in ``wds_image_keys``), read
    from the tar headers only; a bad shard (missing, corrupt, truncated, compressed: only
    uncompressed shards are read) or a sample without an image gives a
    :class:`~lcie_fast.webdataset.FailedInput`, an error record. Lines of lists name files, not shards.

    URLs (``s3://``, ``gs://``, ``https://``, ``memory://``, ``file://``; fsspec, the ``remote``
    extra): a folder or prefix is listed (by extension, ``recursive`` honoured, sorted), a glob
    matched, a ``.csv``/``.jsonl`` manifest and an ``@URL`` list read; each file is a
    :class:`~lcie_fast.remote.RemotePath`, read in the decoder pool. URLs in lists and manifests too.

    Lines of lists and stdin are read as bytes and decoded as file names are (undecodable bytes
    kept, PEP 383); a path from a list is a :class:`ListedPath`, so errors name the list and line.
    A folder or glob scan leaves out what it cannot tag (dangling symlinks, FIFOs and other
    special files, unreadable folders, symlinks to folders, files of other types): each is
    logged (logger ``lcie_fast.inputs``, INFO) and passed to ``on_skip(path, reason)``, and a
    count per scan is written to stderr.

    Raises:
        InvalidInputError: ``wds_image_keys`` is empty (at once); an ``@list`` that cannot be read.
        InputNotFoundError: an ``@list`` that does not exist.
        MissingDependencyError: a URL, and fsspec is not installed.
    """
    keys = check_image_keys(wds_image_keys)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    elif isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == 4:
        inputs = list(inputs)
    elif not isinstance(inputs, Iterable) or isinstance(inputs, (np.ndarray, torch.Tensor)) or is_pil_image(inputs):
        inputs = [inputs]
    quiet = frozenset(suffix.lower() for suffix in quiet_suffixes)
    return _expand(inputs, {e.lower() for e in extensions}, recursive, on_skip, keys, quiet)


def _expand(inputs: Iterable[Any], exts: set[str], recursive: bool, on_skip: SkipHandler | None,
            keys: tuple[str, ...], quiet: frozenset[str] = frozenset()) -> Iterator[Any]:
    for item in inputs:
        if not isinstance(item, (str, os.PathLike)):
            yield item
            continue
        text = os.fspath(item)
        text = os.fsdecode(text) if isinstance(text, bytes) else text
        if text == "-":
            yield from _from_list(_listed(getattr(sys.stdin, "buffer", sys.stdin), "<stdin>"))
        elif text.startswith("@"):
            yield from _from_list(_read_list(text[1:]))
        elif is_shard_name(text):
            if is_url(text):
                remote.url_to_fs(text)  # fsspec and the protocol's package present, or a clear error now
            for shard in expand_shards(text):
                yield from shard_samples(shard, keys)
        elif is_url(text):
            yield from _expand_url(text, exts, recursive, on_skip, quiet)
        elif stat.S_ISDIR(_mode(text)):
            yield from _scan(text, _walk(text, recursive), exts, on_skip, quiet)
        elif any(ch in text for ch in "*?["):
            yield from _scan(text, glob.glob(text, recursive=True), None, on_skip)
        elif Path(text).suffix.lower() in (".csv", ".jsonl") and stat.S_ISREG(_mode(text)):
            yield from (_remote(path) if is_url(path) else path for path in manifest_paths(text))
        else:
            yield text  # a file (a missing or unreadable one becomes an error record)


def _expand_url(url: str, exts: set[str], recursive: bool, on_skip: SkipHandler | None,
                quiet: frozenset[str] = frozenset()) -> Iterator[Any]:
    """A URL input: a glob, a folder (prefix), a manifest, or one file."""
    remote.url_to_fs(url)  # fsspec and the protocol's package present, or a clear error now
    if remote.has_wildcard(url):
        yield from (RemotePath(found) for found in remote.glob_files(url))
    elif remote.is_folder(url):
        yield from (RemotePath(found) for found in _scan(url, remote.list_files(url, recursive), exts, on_skip, quiet))
    elif Path(url).suffix.lower() in (".csv", ".jsonl") and remote.is_file(url):
        yield from (_remote(path) if is_url(path) else path for path in remote.manifest_sources(url))
    else:
        yield RemotePath(url)  # a missing one becomes an error record


def _remote(url: str, origin: str | None = None) -> RemotePath:
    remote.require_fsspec(url)
    return RemotePath(url, origin)


def _from_list(lines: Iterable[ListedPath]) -> Iterator[str]:
    """The paths of a list, URLs among them as :class:`RemotePath` (keeping their list and line)."""
    for line in lines:
        yield _remote(line, line.origin) if is_url(line) else line


def _mode(path: str) -> int:
    """``st_mode`` of ``path`` (symlinks followed), 0 where it cannot be had: missing, a dangling
    link, a name too long, an embedded NUL. Such a path becomes an error record, not a traceback."""
    try:
        return os.stat(path).st_mode
    except (OSError, ValueError):
        return 0


def _read_list(path: str) -> Iterator[ListedPath]:
    if is_url(path):
        yield from _listed(remote.read_list(path), path)
        return
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, after the generator is done
    except FileNotFoundError:
        raise InputNotFoundError(f"@{path}: input list not found") from None
    except (OSError, ValueError) as err:
        raise InvalidInputError(f"@{path}: cannot read the input list: {getattr(err, 'strerror', None) or err}") from None
    with handle:
        try:
            yield from _listed(handle, path)
        except OSError as err:
            raise InvalidInputError(f"@{path}: cannot read the input list: {err.strerror or err}") from None


def _listed(handle: Iterable[bytes | str], origin: str) -> Iterator[ListedPath]:
    """The non-blank lines of a list, stripped, each with its list and line number."""
    for number, line in enumerate(handle, start=1):
        text = (os.fsdecode(line) if isinstance(line, bytes) else line).strip()
        if text:
            yield ListedPath(text, f"{origin} line {number}")


def _walk(root: str, recursive: bool) -> Iterator[tuple[str, str | None]]:
    """(path, None) for each regular file under ``root``, (path, reason) for what cannot be tagged.
    Symlinks to folders are not followed (loops)."""
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as scan:
                entries = list(scan)
        except OSError as err:
            yield folder, f"unreadable folder ({err.strerror or err})"
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        folders.append(entry.path)
                elif entry.is_file():
                    yield entry.path, None
                elif recursive or not entry.is_dir():
                    yield entry.path, _not_a_file(entry.path)
            except OSError as err:
                yield entry.path, f"cannot be read ({err.strerror or err})"


def _not_a_file(path: str) -> str:
    """Why ``path``, not a regular file, is left out of a scan."""
    mode = _mode(path)
    if not mode:
        return "dangling symlink" if os.path.islink(path) else "cannot be read"
    if stat.S_ISDIR(mode):
        return "symlink to a folder (not followed)"
    kind = special_file_kind(mode)
    return "not a regular file" if kind == "special file" else f"not a regular file: {kind}"


def _scan(root: str, found: Iterable[str | tuple[str, str | None]], exts: set[str] | None,
          on_skip: SkipHandler | None, quiet: frozenset[str] = frozenset()) -> list[str]:
    """The sorted image files of a folder walk or glob; what is left out is logged, passed to
    ``on_skip`` and counted on stderr, except files with a suffix in ``quiet`` (the run's own sidecar
    captions). ``exts`` None: any regular file (a glob names its own)."""
    kept, skipped = [], collections.Counter()
    for entry in found:
        path, reason = entry if isinstance(entry, tuple) else (entry, None if os.path.isfile(entry) else "")
        if reason == "":
            if stat.S_ISDIR(_mode(path)):
                continue  # a glob that also matches folders
            reason = _not_a_file(path)
        if reason is None and exts is not None and Path(path).suffix.lower() not in exts:
            if Path(path).suffix.lower() in quiet:
                continue
            reason = f"not an accepted image type ({Path(path).suffix.lower() or 'no extension'})"
        if reason is None:
            kept.append(path)
            continue
        kind = reason.split(" (")[0]
        skipped[kind] += 1
        logger.info("skipped %s: %s", path, reason)
        if on_skip is not None:
            on_skip(path, reason)
    if skipped:
        kinds = ", ".join(f"{count} {kind}" for kind, count in skipped.most_common())
        total = sum(skipped.values())
        print(f"lcie-fast: skipped {total} {'entry' if total == 1 else 'entries'} under {root}: {kinds} "
              f"(each path logged by the lcie_fast.inputs logger at INFO level)", file=sys.stderr)
    return sorted(kept)


def decode_input(item: InputItem, preprocess: Preprocess,
                 hash_name: str | None = None) -> tuple[torch.Tensor | None, str | None, str | None]:
    """Decode one input; never raises for bad input.

    A file, shard member or URL is read once (within ``preprocess.max_bytes``, refused from its
    size first), its bytes hashed, then decoded; errors name its path (``shard.tar#key``, the URL).

    Args:
        item: The input.
        preprocess: Decoding limits and the resize.
        hash_name: ``sha256`` or ``md5``: also return the hex digest of the input's bytes (an
            input that was read but cannot be decoded has one; one that cannot be read, or an
            in-memory image, has None); None: no hash.

    Returns:
        ((3, S, S) uint8 or None, None or why the input cannot be tagged, hex digest or None).

    Raises:
        InvalidInputError: ``hash_name`` is not one of :data:`~lcie_fast.outputs.records.HASH_NAMES`.
    """
    if hash_name is not None and hash_name not in HASH_NAMES:
        raise InvalidInputError(f"hash_name must be one of {', '.join(HASH_NAMES)} or None, got {hash_name!r}")
    source = item.source
    name = item.path or f"input {item.index}"
    digest = None
    try:
        if isinstance(source, FailedInput):
            return None, source.error, None
        if isinstance(source, str):
            data = _read_bytes(source, preprocess.max_bytes)
            if hash_name is not None:
                digest = hashlib.new(hash_name, data, usedforsecurity=False).hexdigest()
            return preprocess.load(data, name=str(source)), None, digest
        if is_pil_image(source):
            return preprocess.from_array(to_rgb8(source, name)), None, None
        return preprocess.from_array(image_array(source, name)), None, None
    except UserError as err:
        error = str(err)
    except Exception as err:  # noqa: BLE001 - one bad input must never stop a run of millions
        error = f"{name}: {type(err).__name__}: {err}"
    origin = getattr(source, "origin", None)
    return None, f"{error} ({origin})" if origin else error, digest


def _read_bytes(source: str, max_bytes: int) -> bytes:
    """The encoded bytes of a file, a shard member or a URL (a plain string URL too), within ``max_bytes``."""
    if isinstance(source, TarMember):
        return read_member(source, max_bytes)
    if is_url(source):
        return remote.read_bytes(source, max_bytes)
    return read_image_bytes(source, max_bytes)
