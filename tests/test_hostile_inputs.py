"""Hostile inputs (issue 11): files that hang, grow, or are not what their name says; bad paths and
lists; folder scans that skip things; in-memory images, arguments and thresholds that are not valid.
Every bad input becomes an error record or a :class:`UserError` naming it, never a hang or a traceback."""

from __future__ import annotations

import json
import logging
import os
import threading
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from lcie_fast import create_model
from lcie_fast.config import PreprocessConfig
from lcie_fast.data import transforms
from lcie_fast.data.datasets import IMAGE_EXTENSIONS
from lcie_fast.data.transforms import ImageDecodeError, Preprocess, decode_image, to_rgb8
from lcie_fast.errors import InputNotFoundError, InvalidInputError, UserError
from lcie_fast.inputs import InputItem, decode_input, expand_inputs
from lcie_fast.models.checkpoint import save_checkpoint
from lcie_fast.tagger import Tagger

LABELS = ["bus", "car", "motorbike", "person", "truck"]
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("lcie_tiny", num_classes=5)
    return Tagger.load(save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", model, label_names=LABELS))


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def _within(seconds: float, work):
    """Run ``work()`` in a daemon thread; its result, or a failure if it is still running after ``seconds``."""
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(out=work()), daemon=True)
    thread.start()
    thread.join(seconds)
    return thread.is_alive(), box.get("out")


