"""Image IO: mode conversions, EXIF orientation, 16-bit, atomic saving, and named load errors."""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from mambaesr_edge.errors import ImageError
from mambaesr_edge.fileio import atomic_write
from mambaesr_edge.images import load_image, load_image_any, load_image_with_alpha, save_image


def _rgb(h: int = 12, w: int = 9, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- reading


def test_pillow_globals_untouched() -> None:
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_rgb_roundtrip_lossless(tmp_path: Path, suffix: str) -> None:
    img = _rgb()
    path = tmp_path / f"x{suffix}"
    save_image(path, img)
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out, img)


def test_grayscale_and_palette_become_rgb(tmp_path: Path) -> None:
    gray = _rgb()[..., 0]
    save_image(tmp_path / "g.png", gray)
    out = load_image(tmp_path / "g.png")
    assert out.shape == gray.shape + (3,)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    Image.fromarray(_rgb()).convert("P").save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (12, 9, 3)
    Image.fromarray(_rgb()).convert("CMYK").save(tmp_path / "c.jpg")
    assert load_image(tmp_path / "c.jpg").shape == (12, 9, 3)


def test_alpha_is_returned_separately(tmp_path: Path) -> None:
    rgba = np.concatenate([_rgb(), np.full((12, 9, 1), 77, np.uint8)], axis=2)
    save_image(tmp_path / "a.png", rgba)
    rgb, alpha, depth = load_image_with_alpha(tmp_path / "a.png")
    np.testing.assert_array_equal(rgb, rgba[..., :3])
    assert alpha is not None and np.all(alpha == 77)
    assert depth == 8
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgba[..., :3])
    _, alpha, _ = load_image_with_alpha(_save_png(tmp_path / "b.png", _rgb()))
    assert alpha is None
    data, info = load_image_any(tmp_path / "a.png")
    assert data.dtype == np.float32 and data.shape == (12, 9, 4)
    assert info.has_alpha and info.bit_depth == 8 and info.mode == "RGBA"
    assert data.max() <= 1.0


def _save_png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


def test_exif_orientation_applied(tmp_path: Path) -> None:
    img = _rgb(2, 4)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(img).save(tmp_path / "o.png", exif=exif)
    out = load_image(tmp_path / "o.png")
    np.testing.assert_array_equal(out, np.rot90(img, k=-1))


def test_sixteen_bit_grayscale(tmp_path: Path) -> None:
    g16 = np.array([[0, 1000, 65535], [257, 128, 40000]], dtype=np.uint16)
    save_image(tmp_path / "g16.png", g16)
    data, info = load_image_any(tmp_path / "g16.png")
    assert info.bit_depth == 16 and not info.has_alpha
    np.testing.assert_allclose(data[..., 0] * 65535.0, g16, atol=1e-2)
    rgb, alpha, depth = load_image_with_alpha(tmp_path / "g16.png")
    assert depth == 16 and alpha is None
    np.testing.assert_array_equal(rgb[..., 1], np.round(g16 / 257.0).astype(np.uint8))


def test_sixteen_bit_rgb_png_written_exactly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    arr = (np.arange(2 * 3 * 3).reshape(2, 3, 3) * 3001).astype(np.uint16)
    path = tmp_path / "c16.png"
    save_image(path, arr)
    raw = path.read_bytes()
    assert raw[24] == 16  # IHDR bit depth
    start = raw.index(b"IDAT")
    length = struct.unpack(">I", raw[start - 4 : start])[0]
    rows = np.frombuffer(zlib.decompress(raw[start + 4 : start + 4 + length]), np.uint8).reshape(2, -1)
    assert np.all(rows[:, 0] == 0)
    np.testing.assert_array_equal(rows[:, 1:].copy().view(">u2").reshape(arr.shape), arr)
    with caplog.at_level(logging.WARNING, logger="mambaesr_edge.images"):
        data, info = load_image_any(path)  # Pillow only decodes 8 bits of it
    assert info.bit_depth == 8 and data.shape == arr.shape
    assert "8 bits" in caplog.text


# ----------------------------------------------------------------------------- load errors


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageError, match="notes.png") as info:
        load_image(path)
    assert info.value.hint


def test_truncated_png(tmp_path: Path) -> None:
    path = _save_png(tmp_path / "cut.png", _rgb(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageError, match="cut.png"):
        load_image(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="nothere.png"):
        load_image(tmp_path / "nothere.png")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save_png(tmp_path / "big.png", _rgb(20, 20))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400 px > 2 * 100: Pillow raises
    with pytest.raises(ImageError, match="big.png"):
        load_image(path)


def test_float_tiff_rejected(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageError, match="f.tif"):
        load_image(tmp_path / "f.tif")


# ----------------------------------------------------------------------------- saving


def test_save_rejects_bad_arrays_and_formats(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="float"):
        save_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ImageError, match="shape"):
        save_image(tmp_path / "a.png", np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageError, match="format"):
        save_image(tmp_path / "a.xyz", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ImageError, match="PNG"):
        save_image(tmp_path / "a.jpg", np.zeros((4, 4, 3), np.uint16))
    with pytest.raises(ImageError, match="a.jpg"):
        save_image(tmp_path / "a.jpg", np.zeros((4, 4, 4), np.uint8))  # JPEG has no alpha
    with pytest.raises(ImageError):
        save_image(tmp_path / "missing_dir" / "a.png", np.zeros((4, 4, 3), np.uint8))
    assert os.listdir(tmp_path) == []


def test_failed_save_keeps_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _save_png(tmp_path / "out.png", _rgb())
    before = target.read_bytes()

    def broken_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        Path(str(fp)).write_bytes(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(ImageError, match="disk full"):
        save_image(target, _rgb(seed=5))
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.png"]


def test_save_replaces_and_keeps_permissions(tmp_path: Path) -> None:
    target = _save_png(tmp_path / "out.png", _rgb())
    if os.name == "posix":
        target.chmod(0o640)
    save_image(target, _rgb(seed=9))
    np.testing.assert_array_equal(load_image(target), _rgb(seed=9))
    if os.name == "posix":
        assert target.stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["out.png"]


def test_atomic_write_directly(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".json" and tmp != target
        tmp.write_text('{"ok": true}')
    assert target.read_text() == '{"ok": true}'
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == '{"ok": true}'
    assert os.listdir(tmp_path) == ["report.json"]
