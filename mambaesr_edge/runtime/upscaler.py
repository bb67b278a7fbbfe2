"""``Upscaler``: the object apps use. One backend, fixed settings, no per-call state.

    up = Upscaler.from_path("bundle/")                 # or weights / .onnx / .engine / None (shipped default)
    up = Upscaler.from_profile("orin-nano", "bundle/") # tile, overlap, batch, precision, backend from the profile
    big = up(image)                                    # numpy HWC uint8/uint16/float, RGB (channel_order="rgb")
    for frame in up.stream(frames, target_fps=30): ... # threaded pipeline, order kept (CUDA: overlapped copies)

Channel order: "rgb" by default (Pillow, ``images.load_image``); pass ``channel_order="bgr"`` for OpenCV frames.
Grayscale in -> grayscale out (run as RGB), RGBA -> RGBA (alpha upscaled with bicubic), uint16 -> uint16.

Thread safety: everything on the object is set in ``__init__`` and never changed (settings are a frozen dataclass;
backends are thread-safe), so one Upscaler can be shared by many threads; each call's adaptations (out-of-memory
shrinking, fp16 fallback) live in that call, and each stream's in that stream.

Where the work happens: with the torch backend (CPU or CUDA) the image goes to the backend's device once; tiles are
cut, run, blended and the result clamped and converted to the output dtype there (runtime/device_tiling.py), and
only the final image is copied back. ONNX Runtime and TensorRT backends take numpy batches: tiled and blended on the
host (runtime/tiling.py). Same plan, windows and result either way.

FP16: when the backend runs fp16, each batch is checked for NaN/Inf and all-black output and re-run on an fp32 twin
of the backend (``fallback``; opened automatically by ``from_path``/``from_profile``), logging a warning; without a
fallback ``NumericalError`` is raised.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..bundle import Bundle
from ..errors import ConfigError
from ..profiles import DeviceProfile, load_profile
from .adapt import ConfiguredDefaults, Decision, TileSettings, choose_settings, free_memory_bytes
from .backends.base import Backend, BackendInfo
from .backends.select import open_planned, plan_for
from .backends.torch import TorchBackend
from .frames import check_channel_order, postprocess, preprocess
from .infer import upscale, upscale_chw
from .source import SourceKind, classify, cuda_usable
from .stream import FrameStream
from .tiling import BLENDS

__all__ = ["Upscaler"]

log = logging.getLogger(__name__)


def _model_dims(info: BackendInfo) -> dict:
    if info.config is None:
        return {"scale": info.scale}
    return {"d_inner": info.config.d_inner, "d_state": info.config.d_state, "scale": info.scale}


class Upscaler:
    """Tiled super-resolution over one backend (see the module docstring)."""

    def __init__(
        self,
        backend: Backend,
        *,
        tile: int | None = None,
        overlap: int | None = None,
        batch: int | None = None,
        blend: str = "cosine",
        channel_order: str = "rgb",
        fallback: Backend | None = None,
        profile: DeviceProfile | Bundle | None = None,
        free_bytes: int | None = None,
    ) -> None:
        """``tile``: LR tile size (0: whole image; None: the profile's or bundle's, else chosen from free memory).
        ``free_bytes``: memory free for inference (None: measured now)."""
        if blend not in BLENDS:
            raise ConfigError(f"unknown blend {blend!r}", hint=f"use one of {', '.join(BLENDS)}")
        info = backend.info
        startup: list[Decision] = []
        measured = free_bytes if free_bytes is not None else free_memory_bytes(info.device)
        self.backend = backend
        self.fallback = fallback
        self.scale = int(info.scale)
        self.channel_order = check_channel_order(channel_order)
        defaults = configured_defaults(profile)
        self.settings: TileSettings = choose_settings(
            tile=tile,
            overlap=overlap,
            batch=batch,
            precision=info.precision,
            blend=blend,
            defaults=defaults,
            fixed_input_hw=info.input_hw,
            free_bytes=measured,
            model_dims=_model_dims(info),
            decisions=startup,
            bytes_per_pixel=_gpu_bytes_per_pixel(backend, tile, defaults),
            whole_frames=info.long_sequences,
        )
        self.settings = _fit_token_limit(self.settings, info.max_tokens, startup)
        self.startup_decisions: tuple[Decision, ...] = tuple(startup)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_path(
        cls,
        model: str | Path | None = None,
        *,
        backend: str | None = None,
        device: str | None = None,
        precision: str | None = None,
        preset: str | None = None,
        scan_impl: str = "auto",
        param_key: str | None = None,
        threads: int | None = None,
        profile: DeviceProfile | None = None,
        **settings: object,
    ) -> Upscaler:
        """Open ``model`` (weights, .onnx, .engine, bundle folder; None: the shipped default) and wrap it.

        Backend, device and precision: as asked, else from ``profile``, else automatic (``runtime/source.py``, the
        one resolver; a departure from the profile is logged as one warning line). A bundle's (or the profile's)
        tile/overlap/batch are the defaults; keyword ``settings`` go to ``Upscaler.__init__`` (tile, overlap,
        batch, blend, channel_order, free_bytes). fp16 gets an fp32 twin as ``fallback``.
        """
        source = classify(model)
        plan = plan_for(source, backend, device=device, precision=precision, preset=preset, scan_impl=scan_impl,
                        param_key=param_key, profile=profile)  # fmt: skip
        options = dict(preset=preset, scan_impl=scan_impl, param_key=param_key, threads=threads)
        main = open_planned(source, plan, **options)
        fallback = None  # a plain .onnx or engine runs in the precision it was built in: it has no twin
        if plan.precision in ("fp16", "bf16") and isinstance(main, TorchBackend):
            fallback = main.with_precision("fp32")
        elif plan.precision == "fp16" and source.kind == SourceKind.BUNDLE:  # the bundle's fp32 graph
            ort_device = plan.device if main.info.name == "onnxruntime" or cuda_usable("onnxruntime") else "cpu"
            fallback = open_planned(source, replace(plan, backend="onnxruntime", device=ort_device, precision="fp32"), **options)
        return cls(main, fallback=fallback, profile=profile or source.bundle, **settings)

    @classmethod
    def from_profile(cls, profile: DeviceProfile | str | Path, model: str | Path | None = None, **overrides: object) -> Upscaler:
        """Backend, device, precision, tile, overlap, batch and memory budget from a device profile (a name, a .toml
        path or a ``DeviceProfile``); ``overrides`` as for ``from_path``. What the profile asks for but cannot run
        here (TensorRT absent, no GPU, weights instead of an export) is said in one warning line."""
        if isinstance(profile, (str, Path)):
            profile = load_profile(profile)
        return cls.from_path(model, profile=profile, **overrides)

    # ------------------------------------------------------------------ inference
    def upscale_chw(self, rgb: np.ndarray, *, decisions: list[Decision] | None = None) -> np.ndarray:
        """(3, H, W) float32 RGB in [0, 1] -> (3, s*H, s*W) float32, unclamped."""
        out, _ = upscale_chw(self.backend, rgb, self.settings, fallback=self.fallback, decisions=decisions)
        return out

    def __call__(self, image: np.ndarray, *, decisions: list[Decision] | None = None) -> np.ndarray:
        """Upscale one HWC image (see the module docstring); ``decisions`` collects this call's adaptations."""
        prepared = preprocess(image, self.channel_order)
        out, _ = upscale(self.backend, prepared.rgb, self.settings, fallback=self.fallback, decisions=decisions)
        return postprocess(out, prepared, self.scale, self.channel_order)  # a device tensor is converted there

    upscale = __call__

    def stream(
        self,
        frames: Iterable[np.ndarray],
        *,
        target_fps: float | None = None,
        allow_drop: bool = True,
        queue_size: int = 2,
        pace: bool = False,
        indexed: bool = False,
    ) -> FrameStream:
        """Iterator of upscaled frames, pipelined on threads (see ``runtime.stream``); with a torch backend on CUDA the
        stages also overlap on the GPU (upload, compute, download on their own CUDA streams: ``runtime.cuda_stream``)."""
        order = self.channel_order

        def run(rgb, settings: TileSettings, index: int, decisions: list[Decision]):
            return upscale(self.backend, rgb, settings, fallback=self.fallback, decisions=decisions, frame=index)

        if self.backend.info.tensor_io and self.backend.info.on_cuda:
            from .cuda_stream import CudaFramePipe

            pipe = CudaFramePipe(self.backend.info.device, order, self.scale, run, buffers=max(1, queue_size) + 1)
            prepare, infer, finish = pipe.prepare, pipe.infer, pipe.finish
        else:

            def infer(prepared, settings: TileSettings, index: int, decisions: list[Decision]):
                out, used = run(prepared.rgb, settings, index, decisions)
                return (out, prepared), used

            def prepare(frame):
                return preprocess(frame, order)

            def finish(pair):
                return postprocess(pair[0], pair[1], self.scale, order)

        return FrameStream(
            frames,
            prepare=prepare,
            infer=infer,
            finish=finish,
            settings=self.settings,
            target_fps=target_fps,
            allow_drop=allow_drop,
            max_batch=self.backend.info.max_batch,
            queue_size=queue_size,
            pace=pace,
            indexed=indexed,
        )

    def __repr__(self) -> str:
        return f"Upscaler({self.backend!r}, {self.settings}, channel_order={self.channel_order!r})"


