"""Remote storage as inputs (issue 13, item 6), with fsspec's ``memory://`` and ``file://`` standing in
for object storage: folder listing by extension, globs, ``@list`` and manifests read through fsspec,
reads in the decoder pool within the byte limit, error messages naming the URL, shards on remote
storage read by range, hashes of remote bytes, and the download/upload/exists helpers for outputs."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import uuid

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from lcie_fast import remote
from lcie_fast.config import PreprocessConfig
from lcie_fast.data.datasets import IMAGE_EXTENSIONS
from lcie_fast.data.transforms import Preprocess
from lcie_fast.errors import InvalidInputError, UserError
from lcie_fast.inputs import InputItem, ListedPath, decode_input, expand_inputs
from lcie_fast.remote import RemotePath
from lcie_fast.webdataset import FailedInput, TarMember

PRE = Preprocess(PreprocessConfig(input_size=16))


def _image(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (36, 28)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def _decode(source, hash_name=None, preprocess=PRE):
    return decode_input(InputItem(0, source, str(source)), preprocess, hash_name)


@pytest.fixture
def bucket():
    """A fresh ``memory://`` bucket, removed after the test (the memory filesystem is process-wide)."""
    name = f"bucket-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    yield f"memory://{name}"
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


def _put(url: str, data: bytes) -> str:
    with fsspec.open(url, "wb") as handle:
        handle.write(data)
    return url


