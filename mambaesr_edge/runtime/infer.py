"""One image through a backend: tile -> batch -> run -> check -> blend, with out-of-memory retries.

Where: a backend with ``info.tensor_io`` (the torch backend, CPU or CUDA: ``run_tensor``) gets the image on its device once and
everything else happens there (``device_tiling.tiled_apply_tensor``): ``upscale`` returns that device tensor, so
the caller can convert it there too (``frames.postprocess``). Other backends (ONNX Runtime, TensorRT) take numpy
batches: tiles are cut and blended on the host (``tiling``). Both paths use the same plan, windows and checks.

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
from .backends.base import Backend
from .errors import BackendError, NumericalError
from .tiling import TilePlan, blend_tiles, make_batches, pad_image, plan_tiles

__all__ = [
    "check_output",
    "check_output_fits",
    "check_output_tensor",
    "effective_plan",
    "on_device",
    "run_checked",
    "upscale",
    "upscale_chw",
]

log = logging.getLogger(__name__)

BLACK_OUTPUT = 1e-3  # max |output| below this counts as black
BLACK_INPUT = 0.02  # ... when the input's mean is above this
REDUCED = ("fp16", "bf16")  # precisions checked for black output and re-run on the fp32 fallback


def check_output(batch_in: np.ndarray, batch_out: np.ndarray, precision: str) -> str | None:
    """Why this output is unusable ("nan", "black"), or None."""
    if not np.isfinite(batch_out).all():
        return "nan"
    if precision in REDUCED and float(np.abs(batch_out).max(initial=0.0)) < BLACK_OUTPUT and float(batch_in.mean()) > BLACK_INPUT:
        return "black"
    return None


def check_output_tensor(batch_in, batch_out, precision: str) -> str | None:
    """``check_output`` for torch tensors, computed on their device (one sync for fp32)."""
    import torch

    if not bool(torch.isfinite(batch_out).all()):
        return "nan"
    if precision in REDUCED and float(batch_out.abs().max()) < BLACK_OUTPUT and float(batch_in.mean()) > BLACK_INPUT:
        return "black"
    return None


def on_device(backend: Backend) -> bool:
    """Whether ``backend`` runs torch tensors on its own device (``info.tensor_io``): the device-tiled path."""
    return backend.info.tensor_io


def _run(backend: Backend, batch):
    """``backend.run`` for a numpy batch; ``backend.run_tensor`` for a tensor (host round trip for a numpy-only fallback)."""
    if isinstance(batch, np.ndarray):
        return backend.run(batch)
    if on_device(backend):
        return backend.run_tensor(batch)
    import torch

    return torch.from_numpy(backend.run(batch.cpu().numpy())).to(batch.device)


def run_checked(backend: Backend, fallback: Backend | None, batch, precision: str, decisions: list[Decision] | None):
    """``backend.run(batch)`` plus shape and numerical checks (fp16 -> fp32 fallback on NaN/black).

    ``batch``: float32 (N, 3, h, w) numpy, or a torch tensor on the backend's device (run with ``run_tensor`` and
    checked there); the output is of the same kind.
    """
    check = check_output if isinstance(batch, np.ndarray) else check_output_tensor
    out = _run(backend, batch)
    n, c, h, w = batch.shape
    s = backend.info.scale
    if tuple(out.shape) != (n, c, h * s, w * s):
        raise BackendError(
            f"{backend.info.name} returned shape {tuple(out.shape)} for input {tuple(batch.shape)} (expected x{s})",
            hint="the model file does not match its declared scale; re-export it",
        )
    problem = check(batch, out, precision)
    if problem is None:
        return out
    if precision in REDUCED and fallback is not None:
        record(decisions, Decision("fp16", "re-ran a batch in fp32", f"{precision} output was {problem}"), logging.WARNING)
        out = _run(fallback, batch)
        if check(batch, out, "fp32") is None:
            return out
    raise NumericalError(
        f"the {backend.info.name} backend produced {'NaN/Inf' if problem == 'nan' else 'an all-black image'} ({precision})",
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


def _batch_size(backend: Backend, settings: TileSettings) -> int:
    limit = backend.info.max_batch
    return min(settings.batch, limit) if limit else settings.batch


def _tile_outputs(
    backend: Backend, fallback: Backend | None, padded: np.ndarray, plan: TilePlan, settings: TileSettings, decisions
) -> Iterator[tuple[int, np.ndarray]]:
    for batch in make_batches([(0, padded, plan)], _batch_size(backend, settings)):
        out = run_checked(backend, fallback, batch.tiles, settings.precision, decisions)
        for ref, tile_out in zip(batch.refs, out, strict=True):
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


def upscale(
    backend: Backend,
    image: np.ndarray,
    settings: TileSettings,
    *,
    fallback: Backend | None = None,
    decisions: list[Decision] | None = None,
    frame: int | None = None,
):
    """Upscale a float32 (3, H, W) RGB image in [0, 1]; returns ((3, s*H, s*W) float32 unclamped, settings used).

    ``image``: numpy, or for a ``tensor_io`` backend a float32 tensor already on its device.

    The result is a torch tensor on the backend's device for a ``tensor_io`` backend (tiled and blended there,
    ``on_device``), else a numpy array (tiled and blended on the host). Out-of-memory errors shrink batch then tile
    (``adapt.shrink_after_oom``) and retry the whole image.
    """
    image_hw = (int(image.shape[1]), int(image.shape[2]))
    info = backend.info
    check_output_fits(image_hw, info.scale, free_memory_bytes("cpu"))
    if on_device(backend):
        import torch

        from .device_tiling import tiled_apply_tensor

        if isinstance(image, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(info.device)  # (3, H, W)
        else:  # already on the device (the CUDA stream pipeline converted the uint8 frame there)
            x = image  # (3, H, W) float32

        def attempt(plan: TilePlan, settings: TileSettings):
            def run(tiles):  # (n, 3, th, tw) on the device -> (n, 3, s*th, s*tw) there, checked
                return run_checked(backend, fallback, tiles, settings.precision, decisions)

            return tiled_apply_tensor(x, run, plan, scale=info.scale, blend=settings.blend, batch_size=_batch_size(backend, settings))
    else:
        if not isinstance(image, np.ndarray):
            raise TypeError(f"the {info.name} backend takes numpy images, got {type(image).__name__}")

        def attempt(plan: TilePlan, settings: TileSettings):
            outputs = _tile_outputs(backend, fallback, pad_image(image, plan), plan, settings, decisions)
            return blend_tiles(plan, outputs, info.scale, settings.blend, channels=image.shape[0])

    while True:
        try:
            return attempt(effective_plan(image_hw, settings, info.input_hw), settings), settings
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            settings = shrink_after_oom(settings, image_hw, fixed_input_hw=info.input_hw, exc=exc, decisions=decisions, frame=frame)
        _release_cached_gpu_memory()  # outside the except block: the failed attempt's tensors are garbage by now


def upscale_chw(
    backend: Backend,
    image: np.ndarray,
    settings: TileSettings,
    *,
    fallback: Backend | None = None,
    decisions: list[Decision] | None = None,
    frame: int | None = None,
) -> tuple[np.ndarray, TileSettings]:
    """``upscale`` with the result always a host numpy array ((3, s*H, s*W) float32, unclamped)."""
    out, used = upscale(backend, image, settings, fallback=fallback, decisions=decisions, frame=frame)
    return (out if isinstance(out, np.ndarray) else out.cpu().numpy()), used
