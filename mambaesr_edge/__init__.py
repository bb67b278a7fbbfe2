"""mambaesr-edge: a Mamba super-resolution model from training to the Jetson camera.

The public API, imported lazily (``import mambaesr_edge`` costs nothing; the CPU upscale path never imports torch):

    import mambaesr_edge as me

    up = me.Upscaler.from_path()                   # the shipped default model (numpy on the CPU)
    up = me.Upscaler.from_profile("orin-nano", "bundle/")
    big = up(image)                                # HWC uint8/uint16/float RGB -> x4
    model, loaded = me.load_model("weights.safetensors")
    result = me.export_model("orin-nano", out="bundle/")  # ONNX + parity + cost + TensorRT script, as the CLI's export
    y = me.selective_scan(u, delta, A, B, C, D)     # mamba_ssm's selective_scan_fn contract

Names: Upscaler, open_backend, Backend, BackendInfo, load_model, save_weights, MambaSR, ModelConfig, get_preset,
PRESETS, selective_scan, export_model, export_bundle, ExportOptions, load_profile, list_profiles, DeviceProfile,
read_bundle, Bundle, and the named errors (MambaESRError and its subclasses).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "Upscaler": "runtime.upscaler",
    "open_backend": "runtime.backends",
    "Backend": "runtime.backends",
    "BackendInfo": "runtime.backends",
    "load_model": "checkpoint",
    "save_weights": "checkpoint",
    "MambaSR": "model",
    "ModelConfig": "presets",
    "get_preset": "presets",
    "PRESETS": "presets",
    "selective_scan": "scan",
    "export_model": "export.writer",  # not "export": that is the subpackage's name
    "export_bundle": "export.writer",
    "ExportOptions": "export.writer",
    "load_profile": "profiles",
    "list_profiles": "profiles",
    "DeviceProfile": "profiles",
    "read_bundle": "bundle",
    "Bundle": "bundle",
    "MambaESRError": "errors",
    "ArchitectureMismatchError": "errors",
    "BackendError": "errors",
    "BundleError": "errors",
    "ConfigError": "errors",
    "DatasetError": "errors",
    "DependencyMissingError": "errors",
    "DiskFullError": "errors",
    "EngineMismatchError": "errors",
    "ImageError": "errors",
    "Interrupted": "errors",
    "WeightsError": "errors",
    "NumericalError": "runtime.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mambaesr_edge' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

