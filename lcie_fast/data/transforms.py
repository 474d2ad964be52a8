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
import io
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..config import PreprocessConfig
from ..errors import UserError

# An image larger than this many pixels is refused before it is decoded (decompression bombs).
DEFAULT_MAX_PIXELS = 80_000_000


class ImageDecodeError(UserError, ValueError):
    """An input that cannot be turned into an RGB image; the message says why."""


def decode_image(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a file or encoded bytes to an RGB uint8 (H, W, 3) array.

    Handles grayscale, palette, CMYK, alpha (dropped, as DALI's RGB decoding does), 16-bit and
    32-bit integer or float images (scaled to 8 bits) and EXIF orientation (applied).

    Raises:
        ImageDecodeError: empty input, unreadable or unsupported format, truncated data, or
            more than ``max_pixels`` pixels (checked from the header, before decoding).
    """
    from PIL import ImageOps

    name = "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
        else:
            data = Path(source).read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"{name}: is a folder, not an image") from None
    except OSError as err:
        raise ImageDecodeError(f"{name}: cannot read: {err.strerror or err}") from None
    if not data:
        raise ImageDecodeError(f"{name}: empty file (zero bytes)")
    with _open_image(data, name, max_pixels) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
    return to_rgb8(image, name)


def image_header_size(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) of an encoded image as :func:`decode_image` returns it (EXIF rotation
    applied), read from the header without decoding the pixels.

    Raises:
        ImageDecodeError: the header cannot be read, or the image has more than ``max_pixels``.
    """
    with _open_image(data, name, max_pixels) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


@contextlib.contextmanager
def _open_image(data: bytes, name: str, max_pixels: int) -> Iterator:
    """The PIL image of encoded bytes, its pixel count checked from the header before anything
    is decoded; every PIL failure inside the block becomes an :class:`ImageDecodeError`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # our own pixel limit applies (below); PIL still refuses images over twice its own
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
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
        raise ImageDecodeError(f"{name}: not an image in a supported format") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(f"{name}: corrupt or truncated image data: {err}") from None


def to_rgb8(image, name: str) -> np.ndarray:
    """A PIL image of any mode as (H, W, 3) uint8 RGB (16-bit and float grey scaled to 0-255).

    Raises:
        ImageDecodeError: a mode that cannot be converted, named with ``name``.
    """
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        array = np.asarray(image).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(array.max()), 1.0)
        if mode == "F":
            top = 1.0 if array.max() <= 1.0 else float(array.max())
        gray = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode != "RGB":
        try:
            image = image.convert("RGB")
        except (OSError, ValueError) as err:
            raise ImageDecodeError(f"{name}: cannot convert {mode} to RGB: {err}") from None
    array = np.array(image)  # a writable copy: torch may take it without a warning
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ImageDecodeError(f"{name}: unsupported pixel layout {array.shape} {array.dtype}")
    return array


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
    """

    def __init__(self, config: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.config = config
        self.max_pixels = max_pixels

    @property
    def size(self) -> int:
        return self.config.input_size

    def load(self, source: str | Path | bytes, flip: bool = False) -> torch.Tensor:
        """Decode and resize one image -> (3, S, S) uint8 (what loader workers produce)."""
        image = resize_image(decode_image(source, self.max_pixels), self.size, self.config.interpolation)
        return image.flip(-1) if flip else image

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
