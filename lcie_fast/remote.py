"""Remote storage (``s3://``, ``gs://``, ``https://``, ``memory://``, ``file://``) through fsspec.

Inputs, manifests, input lists and WebDataset shards may be URLs; outputs are written as local
files and uploaded. fsspec is an optional extra (``pip install 'lcie-fast[remote]'``), imported
at the first URL, never at import time, and nothing is fetched before it is needed: a listing
reads names, a :class:`RemotePath` is read by the decoder pool, a shard member by a range read.

Names: a URL keeps the form it was given in; what a listing finds is named by the listed URL
plus the path below it (``memory://bucket/imgs`` -> ``memory://bucket/imgs/sub/a.jpg``), so error
messages and records name URLs the user recognises.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import urllib.parse
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Iterator

from ._optional import MissingDependencyError, require
from .data.datasets import manifest_paths
from .data.transforms import ImageDecodeError
from .errors import InputNotFoundError, InvalidInputError, UserError
from .io import atomic_write

# Remote shard headers are read through a read-ahead buffer this large: one request brings a header
# and the bytes after it, so the small members that follow an image (json, txt, cls) and the next
# header usually come with it; of an image, at most this much is fetched (its own read is separate).
HEADER_READAHEAD = 4 << 10
_COPY_CHUNK = 8 << 20

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


class RemotePath(str):
    """A URL to tag: read in the decoder pool by :func:`read_bytes`. ``origin`` is the list and
    line it came from (``"<list> line <n>"``) or None, added to any error about it."""

    origin: str | None

    def __new__(cls, url: str, origin: str | None = None) -> RemotePath:
        path = super().__new__(cls, url)
        path.origin = origin
        return path


def is_url(text: Any) -> bool:
    """Whether ``text`` is a URL (``scheme://...``; ``file://`` and ``memory://`` included)."""
    return isinstance(text, str) and bool(_URL.match(text))


def has_wildcard(text: str) -> bool:
    """Whether a path or URL is a glob (``*``, ``?``, ``[``); in an http(s) URL, ``?`` starts the query."""
    if is_url(text) and text.lower().startswith(("http:", "https:")):
        text = urllib.parse.urlsplit(text).path
    return any(ch in text for ch in "*?[")


def require_fsspec(url: str) -> ModuleType:
    """``fsspec.core``, imported on first use (``url``: what needs it, named in the error).

    Raises:
        MissingDependencyError: fsspec is not installed; the message says what to install.
    """
    return require("fsspec.core", f"Reading {url}")


def url_to_fs(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of ``url``; importing fsspec on first use.

    Raises:
        MissingDependencyError: fsspec, or the package of the URL's protocol (s3fs, gcsfs...), is
            not installed; the message says what to install.
        InvalidInputError: a protocol fsspec does not know.
    """
    core = require_fsspec(url)
    try:
        return core.url_to_fs(url)
    except ImportError as err:
        raise MissingDependencyError(f"{url}: {err} (fsspec needs it for this protocol)") from err
    except ValueError as err:
        raise InvalidInputError(f"{url}: {err}") from None


def _child(url: str, root: str, path: str, fs: Any) -> str:
    """The URL of ``path`` (a path inside ``fs``, found below the path ``root`` of ``url``), in ``url``'s form."""
    root = root.rstrip("/")
    if path.startswith(root + "/"):
        return url.rstrip("/") + path[len(root):]
    return fs.unstrip_protocol(path)


def _reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def is_folder(url: str) -> bool:
    """Whether ``url`` is a folder (a prefix in an object store); False when it cannot be told.

    An http(s) folder is a page of links: only a URL ending in ``/`` is one (asking about any
    other would fetch it whole)."""
    if url.lower().startswith(("http:", "https:")) and not url.endswith("/"):
        return False
    fs, path = url_to_fs(url)
    try:
        return bool(fs.isdir(path))
    except (OSError, ValueError):
        return False


def is_file(url: str) -> bool:
    """Whether ``url`` is a file (an object); False when it cannot be told."""
    fs, path = url_to_fs(url)
    try:
        return bool(fs.isfile(path))
    except (OSError, ValueError):
        return False


def list_files(url: str, recursive: bool = True) -> Iterator[tuple[str, str | None]]:
    """(URL, None) for each file below the folder ``url``, sorted; (``url``, reason) when the
    folder cannot be listed. ``recursive`` False: the folder's own files only."""
    fs, path = url_to_fs(url)
    try:
        if recursive:
            found = fs.find(path)
        else:
            found = [entry["name"] for entry in fs.ls(path, detail=True) if entry.get("type") == "file"]
    except (OSError, ValueError) as err:
        yield url, f"unreadable folder ({_reason(err)})"
        return
    for name in sorted(found):
        yield _child(url, path, name, fs), None


def glob_files(url: str) -> list[str]:
    """The files a URL glob (``s3://bucket/imgs/**/*.jpg``) matches, as URLs, sorted; folders left out."""
    fs, path = url_to_fs(url)
    root, url_root = _static_prefix(path), _static_prefix(url)
    try:
        matches = fs.glob(path, detail=True)
    except (OSError, ValueError):
        return []
    urls = []
    for name, info in matches.items():
        if info.get("type") == "directory":
            continue
        urls.append(url_root + name[len(root):] if name.startswith(root) else fs.unstrip_protocol(name))
    return sorted(urls)


def _static_prefix(pattern: str) -> str:
    """The part of a glob up to the last ``/`` before its first wildcard."""
    cut = min((i for i, ch in enumerate(pattern) if ch in "*?["), default=len(pattern))
    return pattern[: pattern.rfind("/", 0, cut) + 1]


def read_bytes(url: str, max_bytes: int, name: str | None = None) -> bytes:
    """The bytes of the remote file ``url``: refused from its size when it is over ``max_bytes``,
    and at most ``max_bytes + 1`` bytes read when the size is not known.

    Raises:
        ImageDecodeError: missing, a folder, too large, empty or unreadable; names ``name`` (default ``url``).
        MissingDependencyError: fsspec (or the protocol's package) is not installed.
    """
    name = name or url
    fs, path = url_to_fs(url)
    with _reading(name):
        info = fs.info(path)
    if info.get("type") == "directory":
        raise ImageDecodeError(f"{name}: is a folder, not an image")
    size = info.get("size")
    if size is not None and size > max_bytes:
        raise ImageDecodeError(f"{name}: {size:,} bytes is over the limit of {max_bytes:,} bytes")
    with _reading(name):
        data = fs.cat_file(path, start=0, end=max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageDecodeError(f"{name}: over the limit of {max_bytes:,} bytes")
    if not data:
        raise ImageDecodeError(f"{name}: empty file (zero bytes)")
    return bytes(data)


def read_range(url: str, start: int, size: int, name: str) -> bytes:
    """``size`` bytes of ``url`` from byte ``start`` (fewer if the file ends first): one range request.

    Raises:
        ImageDecodeError: missing or unreadable; names ``name``.
    """
    fs, path = url_to_fs(url)
    with _reading(name):
        return bytes(fs.cat_file(path, start=start, end=start + size))


@contextlib.contextmanager
def _reading(name: str) -> Iterator[None]:
    """Storage errors inside the block as :class:`ImageDecodeError` naming ``name``."""
    try:
        yield
    except FileNotFoundError:
        raise ImageDecodeError(f"{name}: file not found") from None
    except (OSError, ValueError) as err:
        raise ImageDecodeError(f"{name}: cannot read: {_reason(err)}") from None


def open_file(url: str) -> IO[bytes]:
    """``url`` opened for reading headers (small read-ahead: seeks skip what is not read).

    Raises:
        InputNotFoundError: ``url`` does not exist.
        InvalidInputError: a folder, or it cannot be opened.
    """
    fs, path = url_to_fs(url)
    try:
        if is_folder(url):
            raise InvalidInputError(f"{url}: is a folder, not a file")
        return fs.open(path, "rb", block_size=HEADER_READAHEAD, cache_type="readahead")
    except FileNotFoundError:
        raise InputNotFoundError(f"{url}: file not found") from None
    except (OSError, ValueError) as err:
        if isinstance(err, UserError):
            raise
        raise InvalidInputError(f"{url}: cannot read: {_reason(err)}") from None


def read_list(url: str) -> Iterator[bytes]:
    """The lines of the input list ``url`` (``@URL``), as bytes.

    Raises:
        InputNotFoundError: the list does not exist.
        InvalidInputError: the list cannot be read.
    """
    fs, path = url_to_fs(url)
    try:
        with fs.open(path, "rb") as handle:
            yield from handle
    except FileNotFoundError:
        raise InputNotFoundError(f"@{url}: input list not found") from None
    except (OSError, ValueError) as err:
        raise InvalidInputError(f"@{url}: cannot read the input list: {_reason(err)}") from None


def manifest_sources(url: str) -> list[str]:
    """Every image a CSV or JSONL manifest at ``url`` names (see
    :func:`~lcie_fast.data.datasets.manifest_paths`): relative rows as URLs beside it (in
    ``images/`` beside a CSV when that folder exists, as for a local CSV), URL rows as given.

    Raises:
        ManifestError: the manifest cannot be parsed; named by ``url``.
        InputNotFoundError: it does not exist.
    """
    folder = url.rstrip("/").rpartition("/")[0]
    base = folder + "/images" if url.lower().endswith(".csv") and is_folder(folder + "/images") else folder
    with tempfile.TemporaryDirectory(prefix="lcie-manifest-") as tmp:
        local = Path(tmp, "manifest" + Path(url).suffix.lower())
        if not download(url, local):
            raise InputNotFoundError(f"{url}: manifest not found")
        return manifest_paths(local, base=base, name=url)


def exists(url: str) -> bool:
    """Whether ``url`` exists (a file or a folder)."""
    fs, path = url_to_fs(url)
    try:
        return bool(fs.exists(path))
    except (OSError, ValueError) as err:
        raise InvalidInputError(f"{url}: cannot tell whether it exists: {_reason(err)}") from None


def download(url: str, local_path: str | Path) -> bool:
    """Copy ``url`` to ``local_path`` (replaced atomically); False when ``url`` does not exist.

    Raises:
        InvalidInputError: ``url`` is a folder or cannot be read.
    """
    fs, path = url_to_fs(url)
    try:
        if is_folder(url):
            raise InvalidInputError(f"{url}: is a folder, not a file")
        with fs.open(path, "rb") as source, atomic_write(local_path) as target:
            while chunk := source.read(_COPY_CHUNK):
                target.write(chunk)
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as err:
        if isinstance(err, UserError):
            raise
        raise InvalidInputError(f"{url}: cannot download to {local_path}: {_reason(err)}") from None
    return True


def upload(local_path: str | Path, url: str) -> None:
    """Copy the local file ``local_path`` to ``url`` (an object store replaces the object in one step).

    Raises:
        InputNotFoundError: ``local_path`` does not exist.
        InvalidInputError: the upload failed.
    """
    if not os.path.isfile(local_path):
        raise InputNotFoundError(f"{local_path}: file not found (nothing to upload to {url})")
    fs, path = url_to_fs(url)
    try:
        if "file" in _protocols(fs):  # object stores have no folders to make
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fs.put_file(os.fspath(local_path), path)
    except (OSError, ValueError) as err:
        raise InvalidInputError(f"{local_path}: cannot upload to {url}: {_reason(err)}") from None


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)

