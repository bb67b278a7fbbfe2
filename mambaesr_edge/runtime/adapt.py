"""Hardware-aware adaptation: pick tile/batch/precision at start-up, shrink on out-of-memory, follow a frame rate.

Every choice is a ``Decision`` record (stage, action, reason), logged at INFO (WARNING for OOM and fp16 fallbacks)
and returned to the caller, so users see why the runtime did what it did.

* Start-up (``choose_settings``): the requested values win; else the device profile's or the export bundle's
  (``ConfiguredDefaults``, typed); else the largest tile whose
  estimated working set (``estimate_tile_bytes``) fits in half the memory actually free (CUDA:
  ``torch.cuda.mem_get_info``; CPU: MemAvailable from /proc/meminfo, psutil, or ``os.sysconf``), capped by the
  profile's ``memory_budget_mib``. A backend with a fixed input shape fixes the tile.
  On a GPU that tiles on the device (torch on CUDA) the caller passes the model's *measured* peak bytes per LR pixel
  (``device_tiling.measure_bytes_per_pixel``): the tile is then ``GPU_TILE`` and the batch the largest power of two
  up to ``GPU_MAX_BATCH`` whose ``GPU_SAFETY`` x measured working set fits the same budget, so a whole frame's
  tiles go through the network in one or a few calls. Whole frames only where the backend says its scan spreads one
  long sequence over the device (``BackendInfo.long_sequences``: the native CUDA kernel splits it into segments):
  the tile is then the largest multiple of ``GPU_TILE`` up to ``GPU_WHOLE_MAX`` whose working set fits, trimmed to
  each image, so frames up to that side run in one piece with no overlap recomputed. The Triton scan runs one
  sequence per (image, channel block) program, so there one long sequence leaves most SMs idle (a 960x540 frame is
  518,400 sequential steps per program; its tiles in one batch are hundreds of programs of 16,384 steps).
* Out of memory (``shrink_after_oom``): halve the batch down to 1, then halve the tile down to ``MIN_TILE``; only
  then give up with ``BackendOutOfMemoryError``. Shrinking applies to the call (or stream) that hit it: the
  ``Upscaler`` keeps no state between calls, so results never depend on what another thread did.
* Streaming with a target frame rate (``LatencyController``): when the moving average of the per-frame latency stays
  above the frame budget for ``patience`` frames it steps through: (1) halve the overlap (down to overlap // 4),
  (2) try doubling the batch (kept only if it helped), (3) turn on frame dropping. Drop policy: at most one frame
  waits for the model; when a newer frame arrives the *oldest* pending frame is dropped. Frames are never reordered.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
from dataclasses import dataclass

from .errors import BackendOutOfMemoryError, RuntimeConfigError

__all__ = [
    "MIN_TILE",
    "Decision",
    "LatencyController",
    "TileSettings",
    "ConfiguredDefaults",
    "choose_settings",
    "estimate_tile_bytes",
    "free_memory_bytes",
    "gpu_batch",
    "gpu_whole_side",
    "is_out_of_memory",
    "record",
    "shrink_after_oom",
]

log = logging.getLogger(__name__)

MIN_TILE = 16
TILE_CANDIDATES = (256, 192, 128, 96, 64, 48, 32, 16)
DEFAULT_OVERLAP = 16
GPU_TILE = 128  # LR tile on a device-tiling GPU: a 960x540 frame is 45 tiles (x1.42 pixels with overlap 16)
GPU_MAX_BATCH = 256  # tiles per network call on a GPU: every tile of a 1920x1080 LR frame (170 at GPU_TILE)
GPU_SAFETY = 2.0  # measured peak bytes per pixel x this (allocator fragmentation, blend buffers, cuBLAS workspaces)
# Largest LR side run in one piece where the scan splits long sequences: 1920x1080 fits. 4.2 M tokens keep every
# tensor of one image under 2**31 elements (in_proj's output is 2 x d_inner = 240 per token), which the Triton
# kernels' 32-bit offsets need.
GPU_WHOLE_MAX = 2048
PRECISIONS = ("fp32", "fp16", "bf16")  # bf16: the torch backend on CUDA only


@dataclass(frozen=True)
class Decision:
    stage: str  # "startup", "oom", "latency", "fp16"
    action: str  # what changed, e.g. "tile 128 -> 64"
    reason: str  # why
    frame: int | None = None  # stream frame index, when streaming
    at: float = dataclasses.field(default_factory=time.monotonic)

    def __str__(self) -> str:
        where = f" (frame {self.frame})" if self.frame is not None else ""
        return f"[{self.stage}] {self.action}{where}: {self.reason}"


def record(decisions: list[Decision] | None, decision: Decision, level: int = logging.INFO) -> Decision:
    """Log a decision and append it to ``decisions`` (when given)."""
    log.log(level, "%s", decision)
    if decisions is not None:
        decisions.append(decision)
    return decision


@dataclass(frozen=True)
class TileSettings:
    tile: tuple[int, int] | None  # None: the whole image in one piece
    overlap: int
    batch: int
    precision: str = "fp32"
    blend: str = "cosine"

    def replace(self, **changes: object) -> TileSettings:
        return dataclasses.replace(self, **changes)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def free_memory_bytes(device: str = "cpu") -> int | None:
    """Memory free for inference on ``device`` now, or None when it cannot be told."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            free, _total = torch.cuda.mem_get_info(torch.device(device))
            return int(free)
        return None
    available = _meminfo_available()
    if available is not None:
        return available
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def estimate_tile_bytes(tile_hw: tuple[int, int], batch: int, *, d_inner: int = 120, d_state: int = 16, scale: int = 4) -> int:
    """Rough working set of one batch: the scan's (L, d_inner, d_state) fp32 tensors dominate (~4 live at once),
    plus the (N, 3, s*h, s*w) output. Calibrated on CPU against peak RSS (see benchmarks/runtime_tiling.py)."""
    tokens = tile_hw[0] * tile_hw[1]
    scan = 4 * tokens * d_inner * d_state * 4
    io = tokens * 3 * 4 * (1 + 2 * scale * scale)
    return batch * (scan + io)


