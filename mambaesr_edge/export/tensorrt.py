"""TensorRT: engine settings from a device profile, the Python-API build, the equivalent trtexec line, the engine
manifest and its staleness check. Thin on purpose; TensorRT 8.5 (JetPack 5) and 10.x (JetPack 6/7), name-based API.

Precision: for an fp16 profile the engine is built from `model_fp16.onnx` (fp16 weights/activations, scan in fp32:
the graph parity-checked in ONNX Runtime) with BuilderFlag.FP16 plus OBEY_PRECISION_CONSTRAINTS, and every layer
whose name starts with `fp32/` (the nodes that compute in float32 in that graph, see onnx.mark_fp32_nodes) pinned to
fp32, so TensorRT cannot move the scan's exp/recurrence to fp16 (fp16 exp overflows; REFERENCE section 4).
trtexec gets the same through --precisionConstraints=obey --layerPrecisions=fp32/*:fp32.

Engines are not portable across GPUs or TensorRT versions: `model.engine.json` records what the engine was built
with and from, and `check_engine` lists why an engine is stale. TensorRT exists nowhere in the development
workplace: everything here but `build_engine`'s calls into `tensorrt` is unit-tested with fakes.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import subprocess
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

from ..fileio import sha256_file
from ..errors import DependencyMissingError, MambaESRError
from ..fileio import atomic_write
from ..profiles import MIN_TILE, DeviceProfile
from .onnx import FP32_PREFIX, INPUT_NAME

log = logging.getLogger(__name__)

ENGINE_FILE = "model.engine"
MANIFEST_FILE = "model.engine.json"
TIMING_CACHE_FILE = "timing.cache"
SCRIPT_FILE = "build_engine.sh"
MANIFEST_FORMAT = "mambaesr-edge-engine/1"
NOT_AVAILABLE = "TensorRT not available here: engine left to build on the device with build_engine.sh"


class EngineBuildError(MambaESRError):
    """TensorRT could not parse the graph or build the engine."""


@dataclass(frozen=True)
class EngineSettings:
    """Everything a build needs, from the device profile and the bundle (paths relative to the bundle)."""

    onnx_file: str
    input_name: str
    min_shape: tuple[int, int, int, int]
    opt_shape: tuple[int, int, int, int]
    max_shape: tuple[int, int, int, int]
    fp16: bool
    fp32_layer_prefix: str | None  # layers pinned to fp32 (obey precision constraints); None: TensorRT chooses
    workspace_mib: int
    builder_optimization_level: int
    engine_file: str = ENGINE_FILE
    timing_cache_file: str = TIMING_CACHE_FILE


def parse_version(text: str) -> tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0, 30); non-numeric parts end the tuple."""
    parts = []
    for piece in text.split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def has_optimization_level(trt_version: str) -> bool:
    """builder_optimization_level exists from TensorRT 8.6."""
    return parse_version(trt_version) >= (8, 6)


def engine_settings(profile: DeviceProfile, bundle: dict) -> EngineSettings:
    """Settings for `profile` from a bundle manifest (bundle.json as a dict)."""
    n, tile = int(bundle["batch"]), int(bundle["tile"])
    opt = (n, 3, tile, tile)
    if bundle.get("dynamic_hw"):
        side = math.isqrt(int(bundle["max_tokens"]))
        min_shape, max_shape = (1, 3, MIN_TILE, MIN_TILE), (n, 3, side, side)
    else:
        min_shape = max_shape = opt
    fp16 = profile.precision == "fp16"
    use_fp16_graph = fp16 and bool(bundle.get("onnx_fp16"))
    if fp16 and not use_fp16_graph:
        log.warning("fp16 profile but the bundle has no fp16 graph: TensorRT picks each layer's precision, the scan included")
    return EngineSettings(
        onnx_file=bundle["onnx_fp16"]["file"] if use_fp16_graph else bundle["onnx"]["file"],
        input_name=bundle.get("input_name", INPUT_NAME),
        min_shape=min_shape,
        opt_shape=opt,
        max_shape=max_shape,
        fp16=fp16,
        fp32_layer_prefix=FP32_PREFIX if use_fp16_graph else None,
        workspace_mib=profile.workspace_mib,
        builder_optimization_level=profile.builder_optimization_level,
    )


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def trtexec_command(settings: EngineSettings, trt_version: str) -> list[str]:
    """The trtexec argv that builds the same engine as `build_engine` (run from the bundle folder)."""
    name = settings.input_name
    workspace = f"{settings.workspace_mib}M" if parse_version(trt_version) >= (10,) else str(settings.workspace_mib)  # 8.x: MiB
    argv = [
        "trtexec",
        f"--onnx={settings.onnx_file}",
        f"--saveEngine={settings.engine_file}",
        f"--minShapes={name}:{_dims(settings.min_shape)}",
        f"--optShapes={name}:{_dims(settings.opt_shape)}",
        f"--maxShapes={name}:{_dims(settings.max_shape)}",
        f"--memPoolSize=workspace:{workspace}",
        f"--timingCacheFile={settings.timing_cache_file}",
    ]
    if settings.fp16:
        argv.append("--fp16")
    if settings.fp32_layer_prefix:
        argv += ["--precisionConstraints=obey", f"--layerPrecisions={settings.fp32_layer_prefix}*:fp32"]
    if has_optimization_level(trt_version):
        argv.append(f"--builderOptimizationLevel={settings.builder_optimization_level}")
    argv.append("--skipInference")
    return argv


