"""Metrics and MATLAB-exact bicubic resizing: hand-checked values, invariants, benchmark data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from mambaesr_edge.errors import ImageError
from mambaesr_edge.images import load_image
from mambaesr_edge.metrics import (
    bicubic_downscale_uint8,
    bicubic_upscale_uint8,
    imresize,
    imresize_uint8,
    psnr,
    rgb_to_y,
    ssim,
)

SET5 = ["baby", "bird", "butterfly", "head", "woman"]


def _crop(img: np.ndarray, s: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % s, : w - w % s]


# ----------------------------------------------------------------------------- rgb_to_y


def test_rgb_to_y_hand_computed() -> None:
    pixels = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [10, 20, 30]]], dtype=np.uint8)
    y = rgb_to_y(pixels)
    expected = [16.0, 235.0, 16.0 + 65.481, 16.0 + (65.481 * 10 + 128.553 * 20 + 24.966 * 30) / 255.0]
    assert y.dtype == np.float64
    assert y.shape == (1, 4)
    np.testing.assert_allclose(y[0], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rgb_to_y(pixels.astype(np.float32)), y, atol=1e-12)


def test_rgb_to_y_rejects_non_rgb() -> None:
    with pytest.raises(ValueError):
        rgb_to_y(np.zeros((4, 4), np.uint8))


# ----------------------------------------------------------------------------- psnr / ssim


def test_psnr_identical_is_inf() -> None:
    img = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    assert psnr(img, img, crop_border=4) == math.inf


def test_psnr_hand_computed() -> None:
    a = np.zeros((8, 8, 3), np.uint8)
    b = np.full((8, 8, 3), 10, np.uint8)
    assert psnr(a, b, crop_border=0, y_channel=False) == pytest.approx(10 * math.log10(255**2 / 100))
    # on Y a gray step of 10 becomes 10 * 219 / 255
    assert psnr(a, b, crop_border=0) == pytest.approx(10 * math.log10(255**2 / (10 * 219 / 255) ** 2))
    assert psnr(a[..., 0], b[..., 0], crop_border=1) == pytest.approx(10 * math.log10(255**2 / 100))


def test_psnr_crop_border_ignores_border() -> None:
    a = np.full((16, 16, 3), 100, np.uint8)
    b = a.copy()
    b[:2] = 0
    b[:, -2:] = 0
    assert psnr(a, b, crop_border=2) == math.inf
    assert psnr(a, b, crop_border=1) < 20


def test_metrics_reject_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        psnr(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8), crop_border=0)
    with pytest.raises(ImageError, match="too small for SSIM"):
        ssim(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), crop_border=0)  # smaller than 11x11


def test_ssim_identical_is_one() -> None:
    img = np.random.default_rng(1).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    assert ssim(img, img, crop_border=4) == pytest.approx(1.0, abs=1e-12)
    assert ssim(img, img, crop_border=0, y_channel=False) == pytest.approx(1.0, abs=1e-12)


def _ssim_brute_force(x: np.ndarray, y: np.ndarray) -> float:
    """Direct 2-D 'valid' windows with the 11x11 Gaussian, as MATLAB's ssim_index."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()

    def filt(img: np.ndarray) -> np.ndarray:
        return np.einsum("ijkl,kl->ij", sliding_window_view(img, (11, 11)), win)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    return float(np.mean(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))))


