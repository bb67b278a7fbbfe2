"""Overlapped fixed-size tiling as pure functions (numpy only, no torch).

Layout: images are float32 CHW arrays (C, H, W); tiles are stacked as (N, C, th, tw) batches, as backends take them.

Plan (``plan_tiles``): every tile has exactly the shape ``tile_hw`` (the engine's input shape). Along an axis of
length n and tile t:

* n <= t: the image is padded to t by reflection (repeated reflection, so 1 pixel or 2 pixels padded to 64 work:
  numpy's ``reflect`` mode repeats the mirror as often as needed, and a 1-pixel axis is repeated) and one tile covers it.
  The padding is split evenly before/after so the image sits in the middle of the tile's context.
* n > t: k = ceil((n - t) / (t - overlap)) + 1 tiles, their origins spread evenly over [0, n - t]; no padding. Every
  neighbouring pair overlaps by at least ``overlap`` pixels (more when the image does not divide evenly), and the
  last tile ends exactly at the border (no wasted padded pixels, and tiles at the border see the same zero-padded
  convolutions as a whole-image run).

Blend (``blend_tiles``): each upscaled tile is weighted by a separable window (``tile_window``) that is 1 inside and,
over the *actual* overlap with each neighbour, forms with the neighbour's window a partition of unity; image borders
get no ramp, so a pixel covered by one tile always has weight 1. The weighted sum is divided by the weight sum (> 0
everywhere, checked), so the weights sum to exactly 1 at every pixel whatever the overlaps. Blends:

* ``"cosine"`` (default): raised-cosine (Hann) ramp sin^2 across the whole overlap, > 0 on every tile pixel.
* ``"cosine-inner"``: the outer quarter of the requested overlap on each side gets weight 0 (the tile pixels that see
  the least context), the ramp spans the middle half (chaiNNer's "ramp over the inner half"). Exact for a
  translation-invariant model whose receptive-field radius r satisfies overlap // 4 >= r (tested with a fixed conv).
* ``"crop"``: hard switch at the overlap's centre (Real-ESRGAN's pasted core, but with fixed-size tiles).
* ``"uniform"``: weight 1 everywhere, i.e. plain averaging (SwinIR/BasicSR).
benchmarks/runtime_tiling.py compares them on the real model (DVMSR, Set14, tile 64): with overlap >= 8, "cosine",
"cosine-inner" and "crop" are within 0.01 dB of the whole image and leave no measurable seam; "uniform" leaves a
~32% seam excess at any overlap. "cosine" is the default: marginally the closest to the whole image at every overlap.

Batches (``make_batches``): tiles of several images can share a batch; each tile carries a ``TileRef`` (image id,
tile index) so outputs go back to the image they came from and never get mixed up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import ConfigError

__all__ = [
    "BLENDS",
    "TileBatch",
    "TilePlan",
    "TileRef",
    "axis_origins",
    "axis_windows",
    "blend_tiles",
    "extract_tile",
    "group_outputs",
    "make_batches",
    "pad_image",
    "plan_tiles",
    "tile_window",
    "tiled_apply",
]

BLENDS = ("cosine", "cosine-inner", "uniform", "crop")


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one image go. All coordinates in LR pixels of the padded image."""

    image_hw: tuple[int, int]  # (H, W) of the image
    tile_hw: tuple[int, int]  # (th, tw): every tile has exactly this shape
    overlap: int  # requested minimum overlap between neighbours
    pad: tuple[int, int, int, int]  # (top, bottom, left, right) reflection padding
    ys: tuple[int, ...]  # tile origins along H (padded coordinates)
    xs: tuple[int, ...]  # tile origins along W

    @property
    def padded_hw(self) -> tuple[int, int]:
        return self.image_hw[0] + self.pad[0] + self.pad[1], self.image_hw[1] + self.pad[2] + self.pad[3]

    @property
    def origins(self) -> tuple[tuple[int, int], ...]:
        """(y, x) of each tile, row-major; a tile's index is its position in this tuple."""
        return tuple((y, x) for y in self.ys for x in self.xs)

    @property
    def num_tiles(self) -> int:
        return len(self.ys) * len(self.xs)


