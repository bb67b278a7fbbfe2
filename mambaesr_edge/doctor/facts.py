"""The facts `doctor` checks, gathered once from explicit sources: files read under a root folder, tools found on PATH.

``System`` is the only door to the machine: ``System.from_environ()`` reads files under ``/`` unless
``$MAMBAESR_DOCTOR_ROOT`` names another folder (tests put a fake ``etc/nv_tegra_release`` and
``sys/firmware/devicetree/base/model`` there), and runs tools (nvpmodel, jetson_clocks, dpkg-query, nvcc) found on
PATH (tests put stand-ins first on PATH). Python packages (torch, onnxruntime, tensorrt) are imported here, each in
its own guard: a package that is missing or fails to import is a fact, not a crash.

Files read (all under the root): etc/nv_tegra_release, sys/firmware/devicetree/base/model, proc/meminfo,
usr/local/cuda/version.json.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import jetson

log = logging.getLogger(__name__)

__all__ = ["DOCTOR_ROOT_ENV", "Facts", "System", "ToolRun", "gather_facts"]

DOCTOR_ROOT_ENV = "MAMBAESR_DOCTOR_ROOT"
NV_TEGRA_RELEASE = "/etc/nv_tegra_release"
DEVICE_TREE_MODEL = "/sys/firmware/devicetree/base/model"
MEMINFO = "/proc/meminfo"
CUDA_VERSION_JSON = "/usr/local/cuda/version.json"


@dataclass(frozen=True)
class ToolRun:
    """One run of a tool: where it was found, its exit code and its output (stdout + stderr)."""

    path: str
    returncode: int
    output: str


@dataclass(frozen=True)
class System:
    """Where facts come from: files under ``root``, tools on PATH (``search_path``; None: the process's PATH)."""

    root: Path = Path("/")
    search_path: str | None = None
    timeout_s: float = 15.0

    @classmethod
    def from_environ(cls, environ: Any = None) -> System:
        environ = os.environ if environ is None else environ
        root = environ.get(DOCTOR_ROOT_ENV, "")
        return cls(root=Path(root) if root else Path("/"))

    def file(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def read_text(self, absolute: str) -> str | None:
        """The file's text (NULs dropped), or None when it is absent or unreadable."""
        try:
            return self.file(absolute).read_bytes().decode("utf-8", "replace").replace("\x00", "").strip()
        except OSError:
            return None

    def which(self, name: str) -> str | None:
        return shutil.which(name, path=self.search_path)

    def run(self, name: str, *args: str) -> ToolRun | None:
        """Run tool ``name`` (found on PATH) with ``args``; None when it is not there. Never raises for the tool."""
        path = self.which(name)
        if path is None:
            return None
        try:
            done = subprocess.run([path, *args], capture_output=True, text=True, timeout=self.timeout_s, check=False,
                                  stdin=subprocess.DEVNULL)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return ToolRun(path, -1, f"could not run: {exc}")
        return ToolRun(path, done.returncode, (done.stdout + done.stderr).strip())


@dataclass(frozen=True)
class Facts:
    """What this machine is and has. None / "" = not found; the *_error fields say why where it matters."""

    python: str
    platform: str
    arch: str
    torch: str | None = None
    torch_cuda: bool = False
    torch_error: str = ""
    onnxruntime: str | None = None
    ort_providers: tuple[str, ...] = ()
    onnxruntime_error: str = ""
    tensorrt: str | None = None  # the Python module's version
    tensorrt_error: str = ""
    tensorrt_system: str | None = None  # dpkg's tensorrt package (JetPack), whether or not Python sees it
    cuda_toolkit: str | None = None
    nvcc: str | None = None
    gpu_name: str = ""
    compute_capability: str = ""
    l4t: str | None = None  # "36.4.3"
    l4t_line: str = ""
    board: str = ""  # device-tree model
    jetpack: str | None = None  # dpkg's nvidia-jetpack, else from the L4T release
    jetpack_source: str = ""  # "dpkg nvidia-jetpack" or "L4T R36.4.3"
    power_mode: str | None = None
    power_mode_id: int | None = None
    power_mode_note: str = ""  # why the power mode is unknown
    clocks_locked: bool | None = None
    clocks_note: str = ""
    gpu_clock_mhz: dict[str, float] = field(default_factory=dict)
    mem_total_mib: int | None = None
    mem_available_mib: int | None = None
    disk_free_mib: int | None = None
    disk_path: str = ""
    samplers: dict[str, tuple[bool, str]] = field(default_factory=dict)

    @property
    def is_jetson(self) -> bool:
        return bool(self.l4t or "jetson" in self.board.lower())

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["ort_providers"] = list(self.ort_providers)
        raw["samplers"] = {name: {"works": ok, "detail": detail} for name, (ok, detail) in self.samplers.items()}
        raw["is_jetson"] = self.is_jetson
        return raw


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def _torch() -> dict[str, Any]:
    try:
        import torch
    except Exception as exc:  # a broken install is a fact to report (ImportError, OSError from a missing .so ...)
        return {"torch_error": _error(exc)}
    try:
        cuda = bool(torch.cuda.is_available())
    except Exception as exc:  # a driver problem: torch imports, CUDA does not initialise
        return {"torch": torch.__version__, "torch_error": f"torch.cuda: {_error(exc)}"}
    return {"torch": torch.__version__, "torch_cuda": cuda}


def _onnxruntime() -> dict[str, Any]:
    try:
        import onnxruntime
    except Exception as exc:
        return {"onnxruntime_error": _error(exc)}
    return {"onnxruntime": onnxruntime.__version__, "ort_providers": tuple(onnxruntime.get_available_providers())}


def _tensorrt(system: System) -> dict[str, Any]:
    found: dict[str, Any] = {}
    try:
        import tensorrt

        found["tensorrt"] = str(tensorrt.__version__)
    except Exception as exc:
        found["tensorrt_error"] = _error(exc)
    dpkg = system.run("dpkg-query", "-W", "-f=${Version}", "tensorrt")
    if dpkg is not None and dpkg.returncode == 0:
        found["tensorrt_system"] = jetson.parse_dpkg_version(dpkg.output)
    return found


def _cuda(system: System) -> dict[str, Any]:
    from ..errors import DependencyMissingError
    from ..native_build import find_nvcc

    found: dict[str, Any] = {}
    try:
        found["nvcc"] = find_nvcc()
    except DependencyMissingError:
        pass
    text = system.read_text(CUDA_VERSION_JSON)
    try:
        found["cuda_toolkit"] = json.loads(text)["cuda"]["version"] if text else None
    except (ValueError, KeyError, TypeError):
        log.debug("unreadable %s", CUDA_VERSION_JSON)
    if not found.get("cuda_toolkit") and found.get("nvcc"):
        done = System(search_path=str(Path(found["nvcc"]).parent)).run("nvcc", "--version")
        release = done.output.rsplit("release ", 1)[-1].split(",")[0] if done and "release " in done.output else None
        found["cuda_toolkit"] = release
    return found


def _gpu() -> dict[str, Any]:
    from .. import gpu

    name, capability = gpu.gpu_identity()
    return {"gpu_name": name, "compute_capability": capability}


def _jetson(system: System) -> dict[str, Any]:
    found: dict[str, Any] = {}
    release = system.read_text(NV_TEGRA_RELEASE)
    if release:
        found["l4t_line"] = release.splitlines()[0]
        found["l4t"] = jetson.parse_l4t_release(release)
    found["board"] = system.read_text(DEVICE_TREE_MODEL) or ""
    dpkg = system.run("dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack")
    jetpack = jetson.parse_dpkg_version(dpkg.output) if dpkg is not None and dpkg.returncode == 0 else None
    if jetpack:
        found.update(jetpack=jetpack, jetpack_source="dpkg nvidia-jetpack")
    elif found.get("l4t"):
        found.update(jetpack=jetson.jetpack_for_l4t(found["l4t"]), jetpack_source=f"L4T R{found['l4t']}")
    return found


def _power_mode(system: System) -> dict[str, Any]:
    run = system.run("nvpmodel", "-q")
    if run is None:
        return {"power_mode_note": "nvpmodel is not on PATH"}
    mode = jetson.parse_nvpmodel(run.output)
    if mode is None:
        return {"power_mode_note": f"nvpmodel -q (exit {run.returncode}) named no mode: {run.output[-200:]!r}"}
    return {"power_mode": mode.name, "power_mode_id": mode.mode_id}


def _clocks(system: System) -> dict[str, Any]:
    run = system.run("jetson_clocks", "--show")
    if run is None:
        return {"clocks_note": "jetson_clocks is not on PATH"}
    state = jetson.parse_jetson_clocks(run.output)
    if state is None:
        why = "it needs root: sudo jetson_clocks --show" if run.returncode != 0 else "no GPU line in its output"
        return {"clocks_note": f"jetson_clocks --show (exit {run.returncode}) told nothing: {why}"}
    return {"clocks_locked": state.locked,
            "gpu_clock_mhz": {"min": state.gpu_min_mhz, "max": state.gpu_max_mhz, "current": state.gpu_current_mhz}}


def _memory(system: System) -> dict[str, Any]:
    values: dict[str, int] = {}
    for line in (system.read_text(MEMINFO) or "").splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable") and rest.split() and rest.split()[0].isdigit():
            values[key] = int(rest.split()[0]) // 1024  # kB -> MiB
    return {"mem_total_mib": values.get("MemTotal"), "mem_available_mib": values.get("MemAvailable")}


def _disk(out_dir: Path) -> dict[str, Any]:
    where = out_dir.resolve()
    while not where.exists() and where != where.parent:
        where = where.parent
    return {"disk_free_mib": shutil.disk_usage(where).free >> 20, "disk_path": str(where)}


def gather_facts(system: System, out_dir: Path) -> Facts:
    """Every fact the checks need (torch, onnxruntime and tensorrt are imported here when installed)."""
    from ..power import probe_samplers

    found: dict[str, Any] = {}
    for part in (_torch(), _onnxruntime(), _tensorrt(system), _cuda(system), _gpu(), _jetson(system), _power_mode(system),
                 _clocks(system), _memory(system), _disk(out_dir)):  # fmt: skip
        found.update(part)
    found["samplers"] = probe_samplers()
    return Facts(python=platform.python_version(), platform=platform.platform(), arch=platform.machine(),
                 **found)  # fmt: skip

