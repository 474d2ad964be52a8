"""Multi-label datasets as plain records: image paths, a target matrix, label names.

Targets use one encoding everywhere: 1 positive, 0 negative, -1 unknown (a dropped label in
partial-label training, or a VOC "difficult" object); the loss masks and the metrics ignore
-1 entries.

Formats: MS-COCO 2014 (``instances_*.json``), Pascal VOC 2007 (``Annotations/*.xml``),
NUS-WIDE (the official list-file layout), and manifests for user data: CSV (``filename`` plus
one 0/1 column per label) and JSONL (``{"path": ..., "labels": [...]}``).

A *data spec* names a dataset on the command line and in YAML configs:

- ``path/to/dir`` holding ``labels.csv`` (images in ``dir/images`` or ``dir``), a ``.csv`` or a
  ``.jsonl`` file;
- ``csv:FILE``, ``jsonl:FILE``, ``coco:ROOT``, ``voc:ROOT``, ``nuswide:ROOT``, each optionally
  followed by ``?key=value&...`` (``split=``, ``images=``, ``annotated_only=1``,
  ``on_error=skip``, ``labels=a,b,c``).

Any spec also takes ``holdout=F&subset=fit|holdout[&holdout_seed=S]``: a seeded random fraction
F of its images is held out (``subset=holdout``) and the rest is kept for fitting
(``subset=fit``), so settings can be chosen on a slice of a training split and never on the
split that is reported. The two subsets partition the set for any F and seed; the split is a
seeded permutation of the rows as loaded, so adding or removing rows changes it.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import json
import logging
import os
import posixpath
import re
import stat
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InvalidInputError, UserError
from ..io import special_file_kind

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


class ManifestError(UserError, ValueError):
    """A dataset description with problems; ``problems`` lists every one found."""

    def __init__(self, source: str, problems: Sequence[str], *, skippable: bool = True) -> None:
        self.source = source
        self.problems = list(problems)
        shown = "\n  ".join(self.problems[:20])
        more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        hint = "\n(pass on_error=skip to report and skip bad rows instead)" if skippable else ""
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n  {shown}{more}{hint}")


@dataclasses.dataclass
class MultiLabelSet:
    """Images and their labels.

    Attributes:
        paths: Absolute image paths, one per image.
        targets: (N, C) int8: 1 positive, 0 negative, -1 unknown.
        label_names: The C label names, in column order.
        source: Where it came from (for messages and run records).
        skipped: Rows left out with ``on_error=skip``, each with its reason.
    """

    paths: list[str]
    targets: np.ndarray
    label_names: list[str]
    source: str = ""
    skipped: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=np.int8).reshape(len(self.paths), len(self.label_names))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "MultiLabelSet":
        idx = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(self, paths=[self.paths[i] for i in idx], targets=self.targets[idx])

    def label_counts(self) -> dict[str, int]:
        return {name: int((self.targets[:, c] == 1).sum()) for c, name in enumerate(self.label_names)}

    def aligned_to(self, label_names: Sequence[str]) -> "MultiLabelSet":
        """The same set with columns reordered to ``label_names``; an error if the names differ."""
        if list(label_names) == self.label_names:
            return self
        missing = sorted(set(label_names) - set(self.label_names))
        extra = sorted(set(self.label_names) - set(label_names))
        if missing or extra:
            raise ManifestError(self.source, [f"labels differ from the model's: missing {missing}, unexpected {extra}"])
        order = [self.label_names.index(n) for n in label_names]
        return dataclasses.replace(self, targets=self.targets[:, order], label_names=list(label_names))


def _finish(source: str, paths: list[str], targets: list, names: list[str], problems: list[str],
            on_error: str, bad_rows: set[int], check_files: bool = True) -> MultiLabelSet:
    """Apply ``on_error`` to the problems found while parsing, and check for missing files
    (unless ``check_files`` is off) and duplicates."""
    seen: dict[str, int] = {}
    for i, path in enumerate(paths):
        if i in bad_rows:
            continue
        if path in seen:
            problems.append(f"duplicate image {path} (rows {seen[path] + 1} and {i + 1})")
            bad_rows.add(i)
            continue
        seen[path] = i
        if check_files and not Path(path).is_file():
            problems.append(f"missing file {path} (row {i + 1})")
            bad_rows.add(i)
    if problems and on_error != "skip":
        raise ManifestError(source, problems)
    for problem in problems:
        log.warning("%s: skipped: %s", source, problem)
    keep = [i for i in range(len(paths)) if i not in bad_rows]
    matrix = np.array([targets[i] for i in keep], dtype=np.int8).reshape(len(keep), len(names))
    return MultiLabelSet([paths[i] for i in keep], matrix, names, source, skipped=list(problems))


def _read_bytes(path: Path) -> tuple[bytes, int]:
    """A manifest's bytes without a leading UTF-8 BOM (spreadsheet programs write one), and the
    BOM's length. Only a regular file is opened: a FIFO would block, a device never end."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            kind = "folder" if stat.S_ISDIR(mode) else special_file_kind(mode)
            raise ManifestError(str(path), [f"not a regular file (a {kind})"], skippable=False)
        raw = path.read_bytes()
    except OSError as err:
        raise ManifestError(str(path), [f"cannot read: {err}"], skippable=False) from None
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    return raw[bom:], bom


