"""Pick and open a backend from a model path (or explicitly).

    .safetensors / .pth / .pt    -> torch
    .onnx                        -> onnxruntime
    .engine / .plan              -> tensorrt (manifest beside it: model.engine.json)
    bundle folder (bundle.json)  -> tensorrt when model.engine exists, tensorrt imports and the manifest matches this
                                    GPU/TensorRT/weights; else onnxruntime on model.onnx (or model_fp16.onnx for fp16)
    None                         -> torch with the shipped default weights (checkpoint.load_model(None))

On the CPU in fp32, weights that carry their raster-order config (the shipped default, our .safetensors) run on
the numpy backend instead of torch unless something asks for torch (``backend``, ``preset``, a ``scan_impl`` other than
"auto"): same outputs (max abs difference < 1e-4), and no torch import (see backends/numpy.py).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from ..bundle import Bundle, is_bundle, read_bundle
from ..errors import BackendError, EngineMismatchError

__all__ = ["BACKENDS", "open_backend", "resolve_backend_name"]

log = logging.getLogger(__name__)

BACKENDS = ("torch", "numpy", "onnxruntime", "tensorrt")
_ALIASES = {
    "pytorch": "torch",
    "ort": "onnxruntime",
    "onnx": "onnxruntime",
    "onnxruntime-cpu": "onnxruntime",
    "onnxruntime-cuda": "onnxruntime",
    "trt": "tensorrt",
}
_TORCH_SUFFIXES = (".safetensors", ".pth", ".pt")
_ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def _normalise(backend: str) -> str:
    name = _ALIASES.get(backend.lower(), backend.lower())
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}", hint=f"use one of {', '.join(BACKENDS)}")
    return name


def _tensorrt_importable() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def resolve_backend_name(model: str | Path | None, backend: str | None = None) -> str:
    """The backend a path calls for (``backend`` given: validated and returned)."""
    if backend is not None:
        return _normalise(backend)
    if model is None:
        return "torch"
    path = Path(model)
    if is_bundle(path):
        engine = path / "model.engine"
        return "tensorrt" if engine.is_file() and _tensorrt_importable() else "onnxruntime"
    suffix = path.suffix.lower()
    if suffix in _TORCH_SUFFIXES:
        return "torch"
    if suffix == ".onnx":
        return "onnxruntime"
    if suffix in _ENGINE_SUFFIXES:
        return "tensorrt"
    if path.is_dir():
        raise BackendError(f"{path} is a folder without bundle.json", hint="pass an export bundle, a weights file or an .onnx")
    raise BackendError(
        f"cannot tell the backend from {path.name!r}",
        hint="use .safetensors/.pth (torch), .onnx (onnxruntime), .engine (tensorrt) or a bundle folder, or pass --backend",
    )


def _open_bundle(bundle: Bundle, name: str, *, device: str, precision: str, threads: int | None, auto: bool):
    if name == "tensorrt":
        from .tensorrt import TensorRTBackend

        try:
            return TensorRTBackend(
                bundle.engine_path,
                weights_sha256=bundle.weights_sha256,
                onnx_sha256=bundle.onnx.sha256,
                scale=bundle.scale,
            )
        except EngineMismatchError as exc:
            if not auto:
                raise
            log.warning("%s; using ONNX Runtime instead", exc.message)
    if name in ("torch", "numpy"):
        raise BackendError(f"bundle {bundle.root} holds no PyTorch weights", hint="use --backend onnxruntime or pass the .safetensors")
    from .onnxruntime import OnnxRuntimeBackend

    ort_device = "cpu" if device == "cpu" else device
    return OnnxRuntimeBackend(
        bundle.onnx_path(precision),
        device=ort_device,
        scale=bundle.scale,
        threads=threads,
        input_name=bundle.input_name,
        output_name=bundle.output_name,
        max_tokens=bundle.max_tokens if bundle.dynamic_hw else None,
    )


def open_backend(
    model: str | Path | None = None,
    backend: str | None = None,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    preset: str | None = None,
    scan_impl: str = "auto",
    param_key: str | None = None,
    threads: int | None = None,
):
    """Open a backend for ``model`` (weights, .onnx, .engine, bundle folder, or None for the shipped default).

    ``device``: "cpu", "cuda" (or "cuda:N"), "tensorrt" (onnxruntime's TensorRT provider) or "auto".
    ``precision``: "fp32" or "fp16" (torch: autocast on CUDA; bundles: model_fp16.onnx when present).
    """
    name = resolve_backend_name(model, backend)
    if model is not None and not Path(model).exists():
        raise BackendError(f"model not found: {model}", hint="check the path given to --model/--weights")
    if model is not None and is_bundle(model):
        return _open_bundle(read_bundle(model), name, device=device, precision=precision, threads=threads, auto=backend is None)
    if name == "torch" and backend is None and device == "cpu" and precision == "fp32" and scan_impl == "auto" and param_key is None:
        from .numpy import numpy_config

        if numpy_config(model, preset) is not None:
            name = "numpy"
    if name == "numpy":
        return _open_numpy(model, preset=preset, device=device, precision=precision, threads=threads)
    if name == "torch":
        if model is not None and Path(model).suffix.lower() not in _TORCH_SUFFIXES:
            raise BackendError(f"the torch backend needs weights (.safetensors/.pth), got {model}", hint="drop --backend torch")
        from .torch import TorchBackend

        torch_device = "cpu" if device == "tensorrt" else device
        return TorchBackend.from_weights(model, preset=preset, device=torch_device, precision=precision, scan_impl=scan_impl, param_key=param_key)
    if model is None:
        raise BackendError(f"the {name} backend needs a model file", hint="pass --model model.onnx / model.engine / a bundle folder")
    if name == "onnxruntime":
        if Path(model).suffix.lower() != ".onnx":
            raise BackendError(f"onnxruntime needs an .onnx file or a bundle, got {model}", hint="export first: mambaesr-edge export")
        from .onnxruntime import OnnxRuntimeBackend

        if precision == "fp16":
            log.info("precision fp16 ignored for a plain .onnx file: it runs in the precision it was exported with")
        return OnnxRuntimeBackend(model, device=device, threads=threads)
    from .tensorrt import TensorRTBackend

    return TensorRTBackend(model)


def _open_numpy(model: str | Path | None, *, preset: str | None, device: str, precision: str, threads: int | None):
    from .numpy import NumpyBackend

    if model is not None and Path(model).suffix.lower() != ".safetensors":
        raise BackendError(f"the numpy backend needs .safetensors weights, got {model}", hint="use --backend torch")
    if preset is not None:
        raise BackendError("the numpy backend runs the config stored with the weights", hint="drop --preset, or use --backend torch")
    if device != "cpu" or precision != "fp32":
        raise BackendError(f"the numpy backend runs fp32 on the CPU, not {precision} on {device}", hint="use --backend torch")
    return NumpyBackend.from_weights(model, threads=threads)
