"""Image reading and writing for the whole tool (Pillow underneath).

Reading (every failure becomes an ``ImageError`` naming the file, with a hint):

* ``load_image(path)``: RGB uint8 HxWx3. Grayscale, palette, CMYK, ... become RGB; an alpha
  channel is dropped; 16-bit data is rounded to 8 bits; EXIF orientation is applied.
* ``load_image_with_alpha(path)``: ``(rgb uint8, alpha uint8 or None, bit_depth)``.
* ``load_image_any(path)``: float32 HxWxC in [0, 1] (C = 3, or 4 with alpha) and an
  ``ImageInfo``; keeps 16-bit precision where Pillow decodes it (16-bit grayscale).
  Pillow decodes 16-bit RGB/RGBA PNGs at 8 bits only; that is logged as a warning.

Writing: ``save_image(path, array)`` writes atomically (see ``fileio.atomic_write``): an
existing file is never left half-written. uint8 HxW / HxWx3 / HxWx4 in any format Pillow
writes; uint16 HxW / HxWx3 / HxWx4 as 16-bit PNG (HxW also as 16-bit TIFF).

Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) is respected, not changed; an image above it
is refused (Pillow itself only warns between the limit and twice the limit), before any pixel is decoded.
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError
from .fileio import atomic_write, disk_full_error

__all__ = ["ImageInfo", "load_image", "load_image_with_alpha", "load_image_any", "save_image"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_CORRUPT_HINT = "the file may be truncated or corrupt; re-export or re-download it"


@dataclass(frozen=True)
class ImageInfo:
    """What ``load_image_any`` found: precision of the returned data, alpha, Pillow mode."""

    bit_depth: int  # 8 or 16: bits per sample actually decoded
    has_alpha: bool
    mode: str  # the Pillow mode of the file, e.g. "RGB", "L", "I;16", "P"


def _png_bit_depth(path: Path) -> int | None:
    """Bit depth from a PNG's IHDR chunk (byte 24), or None when unreadable."""
    try:
        with open(path, "rb") as f:
            head = f.read(25)
    except OSError:
        return None
    if len(head) == 25 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24]
    return None


