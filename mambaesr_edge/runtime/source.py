"""Where a model comes from and what runs it: the one resolver behind ``open_backend``, ``Upscaler.from_path`` /
``from_profile``, ``eval`` and ``bench``.

``classify(path)`` sorts a model path once into a ``ModelSource`` (the suffix table lives here and nowhere else):

    None                          DEFAULT   the shipped default weights
    a model name (models.py)      WEIGHTS   that shipped model's weights (a name that is not an existing path)
    .safetensors / .pth / .pt     WEIGHTS
    .onnx                         ONNX
    .engine / .plan / .trt        ENGINE    (its manifest beside it: NAME.json)
    folder with bundle.json       BUNDLE

``plan_backend(source, ...)`` picks the backend, device and precision, and says in ``BackendPlan.note`` (one line)
when it runs something other than what a device profile asked for:

- backend: the one asked for; else an ENGINE runs in TensorRT, an ONNX file in ONNX Runtime; a BUNDLE in TensorRT
  when ``tensorrt`` imports here and the bundle targets it (an engine or build_engine.sh in it), else in ONNX
  Runtime; WEIGHTS / DEFAULT on the CPU in fp32 in numpy (no torch import) unless torch is asked for (``backend``,
  a preset, a scan other than "auto", a BasicSR key) or the weights need it, else in torch. A profile changes only
  the device and precision for weights: they are not an export (the note says so, and how to export, when the
  profile deploys TensorRT or needs a GPU this machine lacks).
- device: the one asked for; else the profile's (auto: CUDA when the backend can use it here); else the CPU.
- precision: the one asked for; else the profile's or the bundle's; fp16 from a profile or bundle becomes fp32 on
  the CPU (asked for explicitly: ONNX Runtime runs a bundle's fp16 graph there, torch and numpy refuse it).

Stale or missing engines are REFUSED, with and without a profile (``EngineMismatchError`` from the TensorRT
backend, hint: build_engine.sh, or --backend onnxruntime). A machine with TensorRT is a deployment target: quietly
running the ONNX graph instead (often on the CPU, 10-100x slower) would hide a broken deployment that one command
fixes. Only where TensorRT is not installed at all does a bundle run its ONNX graph, with the note saying so.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..bundle import BUILD_SCRIPT_FILE, Bundle, is_bundle, read_bundle
from ..errors import BackendError
from ..models import get_model, looks_like_name
from ..profiles import RUNTIMES, DeviceProfile
from ..resources import model_weights_path

__all__ = [
    "BACKEND_ALIASES",
    "SUFFIXES",
    "BackendPlan",
    "ModelSource",
    "SourceKind",
    "classify",
    "cuda_usable",
    "normalise_backend",
    "plan_backend",
    "tensorrt_installed",
]

log = logging.getLogger(__name__)


class SourceKind(str, Enum):
    DEFAULT = "default"
    WEIGHTS = "weights"
    ONNX = "onnx"
    ENGINE = "engine"
    BUNDLE = "bundle"


SUFFIXES: dict[str, SourceKind] = {
    ".safetensors": SourceKind.WEIGHTS,
    ".pth": SourceKind.WEIGHTS,
    ".pt": SourceKind.WEIGHTS,
    ".onnx": SourceKind.ONNX,
    ".engine": SourceKind.ENGINE,
    ".plan": SourceKind.ENGINE,
    ".trt": SourceKind.ENGINE,
}
BACKENDS = ("torch", "numpy", "onnxruntime", "tensorrt")
BACKEND_ALIASES = {
    "pytorch": "torch",
    "ort": "onnxruntime",
    "onnx": "onnxruntime",
    "onnxruntime-cpu": "onnxruntime",
    "onnxruntime-cuda": "onnxruntime",
    "trt": "tensorrt",
}
_AUTOMATIC = {SourceKind.ENGINE: "tensorrt", SourceKind.ONNX: "onnxruntime"}


@dataclass(frozen=True)
class ModelSource:
    kind: SourceKind
    path: Path | None = None  # None: the shipped default weights
    bundle: Bundle | None = None  # read and validated, for BUNDLE
    name: str | None = None  # the registered model name it was given as (models.py), if any

    @property
    def label(self) -> str:
        if self.name is not None:
            return f"model {self.name}"
        return str(self.path) if self.path is not None else "the shipped default model"

    @property
    def is_weights(self) -> bool:
        return self.kind in (SourceKind.DEFAULT, SourceKind.WEIGHTS)


@dataclass(frozen=True)
class BackendPlan:
    backend: str  # torch, numpy, onnxruntime, tensorrt
    device: str  # cpu, cuda, cuda:N, tensorrt (ONNX Runtime's TensorRT provider)
    precision: str  # fp32, fp16
    note: str = ""  # one line for the user when this is not what the profile asked for


def normalise_backend(name: str) -> str:
    """A backend name or alias -> one of BACKENDS (BackendError naming them otherwise)."""
    key = BACKEND_ALIASES.get(name.lower(), name.lower())
    if key not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}", hint=f"use one of {', '.join(BACKENDS)}")
    return key


def classify(model: str | Path | None) -> ModelSource:
    """Sort a model path by what it is (no file is opened but a bundle's bundle.json). A model name (models.py) that
    is not an existing path means that shipped model's weights; an unknown or untrained name is an error listing
    the names."""
    if model is None:
        return ModelSource(SourceKind.DEFAULT)
    path = Path(model)
    if is_bundle(path):
        return ModelSource(SourceKind.BUNDLE, path, read_bundle(path))
    if looks_like_name(str(model)) and not path.exists():
        name = get_model(str(model)).name  # UnknownModelError with the names for an unknown one
        return ModelSource(SourceKind.WEIGHTS, model_weights_path(name), name=name)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is not None:
        return ModelSource(kind, path)
    if path.is_dir():
        raise BackendError(f"{path} is a folder without bundle.json", hint="pass an export bundle, a weights file or an .onnx")
    raise BackendError(
        f"cannot tell the backend from {path.name!r}",
        hint="use .safetensors/.pth (torch), .onnx (onnxruntime), .engine/.plan/.trt (tensorrt) or a bundle folder, or pass --backend",
    )


def tensorrt_installed() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def cuda_usable(backend: str) -> bool:
    """Whether ``backend`` can use a CUDA GPU here (imports nothing heavy when its package is absent)."""
    if backend == "numpy":
        return False
    if backend == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None:
            return False
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if backend == "tensorrt":
        return tensorrt_installed()
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def _targets_tensorrt(bundle: Bundle) -> bool:
    return bundle.engine_path.is_file() or (bundle.root / BUILD_SCRIPT_FILE).is_file()


def plan_backend(
    source: ModelSource,
    *,
    backend: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    profile: DeviceProfile | None = None,
    wants_torch: bool = False,
    numpy_runs: bool = True,
) -> BackendPlan:
    """Backend, device and precision for ``source`` (rules in the module docstring).

    ``wants_torch``: a preset, a scan implementation or a BasicSR key was given. ``numpy_runs``: the numpy backend
    can run these weights (numpy_config)."""
    notes: list[str] = []
    runtime = RUNTIMES[profile.backend] if profile is not None else None
    name = normalise_backend(backend) if backend else _automatic(source, profile, notes)
    if name in ("torch", "numpy") and not source.is_weights:
        holds = "no PyTorch weights" if source.kind == SourceKind.BUNDLE else "no weights torch can load"
        raise BackendError(f"{source.label} holds {holds}", hint="use --backend onnxruntime or pass the .safetensors")
    weights_off_profile = runtime is not None and source.is_weights and runtime[0] != "torch"
    wanted = device or (runtime[1] if runtime else "cpu")
    if weights_off_profile and device is None:
        wanted = "auto"  # weights are not an export: torch on the GPU when there is one, no note of its own
    substituted = bool(notes)  # the profile's backend is missing: the device goes into that same line
    chosen_device = _device(name, wanted, explicit=device is not None, profile=profile, notes=[] if substituted else notes)
    if substituted:
        notes[-1] += f" on {'the CPU' if chosen_device == 'cpu' else chosen_device}"
    chosen_precision = precision or (profile.precision if profile is not None else None)
    chosen_precision = chosen_precision or (source.bundle.precision if source.bundle is not None else "fp32")
    if precision is None and chosen_precision == "fp16" and chosen_device == "cpu":
        log.info("precision fp16 from the %s ignored on the CPU: running fp32", "profile" if profile else "bundle")
        chosen_precision = "fp32"
    if name == "torch" and backend is None and source.is_weights and not wants_torch and numpy_runs:
        if chosen_device == "cpu" and chosen_precision == "fp32":
            name = "numpy"
    if weights_off_profile:  # said out loud where the profile's deployment needs what weights cannot give here
        line = (f"profile {profile.name} deploys {runtime[0]} from an export bundle (mambaesr-edge export --device "
                f"{profile.name}); {source.label} runs in {name} on {chosen_device} ({chosen_precision}) here")
        if runtime[0] == "tensorrt" or (runtime[1] == "cuda" and chosen_device == "cpu"):
            notes.insert(0, line)
        else:
            log.info("%s", line)
    return BackendPlan(name, chosen_device, chosen_precision, "; ".join(notes))


def _automatic(source: ModelSource, profile: DeviceProfile | None, notes: list[str]) -> str:
    if source.kind in _AUTOMATIC:
        return _AUTOMATIC[source.kind]
    if source.kind == SourceKind.BUNDLE:
        assert source.bundle is not None
        if not _targets_tensorrt(source.bundle):
            return "onnxruntime"
        if tensorrt_installed():
            return "tensorrt"
        where = f"profile {profile.name} runs TensorRT" if profile is not None else f"bundle {source.label} targets TensorRT"
        notes.append(f"{where}, which is not installed here: running its ONNX graph in ONNX Runtime")
        return "onnxruntime"
    return "torch"


def _device(name: str, wanted: str, *, explicit: bool, profile: DeviceProfile | None, notes: list[str]) -> str:
    if name == "tensorrt":
        return wanted if wanted.startswith("cuda:") else "cuda"
    if name == "numpy":
        return "cpu"
    if wanted == "auto" or (wanted.startswith("cuda") and not explicit):
        if cuda_usable(name):
            return "cuda" if wanted == "auto" else wanted
        if wanted != "auto" and profile is not None:
            notes.append(f"profile {profile.name} runs on CUDA, which {name} cannot use here: running on the CPU")
        return "cpu"
    return wanted
