"""WebDataset shards as inputs: one input per sample of each ``.tar`` shard, read lazily.

A shard is an uncompressed tar whose members are grouped into samples by key, as WebDataset
does: the key is a member's path up to the first ``.`` of its file name, the rest (lower-cased)
its extension (``train/0001.seg.png`` -> key ``train/0001``, extension ``seg.png``); consecutive
members with the same key are one sample. A sample's image is its first member, in
``image_keys`` order, whose extension is one of them.

Expanding a shard reads only its tar headers (seeks skip the data): a sample becomes a
:class:`TarMember` (its record path ``shard.tar#key``) that remembers where its image bytes are,
and the decoder pool reads them (:func:`read_member`: ``os.pread`` locally, a range request
remotely). A process tagging a part of the inputs therefore reads no image of the other parts.

Nothing about a bad shard raises: a missing, compressed, corrupt or truncated shard gives one
:class:`FailedInput` for the shard (after the samples read before the damage), a sample without
an image one for the sample, each an error record of the tagger, and the next shard goes on.
"""

from __future__ import annotations

import glob
import os
import re
import stat
import tarfile
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any

from . import remote
from .data.transforms import ImageDecodeError
from .errors import InputNotFoundError, InvalidInputError, UserError
from .io import read_fd, special_file_kind

DEFAULT_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
# Compressed tars are refused: a member of a compressed stream cannot be read without the bytes before it.
COMPRESSED_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tzst")
SHARD_SUFFIXES = (".tar", *COMPRESSED_SUFFIXES)
# A brace pattern may name at most this many shards (``{0..99999999}`` is a typo, not a dataset).
MAX_BRACE_EXPANSION = 1_000_000

_COMPRESSION_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$")
_CHAR_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.(-?\d+))?$")


class TarMember(str):
    """One sample of a shard: ``"<shard>#<key>"``, and where its image member's bytes are.

    Attributes:
        shard: The shard's path or URL, as given.
        member: The image member's name in the tar.
        offset: Byte offset of the member's data in the shard (``TarInfo.offset_data``).
        size: The member's size in bytes.
    """

    shard: str
    member: str
    offset: int
    size: int

    def __new__(cls, shard: str, key: str, member: str, offset: int, size: int) -> TarMember:
        path = super().__new__(cls, f"{shard}#{key}")
        path.shard, path.member, path.offset, path.size = shard, member, offset, size
        return path


class FailedInput(str):
    """An input known to be bad when the inputs are expanded (a shard that cannot be read, a sample
    without an image): its record path, and ``error``, the error its record gets."""

    error: str

    def __new__(cls, path: str, error: str) -> FailedInput:
        failed = super().__new__(cls, path)
        failed.error = error
        return failed


def is_shard_name(text: Any) -> bool:
    """Whether ``text`` names WebDataset shards: it ends in ``.tar`` (or a compressed tar suffix,
    refused when read), a URL's query string aside; brace patterns and globs included."""
    if not isinstance(text, str):
        return False
    path = urllib.parse.urlsplit(text).path if remote.is_url(text) and text.lower().startswith(("http:", "https:")) else text
    return path.lower().endswith(SHARD_SUFFIXES)


def check_image_keys(keys: str | Sequence[str]) -> tuple[str, ...]:
    """``keys`` (a sequence, or one comma-separated string) lower-cased, without leading dots.

    Raises:
        InvalidInputError: no key, or an empty one.
    """
    parts = keys.split(",") if isinstance(keys, str) else list(keys)
    if not all(isinstance(key, str) for key in parts):
        raise InvalidInputError(f"wds_image_keys must be extensions such as jpg,png, got {keys!r}")
    cleaned = tuple(key.strip().lower().lstrip(".") for key in parts)
    if not cleaned or not all(cleaned):
        raise InvalidInputError(f"wds_image_keys must name at least one extension and no empty one, got {keys!r}")
    return cleaned


def expand_braces(pattern: str) -> list[str]:
    """Bash-style brace expansion: ``{a,b}`` alternatives and ``{000..099}`` ranges (zero padding
    kept: the width of the wider end when either is zero-padded; an optional step ``{0..10..2}``;
    letters ``{a..e}``), nested and several in one pattern. A brace that is neither is literal.

    Raises:
        InvalidInputError: the pattern names more than :data:`MAX_BRACE_EXPANSION` strings.
    """
    out = _expand(pattern)
    if len(out) > MAX_BRACE_EXPANSION:
        raise InvalidInputError(f"{pattern}: the brace pattern names {len(out):,} shards, over the limit of "
                                f"{MAX_BRACE_EXPANSION:,}")
    return out


def _expand(pattern: str) -> list[str]:
    start = pattern.find("{")
    while start != -1:
        close = _closing(pattern, start)
        if close is None:
            return [pattern]
        options = _options(pattern[start + 1:close])
        if options is not None:
            prefix, rest = pattern[:start], _expand(pattern[close + 1:])
            if len(options) * len(rest) > MAX_BRACE_EXPANSION:
                raise InvalidInputError(f"{pattern}: the brace pattern names over {MAX_BRACE_EXPANSION:,} shards")
            return [prefix + option + tail for option in options for tail in rest]
        start = pattern.find("{", start + 1)
    return [pattern]


