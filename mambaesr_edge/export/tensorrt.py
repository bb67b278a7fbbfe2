"""TensorRT: engine settings from a device profile, the Python-API build, the equivalent trtexec line, the engine
manifest and its staleness check. Thin on purpose; TensorRT 8.5 (JetPack 5) and 10.x (JetPack 6/7), name-based API.

Precision: for an fp16 profile the engine is built from `model_fp16.onnx` (fp16 weights/activations, scan in fp32:
the graph parity-checked in ONNX Runtime) with BuilderFlag.FP16 plus OBEY_PRECISION_CONSTRAINTS, and every layer
whose name starts with `fp32/` (the nodes that compute in float32 in that graph, see onnx.mark_fp32_nodes) pinned to
fp32, so TensorRT cannot move the scan's exp/recurrence to fp16 (fp16 exp overflows; REFERENCE section 4).
trtexec gets the same through --precisionConstraints=obey --layerPrecisions=fp32/*:fp32. TensorRT 11 has no FP16 flag
and no weak typing (REFERENCE section 7): every network is strongly typed, so the fp16 graph's own dtypes are the
precision and neither the flag nor the pins are set (`strongly_typed`).

Scan plugin: when the bundle holds the plugin graph (model_trt.onnx / model_trt_fp16.onnx, profiles with
scan_plugin) the engine is built from it, with the plugin library (built by the bundle's build_plugin.sh) loaded
first: `IPluginRegistry.load_library` here, `trtexec --dynamicPlugins` in build_engine.sh; the manifest records
the library's sha256. `engine_settings(..., plugin=False)` builds the pure-op graph instead.

Engines are not portable across GPUs or TensorRT versions: `engine_manifest` makes the record of what the engine was
built with and from (the format and the staleness rule live in mambaesr_edge/engine_manifest.py, shared with the runtime).
TensorRT exists nowhere in the development workplace: everything here but `build_engine`'s calls into `tensorrt`
is unit-tested with fakes.
"""

from __future__ import annotations

import logging
import math
import shlex
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

from .. import native_build
from ..bundle import BUILD_PLUGIN_SCRIPT_FILE, ENGINE_FILE, ENGINE_MANIFEST_FILE, TIMING_CACHE_FILE, Bundle
from ..engine_manifest import EngineManifest
from ..errors import ConfigError, DependencyMissingError, MambaESRError, NativeCodeError
from ..fileio import atomic_write, sha256_file
from ..gpu import gpu_identity
from ..profiles import MIN_TILE, DeviceProfile
from .onnx import FP32_PREFIX

log = logging.getLogger(__name__)

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
    plugin_file: str | None = None  # the scan plugin library the graph needs (loaded before parsing); None: pure-op graph


