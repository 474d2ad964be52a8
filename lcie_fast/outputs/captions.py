"""Sidecar caption files (``--format txt``): one text file of tags per image, as kohya/WD14 write them.

Trainers (kohya's sd-scripts, OneTrainer, ...) read ``a/b.txt`` beside ``a/b.jpg``: the image's
tags joined by a separator (``", "``) on one line. :class:`CaptionWriter` writes them there, or
under ``--caption-dir`` mirroring the input tree, which is where captions of inputs that have no
folder to write beside go: WebDataset members (``shard.tar#key`` -> ``<dir>/shard/key.txt``) and
remote objects (``s3://bucket/a/b.jpg`` -> ``<dir>/bucket/a/b.txt``).

The caption files are the output, so they are also its resume state: ``--on-existing skip``
(the default) leaves an existing caption alone and the CLI does not tag its image again.
Each caption is written to a temporary file beside it and moved into place in one step, so a
run killed at any point leaves whole captions only. No per-file fsync is made by default: it
costs more than ten times the write (a kill of the process loses nothing; after a power loss
pass ``durable=True``). Inputs that cannot be tagged have no caption and go, as full records,
to an errors file (JSON lines, appended), so nothing is silently lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import IO, TypeVar
from urllib.parse import urlsplit

from ..errors import InvalidInputError
from ..io import _create_beside, atomic_write
from .lines import OutputWriteError, _cut_partial_line
from .records import TagRecord

T = TypeVar("T")
ON_EXISTING = ("skip", "overwrite", "append")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")  # two letters at least: not a drive letter
_TAR_MEMBER = re.compile(r"^(?P<shard>.+\.(?:tar|tgz|tar\.gz))#(?P<key>.+)$", re.IGNORECASE)


class CaptionWriter:
    """Writes each record's tags to its image's caption file; error records to ``errors_path``.

    An image none of whose tags was kept still gets a caption file, empty: the file marks the
    image as done, so a resumed run (``on_existing="skip"``) does not tag it again.

    Attributes:
        written: Caption files written new (or replaced, with ``overwrite``).
        skipped: Existing captions left alone (``skip``).
        appended: Existing captions merged with new tags (``append``; also those that already
            held every tag and were left as they are).
        errors: Error records appended to ``errors_path``.

    Args:
        caption_ext: Extension of caption files (``.txt``; given without the dot, one is added).
        caption_dir: Write captions under this folder, mirroring the inputs' tree, instead of
            beside the images; needed for WebDataset members and URLs.
        input_root: The folder local inputs were given under (the tree ``caption_dir`` mirrors);
            default the current folder.
        separator: Between two tags (``", "``).
        on_existing: What to do with an existing caption: ``skip`` (leave it: the resume
            mechanism), ``overwrite``, or ``append`` (its tags first, then the new ones not in it).
        errors_path: JSON lines file the records of inputs that could not be tagged are appended
            to (created on the first one).
        durable: Also fsync each caption and its folder (survives a power loss; >10x slower).

    Raises:
        InvalidInputError: an empty or path-like extension, an empty separator, or an
            ``on_existing`` other than skip, overwrite or append; names the flag.
    """

    def __init__(self, *, caption_ext: str = ".txt", caption_dir: str | Path | None = None,
                 input_root: str | Path | None = None, separator: str = ", ", on_existing: str = "skip",
                 errors_path: str | Path, durable: bool = False) -> None:
        ext = caption_ext if caption_ext.startswith(".") else f".{caption_ext}"
        if ext == "." or "/" in ext or os.sep in ext or ext in (".", ".."):
            raise InvalidInputError(f"--caption-ext must be an extension such as .txt, got {caption_ext!r}")
        if not separator:
            raise InvalidInputError("--separator must not be empty")
        if on_existing not in ON_EXISTING:
            raise InvalidInputError(f"--on-existing must be one of {', '.join(ON_EXISTING)}, got {on_existing!r}")
        self.caption_ext, self.separator, self.on_existing, self.durable = ext, separator, on_existing, durable
        self.caption_dir = Path(os.path.abspath(caption_dir)) if caption_dir is not None else None
        self.input_root = Path(os.path.abspath(input_root if input_root is not None else os.curdir))
        self.errors_path = Path(errors_path)
        self._split_on = separator.strip() or separator  # ", " -> ","; "\n" stays "\n"
        self._errors: IO[str] | None = None
        self.written = self.skipped = self.appended = self.errors = 0
        self._owners: dict[Path, str | None] = {}  # caption -> the input that has it in this run (name clashes)
        self._folders: set[Path] = set()  # folders known to exist

    # ------------------------------------------------------------------------- paths
    def caption_path(self, record_path: str | None) -> Path:
        """Where the caption of the input ``record_path`` goes.

        Beside the image (``a/b.jpg`` -> ``a/b.txt``), or with ``caption_dir``: the image's path
        relative to ``input_root`` under it; a WebDataset member ``x/shard.tar#key`` ->
        ``caption_dir/shard/key.txt``; a URL ``scheme://host/p/b.jpg`` -> ``caption_dir/host/p/b.txt``
        (``file://`` URLs are local paths).

        Raises:
            InvalidInputError: an in-memory input (no path), a member or URL without
                ``caption_dir``, an image outside ``input_root``, a path with ``..`` that would
                leave ``caption_dir``, or a caption that would be the image itself.
        """
        if record_path is None:
            raise InvalidInputError("an in-memory image has no path to write a caption file for")
        member = _TAR_MEMBER.match(record_path)
        url = _URL.match(record_path)
        if url and record_path[: url.end()].lower() == "file://" and not member:
            local = urlsplit(record_path).path
            return self._local_caption(record_path, local)
        if member or url:
            if self.caption_dir is None:
                kind = "a WebDataset member" if member else "a URL"
                raise InvalidInputError(f"{record_path}: {kind} has no folder to write a caption beside; pass "
                                        "--caption-dir to write captions under a folder of your choice")
            if member:
                shard = PurePosixPath(urlsplit(member["shard"]).path if _URL.match(member["shard"]) else member["shard"])
                stem = re.sub(r"\.(tar|tgz|tar\.gz)$", "", shard.name, flags=re.IGNORECASE)
                relative = f"{stem}/{member['key']}{self.caption_ext}"
            else:
                parts = urlsplit(record_path)
                relative = f"{parts.netloc}/{_with_ext(parts.path, self.caption_ext)}"
            return self._under_caption_dir(record_path, relative)
        return self._local_caption(record_path, record_path)

    def _local_caption(self, record_path: str, local: str) -> Path:
        if self.caption_dir is None:
            caption = Path(_with_ext(local, self.caption_ext))
        else:
            absolute = Path(os.path.abspath(local))
            try:
                relative = absolute.relative_to(self.input_root)
            except ValueError:
                raise InvalidInputError(f"{record_path}: not under the input folder {self.input_root}, whose tree "
                                        "--caption-dir mirrors; give the inputs under one folder") from None
            caption = self._under_caption_dir(record_path, _with_ext(relative.as_posix(), self.caption_ext))
        if os.path.abspath(caption) == os.path.abspath(local):
            raise InvalidInputError(f"{record_path}: its caption would replace the image itself; choose another "
                                    f"--caption-ext than {self.caption_ext!r}")
        return caption

    def _under_caption_dir(self, record_path: str, relative: str) -> Path:
        """``caption_dir / relative``, refusing ``..`` and anything else that would leave ``caption_dir``."""
        parts = [part for part in relative.split("/") if part not in ("", ".")]
        if ".." in parts or not parts or any(os.sep in part or "\0" in part for part in parts):
            raise InvalidInputError(f"{record_path}: its caption path {relative!r} would leave --caption-dir "
                                    f"{self.caption_dir}")
        return self.caption_dir.joinpath(*parts)

    def exists(self, record_path: str | None) -> bool:
        """Whether the input's caption file exists (the skip/resume filter applied before tagging); False for
        a path refused a caption (it becomes an error record when written)."""
        try:
            return self.caption_path(record_path).exists()
        except InvalidInputError:
            return False

    # ------------------------------------------------------------------------ writing
    def write(self, records: Iterable[TagRecord]) -> int:
        """Write the caption of each record without an error; append the others to ``errors_path``.

        A record whose caption path is refused (see :meth:`caption_path`), or whose caption another
        input of this run already has (``a.jpg`` and ``a.png`` both give ``a.txt``), becomes an error
        record too: every input is either captioned or in the errors file.

        Returns:
            How many records were handled (captions written, skipped, appended, and errors).

        Raises:
            OutputWriteError: a caption or the errors file cannot be written (names it and why).
        """
        count = 0
        try:
            for record in records:
                count += 1
                error = record.finite_error()
                if error is not None:
                    self._write_error(record)
                    continue
                try:
                    path = self.caption_path(record.path)
                except InvalidInputError as err:
                    self._write_error(dataclasses.replace(record, labels=[], error=str(err)))
                    continue
                owner = self._owners.setdefault(path, record.path)
                if owner != record.path:
                    self._write_error(dataclasses.replace(record, labels=[], error=(
                        f"{record.path}: its caption {path} is already that of {owner} (the same name with another "
                        "extension); not written")))
                    continue
                self._write_caption(path, [name for name, _ in record.labels])
        finally:
            if self._errors is not None:
                self._guard(self.errors_path, self._errors.flush)
        return count

    def _write_caption(self, path: Path, tags: list[str]) -> None:
        try:
            exists = path.exists()
            if exists and self.on_existing == "skip":
                self.skipped += 1
                return
            if exists and self.on_existing == "append":
                existing = self._split(path.read_bytes().decode("utf-8", "surrogateescape"))
                merged = _unique(existing + tags)
                self.appended += 1
                if len(merged) == len(existing) and merged == existing:
                    return  # every tag already there: the file stays as it is
                tags = merged
            else:
                self.written += 1
            text = self.separator.join(_unique(tags))
            self._replace(path, (text + "\n" if text else "").encode("utf-8", "surrogateescape"))
        except OSError as err:
            raise OutputWriteError(f"cannot write the caption {path}: {err.strerror or err}") from None

    def _split(self, text: str) -> list[str]:
        """The tags of an existing caption: split on the separator's stripped form, each stripped."""
        return [tag for tag in (part.strip() for part in text.split(self._split_on)) if tag]

    def _replace(self, path: Path, data: bytes) -> None:
        """Write ``data`` to a temporary file beside ``path``, then move it over ``path`` in one step."""
        if self.durable:
            with atomic_write(path, "wb") as handle:
                handle.write(data)
            return
        if path.parent not in self._folders:  # one mkdir per folder, not per caption
            path.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(path.parent)
        fd, tmp = _create_beside(path)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _write_error(self, record: TagRecord) -> None:
        if self._errors is None:
            def open_errors() -> IO[str]:
                self.errors_path.parent.mkdir(parents=True, exist_ok=True)
                handle = open(self.errors_path, "a+", encoding="utf-8", newline="")
                _cut_partial_line(handle)  # a line cut short by a crash of the previous run
                return handle

            self._errors = self._guard(self.errors_path, open_errors)
        line = json.dumps(record.to_json(), allow_nan=False) + "\n"
        self._guard(self.errors_path, lambda: self._errors.write(line))
        self.errors += 1

    @staticmethod
    def _guard(path: Path, action: Callable[[], T]) -> T:
        try:
            return action()
        except OSError as err:
            raise OutputWriteError(f"cannot write the errors file {path}: {err.strerror or err}") from None

    def close(self) -> None:
        """Flush and close the errors file (if one was opened)."""
        if self._errors is not None and not self._errors.closed:
            handle, self._errors = self._errors, None
            try:
                self._guard(self.errors_path, handle.flush)
            finally:
                handle.close()

    def __enter__(self) -> CaptionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _with_ext(path: str, ext: str) -> str:
    """``a/b.jpg`` -> ``a/b<ext>``: the last extension of the file name replaced (added when it has none)."""
    folder, _, name = path.rpartition("/")
    stem = name[: name.rfind(".")] if name.rfind(".") > 0 else name
    return f"{folder}/{stem}{ext}" if folder or path.startswith("/") else f"{stem}{ext}"


def _unique(tags: list[str]) -> list[str]:
    """``tags`` without repeats, the first of each kept."""
    return list(dict.fromkeys(tags))