def _closing(pattern: str, start: int) -> int | None:
    """Index of the ``}`` matching the ``{`` at ``start``, or None."""
    depth = 0
    for i in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[i], 0)
        if depth == 0:
            return i
    return None


def _options(body: str) -> list[str] | None:
    """The strings a brace body stands for (its alternatives expanded), or None if it is literal."""
    parts, depth, last = [], 0, 0
    for i, ch in enumerate(body):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(body[last:i])
            last = i + 1
    if parts:
        parts.append(body[last:])
        return [option for part in parts for option in _expand(part)]
    numbers, letters = _RANGE.match(body), _CHAR_RANGE.match(body)
    if numbers:
        first, last_text, step_text = numbers.groups()
        low, high = int(first), int(last_text)
        step = abs(int(step_text or 1)) or 1
        if abs(high - low) // step + 1 > MAX_BRACE_EXPANSION:
            raise InvalidInputError(f"{{{body}}}: the brace range names over {MAX_BRACE_EXPANSION:,} shards")
        padded = any(len(text.lstrip("-")) > 1 and text.lstrip("-").startswith("0") for text in (first, last_text))
        width = max(len(first), len(last_text)) if padded else 0
        values = range(low, high + 1, step) if low <= high else range(low, high - 1, -step)
        return [f"{value:0{width}d}" for value in values]
    if letters:
        first, last_text, step_text = letters.groups()
        step = abs(int(step_text or 1)) or 1
        low, high = ord(first), ord(last_text)
        values = range(low, high + 1, step) if low <= high else range(low, high - 1, -step)
        return [chr(value) for value in values]
    return None


