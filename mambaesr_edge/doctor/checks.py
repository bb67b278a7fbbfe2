"""The environment checks: pure functions of the gathered `Facts` and the chosen device profile, each one `Check`.

A check passes, fails (with the fix) or is skipped (with the reason: not needed by this profile, or not knowable
here). A failed check with ``required=False`` is reported but does not fail the run (a missing power sampler, little
free memory): the device can still deploy the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..profiles import DeviceProfile, list_profiles, load_profile
from . import jetson
from .facts import Facts

__all__ = ["FAIL", "PASS", "SKIP", "STATUSES", "Check", "ProfileChoice", "choose_profile", "detect_profile", "environment_checks", "tensorrt_matches"]

PASS, FAIL, SKIP = "pass", "fail", "skip"
STATUSES = (PASS, FAIL, SKIP)
MIN_PYTHON = (3, 10)
MIN_DISK_MIB = 512  # a bundle is a few MB, an engine tens of MB; below this the report itself may not fit
VENV_FIX = "use the system python3, or a venv made with --system-site-packages (pip cannot install TensorRT on Jetson)"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report. ``fix`` is set for a failure; ``data`` holds its numbers for doctor.json."""

    name: str
    status: str  # pass | fail | skip
    detail: str
    fix: str = ""
    required: bool = True
    group: str = "environment"  # environment | pipeline
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"check {self.name}: status {self.status!r} is not one of {STATUSES}")
        if self.status == FAIL and not self.fix:
            raise ValueError(f"check {self.name} failed without a fix")

    @property
    def blocks(self) -> bool:
        """Whether this check makes the run fail (exit 1)."""
        return self.status == FAIL and self.required

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "group": self.group, "status": self.status, "required": self.required,
                "detail": self.detail, "fix": self.fix, "data": dict(self.data)}  # fmt: skip


@dataclass(frozen=True)
class ProfileChoice:
    profile: DeviceProfile
    source: str  # "--device", "bundle" or "detected"
    detected: str | None  # the profile this machine looks like (None: an unknown Jetson board)
    reason: str  # why it looks like that


def detect_profile(facts: Facts) -> tuple[str | None, str]:
    """(shipped profile this machine looks like, why). None for a Jetson board no shipped profile describes."""
    if facts.is_jetson:
        name = jetson.profile_for_board(facts.board)
        board = facts.board or "unknown board"
        return name, f"board {board!r}, L4T R{facts.l4t or '?'}"
    if facts.gpu_name and facts.tensorrt:
        return "desktop-gpu", f"GPU {facts.gpu_name} with TensorRT {facts.tensorrt}"
    if facts.gpu_name:
        return "x86-cpu", f"GPU {facts.gpu_name} but no TensorRT (pip install tensorrt, then --device desktop-gpu)"
    return "x86-cpu", "no Jetson, no CUDA GPU"


def choose_profile(device: str | None, bundle_profile: str | None, facts: Facts) -> ProfileChoice:
    """--device wins, then the bundle's profile, then the one detected (x86-cpu for an unknown Jetson board)."""
    detected, reason = detect_profile(facts)
    if device is not None:
        return ProfileChoice(load_profile(device), "--device", detected, reason)
    if bundle_profile:
        return ProfileChoice(load_profile(bundle_profile), "bundle", detected, reason)
    return ProfileChoice(load_profile(detected or "x86-cpu"), "detected", detected, reason)


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def tensorrt_matches(found: str, expected: str) -> bool:
    """TensorRT ``found`` is the major.minor ``expected`` names ('10.3.0.30' matches '10.3'; a profile saying '10' takes any 10.x)."""
    parts = min(2, len(expected.split(".")))
    return found.split(".")[:parts] == expected.split(".")[:parts]


def _ok(name: str, detail: str, **data: Any) -> Check:
    return Check(name, PASS, detail, data=data)


def _skip(name: str, detail: str, **data: Any) -> Check:
    return Check(name, SKIP, detail, data=data)


def _fail(name: str, detail: str, fix: str, *, required: bool = True, **data: Any) -> Check:
    return Check(name, FAIL, detail, fix, required, data=data)


def check_python(facts: Facts) -> Check:
    version = tuple(int(p) for p in facts.python.split(".")[:2])
    if version < MIN_PYTHON:
        return _fail("python", f"Python {facts.python}", f"install Python {'.'.join(map(str, MIN_PYTHON))} or newer")
    return _ok("python", f"Python {facts.python} on {facts.arch} ({facts.platform})", version=facts.python)


