"""PyTorch backend: the ``MambaSR`` module on CPU or CUDA, any scan implementation, optional fp16 or bf16 on CUDA.

fp16/bf16 use ``torch.autocast`` (weights stay fp32; LayerNorm and the scan's maths and state run in fp32,
matmuls/convs in fp16/bf16; the Triton scan reads and writes the activations in that dtype).
A module in eval mode under ``inference_mode`` keeps no state between calls, so one backend serves many threads.
``run_tensor`` takes and returns tensors on the backend's device: the runtime then cuts tiles, blends and converts
the image there (runtime/device_tiling.py, ``frames.postprocess``) instead of copying every output tile to the host.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

from ..errors import BackendError, RuntimeConfigError
from .base import BackendInfo

__all__ = ["AUTOCAST_DTYPES", "TorchBackend"]

AUTOCAST_DTYPES = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}  # precision -> torch.autocast dtype (name)

log = logging.getLogger(__name__)


class TorchBackend:
    def __init__(
        self,
        model,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        scan_impl: str | None = None,
        weights_sha256: str | None = None,
        source: str = "",
    ) -> None:
        import torch

        from ...scan import inference_impl

        if precision not in AUTOCAST_DTYPES:
            raise RuntimeConfigError(f"precision must be fp32, fp16 or bf16, got {precision!r}", hint="use --fp32 or --fp16")
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendError("CUDA was asked for but torch sees no CUDA GPU", hint="use --backend torch on cpu, or install a CUDA build of torch")
        if precision != "fp32" and dev.type != "cuda":
            raise RuntimeConfigError(f"{precision} with the torch backend needs CUDA", hint="use --fp32 on CPU (fp16 is slower there)")
        self.model = model.to(dev).eval()
        self.device = dev
        self.scan_impl = inference_impl(scan_impl or "auto", dev)  # "auto" on CUDA: the native kernel where it builds
        self.info = BackendInfo(
            name="torch", scale=int(model.scale), device=str(dev), precision=precision, config=model.config,
            weights_sha256=weights_sha256, source=source, detail=f"scan {self.scan_impl}", tensor_io=True,
            long_sequences=self.scan_impl == "cuda",  # the native kernel (CUDA only) splits a sequence
        )  # fmt: skip

    @classmethod
    def from_weights(
        cls,
        weights: str | Path | None = None,
        *,
        preset: str | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        scan_impl: str = "auto",
        param_key: str | None = None,
    ) -> TorchBackend:
        """Load weights (None: the shipped default model) with ``checkpoint.load_model``."""
        from ...checkpoint import load_model

        model, loaded = load_model(weights, preset, scan_impl=scan_impl, param_key=param_key)
        return cls(model, device=device, precision=precision, scan_impl=scan_impl, weights_sha256=loaded.sha256,
                   source=str(weights) if weights is not None else "shipped default")

    def with_precision(self, precision: str) -> TorchBackend:
        """The same module on the same device in another precision (the fp32 twin of an fp16 backend)."""
        return TorchBackend(self.model, device=str(self.device), precision=precision, scan_impl=self.scan_impl,
                            weights_sha256=self.info.weights_sha256, source=self.info.source)

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)  # (N, 3, h, w)
        return self.run_tensor(x).cpu().numpy()

    def run_tensor(self, x):
        """(N, 3, h, w) float32 on ``self.device`` -> (N, 3, s*h, s*w) float32 there, no host copy.

        Its presence makes the runtime tile and blend on ``self.device`` (``infer.on_device``, ``device_tiling``).
        """
        import torch

        amp = AUTOCAST_DTYPES[self.info.precision]
        autocast = torch.autocast("cuda", dtype=getattr(torch, amp)) if amp else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            y = self.model(x, scan_impl=self.scan_impl)  # (N, 3, s*h, s*w)
        return y.float()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def __repr__(self) -> str:
        return f"TorchBackend(device={self.device}, precision={self.info.precision}, scale={self.info.scale})"