def _not_utf8(line_no: int, byte: int, offset: int) -> str:
    return f"line {line_no}: not UTF-8 text (byte 0x{byte:02x} at byte offset {offset}); save the file as UTF-8"


def _read_text(path: Path) -> str:
    """A whole UTF-8 text file (BOM or not); bytes that are not UTF-8 are an error naming the first."""
    body, bom = _read_bytes(path)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as err:
        problem = _not_utf8(body.count(b"\n", 0, err.start) + 1, body[err.start], bom + err.start)
        raise ManifestError(str(path), [problem], skippable=False) from None


def _read_lines(path: Path, *, csv_newlines: bool = False) -> tuple[list[str], dict[int, str]]:
    """The lines of a UTF-8 text file (BOM or not, line ends kept) and ``{line number: problem}``
    for the lines that are not UTF-8 (those are decoded with surrogate escapes, to be skipped).

    Lines end at ``\\n`` (JSON Lines), or with ``csv_newlines`` at ``\\n``, ``\\r`` or ``\\r\\n`` as
    the csv module reads them.
    """
    body, bom = _read_bytes(path)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return (list(io.StringIO(text, newline="")) if csv_newlines else _split_lf(text)), {}
    lines, bad, offset = [], {}, bom
    for line_no, raw in enumerate(body.splitlines(keepends=True) if csv_newlines else _split_lf(body), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            bad[line_no] = _not_utf8(line_no, raw[err.start], offset + err.start)
            lines.append(raw.decode("utf-8", "surrogateescape"))
        offset += len(raw)
    return lines, bad


def _split_lf(data: str | bytes) -> list:
    """``data`` (str or bytes) cut after each newline, the newlines kept."""
    newline = "\n" if isinstance(data, str) else b"\n"
    pieces = data.split(newline)
    return [piece + newline for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])


