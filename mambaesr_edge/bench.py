"""Latency and power benchmark of any inference backend (docs/interfaces.md `Backend`).

`run_bench` does, with a power sampler running throughout: warm-up inferences, an idle window (power at rest, the
baseline), then N timed inferences, each device-synchronised (`backend.synchronize()`), timed on time.monotonic(),
the clock the samplers stamp their samples with. Ctrl-C during the measurement returns what was measured, marked
partial (the command writes that report, then exits 130); a sampler that dies mid-run leaves a gap that the report
marks. `bench_report` turns a result into the report (JSON, CSV, PNG, table). The `mambaesr-edge bench` command is
mambaesr_edge/cli/bench.py.
"""

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import ONNX_FILE
from .errors import MambaESRError
from .power import NullSampler, PowerSampler, Sample
from .runtime.backends.base import Backend

log = logging.getLogger(__name__)

__all__ = ["BenchError", "BenchResult", "run_bench", "tiles_per_frame"]


class BenchError(MambaESRError):
    """Invalid benchmark settings, or a backend that does not behave as the Backend protocol says."""


@dataclass(frozen=True)
class BenchResult:
    """Raw measurements of one run. Times are time.monotonic() seconds; `origin` is when the run started."""

    backend: str
    scale: int
    tile_hw: tuple[int, int]
    batch: int
    frame_hw: tuple[int, int]  # the LR frame that frames/s is stated for, (height, width)
    overlap: int
    warmup: int
    samples_requested: int
    origin: float
    warmup_window: tuple[float, float]
    idle_window: tuple[float, float]
    inference_window: tuple[float, float]
    starts: tuple[float, ...]  # start time of each timed inference
    latencies_s: tuple[float, ...]
    power_samples: tuple[Sample, ...]
    sampler: dict[str, Any]  # sampler.describe()
    power_available: bool
    power_reason: str  # why power is unavailable ("" when available)
    sampler_error: str | None  # why the sampler stopped early, if it did
    max_gap_s: float
    partial: bool
    partial_reason: str = ""

    @property
    def completed(self) -> int:
        return len(self.latencies_s)


def tiles_per_frame(frame_hw: tuple[int, int], tile_hw: tuple[int, int], overlap: int) -> int:
    """Tiles of `tile_hw` (stride tile - overlap) that cover a frame, as fixed-shape tiled inference needs."""

    def along(length: int, tile: int) -> int:
        if length <= tile:
            return 1
        return 1 + math.ceil((length - tile) / (tile - overlap))

    return along(frame_hw[0], tile_hw[0]) * along(frame_hw[1], tile_hw[1])


def _check_args(backend: Backend, samples: int, warmup: int, idle_seconds: float, tile_hw, batch: int, overlap: int) -> None:
    if samples < 1:
        raise BenchError(f"--samples must be at least 1, got {samples}", hint="e.g. --samples 1000 (the seed paper's count)")
    if warmup < 0:
        raise BenchError(f"--warmup must be >= 0, got {warmup}", hint="e.g. --warmup 10")
    if not idle_seconds >= 0 or math.isinf(idle_seconds):
        raise BenchError(f"--idle-seconds must be a finite number >= 0, got {idle_seconds}", hint="e.g. --idle-seconds 5")
    if batch < 1:
        raise BenchError(f"--batch must be at least 1, got {batch}", hint="e.g. --batch 1")
    if min(tile_hw) < 1:
        raise BenchError(f"tile must be at least 1x1, got {tile_hw}", hint="e.g. --tile 64")
    if not 0 <= overlap < min(tile_hw):
        raise BenchError(f"overlap {overlap} must be >= 0 and smaller than the tile {tile_hw}", hint="e.g. overlap 8")
    info = backend.info
    fixed = info.input_hw
    if fixed is not None and tuple(fixed) != tuple(tile_hw):
        raise BenchError(
            f"the {info.name} backend takes only {fixed[0]}x{fixed[1]} tiles, not {tile_hw[0]}x{tile_hw[1]}",
            hint=f"use --tile {fixed[0]} or export the model at the tile you want",
        )
    max_batch = info.max_batch
    if max_batch is not None and batch > max_batch:
        raise BenchError(f"the {info.name} backend takes at most batch {max_batch}", hint=f"use --batch {max_batch}")


