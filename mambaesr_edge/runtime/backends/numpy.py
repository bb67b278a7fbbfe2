"""numpy backend: the network without torch (``model_numpy.NumpyMambaSR``), CPU, fp32.

The default for CPU inference of weights that carry their config (our .safetensors, the shipped model) with the
single raster scan order, when nothing asks for torch (``open_backend``: no backend, device cpu, fp32, scan
"auto"): a one-image ``upscale`` then never imports torch, which alone takes longer on 2 cores than the
whole upscale of a 128x128 image (benchmarks/cpu_upscale.py). Holds no per-call state (thread-safe).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ...errors import MambaESRError, WeightsError
from ...fileio import sha256_file
from ...model_numpy import NumpyMambaSR, read_numpy_weights, supports
from ...presets import ModelConfig
from ...resources import default_weights_path
from .base import BackendInfo

__all__ = ["NumpyBackend", "numpy_config"]

log = logging.getLogger(__name__)


def numpy_config(weights: str | Path | None, preset: str | None) -> ModelConfig | None:
    """The config the numpy backend would run for these weights, or None when it should not (torch runs them).

    It runs .safetensors files (None: the shipped default) that carry their own config (written with the weights by
    ``checkpoint.save_weights``, so the two fit) with the single raster scan order. With ``preset`` the weights may
    not fit it: torch's loader checks that and names what differs."""
    path = Path(weights) if weights is not None else default_weights_path()
    if preset is not None or path.suffix.lower() != ".safetensors" or not path.is_file():
        return None
    try:
        _, config = read_numpy_weights(path, header_only=True)
    except MambaESRError:  # unreadable or odd: torch's loader gives the full error
        return None
    return config if config is not None and supports(config) else None


class NumpyBackend:
    def __init__(self, model: NumpyMambaSR, *, weights_sha256: str | None = None, source: str = "") -> None:
        self.model = model
        self.info = BackendInfo(
            name="numpy", scale=int(model.scale), config=model.config, weights_sha256=weights_sha256, source=source,
            detail=f"{model.threads} thread(s)",
        )  # fmt: skip

    @classmethod
    def from_weights(cls, weights: str | Path | None = None, *, threads: int | None = None) -> NumpyBackend:
        """Load .safetensors weights that carry their config (None: the shipped default).

        ``threads``: threads the scan's channels are split over (None: 1, as fast or faster on 2 cores and never
        hurt by other processes' load: benchmarks/cpu_upscale.py --levers numpy)."""
        path = Path(weights) if weights is not None else default_weights_path()
        arrays, config = read_numpy_weights(path)
        if config is None:
            raise WeightsError(f"{path.name} carries no model config", hint="use --backend torch (with --preset)")
        log.info("numpy backend: %s", path.name)
        return cls(NumpyMambaSR(config, arrays, threads=threads or 1), weights_sha256=sha256_file(path),
                   source=str(weights) if weights is not None else "shipped default")

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.model(np.ascontiguousarray(batch, dtype=np.float32))

    def synchronize(self) -> None:
        """Computed on the host: nothing to wait for."""

    def __repr__(self) -> str:
        return f"NumpyBackend(scale={self.info.scale}, threads={self.model.threads})"
