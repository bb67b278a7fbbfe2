"""Image-quality metrics and MATLAB-exact bicubic resizing.

Conventions follow BasicSR (``basicsr.metrics``) and MATLAB, which is how published
super-resolution numbers are computed:

* ``rgb_to_y``: BT.601 luma as MATLAB ``rgb2ycbcr`` on [0, 255] data, not rounded.
* ``psnr`` / ``ssim``: border cropped, float64, 255 peak; SSIM with an 11x11 Gaussian
  window (sigma 1.5), 'valid' filtering, C1 = (0.01*255)^2, C2 = (0.03*255)^2.
* ``imresize``: MATLAB ``imresize(..., 'bicubic')``: cubic kernel a = -0.5, kernel
  widened when downscaling (antialiasing), symmetric border padding, weights normalised
  per output pixel, the dimension with the smaller scale resized first (rows on ties).
* ``imresize_uint8``: what MATLAB returns for a uint8 image: each one-dimensional pass
  is rounded (half away from zero) and saturated to uint8, because MATLAB's resize
  kernel returns the input's class after every pass.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ImageError

__all__ = [
    "rgb_to_y",
    "psnr",
    "ssim",
    "imresize",
    "imresize_uint8",
    "bicubic_downscale_uint8",
    "bicubic_upscale_uint8",
]

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 Y of an HxWx3 RGB image with values in [0, 255] (uint8 or float).

    Returns float64 HxW in the [16, 235] studio range, unrounded:
    ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``.
    """
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"rgb_to_y expects an HxWx3 RGB array, got shape {arr.shape}")
    return arr.astype(np.float64) @ _Y_WEIGHTS / 255.0 + 16.0


def _prepare(a: np.ndarray, b: np.ndarray, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes, crop borders, optionally take Y; returns float64 HxWxC arrays."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected HxW or HxWxC images, got shape {a.shape}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    if a.size == 0:
        raise ImageError(
            f"nothing left of a {a.shape[1]}x{a.shape[0]} image after cropping {crop_border} pixels from each border",
            hint="evaluate on larger images",
        )
    if y_channel and a.ndim == 3 and a.shape[2] == 3:
        a, b = rgb_to_y(a), rgb_to_y(b)
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, *, crop_border: int, y_channel: bool = True) -> float:
    """PSNR in dB of two [0, 255] images (HxW or HxWx3), as BasicSR ``calculate_psnr``.

    Returns ``inf`` for identical images.
    """
    x, y = _prepare(a, b, crop_border, y_channel)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)


def _gaussian_window_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian; its outer product is MATLAB's fspecial('gaussian', 11, 1.5)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable 2-D filtering of an HxW float64 image, keeping only the 'valid' region."""
    from scipy.ndimage import correlate1d  # here, not at import: the upscale path (runtime.frames) imports this module

    half = window.size // 2
    out = correlate1d(img, window, axis=0, mode="constant")
    out = correlate1d(out, window, axis=1, mode="constant")
    return out[half:-half, half:-half]


def _ssim_single(x: np.ndarray, y: np.ndarray) -> float:
    c1 = (0.01 * 255.0) ** 2
    c2 = (0.03 * 255.0) ** 2
    w = _gaussian_window_1d()
    mu_x, mu_y = _filter_valid(x, w), _filter_valid(y, w)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    sigma_xx = _filter_valid(x * x, w) - mu_xx
    sigma_yy = _filter_valid(y * y, w) - mu_yy
    sigma_xy = _filter_valid(x * y, w) - mu_xy
    ssim_map = ((2 * mu_xy + c1) * (2 * sigma_xy + c2)) / ((mu_xx + mu_yy + c1) * (sigma_xx + sigma_yy + c2))
    return float(ssim_map.mean())


def ssim(a: np.ndarray, b: np.ndarray, *, crop_border: int, y_channel: bool = True) -> float:
    """SSIM of two [0, 255] images as BasicSR ``calculate_ssim`` / MATLAB ``ssim_index``.

    Multi-channel images (when ``y_channel`` is False) give the mean over channels.
    """
    x, y = _prepare(a, b, crop_border, y_channel)
    if x.shape[0] < 11 or x.shape[1] < 11:
        raise ImageError(
            f"image of {a.shape[1]}x{a.shape[0]} is too small for SSIM: {x.shape[1]}x{x.shape[0]} left after cropping "
            f"{crop_border} border pixels, 11x11 needed",
            hint="evaluate on images at least 11 + 2*scale pixels on each side",
        )
    return float(np.mean([_ssim_single(x[..., c], y[..., c]) for c in range(x.shape[2])]))


