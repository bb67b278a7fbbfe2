"""Inference backends: each describes itself (``BackendInfo``) and runs float32 (N, 3, h, w) RGB in [0, 1] to float32
(N, 3, s*h, s*w), unclamped, holding no per-call state (torch, numpy, onnxruntime: thread-safe as they are; tensorrt:
one execution context guarded by a lock).

Each backend lives in its own module and imports its heavy dependency (torch, onnxruntime, tensorrt) inside, so
importing this package costs nothing. ``open_backend`` opens the one ``runtime/source.py`` picks for a model path.
"""

from __future__ import annotations

from .base import Backend, BackendInfo
from .select import BACKENDS, open_backend, resolve_backend_name

__all__ = ["BACKENDS", "Backend", "BackendInfo", "open_backend", "resolve_backend_name"]
