"""Benchmark evaluation (BasicSR conventions: Y channel, border = scale) of any ``lr_uint8 -> sr_uint8`` callable.

``evaluate_upscaler`` is the one evaluation loop: the CLI hands it an ``Upscaler`` (torch, ONNX Runtime or TensorRT,
whole image or tiled), training hands it ``super_resolve`` on its model (``evaluate_dataset``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .bundle import Bundle
from .datasets import ImagePair, load_pairs
from .errors import ConfigError
from .metrics import psnr, ssim
from .model import MambaSR
from .runtime.backends import Backend
from .runtime.backends.select import open_planned, plan_for
from .runtime.source import classify


def open_eval_backend(
    model: str | Path | None,
    backend: str | None,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    preset: str | None = None,
    scan_impl: str = "auto",
    param_key: str | None = None,
) -> tuple[Backend, Bundle | None]:
    """The backend ``eval`` measures (the runtime's resolver, ``runtime/source.py``) and the model's bundle, if any.

    One policy of eval's own: weights run in torch, the reference implementation published numbers come from,
    unless ``backend`` says otherwise (``upscale`` would run them in numpy on the CPU; same outputs to 1e-6)."""
    source = classify(model)
    if backend is None and source.is_weights:
        backend = "torch"
    plan = plan_for(source, backend, device=device, precision=precision, preset=preset, scan_impl=scan_impl,
                    param_key=param_key, profile=None)  # fmt: skip
    opened = open_planned(source, plan, preset=preset, scan_impl=scan_impl, param_key=param_key)
    return opened, source.bundle


def super_resolve(model: MambaSR, lr: np.ndarray, *, scan_impl: str | None = None) -> np.ndarray:
    """Upscale one RGB uint8 HxWx3 image as a whole (no tiling); returns uint8 (scale*H)x(scale*W)x3.

    Output is clamped to [0, 1] and rounded as BasicSR's tensor2img does.
    """
    device = next(model.parameters()).device
    x = torch.from_numpy(np.array(lr, copy=True)).to(device).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)
    with torch.inference_mode():
        y = model(x, scan_impl=scan_impl)  # (1, 3, sH, sW)
    y = y[0].clamp(0.0, 1.0).permute(1, 2, 0).mul(255.0).round()  # (sH, sW, 3)
    return y.to(torch.uint8).cpu().numpy()


@dataclass(frozen=True)
class DatasetResult:
    name: str
    psnr: float
    ssim: float
    seconds: float
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)
    psnr_rgb: float | None = None

    @property
    def images(self) -> int:
        return len(self.per_image)

    def to_dict(self) -> dict:
        out = {"psnr": self.psnr, "ssim": self.ssim, "images": self.images, "seconds": self.seconds, "per_image": self.per_image}
        if self.psnr_rgb is not None:
            out["psnr_rgb"] = self.psnr_rgb
        return out


def evaluate_upscaler(
    upscale: Callable[[np.ndarray], np.ndarray],
    dataset_dir: str | Path,
    *,
    scale: int,
    model_scale: int | None = None,
    rgb_psnr: bool = False,
) -> DatasetResult:
    """Y-channel PSNR/SSIM (border = scale) of ``upscale`` (RGB uint8 HxWx3 -> RGB uint8 sHxsWx3) on NAME/HR
    (+ LR_bicubic/X<scale>, else generated). ``model_scale``: the model's factor, checked against ``scale``."""
    if model_scale is not None and model_scale != scale:
        raise ConfigError(
            f"the model upscales x{model_scale} but --scale is {scale}", hint=f"pass --scale {model_scale} or x{scale} weights"
        )
    return evaluate_pairs(upscale, load_pairs(dataset_dir, scale), name=Path(dataset_dir).resolve().name, scale=scale, rgb_psnr=rgb_psnr)


def evaluate_pairs(
    upscale: Callable[[np.ndarray], np.ndarray], pairs: Iterable[ImagePair], *, name: str, scale: int, rgb_psnr: bool = False
) -> DatasetResult:
    """The scoring loop of ``evaluate_upscaler`` on (HR, LR) pairs already in memory (training's validation split)."""
    per_image: dict[str, dict[str, float]] = {}
    start = time.perf_counter()
    for pair in pairs:
        sr = upscale(pair.lr)
        per_image[pair.name] = {"psnr": psnr(sr, pair.hr, crop_border=scale), "ssim": ssim(sr, pair.hr, crop_border=scale)}
        if rgb_psnr:
            per_image[pair.name]["psnr_rgb"] = psnr(sr, pair.hr, crop_border=scale, y_channel=False)
    seconds = time.perf_counter() - start
    return DatasetResult(
        name=name,
        psnr=float(np.mean([v["psnr"] for v in per_image.values()])),
        ssim=float(np.mean([v["ssim"] for v in per_image.values()])),
        seconds=seconds,
        per_image=per_image,
        psnr_rgb=float(np.mean([v["psnr_rgb"] for v in per_image.values()])) if rgb_psnr else None,
    )


def evaluate_dataset(
    model: MambaSR, dataset_dir: str | Path, *, scale: int, scan_impl: str | None = None, rgb_psnr: bool = False
) -> DatasetResult:
    """``evaluate_upscaler`` on a PyTorch model run whole-image (``super_resolve``); used by training."""
    return evaluate_upscaler(
        lambda lr: super_resolve(model, lr, scan_impl=scan_impl), dataset_dir, scale=scale, model_scale=model.scale, rgb_psnr=rgb_psnr
    )