def load_csv_manifest(path: str | Path, images: str | Path | None = None, on_error: str = "raise",
                      check_files: bool = True) -> MultiLabelSet:
    """CSV: a ``filename`` column and one column per label holding 1, 0, or -1 / empty (unknown).

    Args:
        path: The CSV file.
        images: Folder the filenames are relative to (default ``<csv dir>/images`` if it exists,
            else the CSV's folder).
        on_error: ``raise`` (list every problem) or ``skip`` (report and drop bad rows).
    """
    path = Path(path)
    if images is None:
        images = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    images = Path(images)
    lines, not_utf8 = _read_lines(path, csv_newlines=True)
    reader = csv.reader(lines)
    records, start = [], 1  # (first line, last line, fields): a quoted field may span lines
    try:
        for row in reader:
            records.append((start, reader.line_num, row))
            start = reader.line_num + 1
    except csv.Error as err:
        where = f"line {start}" if reader.line_num <= start else \
            f"line {start} (the record runs on to line {reader.line_num}: an unclosed quote?)"
        limit = f"; a field holds at most {csv.field_size_limit()} characters" if "field limit" in str(err) else ""
        raise ManifestError(str(path), [f"{where}: {err}{limit}"], skippable=False) from None
    if not records:
        raise ManifestError(str(path), ["the file is empty: expected a header 'filename,<label>,...'"],
                            skippable=False)
    first, last, header = records[0]
    header_bad = [not_utf8[n] for n in range(first, last + 1) if n in not_utf8]
    if header_bad:
        raise ManifestError(str(path), header_bad, skippable=False)
    if not header or header[0].strip() != "filename":
        raise ManifestError(str(path), ["the header must start with 'filename' followed by one column per label"])
    names = [n.strip() for n in header[1:]]
    if not names or len(set(names)) != len(names):
        raise ManifestError(str(path), [f"label columns must be present and unique, got {names}"])
    paths, targets, problems, bad = [], [], [], set()
    for first, last, row in records[1:]:
        i = len(paths)
        paths.append(str((images / row[0].strip()).resolve()) if row and row[0].strip() else f"<row {first}>")
        values = [0] * len(names)
        targets.append(values)
        encoding_problems = [not_utf8[n] for n in range(first, last + 1) if n in not_utf8]
        if encoding_problems:
            problems.extend(encoding_problems)
            bad.add(i)
        elif len(row) != len(names) + 1:
            problems.append(f"line {first}: {len(row)} fields, expected {len(names) + 1}")
            bad.add(i)
        else:
            for c, cell in enumerate(row[1:]):
                cell = cell.strip()
                if cell in ("1", "0", "-1", ""):
                    values[c] = int(cell) if cell else -1
                else:
                    problems.append(f"line {first}: column '{names[c]}' holds {cell!r}, expected 1, 0, -1 or empty")
                    bad.add(i)
    return _finish(str(path), paths, targets, names, problems, on_error, bad, check_files)


def load_jsonl_manifest(path: str | Path, labels: Sequence[str] | None = None, images: str | Path | None = None,
                        on_error: str = "raise", check_files: bool = True) -> MultiLabelSet:
    """JSONL: one ``{"path": ..., "labels": [...], "unknown": [...]}`` object per line.

    ``labels`` lists the positives; the optional ``unknown`` lists labels whose state is not
    known (partial labels); every other label is negative. Paths are relative to ``images``
    (default: the manifest's folder). With ``labels=None`` the label set is every label seen,
    sorted; with a given set, a label outside it is a problem.
    """
    path = Path(path)
    base = Path(images) if images is not None else path.parent
    records, problems = [], []
    lines, not_utf8 = _read_lines(path)
    bad_lines = set()
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if line_no in not_utf8:
            problems.append(not_utf8[line_no])
            bad_lines.add(line_no)
            records.append((line_no, {"path": f"<line {line_no}>", "labels": []}))
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("path"), str):
                raise InvalidInputError("needs a string 'path'")
            if not isinstance(record.get("labels", []), list) or not isinstance(record.get("unknown", []), list):
                raise InvalidInputError("'labels' and 'unknown' must be lists")
        except ValueError as err:
            problems.append(f"line {line_no}: {err}")
            bad_lines.add(line_no)
            record = {"path": f"<line {line_no}>", "labels": []}
        records.append((line_no, record))
    names = list(labels) if labels is not None else sorted(
        {str(n) for _, r in records for key in ("labels", "unknown") for n in r.get(key, [])})
    index = {n: c for c, n in enumerate(names)}
    paths, targets, bad = [], [], set()
    for i, (line_no, record) in enumerate(records):
        paths.append(str((base / record["path"]).resolve()) if not record["path"].startswith("<") else record["path"])
        values = [0] * len(names)
        if line_no in bad_lines:
            bad.add(i)
        for key, value in (("labels", 1), ("unknown", -1)):
            for name in record.get(key, []):
                if str(name) not in index:
                    problems.append(f"line {line_no}: unknown label {name!r} (known: {', '.join(names)})")
                    bad.add(i)
                else:
                    values[index[str(name)]] = value
        targets.append(values)
    return _finish(str(path), paths, targets, names, problems, on_error, bad, check_files)


