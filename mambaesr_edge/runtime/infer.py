"""One image through a backend: tile -> batch -> run -> check -> blend, with out-of-memory retries.

Functions only; everything a call needs comes in as arguments and everything it learns (the settings it ended up
with, the decisions it took) goes out as return values / the ``decisions`` list.

FP16 checks: every batch output is checked for NaN/Inf, and, when running fp16, for an all-black output from a
non-black input (the usual symptom of fp16 overflow in a normalisation). On a bad fp16 batch the batch is re-run on
the ``fallback`` backend (fp32) and a Decision is recorded; without a fallback, or on NaN from fp32, it raises
``NumericalError``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import numpy as np

from ..errors import ImageError
from .adapt import (
    Decision,
    TileSettings,
    free_memory_bytes,
    is_out_of_memory,
    record,
    shrink_after_oom,
)
from .errors import BackendError, NumericalError
from .tiling import TilePlan, blend_tiles, make_batches, pad_image, plan_tiles

__all__ = ["check_output", "check_output_fits", "effective_plan", "run_checked", "upscale_chw"]

log = logging.getLogger(__name__)

BLACK_OUTPUT = 1e-3  # max |output| below this counts as black
BLACK_INPUT = 0.02  # ... when the input's mean is above this


def check_output(batch_in: np.ndarray, batch_out: np.ndarray, precision: str) -> str | None:
    """Why this output is unusable ("nan", "black"), or None."""
    if not np.isfinite(batch_out).all():
        return "nan"
    if precision == "fp16" and float(np.abs(batch_out).max(initial=0.0)) < BLACK_OUTPUT and float(batch_in.mean()) > BLACK_INPUT:
        return "black"
    return None


def run_checked(backend, fallback, batch: np.ndarray, precision: str, decisions: list[Decision] | None) -> np.ndarray:
    """``backend.run(batch)`` plus shape and numerical checks (fp16 -> fp32 fallback on NaN/black)."""
    out = backend.run(batch)
    n, c, h, w = batch.shape
    s = backend.scale
    if out.shape != (n, c, h * s, w * s):
        raise BackendError(
            f"{backend.name} returned shape {out.shape} for input {batch.shape} (expected x{s})",
            hint="the model file does not match its declared scale; re-export it",
        )
    problem = check_output(batch, out, precision)
    if problem is None:
        return out
    if precision == "fp16" and fallback is not None:
        record(decisions, Decision("fp16", "re-ran a batch in fp32", f"fp16 output was {problem}"), logging.WARNING)
        out = fallback.run(batch)
        if check_output(batch, out, "fp32") is None:
            return out
    raise NumericalError(
        f"the {backend.name} backend produced {'NaN/Inf' if problem == 'nan' else 'an all-black image'} ({precision})",
        hint="use --fp32; if it persists the model file is broken (re-export it)",
    )


def effective_plan(image_hw: tuple[int, int], settings: TileSettings, fixed_input_hw: tuple[int, int] | None) -> TilePlan:
    """The tile plan for one image: the fixed input shape, else the settings' tile trimmed to the image."""
    if fixed_input_hw is not None:
        tile = tuple(fixed_input_hw)
    elif settings.tile is None:
        tile = tuple(image_hw)
    else:  # a dynamic backend needs no padding: never make a tile larger than the image
        tile = (min(settings.tile[0], image_hw[0]), min(settings.tile[1], image_hw[1]))
    overlap = min(settings.overlap, min(tile) // 2)
    return plan_tiles(image_hw, tile, overlap)


def _tile_outputs(backend, fallback, padded: np.ndarray, plan: TilePlan, settings: TileSettings, decisions) -> Iterator[tuple[int, np.ndarray]]:
    batch_size = min(settings.batch, backend.max_batch) if backend.max_batch else settings.batch
    for batch in make_batches([(0, padded, plan)], batch_size):
        out = run_checked(backend, fallback, batch.tiles, settings.precision, decisions)
        for ref, tile_out in zip(batch.refs, out):
            yield ref.index, tile_out


def _release_cached_gpu_memory() -> None:
    """After a CUDA OOM, hand torch's cached blocks back so the smaller retry can use them."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_output_fits(image_hw: tuple[int, int], scale: int, free_bytes: int | None) -> None:
    """Refuse an image whose blended output (float32 accumulators + result) cannot fit in host memory."""
    pixels = image_hw[0] * image_hw[1] * scale * scale
    needed = pixels * 36  # (3 + 1) float32 accumulators, the float32 result, the integer image
    if free_bytes is not None and needed > free_bytes:
        raise ImageError(
            f"a {image_hw[1]}x{image_hw[0]} image upscaled x{scale} needs about {needed / 2**30:.1f} GiB of memory, "
            f"{free_bytes / 2**30:.1f} GiB are free",
            hint="downscale or crop the input first, or use a machine with more memory",
        )


def upscale_chw(
    backend,
    image: np.ndarray,
    settings: TileSettings,
    *,
    fallback=None,
    decisions: list[Decision] | None = None,
    frame: int | None = None,
) -> tuple[np.ndarray, TileSettings]:
    """Upscale a float32 (3, H, W) RGB image in [0, 1]; returns ((3, s*H, s*W) unclamped, settings used).

    Out-of-memory errors shrink batch then tile (``adapt.shrink_after_oom``) and retry the whole image.
    """
    image_hw = (int(image.shape[1]), int(image.shape[2]))
    check_output_fits(image_hw, backend.scale, free_memory_bytes("cpu"))
    while True:
        plan = effective_plan(image_hw, settings, backend.input_hw)
        try:
            padded = pad_image(image, plan)
            outputs = _tile_outputs(backend, fallback, padded, plan, settings, decisions)
            result = blend_tiles(plan, outputs, backend.scale, settings.blend, channels=image.shape[0])
            return result, settings
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            _release_cached_gpu_memory()
            settings = shrink_after_oom(settings, image_hw, fixed_input_hw=backend.input_hw, exc=exc, decisions=decisions, frame=frame)
