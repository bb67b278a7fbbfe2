"""The GPU as the CUDA runtime names it: the few CUDA runtime calls the TensorRT backend needs (over cuda-python or
pycuda, whichever imports), and ``gpu_identity()``, the one source of the (GPU name, compute capability) pair that
engine manifests record when an engine is built and that the runtime compares when it loads one.

Names from other tools differ (the Jetson device tree says "NVIDIA Jetson Orin Nano Developer Kit" where CUDA says
"Orin"), so writer and reader must ask the same API: cudaGetDeviceProperties, through cuda-python, pycuda, or torch
(which reads the same properties). NOT RUN IN THIS WORKPLACE on a real Jetson; the calls are the documented ones.
"""

from __future__ import annotations

import ctypes
import logging

import numpy as np

from .errors import BackendError, DependencyMissingError

__all__ = ["CudaRuntime", "gpu_identity"]

log = logging.getLogger(__name__)


class CudaRuntime:
    """The few CUDA runtime calls we need, over cuda-python or pycuda (whichever imports)."""

    def __init__(self, device_index: int = 0) -> None:
        self.device_index = device_index
        self.cudart = None
        self.pycuda = None
        try:
            try:
                from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
            except ImportError:
                from cuda import cudart  # older cuda-python
            self.cudart = cudart
            self._check(cudart.cudaSetDevice(device_index))
        except ImportError:
            try:
                from pycuda import driver
            except ImportError as exc:
                raise DependencyMissingError(
                    "the TensorRT backend needs cuda-python or pycuda for GPU buffers",
                    hint="pip install 'mambaesr-edge[cuda-python]' (or [pycuda])",
                ) from exc
            try:
                driver.init()
                self.context = driver.Device(device_index).retain_primary_context()
            except driver.Error as exc:
                raise BackendError(f"CUDA (pycuda) cannot open GPU {device_index}: {exc}", hint="check the GPU with tegrastats / nvidia-smi") from exc
            self.pycuda = driver

    def _check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise BackendError(f"CUDA call failed with error {err}", hint="check the GPU with nvidia-smi / tegrastats")
        return rest[0] if len(rest) == 1 else rest

    def device_properties(self) -> tuple[str, str]:
        """(GPU name, compute capability "major.minor")."""
        if self.cudart is not None:
            prop = self._check(self.cudart.cudaGetDeviceProperties(self.device_index))
            name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
            return name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}"
        device = self.pycuda.Device(self.device_index)
        major, minor = device.compute_capability()
        return device.name().strip(), f"{major}.{minor}"

    def push(self) -> None:
        if self.pycuda is not None:
            self.context.push()

    def pop(self) -> None:
        if self.pycuda is not None:
            self.pycuda.Context.pop()

    def stream(self):
        if self.cudart is not None:
            return self._check(self.cudart.cudaStreamCreate())
        return self.pycuda.Stream()

    def stream_handle(self, stream) -> int:
        return int(stream) if self.cudart is not None else stream.handle

    def pinned(self, count: int) -> np.ndarray:
        """Page-locked float32 host array of ``count`` elements."""
        if self.cudart is not None:
            ptr = self._check(self.cudart.cudaMallocHost(count * 4))
            return np.ctypeslib.as_array((ctypes.c_float * count).from_address(int(ptr)))
        return self.pycuda.pagelocked_empty(count, np.float32)

    def device_alloc(self, nbytes: int):
        if self.cudart is not None:
            return self._check(self.cudart.cudaMalloc(nbytes))
        return self.pycuda.mem_alloc(nbytes)

    def address(self, buffer) -> int:
        return int(buffer)

    def h2d(self, dst, src: np.ndarray, nbytes: int, stream) -> None:
        if self.cudart is not None:
            kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            self._check(self.cudart.cudaMemcpyAsync(dst, src.ctypes.data, nbytes, kind, stream))
        else:
            self.pycuda.memcpy_htod_async(dst, src[: nbytes // 4], stream)

    def d2h(self, dst: np.ndarray, src, nbytes: int, stream) -> None:
        if self.cudart is not None:
            kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            self._check(self.cudart.cudaMemcpyAsync(dst.ctypes.data, src, nbytes, kind, stream))
        else:
            self.pycuda.memcpy_dtoh_async(dst[: nbytes // 4], src, stream)

    def sync(self, stream) -> None:
        if self.cudart is not None:
            self._check(self.cudart.cudaStreamSynchronize(stream))
        else:
            stream.synchronize()


def gpu_identity(device_index: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "M.m") of CUDA device ``device_index`` as cudaGetDeviceProperties reports them;
    ("", "") when no CUDA binding or GPU is found (callers then cannot build or check engines and say so)."""
    try:
        return CudaRuntime(device_index).device_properties()
    except (DependencyMissingError, BackendError) as exc:
        log.debug("CUDA runtime: %s", exc.message)
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device_index)
            return torch.cuda.get_device_name(device_index), f"{major}.{minor}"
    except (ImportError, RuntimeError) as exc:
        log.debug("torch.cuda: %s", exc)
    return "", ""
