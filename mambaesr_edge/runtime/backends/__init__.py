"""Inference backends behind one small protocol, and ``open_backend`` to pick one from a path.

Each backend lives in its own module and imports its heavy dependency (torch, onnxruntime, tensorrt) inside, so
importing this package costs nothing. All of them take float32 (N, 3, h, w) RGB in [0, 1] and return float32
(N, 3, s*h, s*w), unclamped, and hold no per-call state (torch, onnxruntime: thread-safe as they are; tensorrt: one
execution context guarded by a lock).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from .select import BACKENDS, open_backend, resolve_backend_name

__all__ = ["BACKENDS", "Backend", "open_backend", "resolve_backend_name"]


@runtime_checkable
class Backend(Protocol):
    name: str  # "torch", "onnxruntime", "tensorrt"
    scale: int
    input_hw: tuple[int, int] | None  # fixed (h, w) the backend needs, or None for any size
    max_batch: int | None  # largest batch per call, or None for any

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, h, w) in [0, 1] -> float32 (N, 3, s*h, s*w)."""
        ...

    def synchronize(self) -> None:
        """Wait for outstanding device work (no-op on CPU)."""
        ...


# Optional (torch): ``device`` (a torch.device) and ``run_tensor(x)``, float32 (N, 3, h, w) tensor on that device ->
# float32 (N, 3, s*h, s*w) there. A backend that has it is tiled, blended and converted on its device
# (runtime.infer.on_device, runtime/device_tiling.py); the others on the host in numpy.
