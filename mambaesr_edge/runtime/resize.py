"""Lanczos resize of an upscaled image, as OpenCV's ``cv2.resize(..., interpolation=cv2.INTER_LANCZOS4)`` does it.

What ``upscale --outscale S`` applies to the network's result when S is not the model's scale (Real-ESRGAN's
``--outscale`` does the same with OpenCV). Numpy only (no torch, no OpenCV).

OpenCV's rule, kept here: output pixel ``d`` samples the source at ``x = (d + 0.5) * src / dst - 0.5``, from the 8
pixels ``floor(x) - 3 .. floor(x) + 4`` (clamped to the edge) weighted by the Lanczos kernel
``sinc(t) * sinc(t / 4)``, normalised to sum 1; the kernel is not widened when shrinking (no anti-aliasing); rows
first, then columns; integers are rounded and clipped to their range. OpenCV computes in fixed point (8-bit) or
float32, so its results differ from these by at most 1 (tests/test_resize.py compares them where OpenCV is installed).
"""

from __future__ import annotations

import numpy as np

__all__ = ["lanczos_resize", "outscale_size"]

_TAPS = 8  # Lanczos with a = 4: taps at -3 .. +4 around floor(x)


def outscale_size(input_hw: tuple[int, int], outscale: float) -> tuple[int, int]:
    """(height, width) of an image of ``input_hw`` upscaled by ``outscale``, truncated as Real-ESRGAN does (at least 1)."""
    return max(1, int(input_hw[0] * outscale)), max(1, int(input_hw[1] * outscale))


def _axis_weights(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights), each (dst, 8): the source pixels and normalised Lanczos-4 weights of every output pixel."""
    x = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    left = np.floor(x)
    frac = x - left
    offsets = np.arange(-3, _TAPS - 3, dtype=np.float64)  # -3 .. 4
    t = frac[:, None] - offsets[None, :]  # distance of each tap from x
    weights = np.sinc(t) * np.sinc(t / 4.0)
    weights[frac < np.finfo(np.float32).eps] = (offsets == 0).astype(np.float64)  # on a pixel: that pixel (as OpenCV)
    weights /= weights.sum(axis=1, keepdims=True)
    indices = np.clip(left[:, None].astype(np.int64) + offsets.astype(np.int64)[None, :], 0, src - 1)
    return indices, weights


def _resize_axis(image: np.ndarray, size: int, axis: int) -> np.ndarray:
    indices, weights = _axis_weights(image.shape[axis], size)
    out = None
    for tap in range(_TAPS):
        taken = np.take(image, indices[:, tap], axis=axis)
        shape = [1] * image.ndim
        shape[axis] = size
        term = taken * weights[:, tap].reshape(shape)
        out = term if out is None else out + term
    return out


def lanczos_resize(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """``image`` (H, W) or (H, W, C), uint8, uint16 or float, resized to ``size_hw`` = (height, width), same dtype."""
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    height, width = size_hw
    if (height, width) == image.shape[:2]:
        return image
    work = image.astype(np.float32)
    if width != image.shape[1]:
        work = _resize_axis(work, width, axis=1)
    if height != image.shape[0]:
        work = _resize_axis(work, height, axis=0)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(np.rint(work), info.min, info.max).astype(image.dtype)
    return work.astype(image.dtype)