def test_ssim_matches_brute_force_and_channel_mean() -> None:
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (30, 26, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    ya, yb = rgb_to_y(a[3:-3, 3:-3]), rgb_to_y(b[3:-3, 3:-3])
    assert ssim(a, b, crop_border=3) == pytest.approx(_ssim_brute_force(ya, yb), abs=1e-10)
    per_channel = [_ssim_brute_force(a[..., c].astype(float), b[..., c].astype(float)) for c in range(3)]
    assert ssim(a, b, crop_border=0, y_channel=False) == pytest.approx(np.mean(per_channel), abs=1e-10)


# ----------------------------------------------------------------------------- imresize


@settings(max_examples=30, deadline=None)
@given(
    h=st.integers(1, 24),
    w=st.integers(1, 24),
    value=st.integers(0, 255),
    scale=st.sampled_from([0.25, 1 / 3, 0.5, 0.77, 1.0, 1.5, 2.0, 4.0]),
)
def test_imresize_constant_stays_constant(h: int, w: int, value: int, scale: float) -> None:
    img = np.full((h, w, 3), value, np.uint8)
    out = imresize(img, scale)
    np.testing.assert_allclose(out, value, atol=1e-9)
    assert out.shape == (math.ceil(h * scale - 1e-9), math.ceil(w * scale - 1e-9), 3)
    assert np.all(imresize_uint8(img, scale) == value)


def test_imresize_shapes_and_arguments() -> None:
    img = np.zeros((10, 7), np.float64)
    assert imresize(img, 0.5).shape == (5, 4)
    assert imresize(img, output_shape=(3, 14)).shape == (3, 14)
    assert imresize(np.zeros((300, 300), np.uint8), 1 / 3).shape == (100, 100)
    with pytest.raises(ValueError):
        imresize(img)
    with pytest.raises(ValueError):
        imresize(img, 2.0, output_shape=(20, 14))
    with pytest.raises(ValueError):
        imresize_uint8(img, 2.0)  # not uint8
    with pytest.raises(ValueError):
        bicubic_downscale_uint8(np.zeros((10, 12, 3), np.uint8), 4)  # not a multiple of 4


def test_imresize_upscale_reproduces_linear_ramp_inside() -> None:
    ramp = np.tile(np.arange(16, dtype=np.float64), (6, 1))  # value = column index
    out = imresize(ramp, output_shape=(6, 32))
    centres = (np.arange(1, 33) - 0.5) / 2.0 + 0.5 - 1  # output centres in 0-based input coordinates
    np.testing.assert_allclose(out[:, 4:-4], np.tile(centres[4:-4], (6, 1)), atol=1e-12)


def test_upscale_uint8_is_rounded_and_clipped() -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    img[::2, ::2] = 255  # strong overshoot
    out = bicubic_upscale_uint8(img, 4)
    assert out.dtype == np.uint8
    assert out.shape == (32, 32, 3)
    assert out.min() == 0 and out.max() == 255


# ----------------------------------------------------------------------------- benchmark data


def _assert_lr_reproduced(dataset: Path, stems: list[str]) -> None:
    for stem in stems:
        hr = _crop(load_image(dataset / "HR" / f"{stem}.png"), 4)
        expected = load_image(dataset / "LR_bicubic" / "X4" / f"{stem}x4.png")
        got = bicubic_downscale_uint8(hr, 4)
        assert got.shape == expected.shape, stem
        mismatches = int(np.count_nonzero(got != expected))
        assert mismatches == 0, f"{stem}: {mismatches} values differ"


@pytest.mark.data
def test_set5_lr_reproduced_bit_exactly(benchmark_dir: Path) -> None:
    _assert_lr_reproduced(benchmark_dir / "Set5", SET5)


@pytest.mark.data
def test_rounding_only_once_would_not_match(benchmark_dir: Path) -> None:
    """Guard: MATLAB rounds to uint8 after *each* 1-D pass; rounding once at the end is off by one in places."""
    hr = _crop(load_image(benchmark_dir / "Set5" / "HR" / "baby.png"), 4)
    expected = load_image(benchmark_dir / "Set5" / "LR_bicubic" / "X4" / "babyx4.png")
    once = np.clip(np.floor(imresize(hr, 0.25) + 0.5), 0, 255).astype(np.uint8)
    assert np.count_nonzero(once != expected) > 1000
    assert np.abs(once.astype(int) - expected).max() == 1


@pytest.mark.data
def test_set14_and_bsd100_lr_reproduced_bit_exactly(benchmark_dir: Path) -> None:
    set14 = sorted(p.stem for p in (benchmark_dir / "Set14" / "HR").glob("*.png"))
    assert len(set14) == 14
    _assert_lr_reproduced(benchmark_dir / "Set14", set14)
    bsd = sorted(p.stem for p in (benchmark_dir / "BSD100" / "HR").glob("*.png"))
    assert len(bsd) == 100
    _assert_lr_reproduced(benchmark_dir / "BSD100", bsd)  # all 100: about a second


@pytest.mark.data
def test_set5_bicubic_baseline_matches_literature(benchmark_dir: Path) -> None:
    psnrs, ssims = [], []
    for stem in SET5:
        hr = _crop(load_image(benchmark_dir / "Set5" / "HR" / f"{stem}.png"), 4)
        lr = load_image(benchmark_dir / "Set5" / "LR_bicubic" / "X4" / f"{stem}x4.png")
        sr = bicubic_upscale_uint8(lr, 4)
        psnrs.append(psnr(sr, hr, crop_border=4))
        ssims.append(ssim(sr, hr, crop_border=4))
    # measured here: 28.429 dB / 0.8111; literature (ESRGAN paper) 28.42 / 0.8104
    assert np.mean(psnrs) == pytest.approx(28.42, abs=0.02)
    assert np.mean(ssims) == pytest.approx(0.8104, abs=0.002)
