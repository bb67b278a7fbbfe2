"""ONNX Runtime backend: CPU, or the CUDA / TensorRT execution providers when the installed onnxruntime has them.

The input/output names and shapes are read from the session: a static (N, 3, h, w) graph gives ``input_hw = (h, w)``
and ``max_batch = N`` (larger batches are split, a short last chunk is padded and the padding dropped); symbolic
dims mean any size. ``InferenceSession.run`` is thread-safe, so one backend serves many threads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ...bundle import Bundle
from ...errors import MambaESRError
from ...presets import ModelConfig
from ..errors import BackendError
from .base import BackendInfo

__all__ = ["OnnxRuntimeBackend", "providers_for"]

log = logging.getLogger(__name__)

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def providers_for(device: str, available: list[str]) -> list[str]:
    """Execution providers for ``device`` ("cpu", "cuda", "tensorrt", "auto"), checked against ``available``."""
    if device == "auto":
        wanted = [p for p in _PROVIDERS["tensorrt"] if p in available]
        return wanted or ["CPUExecutionProvider"]
    key = device.split(":")[0]
    if key not in _PROVIDERS:
        raise BackendError(f"unknown onnxruntime device {device!r}", hint="use cpu, cuda, tensorrt or auto")
    wanted = _PROVIDERS[key]
    if wanted[0] not in available:
        raise BackendError(
            f"onnxruntime has no {wanted[0]} here (available: {', '.join(available)})",
            hint="install onnxruntime-gpu (pip install 'mambaesr-edge[onnxruntime-gpu]') or use --backend onnxruntime on cpu",
        )
    return wanted


def _missing_external_data(path: Path) -> list[str]:
    """External data files (initializers' ``location``, relative to the .onnx) the graph names but that are absent.

    Read with the onnx package when it is installed (the export extra); [] when it is not or the file does not
    parse (onnxruntime then names the problem)."""
    try:
        import onnx
    except ImportError:
        return []
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - not a readable graph: onnxruntime's own error is reported instead
        return []
    locations = {
        entry.value
        for tensor in graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return sorted(name for name in locations if not (path.parent / name).is_file())


def _static(dim: object) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def graph_metadata(session) -> dict[str, str]:
    """The mambaesr_edge.* metadata our exporter writes into a graph (prefix dropped); {} for other graphs."""
    meta = session.get_modelmeta().custom_metadata_map
    return {k.removeprefix("mambaesr_edge."): v for k, v in meta.items() if k.startswith("mambaesr_edge.")}


def _config_of(meta: dict[str, str]) -> ModelConfig | None:
    if "config" not in meta:
        return None
    try:
        return ModelConfig.from_json(meta["config"])
    except (ValueError, TypeError, KeyError, MambaESRError) as exc:
        log.info("graph metadata holds no usable config: %s", exc)
        return None


class OnnxRuntimeBackend:
    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "cpu",
        scale: int | None = None,
        threads: int | None = None,
        bundle: Bundle | None = None,
    ) -> None:
        """``bundle``: the bundle the graph belongs to (its names, scale, config, weights and, for a dynamic graph,
        the largest h*w it takes, ``max_tokens``); None: read from the graph and its metadata."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            from ...errors import DependencyMissingError

            raise DependencyMissingError(
                "onnxruntime is not installed", hint="pip install 'mambaesr-edge[export]'"
            ) from exc
        path = Path(path)
        if not path.is_file():
            raise BackendError(f"ONNX model not found: {path}", hint="check the path, or pass an export bundle folder")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.providers = providers_for(device, ort.get_available_providers())
        missing = _missing_external_data(path)
        if missing:
            raise BackendError(
                f"{path} keeps its weights in external data file(s) that are not there: {', '.join(missing[:3])}",
                hint="copy the data file(s) saved with the .onnx into the same folder, or re-export the model",
            )
        try:
            self.session = ort.InferenceSession(str(path), options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own pybind exception types for bad files
            raise BackendError(f"onnxruntime cannot load {path}: {exc}", hint="re-export the model") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name = bundle.input_name if bundle is not None else inputs[0].name
        self.output_name = bundle.output_name if bundle is not None else outputs[0].name
        spec = next((i for i in inputs if i.name == self.input_name), None)
        if spec is None or len(spec.shape) != 4:
            raise BackendError(f"{path}: no 4-D input named {self.input_name!r}", hint="export with input 'lr' (N,3,h,w)")
        self.input_dtype = np.float16 if spec.type == "tensor(float16)" else np.float32
        n, _, h, w = (_static(d) for d in spec.shape)
        input_hw = (h, w) if h is not None and w is not None else None
        self.path = path
        meta = graph_metadata(self.session)
        config = bundle.config if bundle is not None else _config_of(meta)
        scale = scale or (bundle.scale if bundle is not None else None) or self._probe_scale(meta, input_hw, n)
        precision = meta.get("precision") if meta.get("precision") in ("fp32", "fp16") else "fp32"
        max_tokens = bundle.max_tokens if bundle is not None and bundle.dynamic_hw and input_hw is None else None
        self.info = BackendInfo(
            name="onnxruntime", scale=scale, device="cpu" if self.providers[0] == "CPUExecutionProvider" else "cuda",
            precision=precision, input_hw=input_hw, max_batch=n, max_tokens=max_tokens, config=config,
            weights_sha256=bundle.weights_sha256 if bundle is not None else meta.get("weights_sha256"),
            source=str(path), detail="providers " + ",".join(self.providers),
        )  # fmt: skip
        log.info("onnxruntime %s: providers %s, input %s, scale %d", path.name, self.providers, spec.shape, scale)

    def _probe_scale(self, meta: dict[str, str], input_hw: tuple[int, int] | None, batch: int | None) -> int:
        """Scale from the graph metadata, else from one run on a small input.

        A "dynamic" graph traced from the chunked scan may still only run at its traced token count, so a few
        sizes are tried."""
        plain = self.session.get_modelmeta().custom_metadata_map.get("scale", "")
        for value in (meta.get("scale", ""), plain):  # the exporter writes mambaesr_edge.scale
            if str(value).isdigit():
                return int(value)
        sizes = [input_hw] if input_hw else [(16, 16), (32, 32), (64, 64), (8, 8)]
        errors = []
        for h, w in sizes:
            try:
                out = self._run_one(np.zeros((batch or 1, 3, h, w), np.float32))
            except Exception as exc:  # noqa: BLE001 - collected and reported below if no size works
                errors.append(f"{h}x{w}: {str(exc).splitlines()[0][:100]}")
                continue
            return out.shape[-1] // w
        raise BackendError(
            f"cannot tell the upscaling factor of {self.path.name}: no 'scale' metadata and no probe size ran ({'; '.join(errors)})",
            hint="use an export bundle (its bundle.json names the scale) or re-export with mambaesr-edge export",
        )

    def _run_one(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: batch.astype(self.input_dtype, copy=False)})[0]
        return np.asarray(out, dtype=np.float32)

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        fixed = self.info.input_hw
        if fixed is not None and tuple(batch.shape[-2:]) != fixed:
            raise BackendError(
                f"{self.path.name} takes {fixed[0]}x{fixed[1]} tiles, got {batch.shape[-2]}x{batch.shape[-1]}",
                hint="tile with the model's input size (the Upscaler does this), or export with dynamic H/W",
            )
        step = self.info.max_batch
        if step is None or len(batch) == step:
            return self._run_one(batch)
        parts = []
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            short = step - len(chunk)
            if short:  # static batch: pad with copies of the last tile, drop their outputs
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], short, axis=0)])
            parts.append(self._run_one(chunk)[: step - short])
        return np.concatenate(parts)

    def synchronize(self) -> None:
        """``session.run`` returns host arrays, so the device is idle when it returns."""

    def __repr__(self) -> str:
        return f"OnnxRuntimeBackend({self.path.name}, providers={self.providers}, input_hw={self.info.input_hw})"
