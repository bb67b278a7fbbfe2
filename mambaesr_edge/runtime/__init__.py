"""Runtime: overlapped tiled inference over PyTorch / ONNX Runtime / TensorRT, the ``Upscaler`` for apps, streaming.

Modules: ``tiling`` (pure tile planning and blending), ``source`` (the one resolver: what a model path is and which
backend, device and precision run it), ``backends`` (one per engine, each describing itself, + ``open_backend``),
``adapt`` (start-up choice, OOM shrinking, frame-rate control),
``infer`` (one image through a backend), ``frames`` (image <-> tensor), ``stream`` (threaded pipeline),
``upscaler`` (``Upscaler``), ``files`` (an image, folder or video upscaled to files: the ``upscale`` command's work),
``resize`` (Lanczos resize for ``--outscale``). The bundle format and engine staleness rule: ``mambaesr_edge.bundle``.
"""

from __future__ import annotations

from .adapt import Decision, TileSettings
from .backends import Backend, open_backend
from .tiling import BLENDS, blend_tiles, plan_tiles, tiled_apply
from .upscaler import Upscaler

__all__ = ["BLENDS", "Backend", "Decision", "TileSettings", "Upscaler", "blend_tiles", "open_backend", "plan_tiles", "tiled_apply"]