def build_script(settings: EngineSettings, profile: DeviceProfile) -> str:
    """build_engine.sh: the trtexec build for the profile's expected TensorRT, then the manifest (when installed)."""
    argv = trtexec_command(settings, profile.tensorrt)
    command = " \\\n    ".join(shlex.quote(a) for a in ['"$TRTEXEC"', *argv[1:]]).replace("'\"$TRTEXEC\"'", '"$TRTEXEC"')
    return f"""#!/usr/bin/env bash
# Build the TensorRT engine of this bundle ON THE TARGET DEVICE ({profile.name}: TensorRT {profile.tensorrt or '?'},
# JetPack {profile.jetpack or '-'}). Engines are not portable across GPUs or TensorRT versions.
# Preferred: `mambaesr-edge build-engine <this folder>` (Python API, same settings, writes {MANIFEST_FILE}).
# Generated by mambaesr-edge export; edit the profile, not this file.
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
{command}
if command -v mambaesr-edge >/dev/null 2>&1; then
    mambaesr-edge build-engine . --manifest-only
else
    echo "built {settings.engine_file}; install mambaesr-edge and run 'mambaesr-edge build-engine . --manifest-only' to record it" >&2
fi
"""


def import_tensorrt() -> ModuleType | None:
    """The tensorrt module, or None when it is not installed (the normal case off-device)."""
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt


