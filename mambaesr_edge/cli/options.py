"""Options several commands share, and their checks (one spelling, one help text, one error for each)."""

from __future__ import annotations

import os
from typing import Optional

import typer

from ..presets import (
    SCAN_IMPLS,  # not from ..scan: that imports torch, which `upscale` on the CPU never needs
)

WeightsOpt = typer.Option(None, "--weights", "-w", help="Weights (.safetensors, .pth). Default: the shipped model.")
MODEL_HELP = ("Model: a name (`mambaesr-edge models`; -n is Real-ESRGAN's spelling), weights (.safetensors/.pth), .onnx, "
              ".engine or an export bundle folder. Default: the shipped default model.")
ModelOpt = typer.Option(None, "--model", "-m", "--model-name", "--model_name", "-n", help=MODEL_HELP)
PresetOpt = typer.Option(None, "--preset", "-p", help="Preset the weights were trained with (default: from the file).")
ScanOpt = typer.Option("auto", "--scan", help=f"Selective-scan implementation: {', '.join(SCAN_IMPLS)}.")
ThreadsOpt = typer.Option(None, "--threads", help="CPU threads for inference (same as before the subcommand).")
CudaOpt = typer.Option(False, "--cuda", help="Run on the CUDA GPU (torch / onnxruntime).")
GpuIdOpt = typer.Option(
    None, "--gpu-id", "-g", help="Run on CUDA device N (as --cuda, on that GPU; Real-ESRGAN's -g). Sets CUDA_VISIBLE_DEVICES."
)


def check_scan(scan: str) -> str:
    if scan not in SCAN_IMPLS:
        raise typer.BadParameter(f"{scan!r} is not one of {', '.join(SCAN_IMPLS)}", param_hint="--scan")
    return scan


def check_backend(backend: Optional[str]) -> Optional[str]:
    """The backend name ``--backend`` means (aliases such as ort, trt, pytorch resolved), None when not given.

    An unknown name is a BackendError ("unknown backend 'foo'" + the names there are): exit 2."""
    if backend is None:
        return None
    from ..runtime.source import normalise_backend

    return normalise_backend(backend)


def use_gpu(cuda: bool, gpu_id: Optional[int]) -> bool:
    """Whether to run on CUDA (``--cuda`` or ``-g N``). ``-g N`` makes GPU N the only one this process sees
    (CUDA_VISIBLE_DEVICES, an index into an existing CUDA_VISIBLE_DEVICES list), so every backend, torch, ONNX
    Runtime and TensorRT alike, runs there as "cuda". Called before any backend initialises CUDA."""
    if gpu_id is None:
        return cuda
    if gpu_id < 0:
        raise typer.BadParameter(f"must be >= 0, got {gpu_id}", param_hint="--gpu-id")
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if "CUDA_VISIBLE_DEVICES" in os.environ and gpu_id >= len(visible):
        raise typer.BadParameter(f"GPU {gpu_id} is not visible (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r})",
                                 param_hint="--gpu-id")
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[gpu_id] if visible else str(gpu_id)
    return True
