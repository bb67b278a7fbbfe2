"""Overlapped tiling on a torch device: tiling.py's plan, padding, windows and blend, without host round trips.

The host path (tiling.py) cuts tiles in numpy, and with a torch backend on CUDA every (N, 3, s*th, s*tw) float32
output batch comes back to the host to be blended (~550 MB per 1920x1080 LR frame at x4). Here the image goes to the
device once, tiles are slices of it, each output tile is weighted and summed where it was computed, and the caller
gets the blended (C, s*H, s*W) tensor on the device.

Same result as ``tiling.tiled_apply`` up to float rounding (the tests hold it to 1e-5; on CPU it is bit-identical):
the plan is ``plan_tiles``'s, the padding uses numpy's own reflection index map, the windows are ``axis_windows``
(whose outer product is ``tile_window``), multiplied in float64 and rounded to float32 as there, and tiles are
accumulated one by one in the same row-major order, then divided by the accumulated weights and cropped. The
weights ride along as an extra channel of the one accumulator, so each tile costs a single add (kernel launch).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..errors import ConfigError
from .tiling import TilePlan, axis_windows

__all__ = ["PROBE_BATCH", "PROBE_TILE", "measure_bytes_per_pixel", "pad_tensor", "tiled_apply_tensor"]

PROBE_TILE = 64  # LR side of the tiles of the memory probe
PROBE_BATCH = 4  # tiles per probe call: 16,384 LR pixels, so fixed allocations weigh little but still count


def pad_tensor(image: torch.Tensor, plan: TilePlan) -> torch.Tensor:
    """``tiling.pad_image`` for a (C, H, W) tensor: the same repeated reflection (np.pad's index map, applied on the device)."""
    if tuple(image.shape[-2:]) != plan.image_hw:
        raise ValueError(f"image of shape {tuple(image.shape)} does not match the plan's {plan.image_hw}")
    if not any(plan.pad):
        return image
    top, bottom, left, right = plan.pad
    rows = np.pad(np.arange(plan.image_hw[0]), (top, bottom), mode="reflect")  # (H',) source row of each padded row
    cols = np.pad(np.arange(plan.image_hw[1]), (left, right), mode="reflect")  # (W',) source column
    rows_t = torch.from_numpy(rows).to(image.device)
    cols_t = torch.from_numpy(cols).to(image.device)
    return image.index_select(1, rows_t).index_select(2, cols_t)  # (C, H', W')


def tiled_apply_tensor(
    image: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    plan: TilePlan,
    *,
    scale: int,
    blend: str = "cosine",
    batch_size: int = 1,
) -> torch.Tensor:
    """Apply ``fn`` ((N, C, th, tw) -> (N, C, s*th, s*tw) float32, same device) tile by tile to a (C, H, W) float32
    tensor as ``plan`` says; returns the blended (C, s*H, s*W) float32 tensor on the image's device."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}", hint="use --batch 1")
    device, channels, s = image.device, image.shape[0], scale
    (th, tw), (ph, pw) = plan.tile_hw, plan.padded_hw
    with torch.inference_mode():
        padded = pad_tensor(image, plan)  # (C, H', W')
        if plan.num_tiles == 1 and not any(plan.pad):  # whole image in one tile: no arithmetic, as blend_tiles
            return fn(padded[None])[0]  # (C, s*H, s*W)
        wy, wx = (torch.from_numpy(w).to(device) for w in axis_windows(plan, s, blend))  # (rows, s*th), (cols, s*tw) float64
        index = torch.arange(plan.num_tiles, device=device)  # (T,) row-major tile index
        tile_rows, tile_cols = index // len(plan.xs), index % len(plan.xs)  # (T,), (T,)
        acc = torch.zeros((channels + 1, ph * s, pw * s), dtype=torch.float32, device=device)  # (C+1, s*H', s*W'): sum, weights
        origins = plan.origins
        for start in range(0, plan.num_tiles, batch_size):
            stop = min(start + batch_size, plan.num_tiles)
            tiles = torch.stack([padded[:, y : y + th, x : x + tw] for y, x in origins[start:stop]])  # (n, C, th, tw)
            out = fn(tiles)  # (n, C, s*th, s*tw)
            rows, cols = tile_rows[start:stop], tile_cols[start:stop]  # (n,), (n,)
            windows = (wy[rows][:, :, None] * wx[cols][:, None, :]).float()[:, None]  # (n, 1, s*th, s*tw): tile_window, float32
            weighted = torch.cat([out * windows, windows], dim=1)  # (n, C+1, s*th, s*tw): one add per tile below
            for k, (y, x) in enumerate(origins[start:stop]):
                acc[:, y * s : (y + th) * s, x * s : (x + tw) * s] += weighted[k]  # (C+1, s*th, s*tw)
        top, left = plan.pad[0] * s, plan.pad[2] * s
        h, w = plan.image_hw[0] * s, plan.image_hw[1] * s
        crop = acc[:, top : top + h, left : left + w]  # (C+1, s*H, s*W)
        return crop[:channels] / crop[channels]  # (C, s*H, s*W)


def measure_bytes_per_pixel(run_tensor: Callable[[torch.Tensor], torch.Tensor], device: str) -> float:
    """Peak CUDA memory per LR pixel of one network call (inputs, activations, output), measured by running
    ``run_tensor`` on a (PROBE_BATCH, 3, PROBE_TILE, PROBE_TILE) batch: the peak allocated above what was allocated
    before, divided by the batch's pixels. Activations scale with the pixels, so this is what a larger batch needs
    per pixel (fixed buffers included: an overestimate). It is also the first call, so Triton compiles here."""
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"measure_bytes_per_pixel needs a CUDA device, got {device}")
    x = torch.rand(PROBE_BATCH, 3, PROBE_TILE, PROBE_TILE, generator=torch.Generator().manual_seed(0)).to(dev)  # (n, 3, t, t)
    run_tensor(x)  # warm-up: compiles, cuBLAS/cuDNN workspaces exist before the measured call
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    out = run_tensor(x)  # (n, 3, s*t, s*t)
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - base
    del out
    return max(peak, 1) / float(PROBE_BATCH * PROBE_TILE * PROBE_TILE)
