"""WebDataset shards as inputs (issue 13, item 5) and content hashes (item 9): samples grouped by key,
the image member chosen by key order, lazy reads, one error record for a bad shard or a sample without
an image, brace patterns; decoding a member equals decoding the same file, and digests are those of
the bytes. Shards are built here with tarfile; every input is there exactly once."""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import io
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from lcie_fast import webdataset
from lcie_fast.config import PreprocessConfig
from lcie_fast.data.transforms import Preprocess
from lcie_fast.errors import InvalidInputError
from lcie_fast.inputs import InputItem, decode_input, expand_inputs
from lcie_fast.outputs.records import error_kind
from lcie_fast.webdataset import FailedInput, TarMember, expand_braces, expand_shards, shard_samples

PRE = Preprocess(PreprocessConfig(input_size=16))


def _image(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (40, 30)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def _shard(path, members: list[tuple[str, bytes]]):
    """An uncompressed tar at ``path`` holding ``members`` (name, bytes) in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _decode(source, hash_name=None):
    return decode_input(InputItem(0, source, source if isinstance(source, str) else None), PRE, hash_name)


def test_members_are_grouped_by_key_and_the_image_is_chosen_by_key_order(tmp_path):
    jpg, png, webp = _image(0), _image(1, "PNG"), _image(2, "WEBP")
    shard = str(_shard(tmp_path / "shard.tar", [
        ("s/000.jpg", jpg), ("s/000.json", b"{}"),
        ("s/001.png", png), ("s/001.jpg", jpg),       # png first in the tar: jpg still wins by key order
        ("s/002.cls", b"3"),                          # no image
        ("s/003.PNG", png),                           # extensions are lower-cased
        ("s/004.seg.png", png), ("s/004.webp", webp),  # key up to the first dot: extension "seg.png"
        ("s/000.txt", b"again"),                      # key 000 again, not consecutive: a new sample
    ]))
    samples = list(expand_inputs(shard))
    assert samples == [f"{shard}#s/{key}" for key in ("000", "001", "002", "003", "004", "000")]
    assert [type(s) for s in samples] == [TarMember, TarMember, FailedInput, TarMember, TarMember, FailedInput]
    assert [s.member for s in samples if isinstance(s, TarMember)] == ["s/000.jpg", "s/001.jpg", "s/003.PNG", "s/004.webp"]
    assert samples[2].error == f"{shard}#s/002: no image member (jpg, jpeg, png, webp) in this sample"
    image, error, digest = _decode(samples[2], "sha256")
    assert image is None and error == samples[2].error and digest is None and error_kind(error) == "no_image_member"

    by_png = list(expand_inputs(shard, wds_image_keys=("PNG", ".jpg")))
    assert [getattr(s, "member", None) for s in by_png] == ["s/000.jpg", "s/001.png", None, "s/003.PNG", None, None]
    assert by_png[4].error == f"{shard}#s/004: no image member (png, jpg) in this sample"
    assert list(expand_inputs(shard, wds_image_keys="seg.png,webp"))[4].member == "s/004.seg.png"
    with pytest.raises(InvalidInputError, match="wds_image_keys"):
        expand_inputs(shard, wds_image_keys=())


def test_decoding_a_member_equals_decoding_the_same_file_and_hashes_its_bytes(tmp_path):
    data = _image(3, size=(50, 37))
    (tmp_path / "a.jpg").write_bytes(data)
    (tmp_path / "copy.jpg").write_bytes(data)
    shard = str(_shard(tmp_path / "shard.tar", [("a.txt", b"caption"), ("a.jpg", data), ("b.jpg", _image(4))]))
    member = next(iter(shard_samples(shard)))
    assert member == f"{shard}#a" and member.size == len(data)
    with open(shard, "rb") as handle:
        handle.seek(member.offset)
        assert handle.read(member.size) == data
    for hash_name, reference in (("sha256", hashlib.sha256(data)), ("md5", hashlib.md5(data))):
        from_tar, error, tar_digest = _decode(member, hash_name)
        from_file, file_error, file_digest = _decode(str(tmp_path / "a.jpg"), hash_name)
        assert error is None and file_error is None
        torch.testing.assert_close(from_tar, from_file, rtol=0, atol=0)
        assert tar_digest == file_digest == reference.hexdigest()
        assert _decode(str(tmp_path / "copy.jpg"), hash_name)[2] == file_digest  # byte-identical copies
    assert _decode(member)[2] is None  # no hash asked for
    with pytest.raises(InvalidInputError, match="hash_name"):
        _decode(member, "sha1")


def test_a_corrupt_member_is_an_error_naming_shard_and_key_with_the_digest_of_its_bytes(tmp_path):
    garbage = b"this is not a picture" * 10
    shard = str(_shard(tmp_path / "shard.tar", [("good.jpg", _image(5)), ("bad.jpg", garbage), ("half.png", _image(6, "PNG")[:60])]))
    good, bad, half = expand_inputs(shard)
    assert _decode(good)[1] is None
    image, error, digest = _decode(bad, "sha256")
    assert image is None and error.startswith(f"{shard}#bad: ") and "not an image in an accepted format" in error
    assert digest == hashlib.sha256(garbage).hexdigest()  # read, not decodable: it has a digest
    image, error, _ = _decode(half)
    assert image is None and error.startswith(f"{shard}#half: ") and error_kind(error) == "corrupt"


def _three_sample_shard(path) -> tuple[str, list[tarfile.TarInfo]]:
    shard = str(_shard(path, [("k0.jpg", _image(10)), ("k0.json", b"{}"), ("k1.jpg", _image(11)), ("k2.jpg", _image(12))]))
    with tarfile.open(shard) as tar:
        return shard, tar.getmembers()


@pytest.mark.parametrize("damage", ["cut inside the last image", "cut inside a header", "cut at a member's end",
                                    "a garbled header"])
def test_a_damaged_shard_keeps_the_samples_before_the_damage_and_adds_one_error_for_the_shard(tmp_path, damage):
    shard, infos = _three_sample_shard(tmp_path / "shard.tar")
    last = infos[-1]
    data = bytearray(open(shard, "rb").read())
    if damage == "cut inside the last image":
        data = data[: last.offset_data + last.size // 2]
    elif damage == "cut inside a header":
        data = data[: last.offset + 100]
    elif damage == "cut at a member's end":
        data = data[: last.offset]
    else:
        data[last.offset: last.offset + 100] = b"\x7f" * 100
    open(shard, "wb").write(bytes(data))
    other = str(_shard(tmp_path / "next.tar", [("n0.png", _image(13, "PNG"))]))

    sources = list(expand_inputs([shard, other]))
    kept = ["k0", "k1", "k2"] if damage == "cut inside the last image" else ["k0", "k1"]
    assert sources == [f"{shard}#{key}" for key in kept] + [shard, f"{other}#n0"]
    failure = sources[len(kept)]
    assert isinstance(failure, FailedInput) and failure.error.startswith(f"{shard}: ")
    assert "truncated" in failure.error or "corrupt" in failure.error
    results = [_decode(source) for source in sources]
    assert [error is None for _, error, _ in results] == [True, True] + (
        [False] if damage == "cut inside the last image" else []) + [False, True]
    if damage == "cut inside the last image":
        assert results[2][1].startswith(f"{shard}#k2: truncated")


def test_missing_empty_compressed_and_non_tar_shards_are_one_error_each_and_the_next_shard_goes_on(tmp_path):
    good = str(_shard(tmp_path / "good.tar", [("a.jpg", _image(20))]))
    gz = tmp_path / "packed.tar.gz"
    gz.write_bytes(gzip.compress(open(good, "rb").read()))
    disguised = tmp_path / "disguised.tar"
    disguised.write_bytes(gz.read_bytes())
    (tmp_path / "empty.tar").write_bytes(b"")
    (tmp_path / "text.tar").write_bytes(b"hello " * 200)
    (tmp_path / "folder.tar").mkdir()
    names = [str(tmp_path / name) for name in ("missing.tar", "packed.tar.gz", "disguised.tar", "empty.tar",
                                                "text.tar", "folder.tar")]
    sources = list(expand_inputs([names[0], good, *names[1:], good]))
    assert sources == [names[0], f"{good}#a", *names[1:], f"{good}#a"]
    errors = {name: source.error for name, source in zip(names, [sources[0], *sources[2:-1]])}
    assert errors[names[0]] == f"{names[0]}: file not found" and error_kind(errors[names[0]]) == "not_found"
    assert "only uncompressed .tar shards are read" in errors[names[1]]
    assert "gzip-compressed" in errors[names[2]] and "only uncompressed" in errors[names[2]]
    assert errors[names[3]] == f"{names[3]}: empty file (zero bytes)"
    assert errors[names[4]].startswith(f"{names[4]}: corrupt or not a tar file")
    assert errors[names[5]] == f"{names[5]}: is a folder, not a shard"
    assert all(_decode(source)[1] == source.error for source in sources if isinstance(source, FailedInput))


def test_brace_patterns_expand_like_bash_with_zero_padding_kept():
    assert expand_braces("shard-{000..003}.tar") == [f"shard-{i:03d}.tar" for i in range(4)]
    assert expand_braces("{a,b}-{8..10}.tar") == ["a-8.tar", "a-9.tar", "a-10.tar", "b-8.tar", "b-9.tar", "b-10.tar"]
    assert expand_braces("{08..10}") == ["08", "09", "10"]
    assert expand_braces("{3..1}") == ["3", "2", "1"]
    assert expand_braces("{0..6..3}") == ["0", "3", "6"]
    assert expand_braces("{-1..1}") == ["-1", "0", "1"]
    assert expand_braces("{x,y{1,2}}z") == ["xz", "y1z", "y2z"]
    assert expand_braces("{a..c}") == ["a", "b", "c"]
    assert expand_braces("{single}-{0..1}") == ["{single}-0", "{single}-1"]  # no comma, no range: literal
    assert expand_braces("unclosed{0..1") == ["unclosed{0..1"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(InvalidInputError, match="over the limit|over 1,000,000"):
        expand_braces("{0..9999999}")


def test_brace_patterns_and_globs_of_shards_give_every_sample_once_in_shard_order(tmp_path):
    for i in range(4):
        _shard(tmp_path / f"shard-{i:03d}.tar", [(f"k{i}a.jpg", _image(30 + i)), (f"k{i}b.png", _image(40 + i, "PNG"))])
    pattern = str(tmp_path / "shard-{000..004}.tar")  # 004 does not exist: an error record
    shards = expand_shards(pattern)
    assert shards == [str(tmp_path / f"shard-{i:03d}.tar") for i in range(5)]
    sources = list(expand_inputs(pattern))
    assert sources == [f"{shards[i]}#k{i}{s}" for i in range(4) for s in "ab"] + [shards[4]]
    assert sources[-1].error.endswith("file not found")
    assert expand_shards([str(tmp_path / "shard-00[13].tar"), str(tmp_path / "*-002.tar")]) == [shards[1], shards[3], shards[2]]
    assert list(expand_inputs(str(tmp_path / "shard-00[13].tar"))) == [f"{shards[i]}#k{i}{s}" for i in (1, 3) for s in "ab"]
    with pytest.raises(InvalidInputError, match="not a WebDataset shard"):
        expand_shards([pattern, str(tmp_path / "a.jpg")])


def test_expansion_reads_only_headers_and_decoding_reads_only_its_member(tmp_path, monkeypatch):
    images = [_image(50 + i, size=(64, 64)) for i in range(3)]
    shard = str(_shard(tmp_path / "shard.tar", [(f"k{i}.jpg", data) for i, data in enumerate(images)]))
    with tarfile.open(shard) as tar:
        data_ranges = [(info.offset_data, info.offset_data + info.size) for info in tar.getmembers()]
    assert all(end - start > 1024 for start, end in data_ranges)
    reads = []
    real_open = webdataset._open_local

    class Recording:
        def __init__(self, handle):
            self.handle = handle

        def read(self, size=-1):
            start = self.handle.tell()
            out = self.handle.read(size)
            reads.append((start, start + len(out)))
            return out

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def recording_open(path):
        handle = real_open(path)
        assert not isinstance(handle, io.BufferedIOBase), "a buffered file reads ahead into the image bytes"
        return Recording(handle)

    monkeypatch.setattr(webdataset, "_open_local", recording_open)
    preads = []
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, size, offset: preads.append((offset, size)) or real_pread(fd, size, offset))
    samples = list(expand_inputs(shard))
    assert len(samples) == 3 and reads and not preads
    # tarfile reads 1 byte before each header (the previous member's last byte: is the data all there?)
    overlapping = [(r, d) for r in reads for d in data_ranges if r[0] < d[1] and d[0] < r[1] and r[1] - r[0] > 1]
    assert overlapping == [], "the expansion read image bytes"
    assert sum(end - start for start, end in reads) <= 512 * (len(images) + 2) + len(images)  # headers, end blocks
    image, error, _ = _decode(samples[1])
    assert error is None and preads == [(samples[1].offset, samples[1].size)]


def test_members_are_read_safely_from_many_threads(tmp_path):
    images = [_image(60 + i, size=(30 + i, 20 + i)) for i in range(24)]
    shard = str(_shard(tmp_path / "shard.tar", [(f"k{i:02d}.jpg", data) for i, data in enumerate(images)]))
    samples = list(expand_inputs(shard))
    alone = [_decode(s, "md5") for s in samples]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda s: _decode(s, "md5"), samples * 3))
    for (image, error, digest), (expected, _, expected_digest) in zip(together, alone * 3):
        assert error is None and digest == expected_digest
        torch.testing.assert_close(image, expected, rtol=0, atol=0)
    assert [d for _, _, d in alone] == [hashlib.md5(data).hexdigest() for data in images]


def test_a_member_over_the_byte_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    shard = str(_shard(tmp_path / "shard.tar", [("big.png", _image(70, "PNG", size=(64, 64)))]))
    member = next(iter(expand_inputs(shard)))
    monkeypatch.setattr(os, "pread", lambda *a: pytest.fail("read a member over the limit"))
    image, error, digest = decode_input(InputItem(0, member, str(member)), Preprocess(PreprocessConfig(input_size=16), max_bytes=1000))
    assert image is None and digest is None
    assert error == f"{shard}#big: {member.size:,} bytes is over the limit of 1,000 bytes"


def test_file_hashes_come_from_the_bytes_read_and_an_unreadable_file_has_none(tmp_path):
    data = _image(80)
    (tmp_path / "a.jpg").write_bytes(data)
    (tmp_path / "broken.jpg").write_bytes(data[:100])
    assert _decode(str(tmp_path / "a.jpg"), "sha256")[1:] == (None, hashlib.sha256(data).hexdigest())
    image, error, digest = _decode(str(tmp_path / "broken.jpg"), "md5")
    assert image is None and error.startswith(str(tmp_path / "broken.jpg") + ": ") and digest == hashlib.md5(data[:100]).hexdigest()
    image, error, digest = _decode(str(tmp_path / "missing.jpg"), "sha256")
    assert image is None and error == f"{tmp_path / 'missing.jpg'}: file not found" and digest is None
    (tmp_path / "folder.jpg").mkdir()
    assert _decode(str(tmp_path / "folder.jpg"), "sha256")[2] is None
    pixels = np.zeros((8, 8, 3), np.uint8)
    assert _decode(pixels, "sha256")[1:] == (None, None)  # in memory: no digest


def test_the_tagger_gives_one_record_per_sample_and_per_bad_shard_in_input_order(tmp_path):
    from lcie_fast import create_model
    from lcie_fast.models.checkpoint import save_checkpoint
    from lcie_fast.tagger import Tagger

    torch.manual_seed(0)
    tagger = Tagger.load(save_checkpoint(tmp_path / "tiny.pt", create_model("lcie_tiny", num_classes=3),
                                         label_names=["a", "b", "c"]))
    shard = str(_shard(tmp_path / "shard-0.tar", [("k0.jpg", _image(90)), ("k1.txt", b"no image"),
                                                  ("k2.png", b"corrupt"), ("k3.webp", _image(91, "WEBP"))]))
    (tmp_path / "loose.jpg").write_bytes(_image(92))
    inputs = [str(tmp_path / "shard-{0..1}.tar"), str(tmp_path / "loose.jpg")]
    records = list(tagger.tag(inputs, batch_size=2, workers=3, decoder="threads"))
    assert [r.path for r in records] == [f"{shard}#k0", f"{shard}#k1", f"{shard}#k2", f"{shard}#k3",
                                         str(tmp_path / "shard-1.tar"), str(tmp_path / "loose.jpg")]
    assert [r.index for r in records] == list(range(6))
    assert [error_kind(r.error) for r in records] == [None, "no_image_member", "unsupported_format", None, "not_found", None]
