"""Device profiles: one TOML file per target device (package data), loaded into a validated frozen dataclass.

A profile names how the model is deployed on a device (backend, precision, tile shape, TensorRT builder settings),
what software the device is expected to run (JetPack / TensorRT / CUDA, compute capability), how power is read, and
the peak numbers the graph cost model uses (bandwidth, FLOP/s). Each shipped file cites its public sources.

    load_profile("orin-nano")            # a shipped profile by name
    load_profile("path/to/my-board.toml")  # or any file with the same fields
    list_profiles()                      # names of the shipped profiles, sorted
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (JetPack 6's Ubuntu 22.04): the tomli backport
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "POWER_SAMPLERS",
    "RUNTIMES",
    "DeviceProfile",
    "list_profiles",
    "load_profile",
    "profile_from_dict",
    "profiles_dir",
]

BACKENDS = ("tensorrt", "onnxruntime-cpu", "onnxruntime-cuda", "torch")
# a profile's `backend` -> (runtime backend, device) it runs on; "auto": CUDA when usable, else the CPU
RUNTIMES: dict[str, tuple[str, str]] = {
    "tensorrt": ("tensorrt", "cuda"),
    "onnxruntime-cpu": ("onnxruntime", "cpu"),
    "onnxruntime-cuda": ("onnxruntime", "cuda"),
    "torch": ("torch", "auto"),
}
assert set(RUNTIMES) == set(BACKENDS)
PRECISIONS = ("fp16", "fp32")
POWER_SAMPLERS = ("tegrastats", "jtop", "nvml", "none")
MIN_TILE = 8
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_VERSION_RE = re.compile(r"^(\d+(\.\d+)*)?$")  # "", "10", "10.3", "8.5.2"
_CC_RE = re.compile(r"^(\d+\.\d+)?$")  # "", "8.7"


@dataclass(frozen=True)
class DeviceProfile:
    """One target device. Tile and overlap are in LR pixels; peaks are per second; memory in MiB."""

    name: str
    description: str
    backend: str
    precision: str
    tile: int
    overlap: int
    batch: int
    workspace_mib: int
    builder_optimization_level: int
    scan_plugin: bool  # TensorRT bundles run the scan as one custom node (the csrc/ IPluginV3 plugin; TensorRT >= 10)
    jetpack: str
    tensorrt: str
    cuda: str
    compute_capability: str
    dla: bool
    power_modes: tuple[str, ...]
    power_sampler: str
    memory_budget_mib: int
    peak_bandwidth_gbs: float
    peak_tflops_fp16: float
    peak_tflops_fp32: float

    @property
    def runtime_backend(self) -> str:
        """The runtime backend this profile deploys with: tensorrt, onnxruntime or torch."""
        return RUNTIMES[self.backend][0]

    @property
    def runtime_device(self) -> str:
        """Where that backend runs: cuda, cpu, or auto (CUDA when usable)."""
        return RUNTIMES[self.backend][1]

    @property
    def peak_tflops(self) -> float:
        """The peak that applies to the profile's precision."""
        return self.peak_tflops_fp16 if self.precision == "fp16" else self.peak_tflops_fp32

    def input_shape(self, batch: int | None = None, tile: int | None = None) -> tuple[int, int, int, int]:
        """The static (N, 3, tile, tile) input shape of this profile's engine/ONNX graph."""
        t = tile or self.tile
        return (batch or self.batch, 3, t, t)

    def to_dict(self) -> dict[str, object]:
        raw = dataclasses.asdict(self)
        raw["power_modes"] = list(self.power_modes)
        return raw


# field name -> accepted Python types after TOML parsing (bool is checked apart: it is an int subclass)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "description": (str,),
    "backend": (str,),
    "precision": (str,),
    "tile": (int,),
    "overlap": (int,),
    "batch": (int,),
    "workspace_mib": (int,),
    "builder_optimization_level": (int,),
    "scan_plugin": (bool,),
    "jetpack": (str,),
    "tensorrt": (str,),
    "cuda": (str,),
    "compute_capability": (str,),
    "dla": (bool,),
    "power_modes": (list,),
    "power_sampler": (str,),
    "memory_budget_mib": (int,),
    "peak_bandwidth_gbs": (int, float),
    "peak_tflops_fp16": (int, float),
    "peak_tflops_fp32": (int, float),
}
assert set(_FIELD_TYPES) == {f.name for f in dataclasses.fields(DeviceProfile)}


def profiles_dir() -> Path:
    """The folder of the shipped profile files (package data)."""
    return Path(str(importlib.resources.files("mambaesr_edge") / "profiles"))