def expand_shards(inputs: str | Iterable[str]) -> list[str]:
    """The shards ``inputs`` name, in order: brace patterns expanded, globs (local or URL) matched
    and sorted; a shard that does not exist is kept (reading it gives its error record).

    Raises:
        InvalidInputError: an input that does not name shards (not ``.tar``: see :func:`is_shard_name`).
    """
    shards = []
    for text in [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs:
        text = os.fspath(text)
        if not is_shard_name(text):
            raise InvalidInputError(f"{text}: not a WebDataset shard (a .tar file, or a pattern such as "
                                    "shard-{000..099}.tar)")
        for name in expand_braces(text):
            if not remote.has_wildcard(name):
                shards.append(name)
            elif remote.is_url(name):
                shards.extend(url for url in remote.glob_files(name) if is_shard_name(url))
            else:
                shards.extend(sorted(path for path in glob.glob(name, recursive=True)
                                     if is_shard_name(path) and not os.path.isdir(path)))
    return shards


def split_key(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name by the WebDataset rule, or None without an extension."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not dot or not stem:
        return None
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def shard_samples(shard: str, image_keys: str | Sequence[str] = DEFAULT_IMAGE_KEYS) -> Iterator[TarMember | FailedInput]:
    """One input per sample of ``shard`` (a local path or a URL), in tar order, reading headers only.

    A sample with an image member is a :class:`TarMember`; one without is a :class:`FailedInput`
    ("no image member"). A shard that cannot be read to its end gives one :class:`FailedInput`
    named by the shard, after the samples read before the damage. Never raises for a bad shard.

    Raises:
        InvalidInputError: ``image_keys`` is empty.
    """
    keys = check_image_keys(image_keys)
    if shard.lower().endswith(COMPRESSED_SUFFIXES):
        yield FailedInput(shard, f"{shard}: a compressed tar shard; only uncompressed .tar shards are read "
                                 "(decompress it first, e.g. with gunzip)")
        return
    try:
        handle = remote.open_file(shard) if remote.is_url(shard) else _open_local(shard)
    except UserError as err:
        yield FailedInput(shard, str(err))
        return
    with handle:
        yield from _samples(shard, handle, keys)


def _samples(shard: str, handle: IO[bytes], keys: tuple[str, ...]) -> Iterator[TarMember | FailedInput]:
    group: list[tarfile.TarInfo] = []
    last = None
    try:
        tar = tarfile.open(fileobj=handle, mode="r:")
    except tarfile.ReadError as err:
        yield FailedInput(shard, _unreadable(shard, handle, err))
        return
    except (tarfile.TarError, OSError, ValueError) as err:
        yield FailedInput(shard, f"{shard}: cannot read: {getattr(err, 'strerror', None) or err}")
        return
    error = None
    try:
        while True:
            try:
                info = tar.next()
            except tarfile.ReadError as err:
                error = f"{shard}: corrupt or truncated tar after member {last}: {err}"
                break
            if info is None:
                error = _end_problem(shard, handle, tar.offset, last)
                break
            last = info.name
            split = split_key(info.name) if info.isreg() and not info.issparse() else None
            if split is None:
                continue  # folders, links, names without an extension: not part of a sample
            if group and split_key(group[0].name)[0] != split[0]:
                yield _sample(shard, group, keys)
                group = []
            group.append(info)
            tar.members.clear()  # headers are not kept: a shard may hold millions
    except (tarfile.TarError, OSError, ValueError) as err:  # storage failing mid-way
        error = f"{shard}: cannot read after member {last}: {getattr(err, 'strerror', None) or err}"
    if group:
        yield _sample(shard, group, keys)
    if error:
        yield FailedInput(shard, error)


def _sample(shard: str, group: list[tarfile.TarInfo], keys: tuple[str, ...]) -> TarMember | FailedInput:
    key = split_key(group[0].name)[0]
    by_extension: dict[str, tarfile.TarInfo] = {}
    for info in group:
        by_extension.setdefault(split_key(info.name)[1], info)
    for extension in keys:
        info = by_extension.get(extension)
        if info is not None:
            return TarMember(shard, key, info.name, info.offset_data, info.size)
    return FailedInput(f"{shard}#{key}", f"{shard}#{key}: no image member ({', '.join(keys)}) in this sample")


def _open_local(path: str) -> IO[bytes]:
    """``path`` opened for reading, unbuffered, if it is a regular file (non-blocking open: a FIFO cannot hang)."""
    try:
        _check_regular(os.stat(path).st_mode, path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise InputNotFoundError(f"{path}: file not found") from None
    except (OSError, ValueError) as err:
        if isinstance(err, UserError):
            raise
        raise InvalidInputError(f"{path}: cannot read: {getattr(err, 'strerror', None) or err}") from None
    try:
        _check_regular(os.fstat(fd).st_mode, path)
    except UserError:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb", buffering=0)  # unbuffered: a header read does not pull in the image after it


def _check_regular(mode: int, path: str) -> None:
    if stat.S_ISDIR(mode):
        raise InvalidInputError(f"{path}: is a folder, not a shard")
    if not stat.S_ISREG(mode):
        raise InvalidInputError(f"{path}: not a regular file (a {special_file_kind(mode)}); only regular files are read")


def _unreadable(shard: str, handle: IO[bytes], err: tarfile.ReadError) -> str:
    """Why a shard's first header cannot be read: empty, compressed, or not a tar."""
    try:
        handle.seek(0)
        head = handle.read(8)
    except OSError:
        head = b""
    if not head:
        return f"{shard}: empty file (zero bytes)"
    for magic, kind in _COMPRESSION_MAGIC:
        if head.startswith(magic):
            return f"{shard}: {kind}-compressed data; only uncompressed .tar shards are read (decompress it first)"
    return f"{shard}: corrupt or not a tar file ({err})"


def _end_problem(shard: str, handle: IO[bytes], offset: int, last: str | None) -> str | None:
    """None if the tar ends with its end-of-archive block at ``offset``, where tarfile stopped;
    else what is wrong there (tarfile stops silently at a damaged header or a cut at a member's end)."""
    try:
        handle.seek(offset)
        block = handle.read(tarfile.BLOCKSIZE)
    except OSError as err:
        return f"{shard}: cannot read after member {last}: {getattr(err, 'strerror', None) or err}"
    if block == bytes(tarfile.BLOCKSIZE):
        return None
    if not block:
        return f"{shard}: truncated tar: it ends after member {last} without the end-of-archive marker"
    return f"{shard}: corrupt or truncated tar: unreadable header at byte {offset:,} (after member {last})"


def read_member(member: TarMember, max_bytes: int) -> bytes:
    """The image bytes of a sample, refused from its size when over ``max_bytes``; thread-safe
    (a fresh descriptor and ``os.pread`` locally, one range request remotely).

    Raises:
        ImageDecodeError: too large, empty, the shard gone or cut short; names ``shard#key``.
    """
    name = str(member)
    if member.size > max_bytes:
        raise ImageDecodeError(f"{name}: {member.size:,} bytes is over the limit of {max_bytes:,} bytes")
    if member.size == 0:
        raise ImageDecodeError(f"{name}: empty file (zero bytes)")
    if remote.is_url(member.shard):
        data = remote.read_range(member.shard, member.offset, member.size, name)
    else:
        data = _pread(member.shard, member.offset, member.size, name)
    if len(data) < member.size:
        raise ImageDecodeError(f"{name}: truncated: the shard holds {len(data):,} of this member's {member.size:,} bytes")
    return data


def _pread(path: str, offset: int, size: int, name: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise ImageDecodeError(f"{name}: file not found (the shard is gone)") from None
    except OSError as err:
        raise ImageDecodeError(f"{name}: cannot read: {err.strerror or err}") from None
    try:
        return read_fd(fd, size, offset)
    except OSError as err:
        raise ImageDecodeError(f"{name}: cannot read: {err.strerror or err}") from None
    finally:
        os.close(fd)