def _fits(tile: int, batch: int, budget: int | None, model_dims: dict) -> bool:
    return budget is None or estimate_tile_bytes((tile, tile), batch, **model_dims) <= budget


def gpu_batch(bytes_per_pixel: float, budget: int | None) -> int:
    """Largest power of two <= GPU_MAX_BATCH of GPU_TILE tiles whose GPU_SAFETY x measured working set fits
    ``budget`` (None: unknown, GPU_MAX_BATCH); 0 when not even one tile fits."""
    per_tile = GPU_SAFETY * bytes_per_pixel * GPU_TILE * GPU_TILE
    batch = GPU_MAX_BATCH
    while batch >= 1 and budget is not None and batch * per_tile > budget:
        batch //= 2
    return batch


def gpu_whole_side(bytes_per_pixel: float, budget: int | None) -> int:
    """Largest multiple of GPU_TILE <= GPU_WHOLE_MAX whose GPU_SAFETY x measured working set for one side x side
    image fits ``budget`` (None: unknown, GPU_WHOLE_MAX); 0 when not even GPU_TILE fits."""
    side = GPU_WHOLE_MAX
    while side >= GPU_TILE and budget is not None and GPU_SAFETY * bytes_per_pixel * side * side > budget:
        side -= GPU_TILE
    return side if side >= GPU_TILE else 0


@dataclass(frozen=True)
class ConfiguredDefaults:
    """The start-up values a device profile or an export bundle sets (None: it sets none) and where they come from;
    ``Upscaler`` builds it from a ``DeviceProfile`` or a ``Bundle`` (``runtime.upscaler.configured_defaults``)."""

    source: str  # for the decision log: "device profile orin-nano", "the export bundle"
    tile: int | None = None
    overlap: int | None = None
    batch: int | None = None
    precision: str | None = None
    memory_budget_mib: int | None = None