def configured_defaults(profile: DeviceProfile | Bundle | None) -> ConfiguredDefaults | None:
    """What a device profile (tile, overlap, batch, precision, memory budget) or an export bundle (the tile, overlap,
    batch and precision it was exported for) sets for start-up."""
    if isinstance(profile, DeviceProfile):
        return ConfiguredDefaults(f"device profile {profile.name}", profile.tile, profile.overlap, profile.batch, profile.precision,
                                  profile.memory_budget_mib)
    if isinstance(profile, Bundle):
        return ConfiguredDefaults("the export bundle", profile.tile, profile.overlap, profile.batch, profile.precision)
    return None


def _gpu_bytes_per_pixel(backend: Backend, tile: int | None, defaults: ConfiguredDefaults | None) -> float | None:
    """The measured peak bytes per LR pixel when the start-up settings are chosen for a device-tiling GPU (torch on
    CUDA, no tile asked for, none from the profile or bundle); None otherwise (the CPU path is unchanged)."""
    info = backend.info
    if not (info.tensor_io and info.on_cuda) or tile is not None or (defaults is not None and defaults.tile) or info.input_hw:
        return None
    from .device_tiling import measure_bytes_per_pixel

    return measure_bytes_per_pixel(backend.run_tensor, info.device)


def _fit_token_limit(settings: TileSettings, max_tokens: int | None, decisions: list[Decision]) -> TileSettings:
    """A dynamic-H/W graph built for at most ``max_tokens`` = h*w: cap the tile (whole image included)."""
    if not max_tokens:
        return settings
    if settings.tile is not None and settings.tile[0] * settings.tile[1] <= max_tokens:
        return settings
    side = int(max_tokens**0.5)
    overlap = min(settings.overlap or 16, side // 4)
    old = "whole image" if settings.tile is None else f"tile {settings.tile[0]}x{settings.tile[1]}"
    decisions.append(Decision("startup", f"{old} -> tile {side}", f"the model takes at most {max_tokens} tokens (h*w)"))
    log.info("%s", decisions[-1])
    return settings.replace(tile=(side, side), overlap=overlap)