def _release_fifo(path) -> None:
    """Unblock a reader stuck in open() on a FIFO (the code before the fix) so no thread outlives the test."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader waiting


# --------------------------------------------------------------------- 1. non-regular files, byte limit
@needs_fifo
def test_a_fifo_among_the_inputs_is_an_error_record_not_a_hang(tagger, good, tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    try:
        hung, records = _within(15, lambda: list(tagger.tag([str(good), str(fifo), str(good)], workers=2)))
    finally:
        _release_fifo(fifo)
    assert not hung, "tagging a FIFO hung"
    assert [r.error is None for r in records] == [True, False, True]
    assert records[1].error.startswith(f"{fifo}: not a regular file (a named pipe (FIFO))")


def test_a_link_to_an_endless_device_and_an_oversized_file_are_refused_before_reading(good, tmp_path):
    preprocess = Preprocess(PreprocessConfig(input_size=32), max_bytes=1 << 20)
    zero = tmp_path / "zero.jpg"
    zero.symlink_to("/dev/zero")
    with pytest.raises(ImageDecodeError, match=r"zero\.jpg: not a regular file \(a character device\)"):
        preprocess.load(str(zero))
    big = tmp_path / "big.png"
    big.write_bytes(good.read_bytes() + b"\0" * (1 << 20))
    with pytest.raises(ImageDecodeError, match=r"big\.png.*over the limit of 1,048,576 bytes"):
        preprocess.load(str(big))
    assert tuple(preprocess.load(str(good)).shape) == (3, 32, 32)
    with pytest.raises(InvalidInputError, match="max_bytes"):
        Preprocess(PreprocessConfig(), max_bytes=0)


def test_the_byte_limit_is_set_on_the_tagger(tagger, good, tmp_path):
    small = Tagger(tagger.backend, max_bytes=100)
    [record] = small.tag([str(good)])
    assert str(good) in record.error and "over the limit of 100 bytes" in record.error


# --------------------------------------------------------------------- 2. memory bound from the header
def test_16_bit_images_scale_to_8_bits_without_float64_copies():
    values = (np.arange(2000 * 2000, dtype=np.uint64) * 7919 % 65536).astype(np.uint16).reshape(2000, 2000)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    expected = np.clip(values[:64].astype(np.float64) / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    tracemalloc.start()
    try:
        out = to_rgb8(image, "sixteen")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"to_rgb8 of 4 MP 16-bit grey: peak {peak / 2**20:.1f} MiB traced")
    assert out.shape == (2000, 2000, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:64, :, 0], expected)  # same rounding as before
    assert peak < 2000 * 2000 * 7, peak  # PIL's bytes (twice while joined), the RGB result, 2 MiB blocks: no float64 copies


def test_an_image_over_the_decode_memory_budget_is_refused_from_its_header(tmp_path, monkeypatch):
    from PIL import ImageFile

    path = tmp_path / "deep.png"
    Image.fromarray(np.zeros((1500, 1500), np.uint16)).save(path)  # tiny file, 2.25 MP of 16-bit samples
    preprocess = Preprocess(PreprocessConfig(input_size=32), max_decode_bytes=8 << 20)
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(1) or real_load(self))
    with pytest.raises(ImageDecodeError, match=r"deep\.png: decoding .*1500x1500.* needs about .* over the "
                                               r"per-image memory budget of 8,388,608 bytes"):
        preprocess.load(str(path))
    assert loads == []  # refused from the header: no pixel was decoded
    assert tuple(Preprocess(PreprocessConfig(input_size=32)).load(str(path)).shape) == (3, 32, 32)


def test_a_large_jpeg_over_the_budget_is_decoded_reduced_instead(tmp_path):
    path = tmp_path / "large.jpg"
    Image.new("RGB", (2400, 1600), (200, 30, 10)).save(path, quality=90)
    preprocess = Preprocess(PreprocessConfig(input_size=64), max_decode_bytes=8 << 20)
    image = preprocess.load(str(path))  # full decode ~ 3.8 MP x 10 bytes; a 1/8 draft fits
    assert tuple(image.shape) == (3, 64, 64)
    assert abs(int(image[0].float().mean()) - 200) <= 3
    with pytest.raises(ImageDecodeError, match="memory budget"):
        decode_image(str(path), max_decode_bytes=8 << 20)  # full-size decoding (augmentation) cannot reduce


# --------------------------------------------------------------------- 3. formats restricted
def test_postscript_named_jpg_is_refused_without_reaching_ghostscript(good, tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "load", lambda self, *a, **k: calls.append(1))
    eps = tmp_path / "photo.jpg"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 20 20\n%%EndComments\nshowpage\n%%EOF\n")
    record, error, _ = decode_input(InputItem(0, str(eps), str(eps)), Preprocess(PreprocessConfig(input_size=32)))
    assert record is None and calls == []
    assert str(eps) in error and "not an image in an accepted format" in error and "JPEG" in error
    with pytest.raises(ImageDecodeError, match="accepted format"):
        decode_image(eps.read_bytes())


def test_the_accepted_formats_are_those_the_image_extensions_imply():
    from PIL import Image as PILImage

    registered = PILImage.registered_extensions()
    implied = {registered[ext] for ext in IMAGE_EXTENSIONS}
    accepted = set(transforms.IMAGE_FORMATS)
    assert implied == accepted, implied ^ accepted


# --------------------------------------------------------------------- 4. bad paths, bad lists
def test_a_file_name_part_over_255_bytes_is_an_error_record(tagger, good, tmp_path):
    long_name = str(tmp_path / ("x" * 300 + ".jpg"))
    records = list(tagger.tag([long_name, str(good)]))
    assert [r.error is None for r in records] == [False, True]
    assert long_name in records[0].error and "name too long" in records[0].error.lower()


def test_a_list_with_a_non_utf8_line_names_the_list_and_line(tagger, good, tmp_path):
    listing = tmp_path / "inputs.txt"
    listing.write_bytes(str(good).encode() + b"\n\n" + str(tmp_path).encode() + b"/caf\xe9.jpg\n")
    records = list(tagger.tag(f"@{listing}"))
    assert [r.error is None for r in records] == [True, False]
    assert f"{listing} line 3" in records[1].error and "file not found" in records[1].error
    with pytest.raises(InputNotFoundError, match=r"missing\.txt"):
        list(expand_inputs(f"@{tmp_path / 'missing.txt'}"))


# --------------------------------------------------------------------- 5. folder scans say what they skip
@needs_fifo
def test_a_folder_scan_counts_and_logs_what_it_leaves_out(tagger, good, tmp_path, capsys, caplog, monkeypatch):
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "phone.heic").write_bytes(b"\0" * 16)
    locked = tmp_path / "locked"
    locked.mkdir()
    (tmp_path / "sub").mkdir()
    Image.open(good).save(tmp_path / "sub" / "b.png")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(locked):  # root reads any folder: make this one unreadable
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    fresh = Tagger(tagger.backend)
    with caplog.at_level(logging.INFO, logger="lcie_fast.inputs"):
        records = list(fresh.tag(str(tmp_path)))
    assert [r.path for r in records] == [str(good), str(tmp_path / "sub" / "b.png")]
    assert fresh.stats["skipped"] == 4
    err = capsys.readouterr().err
    assert f"skipped 4 entries under {tmp_path}" in err
    logged = caplog.text
    for name in ("dangling.jpg", "pipe.png", "phone.heic", "locked"):
        assert str(tmp_path / name) in logged


# --------------------------------------------------------------------- 6. one validation for in-memory images
def test_float_frames_are_refused_by_tag_frames_and_tag_alike(tagger):
    frame = np.random.default_rng(1).random((2, 24, 24, 3)).astype(np.float32)  # [0, 1] floats
    with pytest.raises(InvalidInputError, match="uint8") as raised:
        tagger.tag_frames(frame)
    with pytest.raises(InvalidInputError, match="uint8"):
        tagger.tag_frames(torch.from_numpy(frame))
    with pytest.raises(InvalidInputError, match="uint8"):
        tagger.tag_frames([frame[0]])
    [record] = tagger.tag([frame[0]])
    assert record.error == str(raised.value).replace("frame 0", "input 0")
    with pytest.raises(InvalidInputError, match=r"\(H, W, 3\)"):
        tagger.tag_frames(np.zeros((1, 24, 24, 4), np.uint8))
    good = tagger.tag_frames((frame * 255).astype(np.uint8))
    assert len(good) == 2 and all(r.error is None for r in good)


# --------------------------------------------------------------------- 7. arguments checked before anything runs
@pytest.mark.parametrize("kwargs", [dict(batch_size=0), dict(batch_size=-1), dict(batch_size=2.5), dict(workers=0),
                                    dict(top_k=0), dict(threshold=float("nan")), dict(threshold=1.5), dict(skip=-1)])
def test_out_of_range_tag_arguments_raise_at_the_call(tagger, good, kwargs):
    name = next(iter(kwargs))
    with pytest.raises(InvalidInputError, match=name):
        tagger.tag([str(good)], **kwargs)  # raised before iterating: nothing started, nothing spins


@pytest.mark.parametrize("kwargs", [dict(max_pixels=0), dict(max_bytes=-5), dict(max_decode_bytes=0)])
def test_out_of_range_limits_raise(tagger, kwargs):
    with pytest.raises(InvalidInputError, match=next(iter(kwargs))):
        Tagger(tagger.backend, **kwargs)


# --------------------------------------------------------------------- 8. thresholds files
@pytest.mark.parametrize("content", ["[0.5, 0.5]", "null", '{"thresholds": null}', '{"bus": null}', '{"bus": "x"}',
                                     '{"bus": NaN}', '{"bus": 1.5}', '{"thresholds": {"car": -0.1}}', "{not json",
                                     '"0.5"'])
def test_a_bad_thresholds_file_names_the_file(tagger, tmp_path, content):
    path = tmp_path / "thresholds.json"
    path.write_text(content)
    fresh = Tagger(tagger.backend)
    with pytest.raises(InvalidInputError, match=r"thresholds\.json"):
        fresh.set_thresholds(path)
    assert np.all(fresh.thresholds == 0.5)  # nothing half-applied


def test_thresholds_values_and_missing_file(tagger, tmp_path):
    fresh = Tagger(tagger.backend)
    for bad in (float("inf"), -0.5, 2, {"bus": float("nan")}, True):
        with pytest.raises(InvalidInputError, match="threshold"):
            fresh.set_thresholds(bad)
    with pytest.raises(InputNotFoundError, match=r"nope\.json"):
        fresh.set_thresholds(tmp_path / "nope.json")
    (tmp_path / "ok.json").write_text(json.dumps({"thresholds": {"car": 0.25}}))
    fresh.set_thresholds(tmp_path / "ok.json")
    assert fresh.thresholds[LABELS.index("car")] == 0.25
    assert issubclass(InvalidInputError, UserError)