def check_torch(facts: Facts, needed: bool) -> Check:
    if facts.torch is None:
        why = f"torch cannot be imported ({facts.torch_error})"
        if needed:
            return _fail("torch", why, "pip install torch (on Jetson: NVIDIA's JetPack wheel), or pass --bundle DIR exported elsewhere")
        return _skip("torch", f"{why}; not needed with --bundle")
    cuda = "CUDA available" if facts.torch_cuda else "no CUDA (CPU build or no GPU)"
    return _ok("torch", f"torch {facts.torch}, {cuda}", version=facts.torch, cuda=facts.torch_cuda)


def check_onnxruntime(facts: Facts, profile: DeviceProfile) -> Check:
    if facts.onnxruntime is None:
        return _fail("onnxruntime", f"onnxruntime cannot be imported ({facts.onnxruntime_error}): the ONNX path and parity need it",
                     "pip install 'mambaesr-edge[export]' (on a CUDA machine: [onnxruntime-gpu])")
    providers = ", ".join(facts.ort_providers) or "none"
    if profile.backend == "onnxruntime-cuda" and "CUDAExecutionProvider" not in facts.ort_providers:
        return _fail("onnxruntime", f"onnxruntime {facts.onnxruntime} has no CUDAExecutionProvider (providers: {providers})",
                     "pip install 'mambaesr-edge[onnxruntime-gpu]' in place of onnxruntime")
    return _ok("onnxruntime", f"onnxruntime {facts.onnxruntime}, providers: {providers}", version=facts.onnxruntime,
               providers=list(facts.ort_providers))  # fmt: skip


def check_tensorrt(facts: Facts, profile: DeviceProfile) -> Check:
    if facts.tensorrt:
        return _ok("tensorrt", f"TensorRT {facts.tensorrt} (Python)", version=facts.tensorrt, system=facts.tensorrt_system)
    if profile.backend != "tensorrt":
        return _skip("tensorrt", f"not installed ({facts.tensorrt_error or 'no module'}); profile {profile.name} runs {profile.backend}")
    if facts.tensorrt_system:
        return _fail("tensorrt", f"TensorRT {facts.tensorrt_system} is installed (dpkg) but this Python cannot import it ({facts.tensorrt_error})",
                     VENV_FIX, system=facts.tensorrt_system)
    if facts.is_jetson:
        fix = "install JetPack's TensorRT: sudo apt install nvidia-jetpack (TensorRT, cuDNN, CUDA), then " + VENV_FIX
    else:
        fix = f"pip install 'mambaesr-edge[tensorrt]' on a machine with an NVIDIA GPU, or run this on the {profile.name} itself"
    return _fail("tensorrt", f"TensorRT is not installed ({facts.tensorrt_error or 'no module'}); profile {profile.name} deploys it", fix)


def check_cuda(facts: Facts) -> Check:
    if not facts.nvcc:
        toolkit = f"CUDA {facts.cuda_toolkit} toolkit without nvcc" if facts.cuda_toolkit else "no CUDA toolkit"
        return _skip("cuda", f"{toolkit}: the native scan plugin cannot be built here", toolkit=facts.cuda_toolkit)
    return _ok("cuda", f"CUDA {facts.cuda_toolkit or '?'} toolkit, nvcc {facts.nvcc}", toolkit=facts.cuda_toolkit, nvcc=facts.nvcc)


def check_gpu(facts: Facts, profile: DeviceProfile) -> Check:
    if facts.gpu_name:
        return _ok("gpu", f"{facts.gpu_name}, compute capability {facts.compute_capability}", gpu_name=facts.gpu_name,
                   compute_capability=facts.compute_capability)  # fmt: skip
    if profile.runtime_device != "cuda":
        return _skip("gpu", f"no CUDA GPU found; profile {profile.name} runs on the {profile.runtime_device.upper()}")
    if facts.is_jetson:
        fix = "pip install 'mambaesr-edge[cuda-python]' (or [pycuda]): the TensorRT backend needs one of them for GPU buffers"
    else:
        fix = "check the NVIDIA driver (nvidia-smi) and install cuda-python or pycuda; or use --device x86-cpu on this machine"
    return _fail("gpu", f"no CUDA GPU found (cuda-python, pycuda and torch.cuda all failed); profile {profile.name} needs one", fix)


