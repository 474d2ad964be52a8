"""Small file helpers shared by checkpoints, reports and outputs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one step.

    A crash or an exception mid-write leaves the previous file untouched and no partial file.
    The file gets the mode an ordinary ``open(path, "w")`` would give it (0666 less the umask),
    not the 0600 of :func:`tempfile.mkstemp`. Text modes write ``encoding``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_beside(path)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def _create_beside(path: Path) -> tuple[int, str]:
    """Create a new, uniquely named temporary file in ``path``'s folder; the kernel applies the
    umask to mode 0666, as for any file the user creates."""
    stem = path.name
    while len(os.fsencode(stem)) > 200:  # the temporary name must fit where the final one fits
        stem = stem[:-1]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{stem}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; folders that cannot be opened or synced are left as they are."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(data: Any, path: str | Path) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_write(path, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_fd(fd: int, limit: int, offset: int | None = None) -> bytes:
    """Up to ``limit`` bytes of an open descriptor (from ``offset`` with ``pread``, else from its
    position), in chunks of at most 16 MiB, stopping at the end of the file. Raises OSError."""
    chunks, total = [], 0
    while total < limit:
        step = min(limit - total, 16 << 20)
        chunk = os.read(fd, step) if offset is None else os.pread(fd, step, offset + total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def special_file_kind(mode: int) -> str:
    """What a file that is not a regular file or a folder is, for messages: ``named pipe (FIFO)``,
    ``character device``, ``block device``, ``socket`` or ``special file``."""
    kinds = [(stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")]
    return next((text for test, text in kinds if test(mode)), "special file")