@dataclass(frozen=True)
class TileRef:
    """Which image and which tile of its plan a batch entry is."""

    image_id: int
    index: int


@dataclass(frozen=True)
class TileBatch:
    tiles: np.ndarray  # (N, C, th, tw) float32
    refs: tuple[TileRef, ...]  # one per tile, same order


def axis_origins(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Tile origins along one axis of ``length`` >= ``tile``: evenly spread, first 0, last ``length - tile``."""
    if length <= tile:
        return (0,)
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    span = length - tile
    return tuple(int(round(i * span / (count - 1))) for i in range(count))


def _check_plan_args(image_hw: tuple[int, int], tile_hw: tuple[int, int], overlap: int) -> None:
    if min(image_hw) < 1:
        raise ConfigError(f"cannot tile an empty image of size {image_hw[0]}x{image_hw[1]}", hint="pass a non-empty image")
    if min(tile_hw) < 1:
        raise ConfigError(f"tile size must be >= 1, got {tile_hw}", hint="use --tile 64 (or 0 for the whole image)")
    if overlap < 0 or 2 * overlap > min(tile_hw):
        raise ConfigError(
            f"tile overlap must be in [0, tile size / 2], got {overlap} for tiles of {tile_hw[0]}x{tile_hw[1]}",
            hint="use an overlap of about a quarter of the tile, e.g. --tile 64 --tile-overlap 16",
        )


def plan_tiles(image_hw: tuple[int, int], tile_hw: tuple[int, int] | int, overlap: int) -> TilePlan:
    """Plan fixed-size tiles with at least ``overlap`` pixels between neighbours (see the module docstring)."""
    tile = (tile_hw, tile_hw) if isinstance(tile_hw, int) else (int(tile_hw[0]), int(tile_hw[1]))
    hw = (int(image_hw[0]), int(image_hw[1]))
    _check_plan_args(hw, tile, overlap)
    pads = []
    for n, t in zip(hw, tile, strict=True):
        total = max(0, t - n)
        pads += [total // 2, total - total // 2]
    padded = (hw[0] + pads[0] + pads[1], hw[1] + pads[2] + pads[3])
    return TilePlan(
        image_hw=hw,
        tile_hw=tile,
        overlap=int(overlap),
        pad=(pads[0], pads[1], pads[2], pads[3]),
        ys=axis_origins(padded[0], tile[0], overlap),
        xs=axis_origins(padded[1], tile[1], overlap),
    )


def pad_image(image: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Reflection-pad a (C, H, W) image as the plan says (repeated mirror for pads >= the size; 1 px is repeated)."""
    if image.shape[-2:] != plan.image_hw:
        raise ValueError(f"image of shape {image.shape} does not match the plan's {plan.image_hw}")
    top, bottom, left, right = plan.pad
    if not any(plan.pad):
        return image
    return np.pad(image, ((0, 0), (top, bottom), (left, right)), mode="reflect")


def extract_tile(padded: np.ndarray, plan: TilePlan, index: int) -> np.ndarray:
    """Tile ``index`` (row-major) of a padded (C, H', W') image: a (C, th, tw) view."""
    y, x = plan.origins[index]
    th, tw = plan.tile_hw
    return padded[:, y : y + th, x : x + tw]


def make_batches(
    items: Iterable[tuple[int, np.ndarray, TilePlan]], batch_size: int
) -> Iterator[TileBatch]:
    """Tiles of (image_id, padded image, plan) items, in order, packed into batches of at most ``batch_size``.

    Tiles of consecutive images share a batch; each tile's ``TileRef`` names its image and index.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}", hint="use --batch 1")
    tiles: list[np.ndarray] = []
    refs: list[TileRef] = []
    for image_id, padded, plan in items:
        for index in range(plan.num_tiles):
            tiles.append(extract_tile(padded, plan, index))
            refs.append(TileRef(image_id, index))
            if len(tiles) == batch_size:
                yield TileBatch(np.stack(tiles).astype(np.float32, copy=False), tuple(refs))
                tiles, refs = [], []
    if tiles:
        yield TileBatch(np.stack(tiles).astype(np.float32, copy=False), tuple(refs))


@dataclass(frozen=True)
class _Seam:
    """Blend across one overlap of ``width`` HR px: the later tile's weight is 0 before ``start``, ramps up over
    ``ramp`` px, then is 1; the earlier tile's weight is the complement (so the pair sums to 1)."""

    width: int
    start: int
    ramp: int


def _seam(overlap_lr: int, requested_lr: int, scale: int, blend: str) -> _Seam | None:
    if overlap_lr <= 0 or blend == "uniform":
        return None
    width = overlap_lr * scale
    if blend == "crop":
        return _Seam(width, width // 2, 0)
    margin_lr = requested_lr // 4 if blend == "cosine-inner" else 0  # "cosine-inner": ramp over the middle half
    margin = min(margin_lr * scale, width // 2)
    return _Seam(width, margin, width - 2 * margin)


def _rising(seam: _Seam) -> np.ndarray:
    """Weight of the later tile over the overlap: 0, raised-cosine ramp (sin^2, in (0, 1)), 1."""
    j = np.arange(seam.width, dtype=np.float64)
    if seam.ramp == 0:
        return (j >= seam.start).astype(np.float64)
    ramp = np.sin(0.5 * np.pi * (j - seam.start + 0.5) / seam.ramp) ** 2
    return np.where(j < seam.start, 0.0, np.where(j >= seam.start + seam.ramp, 1.0, ramp))


@lru_cache(maxsize=256)
def _axis_window(length: int, before: _Seam | None, after: _Seam | None) -> np.ndarray:
    """1-D window of ``length`` HR px: 1 inside, rising over the overlap ``before``, falling over ``after``."""
    window = np.ones(length, dtype=np.float64)
    if before is not None:
        window[: before.width] *= _rising(before)
    if after is not None:
        window[length - after.width :] *= 1.0 - _rising(after)
    window.setflags(write=False)
    return window


def _axis_seams(
    origins: tuple[int, ...], i: int, tile: int, requested: int, scale: int, blend: str
) -> tuple[_Seam | None, _Seam | None]:
    """Seams of tile i with its previous and next neighbour along one axis (actual overlaps, LR px)."""
    before = _seam(origins[i - 1] + tile - origins[i], requested, scale, blend) if i > 0 else None
    after = _seam(origins[i] + tile - origins[i + 1], requested, scale, blend) if i + 1 < len(origins) else None
    return before, after


def _check_blend(blend: str) -> None:
    if blend not in BLENDS:
        raise ConfigError(f"unknown blend {blend!r}", hint=f"use one of {', '.join(BLENDS)}")


def _axis_factor(origins: tuple[int, ...], i: int, tile: int, requested: int, scale: int, blend: str) -> np.ndarray:
    """(s*tile,) float64 window of the i-th tile along one axis."""
    return _axis_window(tile * scale, *_axis_seams(origins, i, tile, requested, scale, blend))


def tile_window(plan: TilePlan, index: int, scale: int, blend: str = "cosine") -> np.ndarray:
    """(s*th, s*tw) float64 weights of tile ``index``: the outer product of its row and column factors (``axis_windows``).

    1 inside; over each overlap with a neighbour the two tiles' weights sum to 1: "cosine" ramps over the whole
    overlap (> 0 everywhere); "cosine-inner" is 0 over the outer quarter of the requested overlap (pixels that see
    the least context), a raised-cosine ramp over the rest, then 1; "crop" switches at the overlap's centre (Real-ESRGAN
    style paste); "uniform" is 1 everywhere (plain averaging). Sides at the image border have no ramp, so pixels that
    only one tile covers always have weight 1.
    """
    _check_blend(blend)
    row, col = divmod(index, len(plan.xs))
    (th, tw), s, o = plan.tile_hw, scale, plan.overlap
    wy = _axis_factor(plan.ys, row, th, o, s, blend)
    wx = _axis_factor(plan.xs, col, tw, o, s, blend)
    return wy[:, None] * wx[None, :]


def axis_windows(plan: TilePlan, scale: int, blend: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Row and column factors of every tile's window: ((len(ys), s*th), (len(xs), s*tw)) float64.

    ``tile_window(plan, r * len(xs) + c, ...) == wy[r][:, None] * wx[c][None, :]`` (the same arrays, the same product):
    all windows of a plan in a few KB (runtime/device_tiling.py forms them on the device).
    """
    _check_blend(blend)
    (th, tw), s, o = plan.tile_hw, scale, plan.overlap
    wy = np.stack([_axis_factor(plan.ys, r, th, o, s, blend) for r in range(len(plan.ys))])
    wx = np.stack([_axis_factor(plan.xs, c, tw, o, s, blend) for c in range(len(plan.xs))])
    return wy, wx


def blend_tiles(
    plan: TilePlan,
    outputs: Iterable[tuple[int, np.ndarray]],
    scale: int,
    blend: str = "cosine",
    channels: int = 3,
) -> np.ndarray:
    """Blend upscaled tiles ``(index, (C, s*th, s*tw))`` into the (C, s*H, s*W) float32 image (padding cropped).

    Every index of the plan must come exactly once; raises ``ValueError`` otherwise.
    """
    ph, pw = plan.padded_hw
    th, tw = plan.tile_hw
    s = scale
    if plan.num_tiles == 1 and not any(plan.pad):  # whole image in one tile: no arithmetic at all
        items = list(outputs)
        if [i for i, _ in items] != [0]:
            raise ValueError(f"expected tile 0 only, got {[i for i, _ in items]}")
        return np.asarray(items[0][1], dtype=np.float32)
    acc = np.zeros((channels, ph * s, pw * s), dtype=np.float32)
    weight_sum = np.zeros((ph * s, pw * s), dtype=np.float32)
    seen = np.zeros(plan.num_tiles, dtype=bool)
    for index, out in outputs:
        if out.shape != (channels, th * s, tw * s):
            raise ValueError(f"tile {index} output has shape {out.shape}, expected {(channels, th * s, tw * s)}")
        if seen[index]:
            raise ValueError(f"tile {index} given twice")
        seen[index] = True
        y, x = plan.origins[index]
        window = tile_window(plan, index, s, blend).astype(np.float32)
        region = (slice(y * s, (y + th) * s), slice(x * s, (x + tw) * s))
        acc[(slice(None), *region)] += out * window
        weight_sum[region] += window
    if not seen.all():
        raise ValueError(f"tiles missing from the blend: {np.flatnonzero(~seen).tolist()}")
    top, left = plan.pad[0] * s, plan.pad[2] * s
    h, w = plan.image_hw[0] * s, plan.image_hw[1] * s
    weights = weight_sum[top : top + h, left : left + w]
    if not (weights > 0).all():  # cannot happen for plans from plan_tiles; guards hand-made plans
        raise ValueError("some pixels have zero total weight")
    crop = acc[:, top : top + h, left : left + w] / weights
    return np.ascontiguousarray(crop, dtype=np.float32)


def tiled_apply(
    image: np.ndarray,
    fn,
    *,
    tile_hw: tuple[int, int] | int,
    overlap: int,
    scale: int,
    batch_size: int = 1,
    blend: str = "cosine",
) -> np.ndarray:
    """Apply ``fn`` ((N, C, th, tw) -> (N, C, s*th, s*tw)) tile by tile to a (C, H, W) image; returns (C, s*H, s*W)."""
    plan = plan_tiles(image.shape[-2:], tile_hw, overlap)
    padded = pad_image(image, plan)

    def outputs() -> Iterator[tuple[int, np.ndarray]]:
        for batch in make_batches([(0, padded, plan)], batch_size):
            result = fn(batch.tiles)
            for ref, out in zip(batch.refs, result, strict=True):
                yield ref.index, out

    return blend_tiles(plan, outputs(), scale, blend, channels=image.shape[0])


def group_outputs(refs: Sequence[TileRef], outputs: np.ndarray) -> dict[int, list[tuple[int, np.ndarray]]]:
    """Split a batch's outputs by image id: {image_id: [(tile index, output), ...]} in batch order."""
    if len(refs) != len(outputs):
        raise ValueError(f"{len(refs)} tile refs but {len(outputs)} outputs")
    grouped: dict[int, list[tuple[int, np.ndarray]]] = {}
    for ref, out in zip(refs, outputs, strict=True):
        grouped.setdefault(ref.image_id, []).append((ref.index, out))
    return grouped
