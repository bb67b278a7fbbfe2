"""Scan orders as token permutations.

Tokens are stored in raster order (row by row). An order is a permutation `perm` of length H*W: the sequence the
mixer scans is `tokens[perm]`, and its output goes back with the inverse permutation. Every order, its reversal
(suffix "_rev") and any combination are the same mechanism; for fixed H, W the permutation is a constant, so the
export is a static Gather (and the plain raster order needs none at all).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .errors import ConfigError


def _raster(height: int, width: int) -> torch.Tensor:
    return torch.arange(height * width)


def _column(height: int, width: int) -> torch.Tensor:
    return torch.arange(height * width).view(height, width).t().reshape(-1)


def _diagonal(height: int, width: int) -> torch.Tensor:
    """Anti-diagonals from the top-left corner, each walked from its top row down."""
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    key = (rows + cols) * height + rows  # unique; sorts by diagonal, then by row
    return torch.argsort(key)


def _spiral(height: int, width: int) -> torch.Tensor:
    """Clockwise from the top-left corner, ring by ring towards the centre."""
    grid = torch.arange(height * width).view(height, width)
    out: list[torch.Tensor] = []
    while grid.numel() > 0:
        out.append(grid[0])  # top row, left to right
        grid = grid[1:].t().flip(0)  # rotate the rest counter-clockwise: its right column becomes the top row
    return torch.cat(out)


_BASE = {"raster": _raster, "column": _column, "diagonal": _diagonal, "spiral": _spiral}


@lru_cache(maxsize=256)
def order_permutation(order: str, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(perm, inverse) index tensors (CPU, int64) for a named order on an H x W grid."""
    base = order.removesuffix("_rev")
    if base not in _BASE:
        raise ConfigError(f"unknown scan order {order!r}", hint=f"use one of {', '.join(_BASE)}, optionally with '_rev'")
    perm = _BASE[base](height, width)
    if order.endswith("_rev"):
        perm = perm.flip(0)
    return perm, torch.argsort(perm)
