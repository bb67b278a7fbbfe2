"""Shared fixtures. Data tests find ../shared (or $MAMBAESR_SHARED) and skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Fixtures that read ../shared: a test using one (directly or through another fixture) is marked `data` here, and
# also by hand (tests/test_data_markers.py fails on a test without the explicit mark, so `-m "not data"` reads right
# in the source too).
DATA_FIXTURES = frozenset({"shared_dir", "benchmark_dir", "dvmsr_weights"})


def _shared_dir() -> Path | None:
    env = os.environ.get("MAMBAESR_SHARED")
    candidate = Path(env) if env else REPO_ROOT.parent / "shared"
    return candidate if (candidate / "datasets").is_dir() else None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = _shared_dir()
    if path is None:
        pytest.skip("shared data not found: set MAMBAESR_SHARED=/path/to/shared (holding datasets/ and weights/)")
    return path


@pytest.fixture(scope="session")
def benchmark_dir(shared_dir: Path) -> Path:
    return shared_dir / "datasets" / "benchmark"


@pytest.fixture(scope="session")
def dvmsr_weights(shared_dir: Path) -> Path:
    return shared_dir / "weights" / "dvmsr" / "team07_DVMSR.pth"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is visible to torch")
    skip_trt = pytest.mark.skip(reason="needs the tensorrt Python package (Jetson / NVIDIA GPU machines)")
    skip_jetson = pytest.mark.skip(reason="needs a Jetson device (/etc/nv_tegra_release absent)")
    has_cuda = torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401

        has_trt = True
    except ImportError:
        has_trt = False
    is_jetson = Path("/etc/nv_tegra_release").exists()
    for item in items:
        if DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.data)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(skip_trt)
        if "jetson" in item.keywords and not is_jetson:
            item.add_marker(skip_jetson)