def load_coco(root: str | Path, split: str = "train2014", annotated_only: bool = False,
              on_error: str = "raise") -> MultiLabelSet:
    """MS-COCO 2014: ``<root>/annotations/instances_<split>.json``, images in ``<root>/<split>``.

    Labels are the 80 categories in ascending category id, named by the file. With
    ``annotated_only=False`` every image of the split is kept (all 40,504 of val2014; those
    without an object are all-negative), else only images with at least one annotation.
    """
    root = Path(root)
    ann_file = root / "annotations" / f"instances_{split}.json"
    if not ann_file.is_file():
        raise ManifestError(str(ann_file), ["COCO annotation file not found"])
    try:
        data = json.loads(_read_text(ann_file))
        categories = sorted(data["categories"], key=lambda c: c["id"])
        column = {c["id"]: i for i, c in enumerate(categories)}
        names = [c["name"] for c in categories]
        images = sorted(data["images"], key=lambda im: im["id"])
    except json.JSONDecodeError as err:
        raise ManifestError(str(ann_file), [f"not valid JSON: {err}"], skippable=False) from None
    except (KeyError, TypeError) as err:
        raise ManifestError(str(ann_file), [f"not a COCO instances file ('images' and 'categories' with "
                                            f"'id' and 'name' expected): {err!r}"], skippable=False) from None
    row = {im["id"]: i for i, im in enumerate(images)}
    targets = np.zeros((len(images), len(names)), dtype=np.int8)
    problems = []
    for ann in data.get("annotations", []):
        if ann["image_id"] not in row or ann["category_id"] not in column:
            problems.append(f"annotation {ann.get('id')} names unknown image {ann['image_id']} or category {ann['category_id']}")
            continue
        targets[row[ann["image_id"]], column[ann["category_id"]]] = 1
    keep = [i for i in range(len(images)) if not annotated_only or targets[i].any()]
    paths = [str((root / split / images[i]["file_name"]).resolve()) for i in keep]
    return _finish(str(ann_file), paths, list(targets[keep]), names, problems, on_error, set())


def load_voc2007(root: str | Path, split: str = "trainval", on_error: str = "raise") -> MultiLabelSet:
    """Pascal VOC 2007 from its XML annotations (``<root>`` is the ``VOC2007`` folder).

    A class is positive when a non-difficult object of it is present, unknown (-1) when only
    difficult ones are (the VOC protocol ignores those), negative otherwise.
    """
    root = Path(root)
    ids_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not ids_file.is_file():
        raise ManifestError(str(ids_file), ["VOC image list not found"])
    ids = [line.strip() for line in _read_text(ids_file).splitlines() if line.strip()]
    index = {n: c for c, n in enumerate(VOC_CLASSES)}
    paths, targets, problems, bad = [], [], [], set()
    for i, image_id in enumerate(ids):
        paths.append(str((root / "JPEGImages" / f"{image_id}.jpg").resolve()))
        values = [0] * len(VOC_CLASSES)
        xml_file = root / "Annotations" / f"{image_id}.xml"
        try:
            tree = ET.parse(xml_file)
        except (OSError, ET.ParseError) as err:
            problems.append(f"{xml_file}: {err}")
            bad.add(i)
            targets.append(values)
            continue
        for obj in tree.getroot().iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                problems.append(f"{xml_file}: unknown class {name!r}")
                bad.add(i)
                continue
            difficult = (obj.findtext("difficult") or "0").strip() == "1"
            c = index[name]
            if not difficult:
                values[c] = 1
            elif values[c] == 0:
                values[c] = -1
        targets.append(values)
    return _finish(str(ids_file), paths, targets, list(VOC_CLASSES), problems, on_error, bad)


