"""TensorRT backend: a serialized engine plus its manifest (model.engine + model.engine.json).

NOT RUN IN THIS WORKPLACE: TensorRT (and a CUDA GPU) exist nowhere here, so this module is written against the
TensorRT 8.5+/10.x name-based tensor API (``num_io_tensors``, ``get_tensor_name``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``) and tested only through its pure parts: the manifest comparison
(``runtime.bundle.engine_manifest_problems``) is unit-tested; tests that need a real engine are marked
``@pytest.mark.tensorrt`` and skip without the ``tensorrt`` package.

Before deserializing, the engine's manifest is compared with this GPU's name and compute capability, this TensorRT
version, and the weights / ONNX sha256 the bundle claims; any mismatch raises ``EngineMismatchError`` (engines are not
portable across GPUs or TensorRT releases, and a stale engine would silently run old weights).

Buffers: device memory and pinned host memory from cuda-python (``cuda.bindings.runtime``, or the older
``cuda.cudart``) or pycuda, allocated once for the largest shape of the optimization profile. Each ``run`` copies
host -> device, executes and copies device -> host asynchronously on the backend's CUDA stream, then waits for the
stream. One execution context is shared, so ``run`` holds a lock (thread-safe, calls serialised).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path

import numpy as np

from ..bundle import EngineEnvironment, engine_manifest_problems, read_engine_manifest
from ..errors import BackendError, EngineMismatchError

__all__ = ["CudaRuntime", "TensorRTBackend"]

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
                from ...errors import DependencyMissingError

                raise DependencyMissingError(
                    "the TensorRT backend needs cuda-python or pycuda for GPU buffers",
                    hint="pip install 'mambaesr-edge[cuda-python]' (or [pycuda])",
                ) from exc
            driver.init()
            self.pycuda = driver
            self.context = driver.Device(device_index).retain_primary_context()

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


class TensorRTBackend:
    name = "tensorrt"

    def __init__(
        self,
        engine_path: str | Path,
        *,
        manifest_path: str | Path | None = None,
        weights_sha256: str | None = None,
        onnx_sha256: str | None = None,
        scale: int | None = None,
        device_index: int = 0,
    ) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            from ...errors import DependencyMissingError

            raise DependencyMissingError(
                "TensorRT is not installed", hint="on Jetson it comes with JetPack; elsewhere pip install 'mambaesr-edge[tensorrt]'"
            ) from exc
        engine_path = Path(engine_path)
        manifest_path = Path(manifest_path) if manifest_path else engine_path.with_name(engine_path.name + ".json")
        if not manifest_path.is_file():
            manifest_path = engine_path.with_suffix(".engine.json")
        if not engine_path.is_file() or not manifest_path.is_file():
            raise BackendError(f"engine {engine_path} or its manifest {manifest_path} is missing", hint="mambaesr-edge build-engine BUNDLE")
        self.cuda = CudaRuntime(device_index)
        gpu_name, cc = self.cuda.device_properties()
        manifest = read_engine_manifest(manifest_path)
        env = EngineEnvironment(gpu_name, cc, trt.__version__)
        problems = engine_manifest_problems(manifest, env, weights_sha256=weights_sha256, onnx_sha256=onnx_sha256)
        if problems:
            raise EngineMismatchError(
                f"refusing engine {engine_path}: " + "; ".join(problems),
                hint="rebuild it on this device: mambaesr-edge build-engine BUNDLE (or use --backend onnxruntime)",
            )
        self._lock = threading.Lock()
        self.cuda.push()
        try:
            self._load(trt, engine_path, manifest, scale)
        finally:
            self.cuda.pop()

    def _load(self, trt, engine_path: Path, manifest: dict, scale: int | None) -> None:
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT could not deserialize {engine_path}", hint="rebuild the engine on this device")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"{engine_path}: expected one input and one output, got {inputs} / {outputs}", hint="re-export")
        self.input_name, self.output_name = inputs[0], outputs[0]
        shape = tuple(self.engine.get_tensor_shape(self.input_name))  # -1 for dynamic dims
        if -1 in shape:
            max_shape = tuple(self.engine.get_tensor_profile_shape(self.input_name, 0)[2])
        else:
            max_shape = shape
        self.input_hw = (shape[2], shape[3]) if shape[2] > 0 and shape[3] > 0 else None
        self.max_batch = int(max_shape[0])
        self._static_batch = shape[0] > 0
        self.scale = int(scale or manifest.get("scale") or 4)
        n, c, h, w = max_shape
        self._in_count = int(n * c * h * w)
        self._out_count = self._in_count * self.scale * self.scale
        self._host_in = self.cuda.pinned(self._in_count)
        self._host_out = self.cuda.pinned(self._out_count)
        self._dev_in = self.cuda.device_alloc(self._in_count * 4)
        self._dev_out = self.cuda.device_alloc(self._out_count * 4)
        self._stream = self.cuda.stream()
        self.context.set_tensor_address(self.input_name, self.cuda.address(self._dev_in))
        self.context.set_tensor_address(self.output_name, self.cuda.address(self._dev_out))
        log.info("TensorRT engine %s: input %s (max %s), scale %d", engine_path.name, shape, max_shape, self.scale)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        real = len(chunk)
        if self._static_batch and real < self.max_batch:  # static batch: pad with copies, drop their outputs
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.max_batch - real, axis=0)])
        n, c, h, w = chunk.shape
        out_shape = (n, c, h * self.scale, w * self.scale)
        in_bytes, out_count = chunk.size * 4, int(np.prod(out_shape))
        self._host_in[: chunk.size] = chunk.ravel()
        if not self.context.set_input_shape(self.input_name, chunk.shape):
            raise BackendError(f"the engine does not accept input shape {chunk.shape}", hint="tile with the engine's shape")
        handle = self.cuda.stream_handle(self._stream)
        self.cuda.h2d(self._dev_in, self._host_in, in_bytes, self._stream)
        if not self.context.execute_async_v3(handle):
            raise BackendError("TensorRT execution failed", hint="run with --debug and check the TensorRT log")
        self.cuda.d2h(self._host_out, self._dev_out, out_count * 4, self._stream)
        self.cuda.sync(self._stream)
        return self._host_out[:out_count].reshape(out_shape)[:real].copy()

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.input_hw is not None and tuple(batch.shape[-2:]) != self.input_hw:
            raise BackendError(f"the engine takes {self.input_hw} tiles, got {batch.shape[-2:]}", hint="tile with the engine's shape")
        with self._lock:
            self.cuda.push()
            try:
                parts = [self._run_chunk(batch[i : i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
            finally:
                self.cuda.pop()
        return np.concatenate(parts)

    def synchronize(self) -> None:
        with self._lock:
            self.cuda.sync(self._stream)
