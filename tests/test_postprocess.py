"""Tag post-processing (issue 13): each step, their order, the CLI value parsers and label maps, the
refusals naming their flag; and the threshold files in their three formats with their errors.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lcie_fast.errors import InputNotFoundError, InvalidInputError
from lcie_fast.io import write_json
from lcie_fast.metrics import fit_thresholds
from lcie_fast.postprocess import TagPostprocess, load_label_map, parse_replace, parse_tag_list
from lcie_fast.thresholds import read_thresholds

LABELS = ["bus", "car", "motorbike", "person", "truck"]
PROBS = np.array([0.70, 0.95, 0.30, 0.80, 0.40], dtype=np.float32)  # car > person > bus > truck > motorbike


def kept(probs: np.ndarray = PROBS, thresholds: float | list[float] = 0.5) -> list[tuple[str, float]]:
    """What the tagger hands over: the labels at or above their thresholds, best first."""
    limits = np.broadcast_to(np.asarray(thresholds, dtype=np.float32), probs.shape)
    order = np.argsort(-probs, kind="stable")
    return [(LABELS[i], float(probs[i])) for i in order if probs[i] >= limits[i]]


def names(tags: list[tuple[str, float]]) -> list[str]:
    return [name for name, _ in tags]


def run(post: TagPostprocess, tags: list[tuple[str, float]] | None = None, probs: np.ndarray = PROBS) -> list[str]:
    post.check(LABELS)
    return names(post.apply(kept(probs) if tags is None else tags, probs, LABELS))


# ----------------------------------------------------------------------------- each step
def test_identity_returns_the_kept_tags_and_no_settings():
    post = TagPostprocess()
    tags = kept()
    assert post.is_identity and post.to_settings() == {}
    assert post.apply(tags, PROBS, LABELS) is tags
    assert names(tags) == ["car", "person", "bus"]
    assert not TagPostprocess(max_tags=3).is_identity


def test_exclude_drops_the_labels():
    assert run(TagPostprocess(exclude=("person",))) == ["car", "bus"]


def test_min_tags_fills_with_the_best_labels_below_threshold_after_the_kept_ones():
    # per-label thresholds: truck (0.40) passes its low threshold, bus (0.70) misses its high one
    thresholds = [0.9, 0.5, 0.5, 0.99, 0.3]
    tags = kept(PROBS, thresholds)
    assert names(tags) == ["car", "truck"]
    post = TagPostprocess(min_tags=4)
    post.check(LABELS)
    out = post.apply(tags, PROBS, LABELS)
    # person (0.80) then bus (0.70): best first among those below threshold, after those kept
    assert names(out) == ["car", "truck", "person", "bus"]
    assert out[2][1] == pytest.approx(0.80) and out[3][1] == pytest.approx(0.70)
    # enough tags already: nothing added
    assert run(TagPostprocess(min_tags=2), tags) == ["car", "truck"]
    # more than the model has: every label, once
    assert sorted(run(TagPostprocess(min_tags=5), [])) == sorted(LABELS)


def test_min_tags_never_adds_an_excluded_label():
    assert run(TagPostprocess(exclude=("person",), min_tags=4)) == ["car", "bus", "truck", "motorbike"]


def test_max_tags_keeps_the_best():
    assert run(TagPostprocess(max_tags=2)) == ["car", "person"]
    assert run(TagPostprocess(max_tags=10)) == ["car", "person", "bus"]


def test_always_first_moves_present_labels_to_the_front_in_the_given_order():
    assert run(TagPostprocess(always_first=("bus", "person"))) == ["bus", "person", "car"]
    # truck is not kept: nothing to move, the others keep their order
    assert run(TagPostprocess(always_first=("truck", "bus"))) == ["bus", "car", "person"]
    assert run(TagPostprocess(always_first=("bus", "bus"))) == ["bus", "car", "person"]


def test_label_map_then_replace():
    post = TagPostprocess(label_map=(("car", "automobile"),), replace=(("automobile", "vehicle"), ("bus", "coach")))
    assert run(post) == ["vehicle", "person", "coach"]
    assert run(TagPostprocess(label_map=(("car", "automobile"), ("person", "human")))) == ["automobile", "human", "bus"]


def test_replace_collisions_keep_the_first_tag():
    # bus and car both become vehicle: car (best) stays, bus goes; a rename onto a label name collides too
    assert run(TagPostprocess(replace=(("bus", "vehicle"), ("car", "vehicle")))) == ["vehicle", "person"]
    post = TagPostprocess(replace=(("car", "person"),))
    post.check(LABELS)
    out = post.apply(kept(), PROBS, LABELS)
    assert out == [("person", pytest.approx(0.95)), ("bus", pytest.approx(0.70))]


def test_order_of_the_steps():
    # exclude before the fill: person never fills in; always_first after the fill: truck, filled in,
    # moves to the front; always_first before the renames: it names model labels
    post = TagPostprocess(exclude=("person",), min_tags=3, max_tags=3, always_first=("truck", "bus"),
                          label_map=(("bus", "coach"),), replace=(("car", "auto"),))
    assert run(post) == ["truck", "coach", "auto"]
    # the cap before always_first: bus, cut, does not come back (else: bus, car)
    assert run(TagPostprocess(max_tags=2, always_first=("bus",))) == ["car", "person"]
    # a label map onto a name already there: the first after always_first wins
    post = TagPostprocess(always_first=("bus",), label_map=(("bus", "car"),))
    assert run(post) == ["car", "person"]
    assert post.apply(kept(), PROBS, LABELS)[0][1] == pytest.approx(0.70)


def test_apply_rechecks_other_labels():
    post = TagPostprocess(exclude=("truck",), min_tags=5)
    post.check(LABELS)
    assert len(post.apply([], PROBS, list(LABELS))) == 4  # an equal list: same plan
    with pytest.raises(InvalidInputError, match="--exclude-tags"):
        post.apply([], PROBS, ["a", "b", "c", "d", "e"])


def test_settings_are_json_data_that_round_trip():
    post = TagPostprocess(exclude=("bus",), always_first=("car",), replace=(("car", "auto"),),
                          label_map=(("person", "human"),), min_tags=1, max_tags=4)
    settings = post.to_settings()
    assert json.loads(json.dumps(settings)) == settings
    assert settings == {"exclude": ["bus"], "always_first": ["car"], "replace": {"car": "auto"},
                        "label_map": {"person": "human"}, "min_tags": 1, "max_tags": 4}
    assert TagPostprocess(max_tags=2).to_settings() == {"max_tags": 2}


# ------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("options, flag", [
    ({"exclude": ("bsu",)}, "--exclude-tags"),
    ({"always_first": ("plane",)}, "--always-first"),
    ({"label_map": (("plane", "aeroplane"),)}, "--label-map"),
    ({"replace": (("plane", "jet"),)}, "--replace"),
])
def test_unknown_names_are_refused_naming_the_flag_and_the_labels(options, flag):
    with pytest.raises(InvalidInputError) as info:
        TagPostprocess(**options).check(LABELS)
    message = str(info.value)
    assert message.startswith(flag) and str(LABELS) in message
    if flag == "--exclude-tags":
        assert "did you mean 'bus'" in message


def test_replace_of_a_renamed_label_names_its_display_name():
    with pytest.raises(InvalidInputError, match="'car' is written 'automobile'"):
        TagPostprocess(label_map=(("car", "automobile"),), replace=(("car", "vehicle"),)).check(LABELS)


@pytest.mark.parametrize("options, match", [
    ({"min_tags": 4, "max_tags": 2}, "--min-tags 4 is more than --max-tags"),
    ({"max_tags": 0}, "--max-tags must be a whole number >= 1"),
    ({"min_tags": -1}, "--min-tags must be a whole number >= 0"),
    ({"min_tags": True}, "--min-tags"),
    ({"exclude": ("car",), "always_first": ("car",)}, "--exclude-tags and --always-first both name"),
    ({"replace": (("car", "a"), ("car", "b"))}, "--replace: \\['car'\\] given more than once"),
    ({"exclude": ("",)}, "--exclude-tags: empty tag name"),
])
def test_contradictory_options_are_refused(options, match):
    with pytest.raises(InvalidInputError, match=match):
        TagPostprocess(**options)


# ----------------------------------------------------------------------------- CLI values
def test_parse_tag_list_and_replace():
    assert parse_tag_list(" car, bus ,,truck,") == ("car", "bus", "truck")
    assert parse_tag_list(r"a\,b,c") == ("a,b", "c")
    assert parse_replace("car:auto, bus : coach") == (("car", "auto"), ("bus", "coach"))
    assert parse_replace(r"\:3:cat_face,x\,y:z") == ((":3", "cat_face"), ("x,y", "z"))


@pytest.mark.parametrize("text, item", [("car:auto,bus", "bus"), ("car:", "car:"), ("a:b:c", "a:b:c"), (":x", ":x")])
def test_parse_replace_refuses_malformed_items_naming_the_flag_and_item(text, item):
    with pytest.raises(InvalidInputError) as info:
        parse_replace(text)
    assert str(info.value).startswith("--replace:") and repr(item) in str(info.value)


def test_label_map_from_json_csv_and_tsv(tmp_path):
    (tmp_path / "map.json").write_text(json.dumps({"car": "automobile", "person": "human"}), encoding="utf-8")
    (tmp_path / "map.csv").write_text("label,display\ncar,automobile\n\n\"person\",\"human, adult\"\n", encoding="utf-8")
    (tmp_path / "map.tsv").write_text("car\tautomobile\nperson\thuman\n", encoding="utf-8")
    assert load_label_map(tmp_path / "map.json") == (("car", "automobile"), ("person", "human"))
    assert load_label_map(tmp_path / "map.csv") == (("car", "automobile"), ("person", "human, adult"))
    assert load_label_map(tmp_path / "map.tsv") == (("car", "automobile"), ("person", "human"))
    post = TagPostprocess.from_options(label_map=str(tmp_path / "map.csv"), exclude="bus", replace="automobile:auto")
    assert run(post) == ["auto", "human, adult"]


@pytest.mark.parametrize("name, text, match", [
    ("rows.csv", "car,automobile\nperson\n", "rows.csv line 2: expected 2 columns"),
    ("twice.csv", "car,a\ncar,b\n", "twice.csv line 2: label 'car' is mapped twice"),
    ("empty.csv", "car,\n", "empty.csv line 1: empty display name"),
    ("list.json", "[1, 2]", "list.json: expected a JSON object"),
    ("bad.json", "{\"car\": ", "bad.json: not valid JSON"),
    ("number.json", "{\"car\": 3}", "number.json: the display name of 'car' must be a string"),
])
def test_label_map_errors_name_the_file(tmp_path, name, text, match):
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(InvalidInputError, match=match):
        load_label_map(tmp_path / name)


def test_label_map_not_found(tmp_path):
    with pytest.raises(InputNotFoundError, match="missing.json: label map file not found"):
        TagPostprocess.from_options(label_map=tmp_path / "missing.json")


# ---------------------------------------------------------------------------- thresholds
def test_thresholds_from_the_projects_json(tmp_path):
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, size=(40, 5))
    scores = np.clip(targets * 0.5 + rng.random((40, 5)) * 0.6, 0, 1)
    fitted = fit_thresholds(scores, targets, class_names=LABELS)
    write_json(fitted, tmp_path / "fitted.json")
    assert read_thresholds(tmp_path / "fitted.json", LABELS) == fitted["thresholds"]
    assert set(fitted) > {"thresholds"}  # f1, default ... beside them are ignored


def test_thresholds_from_a_plain_mapping(tmp_path):
    path = tmp_path / "some.json"
    path.write_text(json.dumps({"car": 0.25, "truck": 1}), encoding="utf-8")
    assert read_thresholds(path, LABELS) == {"car": 0.25, "truck": 1.0}


def test_thresholds_one_per_line_with_comments_and_blank_lines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("# fitted on valid\n0.1\n\n0.2  # car\n0.3\n  0.4\n1e-1\n", encoding="utf-8")
    assert read_thresholds(path, LABELS) == dict(zip(LABELS, [0.1, 0.2, 0.3, 0.4, 0.1]))


def test_thresholds_wrong_count_names_both_counts(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("0.1\n0.2\n# not a value\n0.3\n0.4\n", encoding="utf-8")
    with pytest.raises(InvalidInputError) as info:
        read_thresholds(path, LABELS)
    assert f"{path}: 4 thresholds for the model's 5 labels" in str(info.value)


@pytest.mark.parametrize("name, text, match", [
    ("t.txt", "0.1\n0.2\nhigh\n0.4\n0.5\n", "t.txt line 3: 'high' is not a number"),
    ("t.txt", "0.1\n0.2\n1.5\n0.4\n0.5\n", "t.txt line 3: threshold for 'motorbike' must be a finite number in \\[0, 1\\]"),
    ("t.txt", "0.1\n0.2\nnan\n0.4\n0.5\n", "t.txt line 3: .* must be a finite number"),
    ("t.json", "{\"car\": -0.1}", "t.json: threshold for 'car' must be a finite number in \\[0, 1\\], got -0.1"),
    ("t.json", "{\"car\": true}", "t.json: threshold for 'car' must be a finite number"),
    ("t.json", "{\"thresholds\": {\"car\": NaN}}", "t.json: threshold for 'car' must be a finite number"),
    ("t.json", "{\"car\": 0.1, \"car\": 0.2}", "t.json: \\['car'\\] given more than once"),
    ("t.json", "[0.1, 0.2]", "t.json: expected a JSON object"),
    ("t.json", "{\"car\": 0.1", "t.json: not valid JSON \\(line 1"),
])
def test_threshold_value_errors_name_the_file_and_place(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidInputError, match=match):
        read_thresholds(path, LABELS)


def test_thresholds_for_unknown_labels_list_them_and_the_models(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"thresholds": {"car": 0.5, "plane": 0.5, "ship": 0.3}}), encoding="utf-8")
    with pytest.raises(InvalidInputError) as info:
        read_thresholds(path, LABELS)
    message = str(info.value)
    assert message.startswith(f"{path}: thresholds names labels the model does not have: ['plane', 'ship']")
    assert str(LABELS) in message


def test_thresholds_file_not_found(tmp_path):
    with pytest.raises(InputNotFoundError, match="nope.txt: thresholds file not found"):
        read_thresholds(tmp_path / "nope.txt", LABELS)


def test_fill_choice_matches_a_stable_sort_with_ties():
    from lcie_fast.postprocess import _best

    rng = np.random.default_rng(0)
    for _ in range(200):
        scores = rng.integers(0, 5, size=int(rng.integers(1, 40))).astype(np.float32) / 4  # many ties
        count = int(rng.integers(1, len(scores) + 2))
        np.testing.assert_array_equal(_best(scores, count), np.argsort(-scores, kind="stable")[:count])
    # through apply: equal scores fill in label order
    probs = np.array([0.2, 0.9, 0.2, 0.2, 0.1], dtype=np.float32)
    assert run(TagPostprocess(min_tags=3), [("car", 0.9)], probs) == ["car", "bus", "motorbike"]
