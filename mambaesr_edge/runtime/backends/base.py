"""What every backend is: a typed descriptor (``BackendInfo``) plus ``run`` and ``synchronize``.

Callers (Upscaler, infer, stream, bench, eval, the CLI) read ``backend.info`` and nothing else about a backend: no
probing for attributes that some backends happen to have.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ...presets import ModelConfig

__all__ = ["Backend", "BackendInfo"]


@dataclass(frozen=True)
class BackendInfo:
    """A backend describing itself.

    ``device``: where it computes ("cpu", "cuda", "cuda:1"); ``precision``: what it computes in ("fp32", "fp16": the
    graph's or engine's precision, autocast for torch). ``input_hw`` / ``max_batch``: the fixed tile (h, w) and the
    largest batch per call a static graph or engine takes (None: any). ``max_tokens``: the largest h*w a dynamic
    graph takes. ``config`` / ``weights_sha256``: the network and the weights it runs, when known (a bare engine
    or an ONNX file without our metadata: None). ``tensor_io``: it also has ``run_tensor(x)`` for tensors on its
    device, so the runtime tiles and blends there (runtime/device_tiling.py). ``long_sequences``: its scan spreads
    one long sequence over the whole device (the native CUDA kernel's segments), so a whole frame runs at least as
    fast per pixel as its tiles: the GPU default is then whole frames (runtime/adapt.py). ``detail``: providers,
    scan, threads.
    """

    name: str
    scale: int
    device: str = "cpu"
    precision: str = "fp32"
    input_hw: tuple[int, int] | None = None
    max_batch: int | None = None
    max_tokens: int | None = None
    config: ModelConfig | None = None
    weights_sha256: str | None = None
    source: str = ""
    detail: str = ""
    tensor_io: bool = False
    long_sequences: bool = False

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def replace(self, **changes: Any) -> BackendInfo:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (reports): the config as its fields."""
        raw = asdict(self)
        raw["config"] = None if self.config is None else asdict(self.config)
        raw["input_hw"] = None if self.input_hw is None else list(self.input_hw)
        return raw


@runtime_checkable
class Backend(Protocol):
    """float32 (N, 3, h, w) RGB in [0, 1] -> float32 (N, 3, s*h, s*w), unclamped. No per-call state: one backend
    serves many threads (or it locks, and says so)."""

    info: BackendInfo

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def synchronize(self) -> None:
        """Wait for outstanding device work (no-op on the host)."""
        ...
