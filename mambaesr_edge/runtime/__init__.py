"""Runtime: overlapped tiled inference over PyTorch / ONNX Runtime / TensorRT, the ``Upscaler`` for apps, streaming.

Modules: ``tiling`` (pure tile planning and blending), ``backends`` (one per engine + ``open_backend``), ``bundle``
(export bundle reader, engine manifest check), ``adapt`` (start-up choice, OOM shrinking, frame-rate control),
``infer`` (one image through a backend), ``frames`` (image <-> tensor), ``stream`` (threaded pipeline),
``upscaler`` (``Upscaler``), ``files`` (an image, folder or video upscaled to files: the ``upscale`` command's work),
``resize`` (Lanczos resize for ``--outscale``).
"""

from __future__ import annotations

from .adapt import Decision, TileSettings
from .backends import Backend, open_backend
from .tiling import BLENDS, blend_tiles, plan_tiles, tiled_apply
from .upscaler import Upscaler

__all__ = ["BLENDS", "Backend", "Decision", "TileSettings", "Upscaler", "blend_tiles", "open_backend", "plan_tiles", "tiled_apply"]