def check_jetson(facts: Facts) -> Check:
    if not facts.is_jetson:
        return _skip("jetson", "not a Jetson (no /etc/nv_tegra_release)")
    trt = jetson.tensorrt_for_jetpack(facts.jetpack) if facts.jetpack else None
    detail = (f"{facts.board or 'Jetson'}: L4T R{facts.l4t or '?'}, JetPack {facts.jetpack or '?'} ({facts.jetpack_source or 'unknown'})"
              + (f", which ships TensorRT {trt}" if trt else ""))
    return _ok("jetson", detail, board=facts.board, l4t=facts.l4t, jetpack=facts.jetpack, jetpack_tensorrt=trt)


def check_power_mode(facts: Facts, profile: DeviceProfile) -> Check:
    if not facts.is_jetson:
        return _skip("power-mode", "not a Jetson (nvpmodel exists only there)")
    if facts.power_mode is None:
        return _fail("power-mode", f"power mode unknown: {facts.power_mode_note}",
                     "nvpmodel comes with JetPack; inside a container run doctor on the host", required=False)
    listed = facts.power_mode in profile.power_modes
    detail = f"{facts.power_mode}" + (f" (nvpmodel mode {facts.power_mode_id})" if facts.power_mode_id is not None else "")
    if not listed and profile.power_modes:
        detail += f"; profile {profile.name} lists {', '.join(profile.power_modes)}"
    return _ok("power-mode", detail, mode=facts.power_mode, mode_id=facts.power_mode_id)


def check_clocks(facts: Facts) -> Check:
    if not facts.is_jetson:
        return _skip("jetson-clocks", "not a Jetson")
    if facts.clocks_locked is None:
        return _skip("jetson-clocks", f"unknown: {facts.clocks_note}")
    mhz = facts.gpu_clock_mhz
    if facts.clocks_locked:
        return _ok("jetson-clocks", f"on: GPU clock pinned at {mhz['max']:.0f} MHz", locked=True, gpu_clock_mhz=mhz)
    return _ok("jetson-clocks", f"off: GPU clock scales {mhz['min']:.0f}-{mhz['max']:.0f} MHz with load "
               "(for steady timings: sudo jetson_clocks)", locked=False, gpu_clock_mhz=mhz)  # fmt: skip


def check_memory(facts: Facts, profile: DeviceProfile) -> Check:
    if facts.mem_available_mib is None:
        return _skip("memory", "unknown (no MemAvailable in /proc/meminfo)")
    detail = (f"{facts.mem_available_mib:,} MiB available of {facts.mem_total_mib or 0:,} MiB; "
              f"profile {profile.name} budgets {profile.memory_budget_mib:,} MiB")
    if facts.mem_available_mib < profile.memory_budget_mib:
        return _fail("memory", detail, "close other programs (desktop, browsers), or use a profile with a smaller tile/batch",
                     required=False, available_mib=facts.mem_available_mib)  # fmt: skip
    return _ok("memory", detail, available_mib=facts.mem_available_mib, total_mib=facts.mem_total_mib)


def check_disk(facts: Facts) -> Check:
    if facts.disk_free_mib is None:
        return _skip("disk", "unknown")
    detail = f"{facts.disk_free_mib:,} MiB free at {facts.disk_path}"
    if facts.disk_free_mib < MIN_DISK_MIB:
        return _fail("disk", detail, f"free at least {MIN_DISK_MIB} MiB, or pass --out on another disk", free_mib=facts.disk_free_mib)
    return _ok("disk", detail, free_mib=facts.disk_free_mib)


def check_samplers(facts: Facts, profile: DeviceProfile) -> Check:
    works = [name for name, (ok, _) in facts.samplers.items() if ok]
    listing = "; ".join(f"{name}: {'works' if ok else detail}" for name, (ok, detail) in facts.samplers.items())
    data = {"works": works, "profile_sampler": profile.power_sampler}
    if profile.power_sampler == "none":
        return _skip("power-samplers", f"profile {profile.name} measures no power ({listing})", **data)
    if works:
        used = profile.power_sampler if profile.power_sampler in works else works[0]
        return _ok("power-samplers", f"{used} will be used ({listing})", used=used, **data)
    return _fail("power-samplers", f"no power sampler works here ({listing})",
                 "run on the Jetson host (tegrastats is absent in containers), or install jetson-stats and its service",
                 required=False, **data)  # fmt: skip