# --------------------------------------------------------------------------- resizing


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def _contributions(in_length: int, out_length: int, scale: float, antialiasing: bool) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``contributions``: (weights, 0-based indices), each out_length x taps."""
    kernel_width = 4.0
    shrink = scale < 1 and antialiasing
    if shrink:
        kernel_width /= scale
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)  # output pixel centre in input coordinates (1-based)
    left = np.floor(u - kernel_width / 2.0)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    distance = u[:, None] - indices
    weights = scale * _cubic(distance * scale) if shrink else _cubic(distance)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])  # symmetric padding
    idx = mirror[np.mod(indices.astype(np.int64) - 1, mirror.size)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], idx[:, keep]


def _resize_axis(img: np.ndarray, axis: int, out_length: int, scale: float, antialiasing: bool) -> np.ndarray:
    """Resize float64 ``img`` along one axis, summing taps in order as MATLAB does."""
    weights, idx = _contributions(img.shape[axis], out_length, scale, antialiasing)
    src = np.moveaxis(img, axis, 0)
    bcast = (-1,) + (1,) * (src.ndim - 1)
    out = np.zeros((out_length,) + src.shape[1:], dtype=np.float64)
    for t in range(weights.shape[1]):
        out += weights[:, t].reshape(bcast) * src[idx[:, t]]
    return np.moveaxis(out, 0, axis)


def _plan(
    shape: tuple[int, ...], scale: float | None, output_shape: tuple[int, int] | None
) -> tuple[tuple[float, float], tuple[int, int]]:
    """Per-axis scales and output sizes, as MATLAB derives them from one of the two."""
    if (scale is None) == (output_shape is None):
        raise ValueError("give exactly one of scale and output_shape")
    h, w = shape[0], shape[1]
    if h < 1 or w < 1:
        raise ValueError(f"cannot resize an empty image of shape {shape}")
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        # ceil with a tiny guard so that e.g. 300 * (1/3) does not round up to 101
        size = tuple(max(1, math.ceil(n * scale - 1e-9)) for n in (h, w))
        return (float(scale), float(scale)), (size[0], size[1])
    assert output_shape is not None
    oh, ow = int(output_shape[0]), int(output_shape[1])
    if oh < 1 or ow < 1:
        raise ValueError(f"output_shape must be positive, got {output_shape}")
    return (oh / h, ow / w), (oh, ow)


def _round_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB double -> uint8: round half away from zero, saturate to [0, 255]."""
    return np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), 0, 255).astype(np.uint8)


def _resize(
    img: np.ndarray,
    scale: float | None,
    output_shape: tuple[int, int] | None,
    antialiasing: bool,
    to_uint8: bool,
) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC image, got shape {arr.shape}")
    scales, sizes = _plan(arr.shape, scale, output_shape)
    order = (0, 1) if scales[0] <= scales[1] else (1, 0)  # MATLAB: smaller scale first
    out = arr.astype(np.float64)
    for axis in order:
        out = _resize_axis(out, axis, sizes[axis], scales[axis], antialiasing)
        if to_uint8:
            out = _round_uint8(out).astype(np.float64)
    return out.astype(np.uint8) if to_uint8 else out


def imresize(
    img: np.ndarray,
    scale: float | None = None,
    *,
    output_shape: tuple[int, int] | None = None,
    antialiasing: bool = True,
) -> np.ndarray:
    """MATLAB ``imresize(img, scale_or_size, 'bicubic')`` computed in float64 (no rounding).

    ``img`` is HxW or HxWxC of any numeric dtype; give exactly one of ``scale`` (output
    size ``ceil(scale * size)``) or ``output_shape`` ``(H, W)``. Returns float64.
    """
    return _resize(img, scale, output_shape, antialiasing, to_uint8=False)


def imresize_uint8(
    img: np.ndarray,
    scale: float | None = None,
    *,
    output_shape: tuple[int, int] | None = None,
    antialiasing: bool = True,
) -> np.ndarray:
    """MATLAB ``imresize`` on a uint8 image: uint8 result, each pass rounded and saturated."""
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise ValueError(f"imresize_uint8 expects a uint8 image, got {arr.dtype}")
    return _resize(arr, scale, output_shape, antialiasing, to_uint8=True)


def bicubic_downscale_uint8(hr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(hr, 1/scale, 'bicubic')`` on uint8 ``hr`` (HxW[xC]).

    ``hr`` must already be cropped to a multiple of ``scale`` (``hr[:h - h % s, :w - w % s]``);
    this reproduces the standard ``LR_bicubic/X<scale>`` benchmark files bit-exactly.
    """
    h, w = np.asarray(hr).shape[:2]
    if scale < 1 or h % scale or w % scale or h == 0 or w == 0:
        raise ValueError(f"image of {h}x{w} is not a non-empty multiple of scale {scale}")
    return imresize_uint8(hr, output_shape=(h // scale, w // scale))


def bicubic_upscale_uint8(lr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(lr, scale, 'bicubic')`` on uint8 ``lr``: the bicubic SR baseline."""
    h, w = np.asarray(lr).shape[:2]
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    return imresize_uint8(lr, output_shape=(h * scale, w * scale))
