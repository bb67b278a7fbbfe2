"""What machine a measurement ran on, and with what (for bench, export and benchmark reports); standard library only."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REPORTED_PACKAGES = ("numpy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxslim", "tensorrt")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Platform, CPU, Python, and the GPU (when torch is already loaded) or Jetson release (when there is one)."""
    info: dict[str, Any] = {"platform": platform.platform(), "cpu": cpu_model(), "cpus": os.cpu_count(),
                            "python": platform.python_version()}  # fmt: skip
    torch = sys.modules.get("torch")  # only when a backend already loaded it
    if torch is not None and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    if Path("/etc/nv_tegra_release").is_file():
        info["nv_tegra_release"] = Path("/etc/nv_tegra_release").read_text().strip().splitlines()[0]
    return info


def package_versions(packages: tuple[str, ...] = REPORTED_PACKAGES) -> dict[str, str]:
    """mambaesr_edge's version (also from a checkout that is not pip-installed) and those of ``packages`` installed."""
    from . import __version__

    found = {"mambaesr_edge": __version__}
    for package in packages:
        try:
            found[package.replace("-", "_")] = version(package)
        except PackageNotFoundError:
            continue
    return found


def load_average() -> list[float] | None:
    """1/5/15-minute load averages (other work on the machine skews CPU timings); None where the OS has none."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