def _check_output(backend: Backend, x: np.ndarray, y: Any) -> None:
    n, c, h, w = x.shape
    want = (n, c, backend.info.scale * h, backend.info.scale * w)
    if not isinstance(y, np.ndarray) or tuple(y.shape) != want:
        got = getattr(y, "shape", type(y).__name__)
        raise BenchError(f"the {backend.info.name} backend returned {got} for input {x.shape}; expected {want}",
                         hint="the backend does not follow the Backend protocol (docs/interfaces.md)")


def run_bench(
    backend: Backend,
    *,
    samples: int,
    warmup: int = 10,
    idle_seconds: float = 5.0,
    sampler: PowerSampler | None = None,
    tile: int | tuple[int, int] = 64,
    batch: int = 1,
    frame_hw: tuple[int, int] = (1080, 1920),
    overlap: int = 0,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> BenchResult:
    """Benchmark `backend` (a runtime Backend: info, run, synchronize) on random tiles.

    Raises BenchError for bad settings; a KeyboardInterrupt during warm-up, idle or timing ends the run early and the
    result is returned with partial=True (the caller decides what to do next).
    """
    tile_hw = (tile, tile) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))
    _check_args(backend, samples, warmup, idle_seconds, tile_hw, batch, overlap)
    sampler = sampler if sampler is not None else NullSampler()
    x = np.random.default_rng(seed).random((batch, 3, *tile_hw), dtype=np.float32)  # (N, 3, h, w) in [0, 1)
    starts: list[float] = []
    latencies: list[float] = []
    partial_reason = ""
    origin = time.monotonic()
    warm = idle = infer = (origin, origin)
    sampler.start()
    try:
        try:
            t = time.monotonic()
            for i in range(warmup):
                y = backend.run(x)
                backend.synchronize()
                if i == 0:
                    _check_output(backend, x, y)
            warm = (t, time.monotonic())
            idle = (warm[1], warm[1])
            time.sleep(idle_seconds)
            idle = (warm[1], time.monotonic())
            infer = (idle[1], idle[1])
            for i in range(samples):
                t0 = time.monotonic()
                y = backend.run(x)
                backend.synchronize()
                t1 = time.monotonic()
                starts.append(t0)
                latencies.append(t1 - t0)
                infer = (infer[0], t1)
                if i == 0 and warmup == 0:
                    _check_output(backend, x, y)
                if progress is not None:
                    progress(i + 1, samples)
            if sampler.available:  # one more reading after the window, so its end is covered
                time.sleep(min(2 * sampler.interval_s, 1.0))
        except KeyboardInterrupt:
            partial_reason = f"interrupted after {len(latencies)} of {samples} timed inferences"
            log.info("benchmark %s", partial_reason)  # the caller reports it (result.partial)
    finally:
        power_samples = sampler.stop()
    describe = sampler.describe()
    return BenchResult(
        backend=backend.info.name, scale=backend.info.scale, tile_hw=tile_hw, batch=batch, frame_hw=tuple(frame_hw),
        overlap=overlap, warmup=warmup, samples_requested=samples, origin=origin, warmup_window=warm,
        idle_window=idle, inference_window=infer, starts=tuple(starts), latencies_s=tuple(latencies),
        power_samples=tuple(power_samples), sampler=describe, power_available=bool(sampler.available),
        power_reason="" if sampler.available else str(describe.get("reason", "no sampler")),
        sampler_error=sampler.error, max_gap_s=max(5 * sampler.interval_s, 0.5),
        partial=bool(partial_reason), partial_reason=partial_reason,
    )


# ---------------------------------------------------------------------------------------------------------------------
# What `mambaesr-edge bench` measures: by default the backend `upscale --device PROFILE` would run (the runtime's one
# resolver, runtime/source.py: for weights on the CPU that is numpy), or the one --backend names. A network that should
# run in ONNX Runtime without an .onnx file (the default model, --preset, or --model weights) is exported here to a
# temporary static-shape ONNX with the exportable `chunked` scan.

