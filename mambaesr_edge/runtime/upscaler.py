"""``Upscaler``: the object apps use. One backend, fixed settings, no per-call state.

    up = Upscaler.from_path("bundle/")                 # or weights / .onnx / .engine / None (shipped default)
    up = Upscaler.from_profile("orin-nano", "bundle/") # tile, overlap, batch, precision, backend from the profile
    big = up(image)                                    # numpy HWC uint8/uint16/float, RGB (channel_order="rgb")
    for frame in up.stream(frames, target_fps=30): ... # threaded pipeline, order kept

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
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .adapt import Decision, TileSettings, choose_settings, free_memory_bytes
from .backends import open_backend
from .bundle import is_bundle, read_bundle
from .frames import check_channel_order, postprocess, preprocess
from .infer import upscale, upscale_chw
from .stream import FrameStream
from .tiling import BLENDS

__all__ = ["PROFILE_BACKENDS", "Upscaler"]

log = logging.getLogger(__name__)

# device profile backend -> (backend, device)
PROFILE_BACKENDS = {
    "tensorrt": ("tensorrt", "cuda"),
    "onnxruntime-cpu": ("onnxruntime", "cpu"),
    "onnxruntime-cuda": ("onnxruntime", "cuda"),
    "torch": ("torch", "auto"),
}


def _model_dims(backend) -> dict:
    config = getattr(backend, "config", None) or getattr(getattr(backend, "model", None), "config", None)
    if config is None:
        return {"scale": backend.scale}
    return {"d_inner": config.d_inner, "d_state": config.d_state, "scale": config.scale}


def _device_of(backend) -> str:
    device = getattr(backend, "device", None)
    if device is not None:
        return str(device)
    providers = getattr(backend, "providers", None) or ["CPUExecutionProvider"]
    return "cpu" if providers[0] == "CPUExecutionProvider" else "cuda"


class Upscaler:
    """Tiled super-resolution over one backend (see the module docstring)."""

    def __init__(
        self,
        backend,
        *,
        tile: int | None = None,
        overlap: int | None = None,
        batch: int | None = None,
        blend: str = "cosine",
        channel_order: str = "rgb",
        fallback=None,
        profile: object | None = None,
        free_bytes: int | None = None,
    ) -> None:
        """``tile``: LR tile size (0: whole image; None: the profile's, else chosen from free memory).
        ``free_bytes``: memory free for inference (None: measured now)."""
        if blend not in BLENDS:
            raise ConfigError(f"unknown blend {blend!r}", hint=f"use one of {', '.join(BLENDS)}")
        startup: list[Decision] = []
        measured = free_bytes if free_bytes is not None else free_memory_bytes(_device_of(backend))
        self.backend = backend
        self.fallback = fallback
        self.scale = int(backend.scale)
        self.channel_order = check_channel_order(channel_order)
        self.settings: TileSettings = choose_settings(
            tile=tile,
            overlap=overlap,
            batch=batch,
            precision=getattr(backend, "precision", "fp32"),
            blend=blend,
            profile=profile,
            fixed_input_hw=backend.input_hw,
            free_bytes=measured,
            model_dims=_model_dims(backend),
            decisions=startup,
        )
        self.settings = _fit_token_limit(self.settings, getattr(backend, "max_tokens", None), startup)
        self.startup_decisions: tuple[Decision, ...] = tuple(startup)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_path(
        cls,
        model: str | Path | None = None,
        *,
        backend: str | None = None,
        device: str = "cpu",
        precision: str | None = None,
        preset: str | None = None,
        scan_impl: str = "auto",
        param_key: str | None = None,
        threads: int | None = None,
        profile: object | None = None,
        **settings: object,
    ) -> Upscaler:
        """Open ``model`` (weights, .onnx, .engine, bundle folder; None: the shipped default) and wrap it.

        A bundle's tile/overlap/batch are the defaults (unless a profile is given); keyword ``settings`` go to
        ``Upscaler.__init__`` (tile, overlap, batch, blend, channel_order, free_bytes).
        """
        bundle = read_bundle(model) if model is not None and is_bundle(model) else None
        defaults = profile or bundle
        wanted = precision or getattr(defaults, "precision", None) or "fp32"
        if wanted == "fp16" and device == "cpu":
            if precision == "fp16":
                raise ConfigError("fp16 needs a GPU device", hint="use --fp32 on CPU, or --device/--backend with CUDA")
            log.info("precision fp16 from %s ignored on CPU: running fp32", "profile" if profile else "bundle")
            wanted = "fp32"
        kwargs = dict(device=device, preset=preset, scan_impl=scan_impl, param_key=param_key, threads=threads)
        main = open_backend(model, backend, precision=wanted, **kwargs)
        fallback = None
        if wanted == "fp16":
            if main.name == "torch":
                from .backends.torch import TorchBackend

                fallback = TorchBackend(main.model, device=str(main.device), precision="fp32", scan_impl=main.scan_impl)
            else:
                ort_device = device if main.name == "onnxruntime" or _cuda_usable("onnxruntime") else "cpu"
                fallback = open_backend(model, "onnxruntime" if bundle else backend, precision="fp32", **{**kwargs, "device": ort_device})
        return cls(main, fallback=fallback, profile=defaults, **settings)

    @classmethod
    def from_profile(cls, profile: object, model: str | Path | None = None, **overrides: object) -> Upscaler:
        """Backend, device, precision, tile, overlap, batch and memory budget from a device profile.

        ``profile``: a name or path (``profiles.load_profile``) or a ``DeviceProfile``-like object.
        """
        if isinstance(profile, (str, Path)):
            try:
                from ..profiles import load_profile
            except ImportError as exc:
                raise ConfigError("device profiles are not available in this install", hint="update mambaesr-edge") from exc
            profile = load_profile(profile)
        backend_name, device = PROFILE_BACKENDS.get(getattr(profile, "backend", "torch"), ("torch", "auto"))
        name = getattr(profile, "name", "?")
        if model is None or Path(model).suffix.lower() in (".safetensors", ".pth", ".pt"):
            if backend_name != "torch":  # weights, not an export: run them in torch with the profile's tiling
                log.info("profile %s runs %s on exported models; %s runs in torch", name, backend_name, model or "the default model")
            backend_name = "torch"
            device = "auto"
        elif backend_name == "tensorrt" and not _engine_usable(model):
            backend_name = "onnxruntime"
            log.warning("profile %s wants TensorRT but %s has no usable engine here: using ONNX Runtime", name, model)
        if device in ("auto", "cuda") and not _cuda_usable(backend_name):
            if device == "cuda":
                log.warning("profile %s wants CUDA, which is not available here: running on CPU", name)
            device = "cpu"
        elif device == "auto":
            device = "cuda"
        if backend_name == "tensorrt":
            device = "cuda"
        overrides.setdefault("backend", backend_name)
        overrides.setdefault("device", device)
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
        """Iterator of upscaled frames, pipelined on threads (see ``runtime.stream``)."""
        order = self.channel_order

        def infer(prepared, settings: TileSettings, index: int, decisions: list[Decision]):
            out, used = upscale(self.backend, prepared.rgb, settings, fallback=self.fallback, decisions=decisions, frame=index)
            return (out, prepared), used

        return FrameStream(
            frames,
            prepare=lambda frame: preprocess(frame, order),
            infer=infer,
            finish=lambda pair: postprocess(pair[0], pair[1], self.scale, order),
            settings=self.settings,
            target_fps=target_fps,
            allow_drop=allow_drop,
            max_batch=self.backend.max_batch,
            queue_size=queue_size,
            pace=pace,
            indexed=indexed,
        )

    def __repr__(self) -> str:
        return f"Upscaler({self.backend!r}, {self.settings}, channel_order={self.channel_order!r})"


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


def _cuda_usable(backend_name: str) -> bool:
    """Whether ``backend_name`` can use CUDA here (checked without importing anything heavy when absent)."""
    import importlib.util

    if backend_name == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None:
            return False
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def _engine_usable(model: str | Path | None) -> bool:
    import importlib.util

    if model is None or importlib.util.find_spec("tensorrt") is None:
        return False
    path = Path(model)
    return path.suffix in (".engine", ".plan") or (is_bundle(path) and (path / "model.engine").is_file())
