"""Open the backend for a model path: ``runtime/source.py`` decides which (classify + plan_backend), this opens it."""

from __future__ import annotations

import logging
from pathlib import Path

from ...errors import BackendError
from ..source import BACKENDS, BackendPlan, ModelSource, SourceKind, classify, normalise_backend, plan_backend
from .base import Backend

__all__ = ["BACKENDS", "open_backend", "open_planned", "resolve_backend_name"]

log = logging.getLogger(__name__)


def resolve_backend_name(model: str | Path | None, backend: str | None = None) -> str:
    """The backend a path calls for with nothing else given (``backend`` given: validated and returned)."""
    if backend is not None:
        return normalise_backend(backend)
    return plan_backend(classify(model), numpy_runs=False).backend


def open_backend(
    model: str | Path | None = None,
    backend: str | None = None,
    *,
    device: str | None = None,
    precision: str | None = None,
    preset: str | None = None,
    scan_impl: str = "auto",
    param_key: str | None = None,
    threads: int | None = None,
    profile: object | None = None,
) -> Backend:
    """Open a backend for ``model`` (weights, .onnx, .engine, bundle folder, or None for the shipped default).

    ``device``: "cpu", "cuda" (or "cuda:N"), "tensorrt" (ONNX Runtime's TensorRT provider) or "auto"; None: the
    profile's, else the CPU. ``precision``: "fp32" or "fp16"; None: the profile's or bundle's (fp32 on the CPU).
    A plan that departs from the profile is logged as one warning line."""
    source = classify(model)
    plan = plan_for(source, backend, device=device, precision=precision, preset=preset, scan_impl=scan_impl,
                    param_key=param_key, profile=profile)  # fmt: skip
    return open_planned(source, plan, preset=preset, scan_impl=scan_impl, param_key=param_key, threads=threads)


def plan_for(source: ModelSource, backend: str | None, *, device, precision, preset, scan_impl, param_key, profile) -> BackendPlan:
    """``plan_backend`` with what the options say about torch and numpy; its note is logged as a warning."""
    wants_torch = preset is not None or scan_impl != "auto" or param_key is not None
    numpy_runs = False
    if source.is_weights and not wants_torch and backend is None:
        from .numpy import numpy_config

        numpy_runs = numpy_config(source.path, None) is not None
    plan = plan_backend(source, backend=backend, device=device, precision=precision, profile=profile,
                        wants_torch=wants_torch, numpy_runs=numpy_runs)  # fmt: skip
    if plan.note:  # said here, once, for every caller (open_backend, Upscaler, eval, bench)
        log.warning("%s", plan.note)
    return plan


def open_planned(
    source: ModelSource,
    plan: BackendPlan,
    *,
    preset: str | None = None,
    scan_impl: str = "auto",
    param_key: str | None = None,
    threads: int | None = None,
) -> Backend:
    if source.path is not None and not source.path.exists() and not source.is_weights:  # weights: the loader says it
        raise BackendError(f"model not found: {source.path}", hint="check the path given to --model/--weights")
    if plan.backend == "numpy":
        return _open_numpy(source, preset=preset, plan=plan, threads=threads)
    if plan.backend == "torch":
        if source.kind == SourceKind.WEIGHTS and source.path.suffix.lower() not in (".safetensors", ".pth", ".pt"):
            raise BackendError(f"the torch backend needs weights (.safetensors/.pth), got {source.path}", hint="drop --backend torch")
        from .torch import TorchBackend

        device = "cpu" if plan.device == "tensorrt" else plan.device
        return TorchBackend.from_weights(source.path, preset=preset, device=device, precision=plan.precision,
                                         scan_impl=scan_impl, param_key=param_key)  # fmt: skip
    if plan.backend == "onnxruntime":
        return _open_onnxruntime(source, plan, threads)
    from .tensorrt import TensorRTBackend

    if source.kind == SourceKind.BUNDLE:
        return TensorRTBackend.from_bundle(source.bundle, device=plan.device)
    if source.kind != SourceKind.ENGINE:
        raise BackendError(f"the tensorrt backend needs an engine, got {source.label}",
                           hint="pass a bundle with model.engine (mambaesr-edge export, then build_engine.sh on the device) or an .engine file")
    return TensorRTBackend(source.path, device=plan.device)


def _open_onnxruntime(source: ModelSource, plan: BackendPlan, threads: int | None) -> Backend:
    from .onnxruntime import OnnxRuntimeBackend

    if source.kind == SourceKind.BUNDLE:
        bundle = source.bundle
        return OnnxRuntimeBackend(
            bundle.onnx_path(plan.precision), device=plan.device, threads=threads, bundle=bundle,
        )  # fmt: skip
    if source.kind != SourceKind.ONNX:
        raise BackendError(f"onnxruntime needs an .onnx file or a bundle, got {source.label}", hint="export first: mambaesr-edge export")
    if plan.precision == "fp16":
        log.info("precision fp16 ignored for a plain .onnx file: it runs in the precision it was exported with")
    return OnnxRuntimeBackend(source.path, device=plan.device, threads=threads)


def _open_numpy(source: ModelSource, *, preset: str | None, plan: BackendPlan, threads: int | None) -> Backend:
    from .numpy import NumpyBackend

    if source.path is not None and source.path.suffix.lower() != ".safetensors":
        raise BackendError(f"the numpy backend needs .safetensors weights, got {source.path}", hint="use --backend torch")
    if preset is not None:
        raise BackendError("the numpy backend runs the config stored with the weights", hint="drop --preset, or use --backend torch")
    if plan.device != "cpu" or plan.precision != "fp32":
        raise BackendError(f"the numpy backend runs fp32 on the CPU, not {plan.precision} on {plan.device}", hint="use --backend torch")
    return NumpyBackend.from_weights(source.path, threads=threads)
