"""Decoding, preprocessing, the sampler, the torch loader and the DALI CPU pipeline."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from lcie_fast.config import PreprocessConfig
from lcie_fast.data.datasets import MultiLabelSet, load_data_spec
from lcie_fast.data.loader import EpochSampler, TorchLoader
from lcie_fast.data.synthetic import make_synthetic_set
from lcie_fast.data.transforms import ImageDecodeError, Preprocess, decode_image, resize_image

PRE = Preprocess(PreprocessConfig(input_size=64, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)))


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _gradient(w=40, h=30) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8)


# ---------------------------------------------------------------------------- decoding
def test_decode_modes_give_rgb_uint8():
    rgb = Image.fromarray(_gradient())
    cases = {
        "RGB": rgb,
        "L": rgb.convert("L"),
        "RGBA": rgb.convert("RGBA"),
        "P": rgb.convert("P"),
        "CMYK": rgb.convert("CMYK"),
        "I;16": Image.fromarray((np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)),
    }
    for mode, image in cases.items():
        fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
        array = decode_image(_encode(image, fmt))
        assert array.shape == (30, 40, 3) and array.dtype == np.uint8, mode
    # CMYK JPEG colours survive the round trip (within JPEG error)
    cmyk = decode_image(_encode(rgb.convert("CMYK"), "JPEG", quality=95)).astype(int)
    assert np.abs(cmyk - _gradient().astype(int)).mean() < 6
    # 16-bit: the full range maps to 8 bits, not clipped
    sixteen = decode_image(_encode(cases["I;16"], "TIFF"))
    assert sixteen.max() > 200 and sixteen.min() == 0


def test_exif_rotation_is_applied():
    image = Image.fromarray(_gradient(40, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    array = decode_image(_encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert array.shape == (40, 30, 3)


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ImageDecodeError, match="empty file"):
        decode_image(b"")
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(b"this is text, not pixels")
    jpeg = _encode(Image.fromarray(_gradient(200, 200)), "JPEG")
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageDecodeError, match="file not found"):
        decode_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image(_encode(Image.new("L", (3000, 3000))), max_pixels=1_000_000)


def test_resize_matches_pil_bilinear_within_one_level():
    image = _gradient(97, 61)
    ours = resize_image(image, 48).permute(1, 2, 0).numpy().astype(int)
    pil = np.asarray(Image.fromarray(image).resize((48, 48), Image.BILINEAR)).astype(int)
    assert np.abs(ours - pil).max() <= 1


def test_normalize_is_channels_last_and_exact():
    batch = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    out = PRE.normalize(batch)
    assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == torch.float32
    mean = torch.tensor(PRE.config.mean).view(1, 3, 1, 1)
    std = torch.tensor(PRE.config.std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (batch.float() / 255 - mean) / std)


# ----------------------------------------------------------------------------- sampler
def test_sampler_shards_partition_each_global_batch():
    single = EpochSampler(50, seed=3)
    single.set_epoch(2)
    order = [i for i, _ in single]
    ranks = [EpochSampler(50, rank=r, world_size=2, seed=3) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(2)
    shards = [[i for i, _ in sampler] for sampler in ranks]
    # batch k of 2 ranks (4 images each) = images 8k..8k+7 of the single-process order
    for k in range(6):
        assert sorted(shards[0][4 * k:4 * k + 4] + shards[1][4 * k:4 * k + 4]) == sorted(order[8 * k:8 * k + 8])
    assert sorted(set(shards[0]) | set(shards[1])) == list(range(50))


def test_sampler_is_seeded_per_epoch_and_resumable():
    sampler = EpochSampler(30, seed=1)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    sampler.set_epoch(0, start=7)
    assert list(sampler) == epoch0[7:]
    flips = [f for _, f in epoch0]
    assert 5 < sum(flips) < 25  # about half are flipped


# -------------------------------------------------------------------------------- loaders
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = make_synthetic_set(tmp_path_factory.mktemp("synthetic"), splits={"train": 20}, size=72)
    data = load_data_spec(str(root / "train"))
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    jpeg = (root / "train" / "images" / "train_0000.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    data.paths[4] = str(bad / "empty.jpg")
    data.paths[11] = str(bad / "truncated.jpg")
    return data


def _collect(loader, epoch=1):
    loader.set_epoch(epoch)
    return list(loader)


def test_torch_loader_skips_and_reports_bad_images(synthetic):
    batches = _collect(TorchLoader(synthetic, PRE, 6, train=False, workers=0))
    failed = {path.rsplit("/", 1)[-1]: reason for b in batches for _, path, reason in b.failed}
    assert set(failed) == {"empty.jpg", "truncated.jpg"}
    assert "empty file" in failed["empty.jpg"] and "truncated" in failed["truncated.jpg"]
    seen = torch.cat([b.indices for b in batches]).tolist()
    assert seen == [i for i in range(20) if i not in (4, 11)]  # everything else, once, in order
    first = batches[0]
    assert first.images.shape == (5, 3, 64, 64) and first.images.is_contiguous(memory_format=torch.channels_last)
    expected = PRE.normalize(PRE.load(synthetic.paths[0]).unsqueeze(0))
    torch.testing.assert_close(first.images[:1], expected)


def test_torch_loader_workers_give_the_same_batches(synthetic):
    inline = _collect(TorchLoader(synthetic, PRE, 4, train=True, workers=0, seed=5))
    workers = _collect(TorchLoader(synthetic, PRE, 4, train=True, workers=2, seed=5))
    assert len(inline) == len(workers) == 5  # train drops nothing but the incomplete last batch
    for a, b in zip(inline, workers):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images)


def test_mask_marks_unknown_labels():
    data = MultiLabelSet(["x"], np.array([[1, -1, 0]]), ["a", "b", "c"])
    from lcie_fast.data.loader import to_batch

    raw = {"images": torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "targets": torch.from_numpy(data.targets),
           "indices": torch.tensor([0]), "failed": []}
    batch = to_batch(raw, PRE, torch.device("cpu"), data.paths)
    assert batch.targets.tolist() == [[1.0, 0.0, 0.0]] and batch.mask.tolist() == [[1.0, 0.0, 1.0]]


@pytest.mark.dali
def test_dali_cpu_pipeline_matches_the_torch_loader(synthetic):
    """Contract: same order, flips, failures; pixels within JPEG-decoder differences:
    mean |diff| <= 0.5 grey levels, 99% of values within 1 level, < 1% beyond 2 levels."""
    from lcie_fast.data.dali import DaliLoader

    torch_batches = _collect(TorchLoader(synthetic, PRE, 6, train=True, workers=0, seed=9))
    dali_batches = _collect(DaliLoader(synthetic, PRE, 6, train=True, seed=9, threads=2))
    assert len(torch_batches) == len(dali_batches)
    std = torch.tensor(PRE.config.std).view(1, 3, 1, 1)
    for a, b in zip(torch_batches, dali_batches):
        assert torch.equal(a.indices, b.indices)
        assert sorted(f[1] for f in a.failed) == sorted(f[1] for f in b.failed)
        assert b.images.is_contiguous(memory_format=torch.channels_last)
        levels = ((a.images - b.images).abs() * std * 255).flatten()
        print(f"DALI vs torch: mean {levels.mean():.3f}, p99 {levels.quantile(0.99):.3f}, max {levels.max():.1f} grey levels")
        assert levels.mean() <= 0.5
        assert levels.quantile(0.99) <= 1.01
        assert (levels > 2.01).float().mean() < 0.01
        torch.testing.assert_close(a.targets, b.targets)


@pytest.mark.dali
def test_dali_loader_on_real_photos(traffic5):
    from lcie_fast.data.dali import DaliLoader

    data = load_data_spec(str(traffic5 / "valid")).subset(range(16))
    pre = Preprocess(PreprocessConfig(input_size=448, mean=(0.5,) * 3, std=(0.5,) * 3))
    a = _collect(TorchLoader(data, pre, 8, train=True, workers=0, seed=2))
    b = _collect(DaliLoader(data, pre, 8, train=True, seed=2))
    for x, y in zip(a, b):
        levels = (x.images - y.images).abs() * 0.5 * 255
        print(f"traffic5 DALI vs torch: mean {levels.mean():.3f} grey levels")
        assert levels.mean() <= 0.5


# --------------------------------------------------------------------------- augmentation
def test_augmentation_is_a_pure_function_of_seed_epoch_and_index(synthetic):
    from lcie_fast.data.augment import Augment

    augment = Augment("trivialaugment", crop_scale=(0.5, 1.0))
    plain = _collect(TorchLoader(synthetic, PRE, 4, train=True, workers=0, seed=5))
    inline = _collect(TorchLoader(synthetic, PRE, 4, train=True, workers=0, seed=5, augment=augment))
    workers = _collect(TorchLoader(synthetic, PRE, 4, train=True, workers=2, seed=5, augment=augment))
    again = _collect(TorchLoader(synthetic, PRE, 4, train=True, workers=0, seed=5, augment=augment))
    other_epoch = _collect(TorchLoader(synthetic, PRE, 4, train=True, workers=0, seed=5, augment=augment), epoch=2)
    for a, b, c, p in zip(inline, workers, again, plain):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.indices, p.indices)
        assert torch.equal(a.images, b.images) and torch.equal(a.images, c.images)
    changed = sum(not torch.equal(a.images, p.images) for a, p in zip(inline, plain))
    assert changed == len(plain)  # every batch was augmented
    assert any(not torch.equal(a.images, o.images) for a, o in zip(inline, other_epoch))
    # evaluation loaders never augment
    evaluation = _collect(TorchLoader(synthetic, PRE, 6, train=False, workers=0, augment=augment))
    torch.testing.assert_close(evaluation[0].images[:1], PRE.normalize(PRE.load(synthetic.paths[0]).unsqueeze(0)))
    # and the caller's random stream is untouched by the policy's draws
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _collect(TorchLoader(synthetic, PRE, 4, train=True, workers=0, seed=5, augment=augment))
    assert torch.equal(torch.rand(3), expected)


def test_header_size_applies_exif_rotation_and_refuses_bombs():
    import io

    from PIL import Image

    from lcie_fast.data.transforms import ImageDecodeError, image_header_size

    image = Image.new("RGB", (40, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    assert image_header_size(buffer.getvalue()) == (40, 30)  # (height, width) after the rotation
    with pytest.raises(ImageDecodeError, match="over the limit"):
        image_header_size(buffer.getvalue(), "big.jpg", max_pixels=1000)
    with pytest.raises(ImageDecodeError, match="not an image"):
        image_header_size(b"plain text", "notes.txt")


def test_crop_windows_follow_the_scale_range_and_stay_inside():
    from lcie_fast.data.augment import Augment, sample_seed

    augment = Augment("none", crop_scale=(0.6, 0.9))
    areas = []
    for index in range(300):
        window = augment.crop_window(sample_seed(0, 1, index))
        top, left, h, w = window.pixels(480, 640)
        assert 0 <= top and top + h <= 480 and 0 <= left and left + w <= 640
        areas.append(window.height * window.width)
    assert 0.6 - 1e-9 <= min(areas) and max(areas) <= 0.9 + 1e-9
    assert Augment("none").crop_window(7).is_full and not Augment("none").active
    with pytest.raises(ValueError, match="crop_scale"):
        Augment("none", crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="policy"):
        Augment("autoaugment")


@pytest.mark.dali
def test_dali_crops_the_same_windows_as_the_torch_loader(synthetic):
    """Contract as for unaugmented batches: mean |diff| <= 0.5 grey levels, same order."""
    from lcie_fast.data.augment import Augment
    from lcie_fast.data.dali import DaliLoader

    augment = Augment("none", crop_scale=(0.4, 0.8))
    torch_batches = _collect(TorchLoader(synthetic, PRE, 6, train=True, workers=0, seed=9, augment=augment))
    dali_batches = _collect(DaliLoader(synthetic, PRE, 6, train=True, seed=9, threads=2, augment=augment))
    plain = _collect(TorchLoader(synthetic, PRE, 6, train=True, workers=0, seed=9))
    std = torch.tensor(PRE.config.std).view(1, 3, 1, 1)
    for a, b, p in zip(torch_batches, dali_batches, plain):
        assert torch.equal(a.indices, b.indices)
        levels = ((a.images - b.images).abs() * std * 255).flatten()
        uncropped = ((p.images - b.images).abs() * std * 255).flatten()
        print(f"cropped DALI vs torch: mean {levels.mean():.3f} grey levels (vs the uncropped image: {uncropped.mean():.2f})")
        assert levels.mean() <= 0.5 < uncropped.mean()
    policy = DaliLoader(synthetic, PRE, 6, train=True, seed=9, threads=2, augment=Augment("trivialaugment", (0.5, 1)))
    batch = next(iter(policy))
    assert batch.images.shape == (6, 3, 64, 64) and torch.isfinite(batch.images).all()
