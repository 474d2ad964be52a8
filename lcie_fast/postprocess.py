"""Tag post-processing after the thresholds: exclude, fill to a minimum, cap, reorder, rename.

Batch taggers feed captions and dataset filters, whose users want a say in which tags come out
and what they are called: drop tags they never want (``--exclude-tags``), put some first
(``--always-first``, e.g. a trigger word), rename them (``--label-map`` display names,
``--replace a:b``) and bound how many each image gets (``--min-tags``, ``--max-tags``; ``--top-k``
is ``--max-tags``). :class:`TagPostprocess` does all of it to one image's tags, in this order:

1. drop the excluded labels;
2. fewer than ``min_tags`` left: add the best-scoring labels below their thresholds (never an
   excluded one), after those the thresholds kept;
3. keep at most ``max_tags``, best first;
4. move the ``always_first`` labels still present to the front, in the order given;
5. rename: each label to its ``label_map`` display name, then ``replace`` (``a:b``: the tag
   named ``a`` after the label map becomes ``b``); when two tags end up with the same name,
   the first one is kept.

``exclude`` and ``always_first`` name the model's labels; ``replace`` names tags as they are
written (display names where a label map renames them). Every name is checked against the model
before any image is read (:meth:`TagPostprocess.check`), and :meth:`TagPostprocess.apply` does
only set and dict look-ups per image (it runs for every one of millions).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import difflib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputNotFoundError, InvalidInputError

FLAGS = {"exclude": "--exclude-tags", "always_first": "--always-first", "replace": "--replace",
         "label_map": "--label-map", "min_tags": "--min-tags", "max_tags": "--max-tags"}
_SHOWN_LABELS = 40  # an error lists at most this many of the model's labels


def describe_labels(labels: Sequence[str]) -> str:
    """The model's labels for an error message: all of them, or the first few and how many there are."""
    if len(labels) <= _SHOWN_LABELS:
        return f"labels: {list(labels)}"
    return f"{len(labels)} labels: {list(labels[:_SHOWN_LABELS])} ..."


def unknown_names_message(subject: str, unknown: Sequence[str], labels: Sequence[str]) -> str:
    """``subject`` names labels the model does not have: the unknown ones, close matches, the model's labels."""
    hints = []
    if len(unknown) <= 10:  # close matches for a few typos, not for a label map of another model
        for name in unknown:
            close = difflib.get_close_matches(name, labels, n=3)
            if close:
                hints.append(f"{name!r}: did you mean {' or '.join(map(repr, close))}?")
    return (f"{subject} names labels the model does not have: {list(unknown)}" + (f" ({'; '.join(hints)})" if hints else "")
            + f"; {describe_labels(labels)}")


