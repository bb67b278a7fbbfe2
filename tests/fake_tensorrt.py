"""A stand-in for TensorRT on an Orin (neither exists here), shared by the tests that check engines before they are
deserialised (holds no tests): a ``tensorrt`` module with a version, a runtime that cannot deserialise, and a CUDA
device that names itself as the CUDA runtime would on an Orin."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest

from mambaesr_edge.engine_manifest import EngineEnvironment
from mambaesr_edge.runtime.backends import tensorrt as trt_backend


def install_fake_orin(monkeypatch: pytest.MonkeyPatch, version: str = "10.3.0.30") -> EngineEnvironment:
    """Make ``import tensorrt`` give TensorRT ``version`` and the TensorRT backend see an Orin (sm 8.7)."""
    fake = types.ModuleType("tensorrt")
    fake.__version__ = version
    fake.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return None  # reached only when the manifest check passed

    fake.Logger, fake.Runtime = Logger, Runtime
    monkeypatch.setitem(sys.modules, "tensorrt", fake)

    class FakeCuda:
        def __init__(self, device_index: int = 0) -> None:
            pass

        def device_properties(self) -> tuple[str, str]:
            return "Orin", "8.7"

        def push(self) -> None:
            pass

        def pop(self) -> None:
            pass

    monkeypatch.setattr(trt_backend, "CudaRuntime", FakeCuda)
    return EngineEnvironment("Orin", "8.7", version)
