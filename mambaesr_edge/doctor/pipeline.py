"""The pipeline checks: the shipped model (or --bundle) taken through export, the plugin build, the engine build,
two parity checks and a short bench, each step one `Check` (group "pipeline").

Steps, in order (a step that needs what an earlier one could not give is skipped with that reason):

- ``export``: with --bundle, that bundle (its ONNX checked against bundle.json's sha256); else the shipped model
  exported into ``OUT/bundle-PROFILE-tileT/`` (reused when it is already there for the same weights, profile and
  tile). Where an engine can be built here (TensorRT imports and a GPU answers) the tile is the profile's; elsewhere
  the ONNX path is only checked, at ``CHECK_TILE`` (16: the export takes ~3-5 s on 2 CPU cores instead of 15-100 s
  at the profile's tile), and the detail says so. The export itself runs the ONNX Runtime vs PyTorch parity.
- ``plugin``: the native scan's TensorRT plugin (csrc/scan_plugin.cu) compiled with nvcc for this GPU's SM against
  TensorRT's headers (native_build.plugin_command), cached under native_build.cache_dir(); skipped without nvcc,
  headers, a known SM, or TensorRT 10 (IPluginV3).
- ``engine``: the bundle's engine built here when missing or stale (engine_manifest.bundle_engine_problems), timing cache
  kept in ``OUT/timing-PROFILE.cache`` across re-exports; skipped without TensorRT or a GPU.
- ``parity-onnx``: ONNX Runtime (fp32 graph, CPU) against the numpy model (torch where numpy cannot run the config)
  on tiles of the shipped sample image: fp32 thresholds of export.parity.ParityThresholds.
- ``parity-engine``: the engine against ONNX Runtime fp32 on the same tiles: PSNR >= 40 dB for fp16 engines
  (ParityThresholds.fp16_min_psnr_db), the fp32 thresholds for fp32 ones.
- ``bench``: bench.run_bench on what the profile deploys (the engine; else ONNX Runtime on the bundle), 100 tiles
  (``--quick``: 20), with power where a sampler works: p50/p99 ms per tile, frames/s for a 1920x1080 LR frame.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import PARITY_FILE, Bundle, is_bundle, read_bundle
from ..engine_manifest import EngineEnvironment, bundle_engine_problems, write_engine_manifest
from ..errors import BundleError, MambaESRError
from ..profiles import DeviceProfile
from .checks import FAIL, PASS, SKIP, Check
from .facts import Facts, System

log = logging.getLogger(__name__)

__all__ = ["CHECK_TILE", "FRAME_HW", "PipelineSettings", "engine_blocker", "pipeline_checks"]

CHECK_TILE = 16
BENCH_TILES, QUICK_BENCH_TILES = 100, 20
FRAME_HW = (1080, 1920)  # the LR frame frames/s is stated for (bench's default; profiles name no frame size)
TENSORRT_HEADER_DIRS = ("/usr/include/aarch64-linux-gnu", "/usr/include/x86_64-linux-gnu", "/usr/include",
                        "/usr/local/tensorrt/include", "/usr/src/tensorrt/include")  # fmt: skip
DEBUG_FIX = "run `mambaesr-edge --debug doctor` for the traceback and report it"


@dataclass(frozen=True)
class PipelineSettings:
    profile: DeviceProfile
    out_dir: Path
    bundle: Path | None = None  # --bundle; None: export the shipped model into out_dir
    quick: bool = False
    tile: int | None = None  # None: the profile's where an engine is built here, else CHECK_TILE


def _check(name: str, status: str, detail: str, fix: str = "", **data: Any) -> Check:
    return Check(name, status, detail, fix, group="pipeline", data=data)


def engine_blocker(facts: Facts, profile: DeviceProfile) -> str:
    """Why no engine can be built here ("" when one can)."""
    if profile.backend != "tensorrt":
        return f"profile {profile.name} runs {profile.backend}: no TensorRT engine"
    if not facts.tensorrt:
        return "TensorRT is not importable here"
    if not facts.gpu_name:
        return f"TensorRT {facts.tensorrt} imports but no CUDA GPU answers"
    return ""


def _guarded(name: str, step: Callable[..., tuple[Check, Any]], *args: Any) -> tuple[Check, Any]:
    """Run one step; a user-facing error becomes a failed check with its hint, anything else a failed check that
    says how to see the traceback (logged at debug level). Ctrl-C goes through."""
    try:
        return step(*args)
    except MambaESRError as exc:
        return _check(name, FAIL, exc.message, exc.hint or DEBUG_FIX), None
    except Exception as exc:  # a broken TensorRT/CUDA install raises anything: the doctor reports it, it does not crash
        log.debug("doctor step %s failed", name, exc_info=True)
        return _check(name, FAIL, f"unexpected {type(exc).__name__}: {exc}", DEBUG_FIX), None


def _default_weights_sha() -> str:
    from ..fileio import sha256_file
    from ..resources import default_weights_path

    return sha256_file(default_weights_path())


def _reusable(folder: Path, profile: str, tile: int, weights_sha: str) -> Bundle | None:
    if not is_bundle(folder):
        return None
    try:
        bundle = read_bundle(folder)
        bundle.onnx_path("fp32")  # checks the graph's sha256
    except BundleError as exc:
        log.info("re-exporting %s: %s", folder, exc.message)
        return None
    same = bundle.profile == profile and bundle.tile == tile and bundle.weights_sha256 == weights_sha
    return bundle if same else None


def export_step(facts: Facts, settings: PipelineSettings) -> tuple[Check, Bundle | None]:
    profile = settings.profile
    if settings.bundle is not None:
        bundle = read_bundle(settings.bundle)
        bundle.onnx_path("fp32")
        graphs = "fp32 + fp16 graphs" if bundle.onnx_fp16 else "fp32 graph"
        return _check("export", PASS, f"--bundle {settings.bundle}: profile {bundle.profile}, tile {bundle.tile}, {graphs}",
                      bundle=str(settings.bundle), tile=bundle.tile), bundle  # fmt: skip
    if facts.torch is None:
        return _check("export", FAIL, "exporting needs torch, which cannot be imported",
                      "pip install torch, or pass --bundle DIR exported on another machine"), None  # fmt: skip
    blocker = engine_blocker(facts, profile)
    tile = settings.tile or (profile.tile if not blocker else CHECK_TILE)
    why_tile = "" if tile == profile.tile else f" (not the profile's {profile.tile}: {blocker}, so the ONNX path is checked at a small tile)"
    folder = settings.out_dir / f"bundle-{profile.name}-tile{tile}"
    weights_sha = _default_weights_sha()
    bundle = _reusable(folder, profile.name, tile, weights_sha)
    if bundle is not None:
        return _check("export", PASS, f"{folder} is up to date (tile {tile}){why_tile}", bundle=str(folder), tile=tile, reused=True), bundle
    from ..export.writer import export_model

    start = time.perf_counter()
    result = export_model(profile, None, out=folder, tile=tile, force=True, build_engine=False)
    seconds = time.perf_counter() - start
    bundle = read_bundle(folder)  # (result.bundle.root names the staging folder the export was written in)
    psnr = [c.psnr_db for c in result.parity.cases]
    detail = (f"shipped model exported for {profile.name} at tile {tile} into {folder} in {seconds:.1f} s "
              f"({bundle.onnx.nodes} nodes; parity vs PyTorch passed, lowest PSNR {min(psnr):.1f} dB){why_tile}")
    return _check("export", PASS, detail, bundle=str(folder), tile=tile, seconds=round(seconds, 2), reused=False,
                  parity_min_psnr_db=min(psnr)), bundle  # fmt: skip


def plugin_step(facts: Facts, profile: DeviceProfile, system: System) -> tuple[Check, Path | None]:
    from .. import native_build

    if not facts.nvcc:
        return _check("plugin", SKIP, "nvcc (CUDA toolkit) not found: the scan plugin cannot be built here"), None
    headers = next((system.file(d) for d in TENSORRT_HEADER_DIRS if system.file(d).joinpath("NvInfer.h").is_file()), None)
    if headers is None:
        return _check("plugin", SKIP, f"TensorRT's C++ headers (NvInfer.h) are not in {', '.join(TENSORRT_HEADER_DIRS)}: "
                      "install libnvinfer-dev (JetPack: part of nvidia-jetpack)"), None  # fmt: skip
    sm = facts.compute_capability or profile.compute_capability
    if not sm:
        return _check("plugin", SKIP, f"no GPU here and profile {profile.name} names no compute capability to build for"), None
    trt = facts.tensorrt or facts.tensorrt_system or ""
    if trt and int(trt.split(".")[0]) < 10:
        return _check("plugin", SKIP, f"the scan plugin is an IPluginV3: it needs TensorRT 10+, this is {trt}"), None
    try:
        arch = native_build.sm_arch(sm)
    except ValueError as exc:
        return _check("plugin", SKIP, f"{exc}: no native scan plugin for this GPU"), None
    key = native_build.sources_digest(native_build.nvcc_version(facts.nvcc), arch, str(headers))[:16]
    library = native_build.cache_dir() / "native" / key / f"libmambaesr_scan_plugin_{arch}.so"
    if library.is_file():
        return _check("plugin", PASS, f"{library.name} for {arch} is built ({library})", library=str(library), cached=True), library
    start = time.perf_counter()
    native_build.build(native_build.plugin_command(library, [arch], headers, nvcc=facts.nvcc), library)
    seconds = time.perf_counter() - start
    return _check("plugin", PASS, f"built {library.name} for {arch} against {headers} in {seconds:.0f} s ({library})",
                  library=str(library), cached=False, seconds=round(seconds, 1)), library  # fmt: skip


def engine_step(
    facts: Facts, profile: DeviceProfile, bundle: Bundle | None, out_dir: Path, library: Path | None = None
) -> tuple[Check, bool]:
    """Build (or confirm) the bundle's engine: from its scan-plugin graph with ``library`` (the plugin step's build,
    copied into the bundle where build_plugin.sh would put it), else from the pure-op graph, saying so."""
    blocker = engine_blocker(facts, profile)
    if blocker:
        return _check("engine", SKIP, blocker), False
    if bundle is None:
        return _check("engine", SKIP, "no bundle (the export step failed)"), False
    from ..export import tensorrt as trt_support

    trt = trt_support.require_tensorrt()
    problems = bundle_engine_problems(bundle, EngineEnvironment(facts.gpu_name, facts.compute_capability, trt.__version__))
    if not problems:
        return _check("engine", PASS, f"{bundle.engine_path} is up to date (TensorRT {trt.__version__}, {facts.gpu_name})"), True
    use_plugin = bundle.onnx_trt is not None and bundle.plugin is not None and library is not None
    if use_plugin:
        shutil.copyfile(library, bundle.root / bundle.plugin.library)
    settings = trt_support.engine_settings(profile, bundle, plugin=use_plugin)
    graph = "the scan-plugin graph" if use_plugin else "the pure-op graph" + (" (no plugin library built here)" if bundle.onnx_trt else "")
    start = time.perf_counter()
    trt_support.build_engine(bundle.root, settings, trt=trt, timing_cache=out_dir / f"timing-{profile.name}.cache")
    manifest = trt_support.engine_manifest(bundle, settings, trt_version=trt.__version__, gpu_name=facts.gpu_name,
                                           compute_capability=facts.compute_capability)  # fmt: skip
    write_engine_manifest(bundle.engine_manifest_path, manifest)
    seconds = time.perf_counter() - start
    return _check("engine", PASS, f"built {bundle.engine_path} from {graph} with TensorRT {trt.__version__} in {seconds:.0f} s ({problems[0]})",
                  seconds=round(seconds, 1), reason=problems[0]), True  # fmt: skip


def _sample_tiles(bundle: Bundle) -> np.ndarray:
    from ..export.parity import image_batch

    return image_batch((bundle.batch, 3, bundle.tile, bundle.tile), bundle.scale)[0]


def onnx_parity_step(facts: Facts, bundle: Bundle | None) -> tuple[Check, np.ndarray | None]:
    if bundle is None:
        return _check("parity-onnx", SKIP, "no bundle (the export step failed)"), None
    if facts.onnxruntime is None:
        return _check("parity-onnx", SKIP, "onnxruntime cannot be imported (see the onnxruntime check)"), None
    from ..export.parity import ParityThresholds, compare
    from ..model_numpy import supports
    from ..runtime.backends import open_backend

    lr = _sample_tiles(bundle)
    out = open_backend(bundle.root, "onnxruntime", device="cpu", precision="fp32").run(lr)
    if bundle.weights_sha256 != _default_weights_sha():
        return _check("parity-onnx", SKIP, "the bundle was exported from other weights than the shipped model (not here to compare); "
                      f"its export-time report is {bundle.root / PARITY_FILE}"), out  # fmt: skip
    if supports(bundle.config):
        from ..runtime.backends.numpy import NumpyBackend

        reference, name = NumpyBackend.from_weights(None), "numpy model"
    else:
        reference, name = open_backend(None, "torch", device="cpu", precision="fp32"), "torch model"
    max_abs, psnr, finite = compare(out, reference.run(lr))
    t = ParityThresholds()
    ok = finite and max_abs <= t.fp32_max_abs and psnr >= t.fp32_min_psnr_db
    detail = (f"ONNX Runtime fp32 vs the {name} on {lr.shape[0]} sample-image tile(s) of {bundle.tile}: max abs {max_abs:.2e}, "
              f"PSNR {_db(psnr)} dB (needs <= {t.fp32_max_abs:g} and >= {t.fp32_min_psnr_db:g} dB)")
    fix = "" if ok else "the ONNX graph does not reproduce the model: re-export (mambaesr-edge export) and report it if it persists"
    return _check("parity-onnx", PASS if ok else FAIL, detail, fix, max_abs=_finite(max_abs), psnr_db=_finite(psnr)), out


def engine_parity_step(bundle: Bundle | None, engine_ok: bool, ort_out: np.ndarray | None) -> tuple[Check, None]:
    if not engine_ok or bundle is None:
        return _check("parity-engine", SKIP, "no engine (see the engine check)"), None
    if ort_out is None:
        return _check("parity-engine", SKIP, "no ONNX Runtime output to compare with (see parity-onnx)"), None
    from ..export.parity import ParityThresholds, compare
    from ..runtime.backends import open_backend

    out = open_backend(bundle.root, "tensorrt").run(_sample_tiles(bundle))
    max_abs, psnr, finite = compare(out, ort_out)
    t = ParityThresholds()
    need = t.fp16_min_psnr_db if bundle.precision == "fp16" else t.fp32_min_psnr_db
    ok = finite and psnr >= need
    detail = (f"TensorRT {bundle.precision} engine vs ONNX Runtime fp32 on the sample image: PSNR {_db(psnr)} dB "
              f"(needs >= {need:g}), max abs {max_abs:.2e}")
    fix = "" if ok else "the engine is not accurate: rebuild it (mambaesr-edge build-engine BUNDLE --force) and check the fp32 layer pins"
    return _check("parity-engine", PASS if ok else FAIL, detail, fix, psnr_db=_finite(psnr), max_abs=_finite(max_abs), needs_db=need), None


def bench_step(facts: Facts, profile: DeviceProfile, bundle: Bundle | None, engine_ok: bool, quick: bool) -> tuple[Check, None]:
    if bundle is None:
        return _check("bench", SKIP, "no bundle (the export step failed)"), None
    if not engine_ok and facts.onnxruntime is None:
        return _check("bench", SKIP, "no engine and no onnxruntime: nothing to run"), None
    from ..bench import run_bench
    from ..bench_report import summarize
    from ..power import select_sampler
    from ..runtime.backends import open_backend

    if engine_ok:
        backend = open_backend(bundle.root, "tensorrt")
    else:
        cuda = profile.runtime_device != "cpu" and "CUDAExecutionProvider" in facts.ort_providers
        backend = open_backend(bundle.root, "onnxruntime", device="cuda" if cuda else "cpu",
                               precision=bundle.precision if cuda else "fp32")  # fmt: skip
    sampler = select_sampler(profile)
    tiles = QUICK_BENCH_TILES if quick else BENCH_TILES
    samples = max(1, tiles // bundle.batch)
    idle = (1.0 if quick else 3.0) if sampler.available else 0.0
    result = run_bench(backend, samples=samples, warmup=2 if quick else 10, idle_seconds=idle, sampler=sampler,
                       tile=bundle.tile, batch=bundle.batch, frame_hw=FRAME_HW, overlap=bundle.overlap)  # fmt: skip
    report = summarize(result)
    info = backend.info
    per_tile = {k: report["latency_ms"][k] / bundle.batch for k in ("p50", "p99")}
    fps = report["throughput"]["frames_per_s"]
    detail = (f"{info.name} on {info.device} ({info.precision}), {samples * bundle.batch} tiles of {bundle.tile}: p50 {per_tile['p50']:.2f} ms, "
              f"p99 {per_tile['p99']:.2f} ms per tile; {fps:.3g} frames/s at {FRAME_HW[1]}x{FRAME_HW[0]} LR")
    power = report["power"]
    mode = facts.power_mode or "unknown"
    data: dict[str, Any] = {"backend": info.name, "device": info.device, "precision": info.precision, "tile": bundle.tile,
                            "batch": bundle.batch, "tiles": samples * bundle.batch, "p50_ms_per_tile": per_tile["p50"],
                            "p99_ms_per_tile": per_tile["p99"], "frames_per_s": fps, "frame": list(FRAME_HW[::-1]),
                            "power_mode": facts.power_mode, "jetson_clocks": facts.clocks_locked, "power": power}  # fmt: skip
    if power["available"]:
        mean, dyn, per = power["inference"]["mean_mw"], power["dynamic_mw"], power["energy_per_tile_mj"]
        detail += (f"; {_watts(mean)} mean, {_watts(dyn)} dynamic, {per:.2f} mJ per tile ({power['sampler']['name']}, "
                   f"power mode {mode})") if per is not None else f"; power: {power['sampler']['name']} gave too few samples"
        data.update(mean_mw=mean, dynamic_mw=dyn, energy_per_tile_mj=per)
    else:
        detail += f"; power not measured ({power['reason']})"
    return _check("bench", PASS, detail, **data), None


def _db(value: float) -> str:
    return "inf" if value == float("inf") else f"{value:.1f}"


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def _watts(mw: float | None) -> str:
    return "? W" if mw is None else f"{mw / 1000:.2f} W"


def pipeline_checks(facts: Facts, settings: PipelineSettings, system: System,
                    on_step: Callable[[str], None] | None = None) -> list[Check]:  # fmt: skip
    """Every pipeline step, in order; ``on_step(name)`` is called as each one starts (the CLI's progress notes)."""
    note = on_step or (lambda _name: None)
    profile = settings.profile
    note("export")
    export, bundle = _guarded("export", export_step, facts, settings)
    note("plugin")
    plugin, library = _guarded("plugin", plugin_step, facts, profile, system)
    note("engine")
    engine, engine_ok = _guarded("engine", engine_step, facts, profile, bundle, settings.out_dir, library)
    note("parity-onnx")
    parity_onnx, ort_out = _guarded("parity-onnx", onnx_parity_step, facts, bundle)
    note("parity-engine")
    parity_engine, _ = _guarded("parity-engine", engine_parity_step, bundle, bool(engine_ok), ort_out)
    note("bench")
    bench, _ = _guarded("bench", bench_step, facts, profile, bundle, bool(engine_ok), settings.quick)
    return [export, plugin, engine, parity_onnx, parity_engine, bench]