# ------------------------------------------------------------------------------ CLI values
def _split_escaped(text: str, separator: str) -> list[str]:
    """``text`` split on ``separator`` where it is not escaped by a backslash; escapes are kept."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current) + ("\\" if escaped else ""))
    return parts


def _unescape(text: str) -> str:
    """``\\,`` -> ``,`` and ``\\:`` -> ``:`` (any escaped character stands for itself); stripped."""
    out, escaped = [], False
    for char in text.strip():
        if escaped or char != "\\":
            out.append(char)
            escaped = False
        else:
            escaped = True
    return "".join(out) + ("\\" if escaped else "")


def parse_tag_list(text: str) -> tuple[str, ...]:
    """A comma-separated list of tags (``"a,b"``), each stripped; empty items are left out.

    A comma inside a tag is written ``\\,``.
    """
    return tuple(name for name in (_unescape(part) for part in _split_escaped(text, ",")) if name)


def parse_replace(text: str, flag: str = FLAGS["replace"]) -> tuple[tuple[str, str], ...]:
    """``"a:b,c:d"`` -> ``(("a", "b"), ("c", "d"))``: tag ``a`` becomes ``b``. Empty items are left out.

    A colon or comma inside a tag is written ``\\:`` or ``\\,`` (``\\:3:smile``: the tag ``:3``).

    Raises:
        InvalidInputError: an item that is not ``old:new`` with both names non-empty, named with ``flag``.
    """
    pairs = []
    for item in _split_escaped(text, ","):
        if not item.strip():
            continue
        parts = _split_escaped(item, ":")
        names = [_unescape(part) for part in parts]
        if len(parts) != 2 or not all(names):
            raise InvalidInputError(f"{flag}: {_unescape(item)!r} is not old:new (write a colon or comma inside a tag "
                                    "as \\: or \\,)")
        pairs.append((names[0], names[1]))
    return tuple(pairs)


def load_label_map(path: str | Path) -> tuple[tuple[str, str], ...]:
    """Display names from a file: JSON ``{label: display}``, or CSV/TSV rows ``label,display``.

    A CSV/TSV file is tab-separated when its name ends in ``.tsv`` or its first line holds a tab;
    an optional header row ``label,display`` is skipped, as are blank rows.

    Raises:
        InputNotFoundError: ``path`` does not exist.
        InvalidInputError: unreadable, not UTF-8, not a JSON object of strings, a row without
            exactly two columns, an empty name, or a label given twice; names the file (and line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputNotFoundError(f"{path}: label map file not found ({FLAGS['label_map']})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"{path}: cannot read the label map: {err}") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        return _label_map_json(path, text)
    delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in text.partition("\n")[0] else ","
    pairs: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    try:
        for number, row in enumerate(csv.reader(io.StringIO(text), delimiter=delimiter), start=1):
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != 2:
                raise InvalidInputError(f"{path} line {number}: expected 2 columns (label{delimiter}display), got "
                                        f"{len(row)}: {row}")
            label, display = row[0].strip(), row[1].strip()
            if not pairs and not seen and (label.lower(), display.lower()) == ("label", "display"):
                continue
            _add_label_pair(pairs, seen, label, display, f"{path} line {number}")
    except csv.Error as err:
        raise InvalidInputError(f"{path}: not a valid CSV/TSV label map: {err}") from None
    return tuple(pairs)


def _label_map_json(path: Path, text: str) -> tuple[tuple[str, str], ...]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidInputError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: expected a JSON object {{label: display name}}, got {type(data).__name__}")
    pairs: list[tuple[str, str]] = []
    for label, display in data.items():
        if not isinstance(display, str):
            raise InvalidInputError(f"{path}: the display name of {label!r} must be a string, got {display!r}")
        _add_label_pair(pairs, {}, label.strip(), display.strip(), str(path))
    return tuple(pairs)


def _add_label_pair(pairs: list[tuple[str, str]], seen: dict[str, int], label: str, display: str, where: str) -> None:
    if not label or not display:
        raise InvalidInputError(f"{where}: empty {'label' if not label else 'display name'} in the label map")
    if label in seen:
        raise InvalidInputError(f"{where}: label {label!r} is mapped twice")
    seen[label] = len(pairs)
    pairs.append((label, display))


# ----------------------------------------------------------------------------- the steps
@dataclasses.dataclass(frozen=True)
class _Plan:
    """What :meth:`TagPostprocess.apply` needs for one label list, computed once."""

    source: Sequence[str]  # the object checked: apply compares by identity first
    labels: tuple[str, ...]
    index: dict[str, int]
    allowed: np.ndarray  # (C,) bool: labels min_tags may add (not excluded)
    excluded: frozenset[str]
    first: frozenset[str]
    rename: dict[str, str]  # model label -> written name, only those that change


@dataclasses.dataclass(frozen=True)
class TagPostprocess:
    """What happens to each image's tags after the thresholds (see the module docstring for the order).

    Attributes:
        exclude: Model labels never written (``--exclude-tags``).
        always_first: Model labels moved to the front, in this order, when present (``--always-first``).
        replace: (old, new) pairs: the tag written ``old`` (after ``label_map``) becomes ``new`` (``--replace``).
        label_map: (label, display name) pairs (``--label-map``).
        min_tags: Fill up to this many tags with the best labels below their thresholds (``--min-tags``).
        max_tags: Keep at most this many tags, best first (``--max-tags``, also ``--top-k``); None: no cap.

    Raises:
        InvalidInputError: a count out of range, ``min_tags`` above ``max_tags``, a label both
            excluded and put first, a tag replaced (or mapped) twice, or an empty name; names the flag.
    """

    exclude: tuple[str, ...] = ()
    always_first: tuple[str, ...] = ()
    replace: tuple[tuple[str, str], ...] = ()
    label_map: tuple[tuple[str, str], ...] = ()
    min_tags: int = 0
    max_tags: int | None = None
    _plan: _Plan | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("exclude", "always_first"):
            object.__setattr__(self, name, tuple(dict.fromkeys(getattr(self, name))))  # a repeat would move a tag twice
        for name in ("replace", "label_map"):
            object.__setattr__(self, name, tuple((str(a), str(b)) for a, b in getattr(self, name)))
        for name, least in (("min_tags", 0), ("max_tags", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least):
                raise InvalidInputError(f"{FLAGS[name]} must be a whole number >= {least}, got {value!r}")
        if self.max_tags is not None and self.min_tags > self.max_tags:
            raise InvalidInputError(f"{FLAGS['min_tags']} {self.min_tags} is more than {FLAGS['max_tags']} (or --top-k) "
                                    f"{self.max_tags}")
        for name in ("exclude", "always_first", "replace", "label_map"):
            names = [n for item in getattr(self, name) for n in ((item,) if isinstance(item, str) else item)]
            if not all(names):
                raise InvalidInputError(f"{FLAGS[name]}: empty tag name in {list(getattr(self, name))}")
        both = sorted(set(self.exclude) & set(self.always_first))
        if both:
            raise InvalidInputError(f"{FLAGS['exclude']} and {FLAGS['always_first']} both name {both}")
        for name in ("replace", "label_map"):
            counts = collections.Counter(old for old, _ in getattr(self, name))
            twice = sorted(old for old, count in counts.items() if count > 1)
            if twice:
                raise InvalidInputError(f"{FLAGS[name]}: {twice} given more than once")

    @classmethod
    def from_options(cls, *, exclude: str | Iterable[str] | None = None, always_first: str | Iterable[str] | None = None,
                     replace: str | Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
                     label_map: str | Path | Mapping[str, str] | None = None, min_tags: int | None = 0,
                     max_tags: int | None = None) -> TagPostprocess:
        """Build from CLI values: tag lists as ``"a,b"``, ``replace`` as ``"a:b,c:d"``, ``label_map`` a file path.

        Each may also be given parsed (a sequence of names, of pairs, or a mapping); None leaves
        the step out.

        Raises:
            InputNotFoundError, InvalidInputError: as :func:`parse_replace`, :func:`load_label_map`
                and the class itself.
        """
        def names(value: str | Iterable[str] | None) -> tuple[str, ...]:
            return () if value is None else parse_tag_list(value) if isinstance(value, str) else tuple(value)

        def pairs(value: Any) -> tuple[tuple[str, str], ...]:
            return tuple(value.items()) if isinstance(value, Mapping) else tuple(value or ())

        replaced = parse_replace(replace) if isinstance(replace, str) else pairs(replace)
        mapped = load_label_map(label_map) if isinstance(label_map, (str, Path)) else pairs(label_map)
        return cls(names(exclude), names(always_first), replaced, mapped, min_tags or 0, max_tags)

    @property
    def is_identity(self) -> bool:
        """True when no step is asked for: :meth:`apply` gives back the tags the thresholds kept."""
        return not (self.exclude or self.always_first or self.replace or self.label_map or self.min_tags
                    or self.max_tags is not None)

    def to_settings(self) -> dict[str, Any]:
        """The steps as JSON data, for an output's settings (resume checks); {} when none is asked for."""
        settings: dict[str, Any] = {}
        if self.exclude:
            settings["exclude"] = list(self.exclude)
        if self.always_first:
            settings["always_first"] = list(self.always_first)
        if self.replace:
            settings["replace"] = dict(self.replace)
        if self.label_map:
            settings["label_map"] = dict(self.label_map)
        if self.min_tags:
            settings["min_tags"] = int(self.min_tags)
        if self.max_tags is not None:
            settings["max_tags"] = int(self.max_tags)
        return settings

    def check(self, labels: Sequence[str]) -> None:
        """Check every name against the model's ``labels`` and prepare :meth:`apply` for them.

        Raises:
            InvalidInputError: a name the model does not have, with the flag that gave it and the
                model's labels; a ``replace`` of a label that ``label_map`` renames (replace its
                display name instead).
        """
        label_tuple = tuple(labels)
        known = set(label_tuple)
        for name in ("exclude", "always_first", "label_map"):
            given = [item if isinstance(item, str) else item[0] for item in getattr(self, name)]
            unknown = [n for n in given if n not in known]
            if unknown:
                raise InvalidInputError(unknown_names_message(FLAGS[name], unknown, label_tuple))
        mapping = dict(self.label_map)
        written = [mapping.get(label, label) for label in label_tuple]
        targets = set(written)
        unknown = [old for old, _ in self.replace if old not in targets]
        renamed = [f"{old!r} is written {mapping[old]!r} ({FLAGS['label_map']})" for old in unknown if old in mapping]
        if renamed:
            raise InvalidInputError(f"{FLAGS['replace']} applies after {FLAGS['label_map']}: " + "; ".join(renamed)
                                    + ": replace the display name")
        if unknown:
            raise InvalidInputError(unknown_names_message(FLAGS["replace"], unknown, written))
        replace = dict(self.replace)
        final = {label: replace.get(shown, shown) for label, shown in zip(label_tuple, written)}
        allowed = np.ones(len(label_tuple), dtype=bool)
        index = {label: i for i, label in enumerate(label_tuple)}
        allowed[[index[name] for name in self.exclude]] = False
        plan = _Plan(labels, label_tuple, index, allowed, frozenset(self.exclude), frozenset(self.always_first),
                     {k: v for k, v in final.items() if k != v})
        object.__setattr__(self, "_plan", plan)

    def _plan_for(self, labels: Sequence[str]) -> _Plan:
        plan = self._plan
        if plan is not None and plan.source is labels:
            return plan
        if plan is not None and len(plan.labels) == len(labels) and plan.labels == tuple(labels):
            plan = dataclasses.replace(plan, source=labels)
            object.__setattr__(self, "_plan", plan)
            return plan
        self.check(labels)
        return self._plan

    def apply(self, kept: list[tuple[str, float]], probs: np.ndarray, labels: Sequence[str]) -> list[tuple[str, float]]:
        """One image's tags after every step (the order of the module docstring).

        Args:
            kept: (label, score) of the labels at or above their thresholds, best first.
            probs: (C,) every label's score, in the order of ``labels`` (read only to fill up to ``min_tags``).
            labels: The model's labels (checked once by :meth:`check`; pass the same object each
                time and nothing is compared again).

        Returns:
            (written name, score) of the tags to write, in the order to write them; ``kept``
            itself when no step is asked for.

        Raises:
            InvalidInputError: ``labels`` other than those checked, and a name they do not have.
        """
        if self.is_identity:
            return kept
        plan = self._plan_for(labels)
        tags = [tag for tag in kept if tag[0] not in plan.excluded] if plan.excluded else list(kept)
        if len(tags) < self.min_tags:
            candidates = plan.allowed.copy()
            candidates[[plan.index[name] for name, _ in tags]] = False
            pool = np.flatnonzero(candidates)
            best = pool[_best(probs[pool], self.min_tags - len(tags))]
            tags.extend((plan.labels[i], float(probs[i])) for i in best)
        if self.max_tags is not None:
            del tags[self.max_tags:]
        if self.always_first:
            present = {tag[0]: tag for tag in tags if tag[0] in plan.first}
            tags = ([present[name] for name in self.always_first if name in present]
                    + [tag for tag in tags if tag[0] not in present])
        if plan.rename:
            seen: set[str] = set()
            renamed = []
            for name, score in tags:
                name = plan.rename.get(name, name)
                if name not in seen:
                    seen.add(name)
                    renamed.append((name, score))
            tags = renamed
        return tags


def _best(scores: np.ndarray, count: int) -> np.ndarray:
    """Positions of the ``count`` highest ``scores``, best first, ties in position order (as a stable sort).

    A partition, not a sort, of the (C,) scores: a fill of a few tags from thousands of labels.
    """
    if count >= len(scores):
        return np.argsort(-scores, kind="stable")
    cut = np.partition(scores, len(scores) - count)[len(scores) - count]  # the count-th highest
    above = np.flatnonzero(scores > cut)
    chosen = np.concatenate([above, np.flatnonzero(scores == cut)[: count - len(above)]])
    return chosen[np.argsort(-scores[chosen], kind="stable")]