DEFAULT_TILE_CAP = 64  # the seed paper's 64x64 tile: the default compares devices at the same tile


def _network(model: Path | None, preset: str | None, scan: str) -> tuple[Any, dict[str, Any]]:
    """(MambaSR, description) for weights, the shipped default, or a randomly initialised --preset."""
    from .checkpoint import load_model
    from .errors import WeightsError
    from .model import MambaSR, count_parameters
    from .presets import get_preset
    from .resources import default_weights_path

    if model is None and preset is None:
        try:
            default_weights_path()
        except WeightsError as exc:
            preset = "student"
            log.warning("%s; benchmarking a randomly initialised %s network instead (speed does not depend on the "
                        "weights' values)", exc.message, preset)
    if model is None and preset is not None:
        net = MambaSR(get_preset(preset), scan_impl=scan).eval()
        return net, {"weights": f"random init ({preset} preset)", "preset": preset, "params": count_parameters(net)}
    net, loaded = load_model(model, preset, scan_impl=scan)
    return net, {"weights": str(model) if model else "shipped default", "weights_sha256": loaded.sha256,
                 "preset": preset, "params": count_parameters(net)}


def export_onnx_for_bench(net: Any, path: Path, tile_hw: tuple[int, int], batch: int) -> Path:
    """Static (batch, 3, h, w) ONNX of `net` through the exporter (exportable `chunked` scan, checked, with metadata)."""
    from .export.onnx import export_onnx

    return export_onnx(net.eval(), path, input_shape=(batch, 3, *tile_hw), simplify=False).path


def open_bench_backend(backend: str | None, *, model: Path | None, bundle: Path | None, preset: str | None, scan: str,
                       tile_hw: tuple[int, int], batch: int, run_on: str | None, precision: str | None, threads: int | None,
                       workdir: Path, profile: Any = None) -> tuple[Backend, dict[str, Any]]:
    """(backend, description of the model) for the bench command. ``backend``/``run_on``/``precision`` None: as
    ``upscale --device PROFILE`` would choose (``profile``: a DeviceProfile)."""
    from .runtime.backends import open_backend
    from .runtime.source import classify, normalise_backend

    source = classify(bundle if bundle is not None else model)
    name = normalise_backend(backend) if backend else None
    random_init = model is None and bundle is None and preset is not None
    if source.is_weights and name == "tensorrt":
        raise BenchError("the tensorrt backend needs an engine: pass --bundle DIR (with model.engine) or --model X.engine",
                         hint="mambaesr-edge export --device PROFILE, then mambaesr-edge build-engine BUNDLE on the device")
    if source.is_weights and (name == "onnxruntime" or random_init):
        net, description = _network(source.path, preset, scan)  # a model name: its weights file
        if name == "onnxruntime":
            onnx_path = export_onnx_for_bench(net, workdir / ONNX_FILE, tile_hw, batch)
            opened = open_backend(onnx_path, "onnxruntime", device=run_on or "cpu", threads=threads)
            return opened, {**description, "scan": "chunked", "onnx": f"exported for this run at {tile_hw[0]}x{tile_hw[1]}, "
                                                                  f"batch {batch}, opset 17"}
        if name not in (None, "torch"):
            raise BenchError(f"a random-init --preset network runs in torch or onnxruntime, not {name}",
                             hint="pass --model WEIGHTS.safetensors to bench the numpy backend")
        from .runtime.backends.torch import TorchBackend

        opened = TorchBackend(net, device=run_on or "auto", precision=precision or "fp32", scan_impl=scan)
        return opened, {**description, "scan": opened.info.detail}
    opened = open_backend(source.path, name, device=run_on, precision=precision, preset=preset, scan_impl=scan, threads=threads,
                          profile=profile)  # fmt: skip
    info = opened.info
    description = {"weights": info.source or source.label, "weights_sha256": info.weights_sha256, "preset": preset,
                   "params": _params(info.config), "detail": info.detail}
    return opened, description


def _params(config: Any) -> int | None:
    if config is None:
        return None
    from .model import MambaSR, count_parameters

    return count_parameters(MambaSR(config))