def _open(path: PathLike) -> tuple[Image.Image, str | None]:
    """Open, fully decode and EXIF-orient an image; returns (in-memory image, format).

    Pillow's warnings about a damaged file (corrupt EXIF, odd TIFF tags) become log lines naming the file instead
    of bare lines on stderr; its decompression-bomb warning becomes an ``ImageError``. Not thread-safe (warnings
    filters are global): images are loaded from one thread here."""
    p = Path(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _decode(p)
    for warning in caught:
        logger.warning("%s: %s", p, warning.message)
    return image


def _decode(p: Path) -> tuple[Image.Image, str | None]:
    try:
        with Image.open(p) as im:
            fmt = im.format
            im.load()
            return ImageOps.exif_transpose(im), fmt
    except FileNotFoundError as e:
        raise ImageError(f"image not found: {p}", hint="check the path and the file name") from e
    except IsADirectoryError as e:
        raise ImageError(f"expected an image file, got a folder: {p}", hint="pass a file inside it") from e
    except PermissionError as e:
        raise ImageError(f"no permission to read image: {p}", hint="check the file's permissions") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(
            f"image too large to open safely: {p} ({e})",
            hint="if you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS in your own script",
        ) from e
    except UnidentifiedImageError as e:
        raise ImageError(
            f"not a readable image (unknown format or damaged header): {p}", hint="use PNG, JPEG, BMP, TIFF or WebP"
        ) from e
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, ... on bad data
        raise ImageError(f"cannot decode image {p}: {e}", hint=_CORRUPT_HINT) from e


def _to_array(im: Image.Image, fmt: str | None, path: PathLike) -> tuple[np.ndarray, int, bool]:
    """Pillow image -> (HxWx3 or HxWx4 uint8/uint16 array, bit_depth, has_alpha)."""
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES:  # 16-bit (or 32-bit int) grayscale: keep 16 bits
        gray = np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
        return np.repeat(gray[..., None], 3, axis=2), 16, False
    if mode == "F":
        raise ImageError(
            f"floating-point images are not supported: {path}", hint="convert it to an 8- or 16-bit PNG first"
        )
    if fmt == "PNG" and mode in {"RGB", "RGBA", "LA"} and _png_bit_depth(Path(path)) == 16:
        logger.warning("%s: 16-bit %s PNG decoded at 8 bits per sample (Pillow limitation)", path, mode)
    has_alpha = mode in _ALPHA_MODES or "transparency" in im.info
    try:
        arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    except Exception as e:
        raise ImageError(f"cannot convert image {path} (mode {mode}) to RGB: {e}", hint=_CORRUPT_HINT) from e
    return arr, 8, has_alpha


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    return np.floor(arr.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)  # 65535 -> 255


def load_image_with_alpha(path: PathLike) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Read an image as ``(rgb HxWx3 uint8, alpha HxW uint8 or None, bit_depth)``.

    ``bit_depth`` is the precision Pillow decoded (16 for 16-bit grayscale, else 8); the
    returned arrays are always 8-bit.
    """
    im, fmt = _open(path)
    arr, bit_depth, has_alpha = _to_array(im, fmt, path)
    arr = _to_uint8(arr)
    alpha = np.ascontiguousarray(arr[..., 3]) if has_alpha else None
    return np.ascontiguousarray(arr[..., :3]), alpha, bit_depth


def load_image(path: PathLike) -> np.ndarray:
    """Read any image as RGB uint8 HxWx3 (alpha dropped, EXIF orientation applied)."""
    return load_image_with_alpha(path)[0]


def load_image_any(path: PathLike) -> tuple[np.ndarray, ImageInfo]:
    """Read an image as float32 HxWxC in [0, 1] (C = 3, or 4 with alpha) plus its ``ImageInfo``."""
    im, fmt = _open(path)
    arr, bit_depth, has_alpha = _to_array(im, fmt, path)
    peak = 65535.0 if bit_depth == 16 else 255.0
    return arr.astype(np.float32) / np.float32(peak), ImageInfo(bit_depth, has_alpha, im.mode)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _encode_png16(arr: np.ndarray) -> bytes:
    """Minimal 16-bit RGB/RGBA PNG (Pillow cannot write these): no filtering, zlib level 6."""
    h, w, c = arr.shape
    color_type = {3: 2, 4: 6}[c]
    rows = np.ascontiguousarray(arr, dtype=">u2").view(np.uint8).reshape(h, w * c * 2)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter byte 0 per row
    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw, 6))
        + _png_chunk(b"IEND", b"")
    )


def _check_array(arr: np.ndarray, target: Path) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))) or 0 in arr.shape:
        raise ImageError(
            f"cannot save array of shape {arr.shape} as image {target}", hint="pass HxW, HxWx3 or HxWx4"
        )
    if arr.dtype not in (np.uint8, np.uint16):
        raise ImageError(
            f"cannot save {arr.dtype} array as image {target}",
            hint="convert to uint8 (e.g. np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)) or uint16",
        )
    return np.ascontiguousarray(arr)


def _format_for(suffix: str) -> str | None:
    """Pillow's format name for a file suffix; the common ones (PNG, JPEG, BMP, GIF, PPM) without loading every
    plugin (``registered_extensions`` imports them all: ~0.05 s of a 1 s ``upscale``)."""
    Image.preinit()
    return Image.EXTENSION.get(suffix) or Image.registered_extensions().get(suffix)


def save_image(path: PathLike, array: np.ndarray) -> None:
    """Write a uint8 or uint16 image atomically; the format follows the file suffix.

    uint16 arrays are written as 16-bit PNG (grayscale also as TIFF). On failure raises
    ``ImageError`` (``DiskFullError`` when the disk is full); an existing file at ``path`` is left untouched and no
    temp file remains.
    """
    target = Path(path)
    fmt = _format_for(target.suffix.lower())
    if fmt is None:
        raise ImageError(f"unknown image format for {target}", hint="use a suffix such as .png, .jpg, .bmp or .tif")
    arr = _check_array(np.asarray(array), target)
    if arr.dtype == np.uint16 and fmt != "PNG" and not (fmt == "TIFF" and arr.ndim == 2):
        raise ImageError(f"16-bit images can only be saved as PNG (grayscale also TIFF): {target}", hint="use a .png suffix")
    existed = target.exists()
    try:
        with atomic_write(target) as tmp:
            if arr.dtype == np.uint16 and arr.ndim == 3:
                tmp.write_bytes(_encode_png16(arr))
            else:
                Image.fromarray(arr).save(tmp, format=fmt)
    except Exception as e:
        full = disk_full_error(e, f"image {target}", "its previous version is intact" if existed else "no partial file was left",
                               "write to another disk (-o), then run again")
        if full is not None:
            raise full from e
        raise ImageError(
            f"cannot write image {target}: {e}",
            hint="check that the folder exists and is writable and that the format fits (JPEG has no alpha)",
        ) from e