def load_nuswide(root: str | Path, split: str = "train", on_error: str = "raise") -> MultiLabelSet:
    """NUS-WIDE in the official list-file layout (81 concepts).

    ``<root>/Concepts81.txt`` (or ``ConceptsList/Concepts81.txt``), ``ImageList/TrainImagelist.txt``
    / ``TestImagelist.txt`` (one ``folder\\file.jpg`` per line), ``TrainTestLabels/Labels_<concept>_<Train|Test>.txt``
    (one 0/1 per image, in list order), images under ``<root>/Flickr``.
    """
    root = Path(root)
    tag = {"train": "Train", "test": "Test"}.get(split.lower())
    if tag is None:
        raise ManifestError(str(root), [f"NUS-WIDE split must be train or test, got {split!r}"])
    concepts_file = next((p for p in (root / "Concepts81.txt", root / "ConceptsList" / "Concepts81.txt") if p.is_file()), None)
    list_file = root / "ImageList" / f"{tag}Imagelist.txt"
    missing = [str(p) for p in (list_file,) if not p.is_file()] + ([] if concepts_file else [str(root / "Concepts81.txt")])
    if missing:
        raise ManifestError(str(root), [f"NUS-WIDE file not found: {m}" for m in missing])
    names = [line.strip() for line in _read_text(concepts_file).splitlines() if line.strip()]
    rel_paths = [line.strip().replace("\\", "/") for line in _read_text(list_file).splitlines() if line.strip()]
    targets = np.zeros((len(rel_paths), len(names)), dtype=np.int8)
    problems = []
    for c, name in enumerate(names):
        label_file = root / "TrainTestLabels" / f"Labels_{name}_{tag}.txt"
        if not label_file.is_file():
            problems.append(f"label file not found: {label_file}")
            continue
        values = [line.strip() for line in _read_text(label_file).splitlines() if line.strip()]
        if len(values) != len(rel_paths):
            problems.append(f"{label_file}: {len(values)} lines for {len(rel_paths)} images")
            continue
        bad_values = sorted({v for v in values if v not in ("0", "1")})
        if bad_values:
            problems.append(f"{label_file}: values {bad_values[:5]} are not 0/1")
            continue
        targets[:, c] = np.array(values, dtype=np.int8)
    if problems:  # a broken label file spoils every row: never skippable
        raise ManifestError(str(root), problems)
    paths = [str((root / "Flickr" / p).resolve()) for p in rel_paths]
    return _finish(str(list_file), paths, list(targets), names, [], on_error, set())


def parse_data_spec(spec: str) -> tuple[str, Path, dict[str, str]]:
    """Split a data spec into (kind, path, options); see the module docstring."""
    kind, path_part = "", spec
    head, sep, rest = spec.partition(":")
    if sep and head in ("csv", "jsonl", "coco", "voc", "nuswide") and not (len(head) == 1 and rest.startswith("\\")):
        kind, path_part = head, rest
    path_text, _, query = path_part.partition("?")
    options = {k: v for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True)}
    path = Path(path_text).expanduser()
    if not kind:
        if path.is_dir() and (path / "labels.csv").is_file():
            kind, path = "csv", path / "labels.csv"
        elif path.suffix == ".csv":
            kind = "csv"
        elif path.suffix == ".jsonl":
            kind = "jsonl"
        else:
            raise ManifestError(spec, [
                "cannot tell the format: give a folder with labels.csv, a .csv or .jsonl file, "
                "or prefix csv:, jsonl:, coco:, voc:, nuswide:"])
    return kind, path, options


def absolute_spec(spec: str) -> str:
    """The same data spec with its path made absolute (so it still resolves from another folder)."""
    head, sep, rest = spec.partition(":")
    if sep and head in ("csv", "jsonl", "coco", "voc", "nuswide"):
        path_text, qsep, query = rest.partition("?")
        return f"{head}:{Path(path_text).expanduser().resolve()}{qsep}{query}"
    path_text, qsep, query = spec.partition("?")
    return f"{Path(path_text).expanduser().resolve()}{qsep}{query}"


def load_data_spec(spec: str, label_names: Sequence[str] | None = None, on_error: str = "raise") -> MultiLabelSet:
    """Load the dataset a data spec names; columns aligned to ``label_names`` when given.

    ``on_error`` (``raise`` or ``skip``) applies unless the spec sets its own ``on_error=``.
    """
    kind, path, options = parse_data_spec(spec)
    on_error = options.pop("on_error", on_error)
    if on_error not in ("raise", "skip"):
        raise ManifestError(spec, [f"on_error must be raise or skip, got {on_error!r}"])
    if not path.exists():
        raise ManifestError(spec, [f"not found: {path}"])
    if kind == "csv":
        data = load_csv_manifest(path, images=options.pop("images", None), on_error=on_error)
    elif kind == "jsonl":
        labels = options.pop("labels", None)
        names = labels.split(",") if labels else (list(label_names) if label_names else None)
        data = load_jsonl_manifest(path, labels=names, images=options.pop("images", None), on_error=on_error)
    elif kind == "coco":
        data = load_coco(path, split=options.pop("split", "train2014"),
                         annotated_only=options.pop("annotated_only", "0") in ("1", "true", "yes"), on_error=on_error)
    elif kind == "voc":
        data = load_voc2007(path, split=options.pop("split", "trainval"), on_error=on_error)
    else:
        data = load_nuswide(path, split=options.pop("split", "train"), on_error=on_error)
    data = _holdout_subset(spec, data, options)
    if options:
        raise ManifestError(spec, [f"unknown option(s) {sorted(options)} for {kind}"])
    data.source = spec
    return data.aligned_to(label_names) if label_names is not None else data


