"""Benchmark folder discovery and HR/LR pair loading (tiny synthetic folders + the shared sets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mambaesr_edge.datasets import ImagePair, find_images, load_pairs
from mambaesr_edge.errors import DatasetError, ImageError
from mambaesr_edge.images import load_image
from mambaesr_edge.metrics import bicubic_downscale_uint8


def _img(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture()
def tiny_set(tmp_path: Path) -> Path:
    """HR: a (13x10, not a multiple of 4), b (grayscale 8x8), c.bmp (16x12); LR file only for a."""
    root = tmp_path / "Tiny"
    (root / "HR").mkdir(parents=True)
    (root / "LR_bicubic" / "X4").mkdir(parents=True)
    a = _img(13, 10, 0)
    Image.fromarray(a).save(root / "HR" / "a.png")
    Image.fromarray(_img(8, 8, 1)[..., 0]).save(root / "HR" / "b.png")
    Image.fromarray(_img(16, 12, 2)).save(root / "HR" / "c.bmp")
    Image.fromarray(bicubic_downscale_uint8(a[:12, :8], 4)).save(root / "LR_bicubic" / "X4" / "ax4.png")
    (root / "HR" / "readme.txt").write_text("ignored")
    return root


def test_find_images(tiny_set: Path) -> None:
    entries = find_images(tiny_set, 4)
    assert [e[0] for e in entries] == ["a", "b", "c"]
    assert entries[0][1] == tiny_set / "HR" / "a.png"
    assert entries[0][2] == tiny_set / "LR_bicubic" / "X4" / "ax4.png"
    assert entries[1][2] is None and entries[2][2] is None
    assert all(lr is None for _, _, lr in find_images(tiny_set, 2))  # no X2 folder


def test_load_pairs_crops_converts_and_generates(tiny_set: Path) -> None:
    pairs = list(load_pairs(tiny_set, 4))
    assert [p.name for p in pairs] == ["a", "b", "c"]
    assert all(isinstance(p, ImagePair) for p in pairs)
    shapes = [(p.hr.shape, p.lr.shape) for p in pairs]
    assert shapes == [((12, 8, 3), (3, 2, 3)), ((8, 8, 3), (2, 2, 3)), ((16, 12, 3), (4, 3, 3))]
    assert all(p.hr.dtype == np.uint8 and p.lr.dtype == np.uint8 for p in pairs)
    np.testing.assert_array_equal(pairs[0].lr, load_image(tiny_set / "LR_bicubic" / "X4" / "ax4.png"))
    np.testing.assert_array_equal(pairs[2].lr, bicubic_downscale_uint8(pairs[2].hr, 4))
    assert np.array_equal(pairs[1].hr[..., 0], pairs[1].hr[..., 2])  # grayscale became RGB


def test_lr_shape_mismatch(tiny_set: Path) -> None:
    Image.fromarray(_img(5, 5, 3)).save(tiny_set / "LR_bicubic" / "X4" / "cx4.png")
    pairs = load_pairs(tiny_set, 4)
    next(pairs)
    next(pairs)
    with pytest.raises(DatasetError, match=r"\(5, 5, 3\).*\(4, 3, 3\)"):
        next(pairs)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_pairs(tmp_path / "nope", 4)  # raised at call time, not on first next()
    (tmp_path / "Empty").mkdir()
    with pytest.raises(DatasetError) as info:
        find_images(tmp_path / "Empty", 4)
    assert "HR/*.png" in info.value.hint
    (tmp_path / "Empty" / "HR").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        find_images(tmp_path / "Empty", 4)
    with pytest.raises(DatasetError, match="scale"):
        find_images(tmp_path / "Empty", 0)


def test_duplicate_stems(tmp_path: Path) -> None:
    (tmp_path / "D" / "HR").mkdir(parents=True)
    Image.fromarray(_img(8, 8, 0)).save(tmp_path / "D" / "HR" / "x.png")
    Image.fromarray(_img(8, 8, 0)).save(tmp_path / "D" / "HR" / "x.bmp")
    with pytest.raises(DatasetError, match="x"):
        find_images(tmp_path / "D", 4)


def test_image_smaller_than_scale(tmp_path: Path) -> None:
    (tmp_path / "S" / "HR").mkdir(parents=True)
    Image.fromarray(_img(3, 9, 0)).save(tmp_path / "S" / "HR" / "small.png")
    with pytest.raises(DatasetError, match="small.png") as info:
        list(load_pairs(tmp_path / "S", 4))
    assert "at least 4x4" in info.value.hint


def test_corrupt_hr_image(tmp_path: Path) -> None:
    (tmp_path / "C" / "HR").mkdir(parents=True)
    (tmp_path / "C" / "HR" / "bad.png").write_text("not a png")
    with pytest.raises(ImageError, match="bad.png"):
        list(load_pairs(tmp_path / "C", 4))


@pytest.mark.data
def test_shared_set5_and_set14(benchmark_dir: Path) -> None:
    set5 = list(load_pairs(benchmark_dir / "Set5", 4))
    assert [p.name for p in set5] == ["baby", "bird", "butterfly", "head", "woman"]
    woman = set5[-1]
    assert woman.hr.shape == (344, 228, 3) and woman.lr.shape == (86, 57, 3)
    for pair in set5:
        np.testing.assert_array_equal(pair.lr, bicubic_downscale_uint8(pair.hr, 4))
    bridge = next(p for p in load_pairs(benchmark_dir / "Set14", 4) if p.name == "bridge")  # mode L on disk
    assert bridge.hr.shape == (512, 512, 3) and bridge.lr.shape == (128, 128, 3)
