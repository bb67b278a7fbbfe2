"""Image <-> model tensor conversion for the Upscaler (pure functions).

Accepted images (numpy, HWC): uint8, uint16 (16-bit precision kept end to end) or float in [0, 1];
HxW or HxWx1 grayscale (run as RGB, returned as the channel mean, same layout), HxWx3 colour, HxWx4 colour + alpha
(alpha upscaled separately with MATLAB-style bicubic, ``metrics.imresize``). Channel order is "rgb" or "bgr"
(OpenCV): for "bgr" the colour channels are reversed on the way in and out (alpha stays last). Output has the input's
dtype; uint outputs are clamped to [0, 1] and rounded half-to-even, exactly as ``evaluate.super_resolve``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ImageError
from ..metrics import imresize
from .errors import RuntimeConfigError

__all__ = ["CHANNEL_ORDERS", "Prepared", "colour_tensor", "postprocess", "preprocess", "unit_tensor"]

CHANNEL_ORDERS = ("rgb", "bgr")
_PEAK = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


@dataclass(frozen=True)
class Prepared:
    rgb: np.ndarray  # (3, H, W) float32 in [0, 1], RGB
    alpha: np.ndarray | None  # (H, W) float64 in [0, 1]
    layout: str  # "hw", "hw1", "hw3", "hw4"
    dtype: np.dtype


def check_channel_order(channel_order: str) -> str:
    if channel_order not in CHANNEL_ORDERS:
        raise RuntimeConfigError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}", hint="OpenCV frames are 'bgr'")
    return channel_order


def _to_unit(image: np.ndarray) -> np.ndarray:
    if image.dtype in _PEAK:
        return image.astype(np.float32) / np.float32(_PEAK[image.dtype])
    if image.dtype.kind == "f":
        if not np.isfinite(image).all():
            raise ImageError("the image holds NaN or Inf values", hint="pass finite floats in [0, 1]")
        return np.clip(image, 0.0, 1.0).astype(np.float32)
    raise ImageError(f"unsupported image dtype {image.dtype}", hint="pass uint8, uint16 or float in [0, 1]")


def preprocess(image: np.ndarray, channel_order: str = "rgb") -> Prepared:
    """HWC image -> ``Prepared`` (RGB (3, H, W) float32 + alpha)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        layout = "hw"
    elif arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        layout = f"hw{arr.shape[2]}"
    else:
        raise ImageError(f"cannot upscale an array of shape {arr.shape}", hint="pass HxW, HxWx1, HxWx3 or HxWx4")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"cannot upscale an empty image ({arr.shape[0]}x{arr.shape[1]})", hint="pass an image of at least 1x1")
    unit = _to_unit(arr)
    alpha = None
    if layout in ("hw", "hw1"):
        gray = unit.reshape(arr.shape[0], arr.shape[1])
        rgb = np.repeat(gray[None], 3, axis=0)
    else:
        colour = unit[..., :3]
        if check_channel_order(channel_order) == "bgr":
            colour = colour[..., ::-1]
        rgb = np.ascontiguousarray(colour.transpose(2, 0, 1))
        if layout == "hw4":
            alpha = unit[..., 3].astype(np.float64)
    return Prepared(np.ascontiguousarray(rgb, dtype=np.float32), alpha, layout, arr.dtype)