def _holdout_subset(spec: str, data: MultiLabelSet, options: dict[str, str]) -> MultiLabelSet:
    """Apply the ``holdout``/``subset``/``holdout_seed`` options (popped from ``options``)."""
    fraction, subset, seed = options.pop("holdout", None), options.pop("subset", None), options.pop("holdout_seed", "0")
    if fraction is None and subset is None:
        return data
    problems = []
    try:
        share = float(fraction) if fraction is not None else float("nan")
    except ValueError:
        share = float("nan")
    if not 0.0 < share < 1.0:
        problems.append(f"holdout must be a fraction in (0, 1), got {fraction!r}")
    if subset not in ("fit", "holdout"):
        problems.append(f"subset must be fit or holdout, got {subset!r}")
    if not seed.isdigit():
        problems.append(f"holdout_seed must be a non-negative integer, got {seed!r}")
    if problems:
        raise ManifestError(spec, problems)
    order = np.random.default_rng(int(seed)).permutation(len(data))
    cut = int(round(share * len(data)))
    if not 0 < cut < len(data):
        raise ManifestError(spec, [f"holdout={fraction} of {len(data)} images leaves an empty subset"])
    chosen = np.sort(order[:cut] if subset == "holdout" else order[cut:])
    return data.subset(chosen)


def manifest_paths(path: str | Path, *, base: str | None = None, name: str | None = None) -> list[str]:
    """Every image path a CSV or JSONL manifest names, in order, missing files included (the
    tagger reports those as error records). Rows that are not well formed are skipped.

    Rows that are URLs (``s3://bucket/a.jpg``) are kept as URLs; other rows are resolved as the
    loaders resolve them (relative to the images folder: ``images/`` beside a CSV if that is a
    folder, else the manifest's folder).

    Args:
        path: The manifest file.
        base: For a manifest read from remote storage into the local file ``path``: the URL of
            the folder its relative rows are relative to (``../`` rows are resolved against it);
            absolute local rows stay local paths.
        name: What errors call the manifest (its URL); default ``path``.

    Raises:
        ManifestError: a manifest that cannot be read or has no usable header, named by ``name``.
    """
    path = Path(path)
    loader = load_csv_manifest if path.suffix == ".csv" else load_jsonl_manifest
    if base is None:
        images = path.parent / "images" if path.suffix == ".csv" and (path.parent / "images").is_dir() else path.parent
    else:  # a root that does not exist, deep enough that ../ rows stay under its top folder
        top = Path("/", f"lcie-manifest-root-{os.urandom(8).hex()}")
        images = top.joinpath(*["d"] * 32)
    try:
        rows = loader(path, images=images, on_error="skip", check_files=False).paths
    except ManifestError as err:
        if name is None:
            raise
        raise ManifestError(name, err.problems, skippable=False) from None
    root = str(images.resolve())
    paths = []
    for row in rows:
        relative = os.path.relpath(row, root) if row.startswith("/") else row
        url = _URL_ROW.match(relative)
        if url:  # a URL row, its "//" collapsed by the path join
            scheme, rest = url.groups()
            paths.append(f"{scheme}://{'/' if scheme == 'file' else ''}{rest}")
        elif base is not None and row.startswith(str(top) + "/"):
            scheme, _, folder = base.rstrip("/").partition("://")
            paths.append(f"{scheme}://{posixpath.normpath(f'{folder}/{relative}')}")
        else:
            paths.append(row)
    return paths


# a URL row after a path join and resolve: "s3://bucket/a.jpg" -> "s3:/bucket/a.jpg" (scheme of 2+ characters:
# a Windows drive letter is not a scheme)
_URL_ROW = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/(.*)$")
