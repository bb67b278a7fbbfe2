"""TensorRT backend: a serialized engine plus its manifest (model.engine + model.engine.json).

NOT RUN IN THIS WORKPLACE: TensorRT (and a CUDA GPU) exist nowhere here, so this module is written against the
TensorRT 8.5+/10.x name-based tensor API (``num_io_tensors``, ``get_tensor_name``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``) and tested only through its pure parts: the staleness rule
(``mambaesr_edge.engine_manifest.engine_problems``, shared with build-engine) is unit-tested; tests that need a real engine are marked
``@pytest.mark.tensorrt`` and skip without the ``tensorrt`` package.

Before deserializing, the engine's manifest is checked by ``engine_manifest.engine_problems`` (this GPU, this TensorRT release,
the bundle's weights / graph / profile, the engine and plugin files); any problem raises ``EngineMismatchError``
(engines are not portable across GPUs or TensorRT releases, and a stale engine would silently run old weights). A
plugin library the manifest names is registered with TensorRT before deserialising.

Buffers: device memory and pinned host memory from cuda-python (``cuda.bindings.runtime``, or the older
``cuda.cudart``) or pycuda, allocated once for the largest shape of the optimization profile. Each ``run`` copies
host -> device, executes and copies device -> host asynchronously on the backend's CUDA stream, then waits for the
stream. One execution context is shared, so ``run`` holds a lock (thread-safe, calls serialised).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from ...bundle import BUILD_SCRIPT_FILE, Bundle
from ...engine_manifest import (
    EngineEnvironment,
    EngineManifest,
    bundle_engine_problems,
    engine_manifest_path,
    read_engine_manifest,
    standalone_engine_problems,
)
from ...errors import DependencyMissingError
from ...gpu import CudaRuntime
from ...native_build import load_plugin_library
from ..errors import BackendError, EngineMismatchError
from .base import BackendInfo

__all__ = ["TensorRTBackend"]

log = logging.getLogger(__name__)


class TensorRTBackend:
    def __init__(self, engine_path: str | Path, *, device: str = "cuda", bundle: Bundle | None = None) -> None:
        """Check the engine against this GPU and TensorRT (``engine_manifest.engine_problems``: the one staleness rule),
        load the plugin library its manifest names, then deserialise. ``bundle``: the bundle it belongs to (then
        its weights, graph and profile are checked too, and its config is known)."""
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise DependencyMissingError(
                "TensorRT is not installed", hint="on Jetson it comes with JetPack; elsewhere pip install 'mambaesr-edge[tensorrt]'"
            ) from exc
        engine_path = Path(engine_path)
        device_index = int(device.partition(":")[2] or 0)
        self.cuda = CudaRuntime(device_index)
        env = EngineEnvironment(*self.cuda.device_properties(), trt.__version__)
        if bundle is not None:
            problems = bundle_engine_problems(bundle, env)
        else:
            problems = standalone_engine_problems(engine_path, env)
        if problems:
            raise EngineMismatchError(
                f"refusing engine {engine_path}: " + "; ".join(problems),
                hint=f"rebuild it on this device: bash {engine_path.parent / BUILD_SCRIPT_FILE} (or mambaesr-edge build-engine "
                f"{engine_path.parent}); or run the ONNX graph with --backend onnxruntime",
            )
        manifest = read_engine_manifest(engine_manifest_path(engine_path))
        if manifest.plugin_file:
            load_plugin_library(trt, engine_path.parent / manifest.plugin_file)
        self._lock = threading.Lock()
        self.cuda.push()
        try:
            self._load(trt, engine_path, manifest, bundle, device_index)
        finally:
            self.cuda.pop()

    @classmethod
    def from_bundle(cls, bundle: Bundle, *, device: str = "cuda") -> TensorRTBackend:
        return cls(bundle.engine_path, device=device, bundle=bundle)

    def _load(self, trt, engine_path: Path, manifest: EngineManifest, bundle: Bundle | None, device_index: int) -> None:
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
        scale = bundle.scale if bundle is not None else manifest.scale
        if scale is None:
            raise BackendError(f"{engine_manifest_path(engine_path)} names no scale", hint="rebuild: mambaesr-edge build-engine BUNDLE")
        self.info = BackendInfo(
            name="tensorrt", scale=int(scale), device=f"cuda:{device_index}" if device_index else "cuda",
            precision=manifest.precision, input_hw=(shape[2], shape[3]) if shape[2] > 0 and shape[3] > 0 else None,
            max_batch=int(max_shape[0]), config=bundle.config if bundle is not None else None,
            weights_sha256=manifest.weights_sha256 or None, source=str(engine_path), detail=f"TensorRT {trt.__version__}",
        )  # fmt: skip
        self._static_batch = shape[0] > 0
        n, c, h, w = max_shape
        self._in_count = int(n * c * h * w)
        self._out_count = self._in_count * scale * scale
        self._host_in = self.cuda.pinned(self._in_count)
        self._host_out = self.cuda.pinned(self._out_count)
        self._dev_in = self.cuda.device_alloc(self._in_count * 4)
        self._dev_out = self.cuda.device_alloc(self._out_count * 4)
        self._stream = self.cuda.stream()
        self.context.set_tensor_address(self.input_name, self.cuda.address(self._dev_in))
        self.context.set_tensor_address(self.output_name, self.cuda.address(self._dev_out))
        log.info("TensorRT engine %s: input %s (max %s), scale %d", engine_path.name, shape, max_shape, scale)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        real = len(chunk)
        max_batch = self.info.max_batch
        if self._static_batch and real < max_batch:  # static batch: pad with copies, drop their outputs
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], max_batch - real, axis=0)])
        n, c, h, w = chunk.shape
        out_shape = (n, c, h * self.info.scale, w * self.info.scale)
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
        fixed, step = self.info.input_hw, self.info.max_batch
        if fixed is not None and tuple(batch.shape[-2:]) != fixed:
            raise BackendError(f"the engine takes {fixed} tiles, got {batch.shape[-2:]}", hint="tile with the engine's shape")
        with self._lock:
            self.cuda.push()
            try:
                parts = [self._run_chunk(batch[i : i + step]) for i in range(0, len(batch), step)]
            finally:
                self.cuda.pop()
        return np.concatenate(parts)

    def synchronize(self) -> None:
        with self._lock:
            self.cuda.sync(self._stream)