def _from_unit(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype in _PEAK:
        peak = np.float32(_PEAK[dtype])
        return np.rint(np.clip(x, np.float32(0.0), np.float32(1.0)) * peak).astype(dtype)
    return np.clip(x, 0.0, 1.0).astype(dtype)


def _colour(sr: np.ndarray, layout: str, dtype: np.dtype, channel_order: str) -> np.ndarray:
    """(3, s*H, s*W) float -> the image without alpha, in the input's layout ("hw", "hw1" or HWC) and dtype."""
    if layout in ("hw", "hw1"):
        gray = _from_unit(sr.mean(axis=0, dtype=np.float32), dtype)
        return gray if layout == "hw" else gray[..., None]
    colour = sr.transpose(1, 2, 0)
    if channel_order == "bgr":
        colour = colour[..., ::-1]
    return np.ascontiguousarray(_from_unit(colour, dtype))


def _torch_dtype(dtype: np.dtype):
    """The torch dtype of a numpy image dtype, or None for a float type torch lacks (e.g. longdouble)."""
    import torch

    return {np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.uint16, np.dtype(np.float16): torch.float16,
            np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}.get(np.dtype(dtype))


def colour_tensor(sr, layout: str, dtype: np.dtype, channel_order: str):
    """``_colour`` for a (3, s*H, s*W) float32 torch tensor, computed on its device with the same float32 arithmetic:
    the final image as a tensor on that device (its dtype must be one torch has: ``_torch_dtype``)."""
    import torch

    if layout in ("hw", "hw1"):
        unit = (sr[0] + sr[1] + sr[2]) / 3  # (s*H, s*W): numpy's float32 mean over the channels, same order
        unit = unit if layout == "hw" else unit[..., None]  # (s*H, s*W[, 1])
    else:
        unit = sr.permute(1, 2, 0)  # (s*H, s*W, 3)
        unit = unit.flip(-1) if channel_order == "bgr" else unit
    unit = unit.clamp(0.0, 1.0)
    if dtype in _PEAK:
        unit = torch.round(unit * _PEAK[dtype])  # round half to even, as np.rint
    return unit.to(_torch_dtype(dtype)).contiguous()


def _colour_tensor(sr, layout: str, dtype: np.dtype, channel_order: str) -> np.ndarray:
    """``colour_tensor`` copied to the host: only the final image crosses (uint8: a quarter of the float32 bytes)."""
    if _torch_dtype(dtype) is None:  # a float type torch lacks (e.g. longdouble): finish on the host
        return _colour(sr.cpu().numpy(), layout, dtype, channel_order)
    return colour_tensor(sr, layout, dtype, channel_order).cpu().numpy()


def unit_tensor(frame, channel_order: str = "rgb"):
    """``preprocess``'s colour conversion on the device: a (H, W, 3) uint8 torch tensor -> (3, H, W) float32 RGB in
    [0, 1], the same float32 division as ``_to_unit`` (bit-identical)."""
    import torch

    if frame.dtype != torch.uint8 or frame.dim() != 3 or frame.shape[2] != 3:
        raise ImageError(f"expected an HxWx3 uint8 frame, got {tuple(frame.shape)} {frame.dtype}", hint="pass uint8 RGB/BGR frames")
    peak = torch.full((), _PEAK[np.dtype(np.uint8)], dtype=torch.float32, device=frame.device)  # a tensor, not a Python
    unit = frame.to(torch.float32) / peak  # (H, W, 3); a Python scalar would let CUDA multiply by 1/255 (1 ulp off)
    if check_channel_order(channel_order) == "bgr":
        unit = unit.flip(-1)
    return unit.permute(2, 0, 1).contiguous()  # (3, H, W)


def postprocess(sr, prepared: Prepared, scale: int, channel_order: str = "rgb") -> np.ndarray:
    """(3, s*H, s*W) float model output -> image of the input's layout and dtype.

    ``sr`` is a numpy array, or a torch tensor on its device (the torch backend's result, ``infer.upscale``): then
    clamping, rounding, layout and dtype conversion run on that device and one copy of the final image comes back.
    """
    to_image = _colour if isinstance(sr, np.ndarray) else _colour_tensor
    out = to_image(sr, prepared.layout, prepared.dtype, channel_order)
    if prepared.alpha is None:
        return out
    h, w = prepared.alpha.shape
    alpha = imresize(prepared.alpha, output_shape=(h * scale, w * scale))
    return np.ascontiguousarray(np.concatenate([out, _from_unit(alpha.astype(np.float32), prepared.dtype)[..., None]], axis=2))
