"""Fuzzing the image-loading path (issue 8): mutated bytes of small valid PNG/JPEG/BMP/TIFF/GIF/WebP files (bit
flips, truncation, insertion, overwritten runs) and plain random bytes. The only exception allowed out of
``images.load_image*`` is our own ``ImageError``; whatever loads must be a well-formed array."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from mambaesr_edge.errors import ImageError
from mambaesr_edge.images import _encode_png16, load_image, load_image_any, load_image_with_alpha


def _encode(array: np.ndarray, fmt: str, mode: str | None = None, **options: object) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(8)
    rgb = rng.integers(0, 256, (7, 9, 3)).astype(np.uint8)
    rgba = rng.integers(0, 256, (6, 5, 4)).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "png": _encode(rgb, "PNG"),
        "png-rgba": _encode(rgba, "PNG"),
        "png-palette": _encode(rgb, "PNG", "P", transparency=0),
        "png-gray16": _encode(rng.integers(0, 65536, (5, 6)).astype(np.uint16), "PNG"),
        "png-rgb16": _encode_png16(rng.integers(0, 65536, (4, 5, 3)).astype(np.uint16)),
        "jpeg": _encode(rgb, "JPEG", quality=80),
        "jpeg-exif": _encode(rgb, "JPEG", exif=exif),
        "jpeg-cmyk": _encode(rgb, "JPEG", "CMYK"),
        "bmp": _encode(rgb, "BMP"),
        "tiff": _encode(rgb, "TIFF"),
        "tiff-deflate": _encode(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "tiff-float": _encode(rng.random((4, 4)).astype(np.float32), "TIFF"),
        "gif": _encode(rgb, "GIF"),
        "webp": _encode(rgb, "WEBP", lossless=True),
    }


SEEDS = _seeds()
# Found by fuzzing: Pillow raises ValueError here, not OSError (IHDR length 5 instead of 13).
PNG_SHORT_IHDR = SEEDS["png"][:8] + b"\x00\x00\x00\x05" + SEEDS["png"][12:]


@st.composite
def mutated(draw) -> bytes:
    """A seed file with 1-4 mutations, or random bytes (sometimes behind a real magic number)."""
    if draw(st.integers(0, 9)) == 0:
        magic = draw(st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"GIF89a", b"RIFF"]))
        return magic + draw(st.binary(max_size=300))
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite"]))
        end = len(data) - 1 if draw(st.booleans()) else min(len(data) - 1, 48)  # half the time: in the header
        at = draw(st.integers(0, max(0, end)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(chunk)] = chunk
    return bytes(data)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _check_loaded(rgb: np.ndarray, alpha: np.ndarray | None) -> None:
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 1
    assert alpha is None or (alpha.dtype == np.uint8 and alpha.shape == rgb.shape[:2])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=mutated(), suffix=st.sampled_from([".png", ".jpg", ".bmp", ".tif", ".gif", ".webp", ".dat"]))
@example(data=PNG_SHORT_IHDR, suffix=".png")
@example(data=b"", suffix=".png")
def test_loading_mutated_files_raises_only_image_errors(folder, data, suffix):
    path = folder / f"fuzz{suffix}"
    path.write_bytes(data)
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        try:
            rgb, alpha, bit_depth = load_image_with_alpha(path)
        except ImageError as exc:
            assert exc.hint and str(path) in exc.message
            rgb = None
        if rgb is not None:
            _check_loaded(rgb, alpha)
            assert bit_depth in (8, 16)
            np.testing.assert_array_equal(load_image(path), rgb)
            values, info = load_image_any(path)
            assert values.dtype == np.float32 and values.shape[:2] == rgb.shape[:2] and values.shape[2] in (3, 4)
            assert info.bit_depth in (8, 16) and 0.0 <= values.min() and values.max() <= 1.0
    assert not leaked, [str(w.message) for w in leaked]  # Pillow's warnings are logged, never bare stderr lines


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_is_valid_or_refused_on_purpose(folder, name):
    """The fuzz starts from real files: each seed loads (or is the float TIFF, refused by design)."""
    path = folder / f"seed-{name}"
    path.write_bytes(SEEDS[name])
    if name == "tiff-float":
        with pytest.raises(ImageError, match="floating-point"):
            load_image(path)
    else:
        _check_loaded(*load_image_with_alpha(path)[:2])