def parse_version(text: str) -> tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0, 30); non-numeric parts end the tuple."""
    parts = []
    for piece in text.split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def strongly_typed(trt_version: str) -> bool:
    """TensorRT 11 builds strongly typed networks only (no FP16 builder flag, no per-layer precision)."""
    return parse_version(trt_version) >= (11,)


def has_plugin_loading(trt_version: str) -> bool:
    """IPluginV3 plugin libraries (getCreators) load from TensorRT 10.0 on."""
    return parse_version(trt_version) >= (10,)


def has_optimization_level(trt_version: str) -> bool:
    """builder_optimization_level exists from TensorRT 8.6."""
    return parse_version(trt_version) >= (8, 6)


def engine_settings(profile: DeviceProfile, bundle: Bundle, *, plugin: bool | None = None) -> EngineSettings:
    """Settings for `profile` from a bundle. `plugin`: build the plugin graph (None: when the bundle has one and the
    profile's scan_plugin is on; True without a plugin graph is a ConfigError; False: the pure-op graph)."""
    n, tile = bundle.batch, bundle.tile
    opt = (n, 3, tile, tile)
    if bundle.dynamic_hw:
        side = math.isqrt(int(bundle.max_tokens or tile * tile))
        min_shape, max_shape = (1, 3, MIN_TILE, MIN_TILE), (n, 3, side, side)
    else:
        min_shape = max_shape = opt
    fp16 = profile.precision == "fp16"
    use_fp16_graph = fp16 and bundle.onnx_fp16 is not None
    if fp16 and not use_fp16_graph:
        log.warning("fp16 profile but the bundle has no fp16 graph: TensorRT picks each layer's precision, the scan included")
    if plugin and bundle.onnx_trt is None:
        raise ConfigError(f"bundle {bundle.root} has no plugin graph", hint="re-export for a profile with scan_plugin = true, without --no-plugin")
    use_plugin = bundle.onnx_trt is not None and bundle.plugin is not None and (plugin if plugin is not None else profile.scan_plugin)
    graph = bundle.trt_entry("fp16" if fp16 else "fp32") if use_plugin else bundle.onnx_entry("fp16" if use_fp16_graph else "fp32")
    return EngineSettings(
        onnx_file=graph.file,
        input_name=bundle.input_name,
        min_shape=min_shape,
        opt_shape=opt,
        max_shape=max_shape,
        fp16=fp16,
        fp32_layer_prefix=FP32_PREFIX if use_fp16_graph else None,
        workspace_mib=profile.workspace_mib,
        builder_optimization_level=profile.builder_optimization_level,
        plugin_file=bundle.plugin.library if use_plugin and bundle.plugin is not None else None,
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
    if settings.plugin_file:
        if not has_plugin_loading(trt_version):
            raise ConfigError(f"the scan plugin needs TensorRT >= 10, the profile expects {trt_version}", hint="re-export with --no-plugin")
        argv.append(f"--dynamicPlugins=./{settings.plugin_file}")
    if settings.fp16 and not strongly_typed(trt_version):
        argv.append("--fp16")
    if settings.fp32_layer_prefix and not strongly_typed(trt_version):
        argv += ["--precisionConstraints=obey", f"--layerPrecisions={settings.fp32_layer_prefix}*:fp32"]
    if has_optimization_level(trt_version):
        argv.append(f"--builderOptimizationLevel={settings.builder_optimization_level}")
    argv.append("--skipInference")
    return argv


def build_script(settings: EngineSettings, profile: DeviceProfile) -> str:
    """build_engine.sh: the trtexec build for the profile's expected TensorRT, then the manifest (when installed)."""
    argv = trtexec_command(settings, profile.tensorrt)
    command = " \\\n    ".join(shlex.quote(a) for a in ['"$TRTEXEC"', *argv[1:]]).replace("'\"$TRTEXEC\"'", '"$TRTEXEC"')
    plugin = "" if not settings.plugin_file else f"""# 1. the scan plugin library (nvcc, on this device); the engine needs it at build and at run time
bash {BUILD_PLUGIN_SCRIPT_FILE}
# 2. the engine from the plugin graph, the library loaded: TensorRT 10.3 (JetPack 6) loads it with --dynamicPlugins
#    (IPluginRegistry::loadLibrary through the library's getCreators/setLoggerFinder entry points, TensorRT >= 10.0);
#    --staticPlugins would need REGISTER_TENSORRT_PLUGIN, which the library does not compile in (it would link
#    libnvinfer). Not yet run inside a real engine (no TensorRT where this was built): if the parse fails, re-export
#    with --no-plugin for the pure-op graph.
"""
    return f"""#!/usr/bin/env bash
# Build the TensorRT engine of this bundle ON THE TARGET DEVICE ({profile.name}: TensorRT {profile.tensorrt or '?'},
# JetPack {profile.jetpack or '-'}). Engines are not portable across GPUs or TensorRT versions.
# Preferred: `mambaesr-edge build-engine <this folder>` (Python API, same settings, writes {ENGINE_MANIFEST_FILE}).
# Generated by mambaesr-edge export; edit the profile, not this file.
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
{plugin}{command}
# the manifest (model.engine.json: TensorRT, GPU, graph and weights sha256{", the plugin library's sha256" if settings.plugin_file else ""})
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
    """(GPU name, compute capability) as the CUDA runtime names them (``gpu.gpu_identity``: the same call the
    runtime's engine check makes); ("", "") when no GPU is found."""
    return gpu_identity()


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
    typed = strongly_typed(trt.__version__)
    if settings.plugin_file:
        load_plugin_library(trt, bundle_dir / settings.plugin_file)
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
    if settings.fp16 and not typed:  # TensorRT 11: the fp16 graph's dtypes are the precision
        config.set_flag(trt.BuilderFlag.FP16)
    if settings.fp32_layer_prefix and not typed:
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


def load_plugin_library(trt: ModuleType, library: Path) -> None:
    """``native_build.load_plugin_library`` after checking that this TensorRT has IPluginV3 (>= 10)."""
    if not has_plugin_loading(trt.__version__):
        raise EngineBuildError(f"the scan plugin needs TensorRT >= 10 (IPluginV3), this is {trt.__version__}",
                               hint="re-export with --no-plugin for the pure-op graph")  # fmt: skip
    try:
        native_build.load_plugin_library(trt, library)
    except NativeCodeError as exc:  # a build error here: the engine cannot be built without it
        raise EngineBuildError(exc.message, hint=exc.hint) from exc


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
    bundle: Bundle, settings: EngineSettings, *, trt_version: str, gpu_name: str, compute_capability: str
) -> EngineManifest:
    """The record of the engine just built in ``bundle``: what it was built with (TensorRT, GPU) and from (ONNX,
    weights, profile, shapes). Written with ``engine_manifest.write_engine_manifest``; checked by ``engine_manifest.engine_problems``."""
    root = bundle.root
    return EngineManifest(
        engine=settings.engine_file,
        engine_sha256=sha256_file(root / settings.engine_file),
        tensorrt=trt_version,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        onnx_file=settings.onnx_file,
        onnx_sha256=sha256_file(root / settings.onnx_file),
        weights_sha256=bundle.weights_sha256,
        profile=bundle.profile,
        input_name=settings.input_name,
        precision="fp16" if settings.fp16 else "fp32",
        shapes={"min": list(settings.min_shape), "opt": list(settings.opt_shape), "max": list(settings.max_shape)},
        scale=bundle.scale,
        plugin_file=settings.plugin_file,
        plugin_sha256=sha256_file(root / settings.plugin_file) if settings.plugin_file else None,
        extra={
            "fp32_layers": f"{settings.fp32_layer_prefix}*" if settings.fp32_layer_prefix else None,
            "settings": asdict(settings),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )


def require_tensorrt() -> ModuleType:
    trt = import_tensorrt()
    if trt is None:
        raise DependencyMissingError(
            "the tensorrt Python package is not installed here",
            hint="on Jetson it comes with JetPack (use a venv with --system-site-packages); elsewhere pip install tensorrt; "
            "or run the bundle's build_engine.sh (trtexec)",
        )
    return trt