def detect_gpu() -> tuple[str, str]:
    """(GPU name, compute capability 'M.m') of device 0; ('', '') when no GPU is found.

    Tries torch.cuda, then nvidia-smi, then the Jetson device tree (name only)."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return torch.cuda.get_device_name(0), f"{major}.{minor}"
    except (ImportError, RuntimeError) as exc:
        log.debug("torch.cuda: %s", exc)
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True
        ).stdout.strip().splitlines()
        if out:
            name, _, cap = out[0].rpartition(",")
            return name.strip(), cap.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("nvidia-smi: %s", exc)
    model = Path("/proc/device-tree/model")
    if model.is_file():
        return model.read_text(errors="replace").strip("\x00\n "), ""
    return "", ""


def build_engine(
    bundle_dir: Path,
    settings: EngineSettings,
    *,
    trt: ModuleType,
    timing_cache: Path | None = None,
) -> bytes:
    """Parse the ONNX graph and build a serialized engine with the TensorRT Python API; writes the engine file.

    `timing_cache` (default: the bundle's timing.cache) is loaded when present and saved after the build, so
    builds of other bundles on the same device can reuse it.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if parse_version(trt.__version__) < (10,):  # explicit batch is the only mode (and the flag deprecated) in 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    onnx_path = bundle_dir / settings.onnx_file
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT could not parse {onnx_path.name}: {'; '.join(errors[:3])}", hint="check the TensorRT version")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    if settings.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if settings.fp32_layer_prefix:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = pin_fp32_layers(network, settings.fp32_layer_prefix, trt)
        log.info("pinned %d layers to fp32", pinned)
    if hasattr(config, "builder_optimization_level"):  # TensorRT 8.6+
        config.builder_optimization_level = settings.builder_optimization_level
    profile = builder.create_optimization_profile()
    profile.set_shape(settings.input_name, settings.min_shape, settings.opt_shape, settings.max_shape)
    config.add_optimization_profile(profile)
    cache_path = timing_cache or bundle_dir / settings.timing_cache_file
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError("TensorRT returned no engine (see its log above)", hint="try a larger workspace_mib in the profile")
    data = bytes(serialized)
    with atomic_write(bundle_dir / settings.engine_file) as tmp:
        tmp.write_bytes(data)
    with atomic_write(cache_path) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return data


def pin_fp32_layers(network, prefix: str, trt: ModuleType) -> int:
    """Set precision and output types to fp32 on every layer named `prefix...` whose outputs are all float32."""
    count = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not layer.name.startswith(prefix):
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not outputs or any(t.dtype != trt.float32 for t in outputs):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        count += 1
    return count


def engine_manifest(
    bundle_dir: Path, bundle: dict, settings: EngineSettings, *, trt_version: str, gpu_name: str, compute_capability: str
) -> dict[str, object]:
    """model.engine.json: what the engine was built with (TensorRT, GPU) and from (ONNX, weights, profile, shapes)."""
    return {
        "format": MANIFEST_FORMAT,
        "engine": settings.engine_file,
        "engine_sha256": sha256_file(bundle_dir / settings.engine_file),
        "tensorrt": trt_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "onnx_file": settings.onnx_file,
        "onnx_sha256": sha256_file(bundle_dir / settings.onnx_file),
        "weights_sha256": bundle["weights_sha256"],
        "profile": bundle["profile"],
        "input_name": settings.input_name,
        "shapes": {"min": list(settings.min_shape), "opt": list(settings.opt_shape), "max": list(settings.max_shape)},
        "precision": "fp16" if settings.fp16 else "fp32",
        "fp32_layers": f"{settings.fp32_layer_prefix}*" if settings.fp32_layer_prefix else None,
        "settings": asdict(settings),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_manifest(bundle_dir: Path, manifest: dict) -> Path:
    path = bundle_dir / MANIFEST_FILE
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def check_engine(bundle_dir: str | Path, trt_version: str, gpu_name: str, compute_capability: str) -> list[str]:
    """Reasons the bundle's engine is stale or unusable here ([] = up to date): missing, built with another
    TensorRT/GPU, or from another ONNX graph/weights/profile than the bundle's, or the engine file changed."""
    bundle_dir = Path(bundle_dir)
    manifest_path, engine_path = bundle_dir / MANIFEST_FILE, bundle_dir / ENGINE_FILE
    if not engine_path.is_file():
        return [f"no engine: {ENGINE_FILE} is missing"]
    if not manifest_path.is_file():
        return [f"no manifest: {MANIFEST_FILE} is missing, so the engine's origin is unknown"]
    try:
        manifest = json.loads(manifest_path.read_text())
        bundle = json.loads((bundle_dir / "bundle.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return [f"unreadable manifest: {exc}"]
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return [f"{MANIFEST_FILE} is not a {MANIFEST_FORMAT} manifest"]
    reasons = []
    expected = {
        "tensorrt": ("TensorRT version", trt_version),
        "gpu_name": ("GPU", gpu_name),
        "compute_capability": ("compute capability", compute_capability),
    }
    for key, (label, current) in expected.items():
        if current and manifest.get(key) != current:
            reasons.append(f"{label} changed: engine built with {manifest.get(key)!r}, this device has {current!r}")
    onnx_file = bundle_dir / str(manifest.get("onnx_file", ""))
    if not onnx_file.is_file():
        reasons.append(f"the engine's ONNX graph {manifest.get('onnx_file')!r} is not in the bundle")
    elif sha256_file(onnx_file) != manifest.get("onnx_sha256"):
        reasons.append(f"ONNX graph changed: {onnx_file.name} sha256 differs from the one the engine was built from")
    if bundle.get("weights_sha256") != manifest.get("weights_sha256"):
        reasons.append("weights changed: the bundle's weights sha256 differs from the engine's")
    if bundle.get("profile") != manifest.get("profile"):
        reasons.append(f"profile changed: engine for {manifest.get('profile')!r}, bundle for {bundle.get('profile')!r}")
    if sha256_file(engine_path) != manifest.get("engine_sha256"):
        reasons.append(f"{ENGINE_FILE} was replaced or corrupted (sha256 differs from the manifest)")
    return reasons


def require_tensorrt() -> ModuleType:
    trt = import_tensorrt()
    if trt is None:
        raise DependencyMissingError(
            "the tensorrt Python package is not installed here",
            hint="on Jetson it comes with JetPack (use a venv with --system-site-packages); elsewhere pip install tensorrt; "
            "or run the bundle's build_engine.sh (trtexec)",
        )
    return trt