def test_urls_are_recognised_and_nothing_remote_is_imported_with_the_package():
    for url in ("memory://b/a.jpg", "file:///tmp/a.jpg", "s3://b/k", "gs://b/k", "https://host/a.jpg"):
        assert remote.is_url(url)
    for text in ("/tmp/a.jpg", "a.jpg", "C:/x.jpg", "@list.txt", "-", "shard-{000..009}.tar"):
        assert not remote.is_url(text)
    code = ("import sys, lcie_fast, lcie_fast.inputs, lcie_fast.remote, lcie_fast.webdataset; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fsspec', 's3fs', 'gcsfs', 'aiohttp')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_remote_folder_is_listed_by_extension_sorted_and_named_as_given(bucket, capsys):
    for name in ("b.png", "a.jpg", "sub/c.JPEG", "sub/deeper/d.webp", "notes.txt", "sub/e.json"):
        _put(f"{bucket}/imgs/{name}", _image(1) if not name.endswith(("txt", "json")) else b"x")
    skipped = []
    sources = list(expand_inputs(f"{bucket}/imgs", on_skip=lambda path, reason: skipped.append((path, reason))))
    assert sources == [f"{bucket}/imgs/{name}" for name in ("a.jpg", "b.png", "sub/c.JPEG", "sub/deeper/d.webp")]
    assert all(isinstance(source, RemotePath) for source in sources)
    assert sorted(skipped) == [(f"{bucket}/imgs/notes.txt", "not an accepted image type (.txt)"),
                               (f"{bucket}/imgs/sub/e.json", "not an accepted image type (.json)")]
    assert "skipped 2 entries" in capsys.readouterr().err
    assert list(expand_inputs(f"{bucket}/imgs/", recursive=False, on_skip=lambda *a: None)) == \
        [f"{bucket}/imgs/a.jpg", f"{bucket}/imgs/b.png"]
    assert list(expand_inputs(f"{bucket}/imgs", extensions=(".webp",), on_skip=lambda *a: None)) == \
        [f"{bucket}/imgs/sub/deeper/d.webp"]
    assert list(expand_inputs(f"{bucket}/imgs/**/*.png")) == [f"{bucket}/imgs/b.png"]
    assert list(expand_inputs(f"{bucket}/imgs/sub/*")) == [f"{bucket}/imgs/sub/c.JPEG", f"{bucket}/imgs/sub/e.json"]


def test_a_file_url_folder_is_listed_and_decodes_like_the_local_files(tmp_path):
    for i, name in enumerate(("x.png", "y.jpg", "z.txt", "in/w.bmp")):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(_image(i, "BMP" if name.endswith("bmp") else "PNG" if name.endswith("png") else "JPEG"))
    url = f"file://{tmp_path}"
    sources = list(expand_inputs(url, extensions=IMAGE_EXTENSIONS, on_skip=lambda *a: None))
    assert sources == [f"{url}/in/w.bmp", f"{url}/x.png", f"{url}/y.jpg"]
    for source in sources:
        image, error, digest = _decode(source, "sha256")
        local = str(tmp_path / source[len(url) + 1:])
        expected, _, local_digest = _decode(local, "sha256")
        assert error is None
        torch.testing.assert_close(image, expected, rtol=0, atol=0)
        assert digest == local_digest == hashlib.sha256(open(local, "rb").read()).hexdigest()


def test_missing_remote_files_and_folders_are_error_records_naming_the_url(bucket):
    _put(f"{bucket}/dir/a.jpg", _image(2))
    (missing,) = expand_inputs(f"{bucket}/nope.jpg")
    assert isinstance(missing, RemotePath)
    assert _decode(missing, "sha256") == (None, f"{bucket}/nope.jpg: file not found", None)
    _put(f"{bucket}/empty.jpg", b"")
    assert _decode(RemotePath(f"{bucket}/empty.jpg"))[1] == f"{bucket}/empty.jpg: empty file (zero bytes)"
    _put(f"{bucket}/text.jpg", b"not an image at all")
    image, error, digest = _decode(RemotePath(f"{bucket}/text.jpg"), "md5")
    assert image is None and error.startswith(f"{bucket}/text.jpg: not an image in an accepted format")
    assert digest == hashlib.md5(b"not an image at all").hexdigest()  # read, not decodable: it has a digest
    assert list(expand_inputs(f"{bucket}/dir/*.png")) == []  # a glob that matches nothing, as locally
    with pytest.raises(InvalidInputError, match="nosuchproto"):
        list(expand_inputs("nosuchproto://x/a.jpg"))


def test_the_byte_limit_holds_for_remote_files_before_and_while_reading(bucket, monkeypatch):
    data = _image(3, "PNG", size=(64, 64))
    url = _put(f"{bucket}/big.png", data)
    small = Preprocess(PreprocessConfig(input_size=16), max_bytes=1000)
    fs = fsspec.filesystem("memory")
    calls = []
    real_cat = type(fs).cat_file
    monkeypatch.setattr(type(fs), "cat_file", lambda self, path, start=None, end=None, **kw:
                        calls.append((start, end)) or real_cat(self, path, start=start, end=end, **kw))
    image, error, digest = _decode(RemotePath(url), "sha256", small)
    assert image is None and digest is None and calls == []  # refused from its size, nothing read
    assert error == f"{url}: {len(data):,} bytes is over the limit of 1,000 bytes"

    real_info = type(fs).info
    monkeypatch.setattr(type(fs), "info", lambda self, path, **kw: {**real_info(self, path, **kw), "size": None})
    image, error, _ = _decode(RemotePath(url), None, small)  # size unknown: at most max_bytes + 1 read
    assert image is None and error == f"{url}: over the limit of 1,000 bytes" and calls == [(0, 1001)]
    assert _decode(RemotePath(url), None, Preprocess(PreprocessConfig(input_size=16), max_bytes=len(data)))[1] is None


def test_an_input_list_on_remote_storage_keeps_list_and_line_in_errors(bucket, tmp_path):
    _put(f"{bucket}/imgs/a.jpg", _image(4))
    (tmp_path / "local.jpg").write_bytes(_image(5))
    listing = f"{bucket}/imgs/a.jpg\n\n{bucket}/imgs/gone.jpg\n{tmp_path / 'local.jpg'}\n"
    list_url = _put(f"{bucket}/list.txt", listing.encode())
    sources = list(expand_inputs(f"@{list_url}"))
    assert sources == [f"{bucket}/imgs/a.jpg", f"{bucket}/imgs/gone.jpg", str(tmp_path / "local.jpg")]
    assert [type(s) for s in sources] == [RemotePath, RemotePath, ListedPath]
    assert [_decode(s)[1] for s in sources] == [
        None, f"{bucket}/imgs/gone.jpg: file not found ({list_url} line 3)", None]
    (tmp_path / "urls.txt").write_text(f"{bucket}/imgs/a.jpg\n")  # URLs in a local list too
    assert [type(s) for s in expand_inputs(f"@{tmp_path / 'urls.txt'}")] == [RemotePath]
    with pytest.raises(UserError, match="input list not found"):
        list(expand_inputs(f"@{bucket}/no-list.txt"))


def test_manifests_on_remote_storage_name_urls_beside_them(bucket, tmp_path):
    for name in ("data/a.jpg", "data/sub/b.png", "other/c.jpg"):
        _put(f"{bucket}/{name}", _image(6))
    rows = ["a.jpg", "sub/b.png", "../other/c.jpg", f"{bucket}/elsewhere/d.jpg", str(tmp_path / "local.jpg")]
    _put(f"{bucket}/data/labels.jsonl", "".join(json.dumps({"path": row, "labels": ["x"]}) + "\n" for row in rows).encode())
    expected = [f"{bucket}/data/a.jpg", f"{bucket}/data/sub/b.png", f"{bucket}/other/c.jpg",
                f"{bucket}/elsewhere/d.jpg", str(tmp_path / "local.jpg")]
    sources = list(expand_inputs(f"{bucket}/data/labels.jsonl"))
    assert sources == expected
    assert [type(s) for s in sources] == [RemotePath] * 4 + [str]
    _put(f"{bucket}/data/labels.csv", ("filename,x\n" + "".join(f"{row},1\n" for row in rows)).encode())
    assert list(expand_inputs(f"{bucket}/data/labels.csv")) == expected
    _put(f"{bucket}/withimages/images/e.jpg", _image(7))  # a CSV's rows are in images/ beside it when that exists
    _put(f"{bucket}/withimages/labels.csv", b"filename,x\ne.jpg,1\n")
    assert list(expand_inputs(f"{bucket}/withimages/labels.csv")) == [f"{bucket}/withimages/images/e.jpg"]
    _put(f"{bucket}/broken.csv", b"")
    with pytest.raises(UserError, match=f"^{bucket}/broken.csv: 1 problem"):
        list(expand_inputs(f"{bucket}/broken.csv"))
    local = tmp_path / "local.jsonl"  # URL rows in a local manifest stay URLs
    local.write_text(json.dumps({"path": f"{bucket}/data/a.jpg", "labels": []}) + "\n"
                     + json.dumps({"path": "rel.jpg", "labels": []}) + "\n")
    assert list(expand_inputs(str(local))) == [f"{bucket}/data/a.jpg", str(tmp_path / "rel.jpg")]


def test_a_shard_on_remote_storage_is_read_by_range_and_decodes_like_the_local_one(bucket, tmp_path, monkeypatch):
    images = [_image(10 + i) for i in range(3)]
    local = tmp_path / "shard.tar"
    with tarfile.open(local, "w") as tar:
        for i, data in enumerate(images):
            for name, payload in ((f"k{i}.jpg", data), (f"k{i}.txt", b"caption")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    _put(f"{bucket}/shards/shard-000.tar", local.read_bytes())
    _put(f"{bucket}/shards/shard-001.tar", local.read_bytes()[:1000])  # cut inside the first image
    sources = list(expand_inputs(f"{bucket}/shards/shard-{{000..002}}.tar"))
    first, second, missing = (f"{bucket}/shards/shard-{i:03d}.tar" for i in range(3))
    assert sources == [f"{first}#k{i}" for i in range(3)] + [f"{second}#k0", second, missing]
    assert [type(s) for s in sources] == [TarMember] * 4 + [FailedInput] * 2
    assert sources[-1].error == f"{missing}: file not found"
    fs = fsspec.filesystem("memory")
    calls = []
    real_cat = type(fs).cat_file
    monkeypatch.setattr(type(fs), "cat_file", lambda self, path, start=None, end=None, **kw:
                        calls.append((start, end)) or real_cat(self, path, start=start, end=end, **kw))
    local_samples = list(expand_inputs(str(local)))
    for source, local_source, data in zip(sources[:3], local_samples, images):
        calls.clear()
        image, error, digest = _decode(source, "sha256")
        expected, _, _ = _decode(local_source)
        assert error is None and calls == [(source.offset, source.offset + source.size)]
        torch.testing.assert_close(image, expected, rtol=0, atol=0)
        assert digest == hashlib.sha256(data).hexdigest()
    image, error, _ = _decode(sources[3])
    assert image is None and error.startswith(f"{second}#k0: truncated")


def test_outputs_can_be_downloaded_uploaded_and_checked(bucket, tmp_path):
    source = tmp_path / "out.jsonl"
    source.write_bytes(b'{"index": 0}\n')
    url = f"{bucket}/runs/out.jsonl"
    assert not remote.exists(url)
    remote.upload(source, url)
    assert remote.exists(url) and remote.exists(f"{bucket}/runs")
    target = tmp_path / "back" / "out.jsonl"
    assert remote.download(url, target) and target.read_bytes() == source.read_bytes()
    assert not remote.download(f"{bucket}/runs/none.jsonl", tmp_path / "none.jsonl")
    assert not (tmp_path / "none.jsonl").exists()
    nested = f"file://{tmp_path}/deep/er/out.jsonl"  # local folders are made
    remote.upload(source, nested)
    assert (tmp_path / "deep" / "er" / "out.jsonl").read_bytes() == source.read_bytes()
    with pytest.raises(UserError, match="nothing to upload"):
        remote.upload(tmp_path / "absent.jsonl", url)
    with pytest.raises(UserError, match="is a folder"):
        remote.download(f"{bucket}/runs", tmp_path / "folder")


def test_a_url_without_fsspec_is_a_user_error_saying_what_to_install(monkeypatch, bucket):
    for module in [name for name in sys.modules if name == "fsspec" or name.startswith("fsspec.")]:
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(UserError, match=r"pip install 'lcie-fast\[remote\]'"):
        list(expand_inputs(f"{bucket}/a.jpg"))
    with pytest.raises(UserError, match=r"pip install 'lcie-fast\[remote\]'"):
        list(expand_inputs(f"{bucket}/shard-{{0..1}}.tar"))
    image, error, _ = _decode(RemotePath(f"{bucket}/a.jpg"))
    assert image is None and "pip install 'lcie-fast[remote]'" in error