def list_profiles() -> list[str]:
    """Names of the shipped profiles, sorted."""
    return sorted(p.stem for p in profiles_dir().glob("*.toml"))


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """A shipped profile by name (e.g. "orin-nano"), or a profile file by path (anything ending in .toml or holding a /)."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith(".toml") or "/" in text or "\\" in text:
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"device profile file not found: {path}", hint=f"or name a shipped one: {', '.join(list_profiles())}")
    else:
        path = profiles_dir() / f"{text}.toml"
        if not path.is_file():
            raise ConfigError(f"unknown device {text!r}", hint=f"known devices: {', '.join(list_profiles())}; or pass a .toml file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"device profile {path} is not valid TOML: {exc}", hint="fix the file's syntax") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read device profile {path}: {exc}", hint="check the file's permissions/encoding") from exc
    profile = profile_from_dict(raw, source=str(path))
    if path.parent == profiles_dir() and profile.name != path.stem:
        raise ConfigError(f"device profile {path} says name = {profile.name!r}", hint=f"a shipped profile's name is its file name: {path.stem!r}")
    return profile


def profile_from_dict(raw: dict, source: str = "<dict>") -> DeviceProfile:
    """Validate a parsed profile table and build the dataclass. Every problem found is listed in one ConfigError."""
    where = f"device profile {source}"
    unknown = sorted(set(raw) - set(_FIELD_TYPES))
    missing = [name for name in _FIELD_TYPES if name not in raw]
    problems: list[str] = []
    if unknown:
        problems.append(f"unknown field(s) {', '.join(unknown)}")
    if missing:
        problems.append(f"missing field(s) {', '.join(missing)}")
    for name, types in _FIELD_TYPES.items():
        if name in raw and not _has_type(raw[name], types):
            problems.append(f"{name} must be {_type_words(types)}, got {type(raw[name]).__name__} {raw[name]!r}")
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems), hint=f"fields are: {', '.join(_FIELD_TYPES)}")
    values = dict(raw)
    values["power_modes"] = tuple(values["power_modes"])
    for name in ("peak_bandwidth_gbs", "peak_tflops_fp16", "peak_tflops_fp32"):
        values[name] = float(values[name])
    problems = _value_problems(values)
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems), hint="see the shipped profiles (mambaesr-edge profiles) for valid values")
    return DeviceProfile(**values)


def _has_type(value: object, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _type_words(types: tuple[type, ...]) -> str:
    words = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list of strings"}
    return " or ".join(dict.fromkeys(words[t] for t in types))


PLUGIN_MIN_TENSORRT = 10  # IPluginV3, and loading a plugin library by its getCreators entry point, start with 10.0
PLUGIN_MIN_COMPUTE_CAPABILITY = (7, 5)  # what CUDA 12/13 and TensorRT 10 build for (native_build.OLDEST_SM)


def _scan_plugin_problems(v: dict) -> list[str]:
    """scan_plugin = true needs the tensorrt backend, TensorRT >= 10 and a GPU of compute capability >= 7.5."""
    out = []
    if v["backend"] != "tensorrt":
        out.append(f"scan_plugin = true needs backend = 'tensorrt' (this profile's backend is {v['backend']!r})")
    major = v["tensorrt"].split(".")[0]
    if major.isdigit() and int(major) < PLUGIN_MIN_TENSORRT:
        out.append(f"scan_plugin = true needs TensorRT >= {PLUGIN_MIN_TENSORRT} (IPluginV3); this profile expects "
                   f"TensorRT {v['tensorrt']}: set scan_plugin = false")
    cc = v["compute_capability"]
    if _CC_RE.match(cc) and cc and tuple(int(x) for x in cc.split(".")) < PLUGIN_MIN_COMPUTE_CAPABILITY:
        out.append(f"scan_plugin = true needs compute capability >= 7.5, this profile's is {cc}: set scan_plugin = false")
    return out


def _value_problems(v: dict) -> list[str]:
    """Impossible or unknown values (types are already checked)."""
    out: list[str] = []

    def choice(name: str, allowed: tuple[str, ...]) -> None:
        if v[name] not in allowed:
            out.append(f"{name} {v[name]!r} is not one of {', '.join(allowed)}")

    if not _NAME_RE.match(v["name"]):
        out.append(f"name {v['name']!r} must be lower-case letters, digits and '-'")
    choice("backend", BACKENDS)
    choice("precision", PRECISIONS)
    choice("power_sampler", POWER_SAMPLERS)
    if v["tile"] < MIN_TILE:
        out.append(f"tile {v['tile']} is below the minimum of {MIN_TILE} LR pixels")
    if v["overlap"] < 0:
        out.append(f"overlap {v['overlap']} is negative")
    elif v["overlap"] * 2 >= v["tile"]:
        out.append(f"overlap {v['overlap']} must be less than half the tile ({v['tile']}): each tile needs a core of its own")
    if v["batch"] < 1:
        out.append(f"batch {v['batch']} must be >= 1")
    if v["workspace_mib"] < 0:
        out.append(f"workspace_mib {v['workspace_mib']} is negative")
    elif v["backend"] == "tensorrt" and v["workspace_mib"] == 0:
        out.append("workspace_mib must be > 0 for the tensorrt backend")
    if not 0 <= v["builder_optimization_level"] <= 5:
        out.append(f"builder_optimization_level {v['builder_optimization_level']} is outside 0-5")
    for name in ("jetpack", "tensorrt", "cuda"):
        if not _VERSION_RE.match(v[name]):
            out.append(f"{name} {v[name]!r} is not a version like '10.3' (or '' when not applicable)")
    if not _CC_RE.match(v["compute_capability"]):
        out.append(f"compute_capability {v['compute_capability']!r} is not like '8.7' (or '')")
    if v["backend"] == "tensorrt" and not v["tensorrt"]:
        out.append("tensorrt must name the expected TensorRT version for the tensorrt backend")
    if v["scan_plugin"]:
        out += _scan_plugin_problems(v)
    if v["backend"] == "onnxruntime-cpu" and v["precision"] != "fp32":
        out.append("onnxruntime-cpu runs fp32 only: set precision = 'fp32'")
    if any(not isinstance(m, str) or not m for m in v["power_modes"]):
        out.append(f"power_modes must be non-empty strings, got {list(v['power_modes'])!r}")
    if v["memory_budget_mib"] <= 0:
        out.append(f"memory_budget_mib {v['memory_budget_mib']} must be > 0")
    for name in ("peak_bandwidth_gbs", "peak_tflops_fp16", "peak_tflops_fp32"):
        if not v[name] > 0 or v[name] != v[name] or v[name] == float("inf"):
            out.append(f"{name} {v[name]} must be a positive finite number")
    return out
