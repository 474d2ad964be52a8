"""The one definition of preprocessing, used by every loader, the tagger and every backend.

decode (any mode, EXIF-rotated, size-checked) -> RGB uint8 HWC -> resize to the square input
(bilinear or bicubic, antialiased, uint8 result) -> optional horizontal flip -> batch ->
normalise on the device: ``(x / 255 - mean) / std`` as float, channels-last.

The parameters come from :class:`~lcie_fast.config.PreprocessConfig`, stored in every
checkpoint, ONNX graph and engine bundle. The DALI pipeline implements the same steps with
DALI operators (see :mod:`lcie_fast.data.dali`); tests bound the difference.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import os
import stat
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..config import PreprocessConfig
from ..errors import InvalidInputError, UserError
from ..io import read_fd, special_file_kind

# An image larger than this many pixels is refused before it is decoded (decompression bombs).
DEFAULT_MAX_PIXELS = 80_000_000
# A file larger than this many bytes is refused before it is read.
DEFAULT_MAX_BYTES = 256 << 20
# An image whose decoding would need more memory than this (estimated from its header: size, bit
# depth, bands and the decode path's copies) is refused, or for a JPEG decoded at a reduced scale.
# The worst case of a run is this times the decoder threads.
DEFAULT_MAX_DECODE_BYTES = 1 << 30
# The only formats PIL may open, those IMAGE_EXTENSIONS imply (JPEG includes MPO, camera JPEGs
# with extra pictures): never EPS (Ghostscript), nor any other format a file could claim to be.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")

_DEEP_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_SCALE_BLOCK_PIXELS = 1 << 18  # float64 working block of the deep-grey scaling: 2 MiB


class ImageDecodeError(UserError, ValueError):
    """An input that cannot be turned into an RGB image; the message says why."""


def check_limit(name: str, value: int) -> int:
    """``value`` if it is a positive whole number, else :class:`InvalidInputError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"{name} must be a positive whole number, got {value!r}")
    return int(value)


def read_image_bytes(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of an image file, read only if it is a regular file of at most ``max_bytes``.

    FIFOs, devices (``/dev/zero``), sockets and folders are refused from ``stat`` (symlinks
    resolved) before anything is read, and checked again on the open descriptor, which is opened
    non-blocking so that a FIFO swapped in meanwhile cannot hang; the read itself is bounded too
    (a file that grows while it is read).

    Raises:
        ImageDecodeError: missing, not a regular file, too large, empty or unreadable; names ``path``.
    """
    name = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    try:
        _check_regular(os.stat(path), name, max_bytes)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(f"{name}: file not found") from None
    except (OSError, ValueError) as err:  # ValueError: an embedded NUL
        raise ImageDecodeError(f"{name}: cannot read: {getattr(err, 'strerror', None) or err}") from None
    try:
        _check_regular(os.fstat(fd), name, max_bytes)
        data = read_fd(fd, max_bytes + 1)  # one byte more than allowed: a file that grows while it is read
    except OSError as err:
        raise ImageDecodeError(f"{name}: cannot read: {err.strerror or err}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ImageDecodeError(f"{name}: over the limit of {max_bytes:,} bytes (it grew while it was read)")
    if not data:
        raise ImageDecodeError(f"{name}: empty file (zero bytes)")
    return data


def _check_regular(info: os.stat_result, name: str, max_bytes: int) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise ImageDecodeError(f"{name}: is a folder, not an image")
    if not stat.S_ISREG(info.st_mode):
        kind = special_file_kind(info.st_mode)
        raise ImageDecodeError(f"{name}: not a regular file (a {kind}); only regular files are read")
    if info.st_size > max_bytes:
        raise ImageDecodeError(f"{name}: {info.st_size:,} bytes is over the limit of {max_bytes:,} bytes")


def decode_image(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, *,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
                 reduce_to: int | None = None, name: str | None = None) -> np.ndarray:
    """Decode a file or encoded bytes to an RGB uint8 (H, W, 3) array.

    Handles grayscale, palette, CMYK, alpha (dropped, as DALI's RGB decoding does), 16-bit and
    32-bit integer or float images (scaled to 8 bits) and EXIF orientation (applied).

    Args:
        source: A path or encoded bytes.
        max_pixels: Images with more pixels are refused from the header.
        max_bytes: Files (or bytes) larger than this are refused before they are read.
        max_decode_bytes: Images whose decoding needs more memory (estimated from the header)
            are refused; see ``reduce_to``.
        reduce_to: The smallest side the caller needs (its resize target), or None for full size.
            A JPEG over ``max_decode_bytes`` is then decoded at 1/2, 1/4 or 1/8 scale (PIL's
            ``draft``) when that fits and keeps both sides at least ``reduce_to``.
        name: What error messages call the image (default: the path, or ``<bytes>`` for bytes),
            e.g. the path of a file whose bytes the caller read itself.

    Raises:
        ImageDecodeError: empty, oversized or non-regular input, a format not in
            :data:`IMAGE_FORMATS`, truncated data, or over ``max_pixels`` or ``max_decode_bytes``
            (both checked from the header, before decoding).
    """
    from PIL import ImageOps

    if isinstance(source, (bytes, bytearray, memoryview)):
        name, data = name or "<bytes>", bytes(source)
        if not data:
            raise ImageDecodeError(f"{name}: empty file (zero bytes)")
        if len(data) > max_bytes:
            raise ImageDecodeError(f"{name}: {len(data):,} bytes is over the limit of {max_bytes:,} bytes")
    else:
        name, data = name or str(source), read_image_bytes(source, max_bytes)
    with _open_image(data, name, max_pixels) as image:
        _fit_decode_budget(image, name, max_decode_bytes, reduce_to)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return to_rgb8(image, name)


def decode_cost(image) -> int:
    """Bytes the decode path needs at its peak for ``image`` (an opened, not yet decoded PIL image).

    PIL holds 1 byte a pixel for 1/L/P, 2 for 16-bit grey and 4 for every other mode; converting
    to RGB adds 4, turning it into NumPy 7 (PIL's byte string while it is joined, the array, the
    decoder's and the resize's working rows); deep grey (16-bit, 32-bit, float) twice its own
    size plus the RGB result. EXIF rotation (in place) peaks at twice the decoded image, below
    the conversion's peak, and adds nothing.
    """
    width, height = image.size
    mode = image.mode
    stored = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    if mode in _DEEP_GREY_MODES:
        per_pixel = 3 * stored + 3
    else:
        per_pixel = stored + (0 if mode == "RGB" else 4) + 7
    return width * height * per_pixel + _SCALE_BLOCK_PIXELS * 8


def _fit_decode_budget(image, name: str, max_decode_bytes: int, reduce_to: int | None) -> None:
    """Refuse ``image`` if decoding it needs more than ``max_decode_bytes``, unless it is a JPEG
    that fits at a reduced scale (then set that scale with ``draft``)."""
    cost = decode_cost(image)
    if cost <= max_decode_bytes:
        return
    width, height = image.size
    mode = image.mode
    if reduce_to is not None and image.format in ("JPEG", "MPO"):
        for scale in (2, 4, 8):
            if min(width // scale, height // scale) < reduce_to:
                break
            if cost // (scale * scale) <= max_decode_bytes:
                image.draft(None, (width // scale, height // scale))  # once only: PIL ignores a second call
                if decode_cost(image) <= max_decode_bytes:
                    return
                break
    raise ImageDecodeError(
        f"{name}: decoding this {width}x{height} {mode} image needs about {cost:,} bytes, over the per-image "
        f"memory budget of {max_decode_bytes:,} bytes (raise max_decode_bytes to accept it)")


def image_header_size(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) of an encoded image as :func:`decode_image` returns it (EXIF rotation
    applied), read from the header without decoding the pixels.

    Raises:
        ImageDecodeError: the header cannot be read, or the image has more than ``max_pixels``.
    """
    with _open_image(data, name, max_pixels) as image:
        width, height = image.size
        orientation = _header_orientation(image)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def _header_orientation(image) -> int:
    """The EXIF Orientation of an opened image, without decoding it: PIL's PNG ``getexif`` decodes
    the whole image to look for an EXIF chunk after the pixels, so a PNG's comes from its header."""
    from PIL import Image

    if image.format != "PNG":
        return image.getexif().get(0x0112, 1)
    exif = Image.Exif()
    if image.info.get("exif"):
        exif.load(image.info["exif"])
    return exif.get(0x0112, 1)


@functools.lru_cache(maxsize=None)
def _register_formats() -> None:
    """Import the PIL plugins of :data:`IMAGE_FORMATS` (``Image.open(formats=...)`` needs them
    registered; PIL preloads only some) and none other."""
    for plugin in ("Bmp", "Gif", "Jpeg", "Png", "Tiff", "WebP"):
        importlib.import_module(f"PIL.{plugin}ImagePlugin")


@contextlib.contextmanager
def _open_image(data: bytes, name: str, max_pixels: int) -> Iterator:
    """The PIL image of encoded bytes in one of :data:`IMAGE_FORMATS`, its pixel count checked
    from the header before anything is decoded; every PIL failure inside the block becomes an
    :class:`ImageDecodeError`."""
    from PIL import Image, UnidentifiedImageError

    _register_formats()
    try:
        with warnings.catch_warnings():
            # our own pixel limit applies (below); PIL still refuses images over twice its own
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageDecodeError(
                        f"{name}: {width}x{height} = {width * height:,} pixels is over the limit of "
                        f"{max_pixels:,} (a decompression bomb or an absurdly large image)")
                yield image
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"{name}: refused as a decompression bomb: {err}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: not an image in an accepted format "
                               f"({', '.join(IMAGE_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(f"{name}: corrupt or truncated image data: {err}") from None


def to_rgb8(image, name: str) -> np.ndarray:
    """A PIL image of any mode as (H, W, 3) uint8 RGB (16-bit and float grey scaled to 0-255).

    Deep grey is scaled in row blocks, so the only full-size copies are PIL's bytes and the result.

    Raises:
        ImageDecodeError: a mode that cannot be converted, named with ``name``.
    """
    mode = image.mode
    if mode in _DEEP_GREY_MODES:
        return _deep_grey_to_rgb8(np.asarray(image), mode)
    if mode != "RGB":
        try:
            image = image.convert("RGB")
        except (OSError, ValueError) as err:
            raise ImageDecodeError(f"{name}: cannot convert {mode} to RGB: {err}") from None
    array = np.array(image)  # a writable copy: torch may take it without a warning
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ImageDecodeError(f"{name}: unsupported pixel layout {array.shape} {array.dtype}")
    return array


def _deep_grey_to_rgb8(array: np.ndarray, mode: str) -> np.ndarray:
    """(H, W) 16-bit, int32 or float grey -> (H, W, 3) uint8: ``round(v / top * 255)`` clipped,
    where top is 65535 for 16-bit, else the largest finite value (float: 1.0 if that is <= 1)."""
    height, width = array.shape
    rows = max(1, _SCALE_BLOCK_PIXELS // max(width, 1))
    blocks = range(0, height, rows)
    if mode.startswith("I;16"):
        top = 65535.0
    else:
        finite_max = max((float(np.max(block, initial=-np.inf, where=np.isfinite(block)))
                          for block in (array[start:start + rows] for start in blocks)), default=-np.inf)
        top = (1.0 if finite_max <= 1.0 else finite_max) if mode == "F" else max(finite_max, 1.0)
    out = np.empty((height, width, 3), np.uint8)  # (H, W, 3)
    for start in blocks:
        block = array[start:start + rows].astype(np.float64)  # (rows, W)
        if mode == "F":
            np.nan_to_num(block, copy=False, nan=0.0, posinf=top, neginf=0.0)
        block /= top
        block *= 255.0
        block += 0.5
        np.clip(block, 0, 255, out=block)
        out[start:start + rows] = block.astype(np.uint8)[..., None]
    return out


def resize_image(image: np.ndarray | torch.Tensor, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Resize an RGB uint8 image to (3, size, size) uint8 (antialiased when shrinking).

    Args:
        image: (H, W, 3) uint8 array or tensor (HWC), or a (3, H, W) uint8 tensor.
        size: Output side.
        interpolation: ``bilinear`` or ``bicubic``.
    """
    if isinstance(image, np.ndarray):
        image = np.ascontiguousarray(image) if image.flags.writeable else np.array(image)
    tensor = torch.from_numpy(image) if isinstance(image, np.ndarray) else image
    if tensor.dim() == 3 and tensor.shape[-1] == 3 and tensor.shape[0] != 3:
        tensor = tensor.permute(2, 0, 1)  # HWC -> CHW view
    if tuple(tensor.shape[-2:]) == (size, size):
        return tensor.contiguous()
    batch = tensor.unsqueeze(0)
    if batch.device.type == "cpu" and interpolation == "bilinear":
        # torch's uint8 antialiased bilinear kernel (vectorised; rounds like PIL)
        out = F.interpolate(batch.contiguous(memory_format=torch.channels_last), size=(size, size),
                            mode="bilinear", align_corners=False, antialias=True)
    else:
        out = F.interpolate(batch.float(), size=(size, size), mode=interpolation, align_corners=False, antialias=True)
        out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out[0].contiguous()


def flip_decision(seed: int, epoch: int, index: int) -> bool:
    """Whether sample ``index`` is flipped in ``epoch``: a pure function of its arguments, so
    every loader, worker count and resumed run flips the same images."""
    return bool(np.random.default_rng([seed, epoch, index]).random() < 0.5)


class Preprocess:
    """Preprocessing of one model, from its :class:`PreprocessConfig`.

    Args:
        config: Input size, mean, std, resize rule.
        max_pixels: Decoding refuses images with more pixels.
        max_bytes: Decoding refuses files larger than this, before reading them.
        max_decode_bytes: Decoding refuses images that need more memory (from the header; JPEGs
            are decoded at a reduced scale instead where that fits).

    Raises:
        InvalidInputError: a limit that is not a positive whole number.
    """

    def __init__(self, config: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES) -> None:
        self.config = config
        self.max_pixels = check_limit("max_pixels", max_pixels)
        self.max_bytes = check_limit("max_bytes", max_bytes)
        self.max_decode_bytes = check_limit("max_decode_bytes", max_decode_bytes)

    @property
    def size(self) -> int:
        return self.config.input_size

    def load(self, source: str | Path | bytes, flip: bool = False, *, name: str | None = None) -> torch.Tensor:
        """Decode and resize one image -> (3, S, S) uint8 (what loader workers produce); errors
        call it ``name`` when given (see :func:`decode_image`)."""
        decoded = decode_image(source, self.max_pixels, max_bytes=self.max_bytes,
                               max_decode_bytes=self.max_decode_bytes, reduce_to=self.size, name=name)
        image = resize_image(decoded, self.size, self.config.interpolation)
        return image.flip(-1) if flip else image

    def decode(self, source: str | Path | bytes) -> np.ndarray:
        """Decode one image at full size (for cropping) -> (H, W, 3) uint8, within this preprocessing's limits."""
        return decode_image(source, self.max_pixels, max_bytes=self.max_bytes, max_decode_bytes=self.max_decode_bytes)

    def from_array(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Resize an RGB uint8 (H, W, 3) frame -> (3, S, S) uint8."""
        return resize_image(image, self.size, self.config.interpolation)

    def normalize(self, batch: torch.Tensor, channels_last: bool = True, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 (B, 3, S, S) on any device -> normalised ``dtype`` batch, channels-last by default."""
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.config.std], device=batch.device).view(1, 3, 1, 1)
        shift = torch.tensor([m / s for m, s in zip(self.config.mean, self.config.std)], device=batch.device).view(1, 3, 1, 1)
        out = batch.float() * scale - shift
        if channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out.to(dtype)