def choose_settings(
    *,
    tile: int | None = None,
    overlap: int | None = None,
    batch: int | None = None,
    precision: str | None = None,
    blend: str = "cosine",
    defaults: ConfiguredDefaults | None = None,
    fixed_input_hw: tuple[int, int] | None = None,
    free_bytes: int | None = None,
    model_dims: dict | None = None,
    decisions: list[Decision] | None = None,
    bytes_per_pixel: float | None = None,
    whole_frames: bool = False,
) -> TileSettings:
    """Settings for start-up. ``tile=0`` means the whole image; None means choose. Pure given ``free_bytes``.

    ``bytes_per_pixel``: the model's measured peak memory per LR pixel on a device-tiling GPU (None elsewhere):
    chosen tiles are then ``GPU_TILE`` in batches sized from it (``gpu_batch``), or with ``whole_frames`` (the
    backend's ``long_sequences``) one piece up to ``gpu_whole_side`` per call."""
    dims = model_dims or {}
    configured = defaults or ConfiguredDefaults(source="")
    budget = free_bytes // 2 if free_bytes is not None else None
    if configured.memory_budget_mib:
        profile_budget = configured.memory_budget_mib * 2**20
        budget = min(budget, profile_budget) if budget is not None else profile_budget
    chosen_batch = batch or configured.batch or 1
    chosen_precision = precision or configured.precision or "fp32"
    if chosen_precision not in PRECISIONS:
        raise RuntimeConfigError(f"precision must be fp32, fp16 or bf16, got {chosen_precision!r}", hint="use --fp32 or --fp16")
    if fixed_input_hw is not None:
        if tile not in (None, 0) and (tile, tile) != tuple(fixed_input_hw):
            record(decisions, Decision("startup", f"tile {tile} -> {fixed_input_hw[0]}x{fixed_input_hw[1]}", "the model has a fixed input shape"))
        tile_hw: tuple[int, int] | None = tuple(fixed_input_hw)  # type: ignore[assignment]
    elif tile == 0:
        tile_hw = None
    elif tile is not None:
        tile_hw = (tile, tile)
    elif configured.tile:
        tile_hw = (configured.tile, configured.tile)
        record(decisions, Decision("startup", f"tile {configured.tile}", f"from {configured.source}"))
    elif bytes_per_pixel is not None and whole_frames and (side := gpu_whole_side(bytes_per_pixel, budget)):
        tile_hw = (side, side)  # trimmed to each image (infer.tile_plan): frames up to side x side run whole
        chosen_batch = batch or 1
        free_txt = f"{free_bytes / 2**20:.0f} MiB free" if free_bytes is not None else "free memory unknown"
        reason = (f"GPU default where the scan splits long sequences: {GPU_SAFETY:g} x the measured {bytes_per_pixel / 1024:.1f} "
                  f"KiB per LR pixel x {side}x{side} fits in half of {free_txt}")
        record(decisions, Decision("startup", f"whole frames up to {side}x{side}, batch {chosen_batch}", reason))
        batch = chosen_batch
    elif bytes_per_pixel is not None and gpu_batch(bytes_per_pixel, budget) >= 1:
        tile_hw = (GPU_TILE, GPU_TILE)
        fitted = gpu_batch(bytes_per_pixel, budget)
        chosen_batch = batch or fitted
        free_txt = f"{free_bytes / 2**20:.0f} MiB free" if free_bytes is not None else "free memory unknown"
        reason = (f"GPU default: {GPU_SAFETY:g} x the measured {bytes_per_pixel / 1024:.1f} KiB per LR pixel x batch {fitted} "
                  f"fits in half of {free_txt}")
        record(decisions, Decision("startup", f"tile {GPU_TILE}, batch {chosen_batch}", reason))
        batch = chosen_batch  # fixed here: the loop below is for the estimated (CPU) working set
    else:
        fitting = [t for t in TILE_CANDIDATES if _fits(t, chosen_batch, budget, dims)] or [MIN_TILE]
        tile_hw = (fitting[0], fitting[0])
        free_txt = f"{free_bytes / 2**20:.0f} MiB free" if free_bytes is not None else "free memory unknown"
        record(decisions, Decision("startup", f"tile {fitting[0]}", f"largest tile whose estimated working set fits in half of {free_txt}"))
    if tile_hw is not None and batch is None:
        while chosen_batch > 1 and not _fits(min(tile_hw), chosen_batch, budget, dims):
            record(decisions, Decision("startup", f"batch {chosen_batch} -> {chosen_batch // 2}", "estimated working set exceeds the memory budget"))
            chosen_batch //= 2
    if overlap is None:
        overlap = DEFAULT_OVERLAP if configured.overlap is None else configured.overlap
    if tile_hw is not None and 2 * overlap > min(tile_hw):
        new = min(tile_hw) // 4
        reason = f"overlap {overlap} is more than half the tile {min(tile_hw)}: reduced to a quarter of the tile"
        record(decisions, Decision("startup", f"overlap {overlap} -> {new}", reason))
        overlap = new
    return TileSettings(tile_hw, int(overlap) if tile_hw is not None else 0, int(chosen_batch), chosen_precision, blend)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch.cuda.OutOfMemoryError, MemoryError, ORT allocation failures and our own OOM error."""
    if isinstance(exc, (MemoryError, BackendOutOfMemoryError)):
        return True
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError without importing torch
        return True
    text = str(exc).lower()
    return any(k in text for k in ("out of memory", "failed to allocate memory", "bad_alloc", "cudaerrormemoryallocation"))


def shrink_after_oom(
    settings: TileSettings,
    image_hw: tuple[int, int],
    *,
    fixed_input_hw: tuple[int, int] | None,
    exc: BaseException,
    decisions: list[Decision] | None = None,
    frame: int | None = None,
) -> TileSettings:
    """Smaller settings after an out-of-memory error: batch first, then tile. Raises when nothing is left to shrink."""
    reason = f"out of memory ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    if settings.batch > 1:
        new = settings.replace(batch=settings.batch // 2)
        record(decisions, Decision("oom", f"batch {settings.batch} -> {new.batch}", reason, frame), logging.WARNING)
        return new
    if fixed_input_hw is None:
        current = min(settings.tile) if settings.tile is not None else max(image_hw)
        if current > MIN_TILE:
            tile = max(MIN_TILE, 2 ** int(math.log2(current - 1))) if current > 1 else MIN_TILE
            tile = min(tile, 256) if settings.tile is None else tile
            new = settings.replace(tile=(tile, tile), overlap=min(settings.overlap or DEFAULT_OVERLAP, tile // 4))
            old = "whole image" if settings.tile is None else f"tile {current}"
            record(decisions, Decision("oom", f"{old} -> tile {tile}", reason, frame), logging.WARNING)
            return new
    raise BackendOutOfMemoryError(
        f"out of memory even at batch 1 and tile {settings.tile}: {exc}",
        hint="close other programs, use a smaller --tile, or a device with more memory",
    ) from exc


class LatencyController:
    """Follows a target frame rate for one stream (its state lives with that stream, not on the Upscaler).

    Call ``observe(latency_s, frame)`` after each frame from the inference thread; read ``settings`` and
    ``dropping`` from any thread.
    """

    def __init__(
        self,
        settings: TileSettings,
        target_fps: float,
        *,
        patience: int = 3,
        max_batch: int | None = None,
        decisions: list[Decision] | None = None,
        smoothing: float = 0.5,
    ) -> None:
        if target_fps <= 0:
            raise RuntimeConfigError(f"target frame rate must be > 0, got {target_fps}", hint="e.g. target_fps=30")
        self.budget_s = 1.0 / target_fps
        self.patience = patience
        self.max_batch = max_batch
        self.decisions = decisions if decisions is not None else []
        self.smoothing = smoothing
        self.min_overlap = settings.overlap // 4
        self._lock = threading.Lock()
        self._settings = settings
        self._dropping = False
        self._ema: float | None = None
        self._over = 0
        self._batch_trial: tuple[TileSettings, float] | None = None  # (settings before the trial, ema before)
        self._batch_tried = False

    @property
    def settings(self) -> TileSettings:
        with self._lock:
            return self._settings

    @property
    def dropping(self) -> bool:
        with self._lock:
            return self._dropping

    def replace_settings(self, settings: TileSettings) -> None:
        """Adopt settings chosen elsewhere (e.g. shrunk after an out-of-memory error)."""
        with self._lock:
            self._settings = settings

    def observe(self, latency_s: float, frame: int | None = None) -> None:
        with self._lock:
            a = self.smoothing
            self._ema = latency_s if self._ema is None else a * latency_s + (1 - a) * self._ema
            self._over = self._over + 1 if self._ema > 1.1 * self.budget_s else 0
            if self._batch_trial is not None and self._over == 0:
                self._batch_trial = None  # the batch change brought us under budget: keep it
            if self._over < self.patience:
                return
            self._over = 0
            self._step(frame)

    def _step(self, frame: int | None) -> None:
        s, ema = self._settings, self._ema or 0.0
        why = f"mean latency {ema * 1e3:.1f} ms > frame budget {self.budget_s * 1e3:.1f} ms"
        if self._batch_trial is not None:
            before, before_ema = self._batch_trial
            self._batch_trial = None
            if ema >= 0.95 * before_ema:
                self._settings = before
                reason = f"larger batch did not help ({ema * 1e3:.1f} ms vs {before_ema * 1e3:.1f} ms)"
                record(self.decisions, Decision("latency", f"batch {s.batch} -> {before.batch}", reason, frame))
                return
        if s.tile is not None and s.overlap > self.min_overlap:
            new = max(self.min_overlap, s.overlap // 2)
            self._settings = s.replace(overlap=new)
            record(self.decisions, Decision("latency", f"overlap {s.overlap} -> {new}", why, frame))
        elif s.tile is not None and not self._batch_tried and (self.max_batch is None or s.batch * 2 <= self.max_batch):
            self._batch_tried = True
            self._batch_trial = (s, ema)
            self._settings = s.replace(batch=s.batch * 2)
            record(self.decisions, Decision("latency", f"batch {s.batch} -> {s.batch * 2}", why, frame))
        elif not self._dropping:
            self._dropping = True
            record(self.decisions, Decision("latency", "drop frames: oldest pending first", why, frame), logging.WARNING)