def check_profile(choice: ProfileChoice, facts: Facts) -> Check:
    """Whether this machine is what the profile describes: board, compute capability, TensorRT major.minor."""
    p = choice.profile
    how = {"--device": "from --device", "bundle": "the bundle's", "detected": "detected"}[choice.source]
    detail = f"{p.name} ({how}; this machine: {choice.reason})"
    data = {"profile": p.name, "source": choice.source, "detected": choice.detected}
    if choice.detected is None:
        return _fail("profile", f"{detail}: no shipped profile describes this Jetson",
                     f"write one: mambaesr-edge profiles show orin-nano, copy its fields to my-board.toml, then --device my-board.toml "
                     f"(shipped: {', '.join(list_profiles())})", **data)
    problems, fixes = [], []
    if choice.source != "detected" and facts.is_jetson and choice.detected != p.name:
        problems.append(f"this board matches profile {choice.detected}, not {p.name}")
        fixes.append(f"use --device {choice.detected}")
    sm = facts.compute_capability or (jetson.sm_for_board(facts.board) if facts.is_jetson else "")
    if p.compute_capability and sm and sm != p.compute_capability:
        problems.append(f"GPU compute capability {sm}, profile expects {p.compute_capability}")
        matching = [n for n in list_profiles() if load_profile(n).compute_capability == sm]
        fixes.append(f"use --device {' or '.join(matching)}" if matching else "write a profile for this GPU (--device my-gpu.toml)")
    trt = facts.tensorrt or facts.tensorrt_system
    if p.tensorrt and trt and not tensorrt_matches(trt, p.tensorrt):
        problems.append(f"TensorRT {trt}, profile expects {p.tensorrt}")
        fixes.append(_tensorrt_fix(p, trt, facts))
    data.update(compute_capability=sm or None, tensorrt=trt, expected_tensorrt=p.tensorrt or None,
                expected_compute_capability=p.compute_capability or None)
    if problems:
        return _fail("profile", f"{detail}: {'; '.join(problems)}", "; ".join(fixes), **data)
    compared = [f"sm {sm}" if sm and p.compute_capability else "", f"TensorRT {trt}" if trt and p.tensorrt else ""]
    said = ", ".join(c for c in compared if c)
    return _ok("profile", f"{detail}" + (f": matches ({said})" if said else ""), **data)


def _tensorrt_fix(profile: DeviceProfile, trt: str, facts: Facts) -> str:
    """'this JetPack 6.0 ships TensorRT 8.6.2; use --device X or upgrade to JetPack 6.1+' (X: a profile expecting it)."""
    same = [n for n in list_profiles() if load_profile(n).tensorrt and _major_minor(load_profile(n).tensorrt) == _major_minor(trt)
            and (not facts.compute_capability or load_profile(n).compute_capability in ("", facts.compute_capability))]
    use = f"use --device {' or '.join(same)}" if same else (
        f"use --device my-board.toml (a copy of profile {profile.name} with tensorrt = \"{_major_minor(trt)}\")")
    where = f"this JetPack {facts.jetpack} ships TensorRT {trt}" if facts.jetpack else f"this machine has TensorRT {trt}"
    newer = jetson.jetpacks_with_tensorrt(_major_minor(profile.tensorrt))
    upgrade = f"upgrade to JetPack {newer[0]}+" if facts.is_jetson and newer else f"install TensorRT {profile.tensorrt}"
    return f"{where}; {use} or {upgrade} (engines are built for one TensorRT release)"


def environment_checks(facts: Facts, choice: ProfileChoice, *, needs_torch: bool) -> list[Check]:
    profile = choice.profile
    return [
        check_python(facts),
        check_torch(facts, needs_torch),
        check_onnxruntime(facts, profile),
        check_tensorrt(facts, profile),
        check_cuda(facts),
        check_gpu(facts, profile),
        check_jetson(facts),
        check_power_mode(facts, profile),
        check_clocks(facts),
        check_memory(facts, profile),
        check_disk(facts),
        check_samplers(facts, profile),
        check_profile(choice, facts),
    ]
