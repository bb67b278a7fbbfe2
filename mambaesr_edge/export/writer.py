"""The whole export: ONNX graphs + parity report + cost model + TensorRT engine or build script, as one bundle folder.

TensorRT profiles with `scan_plugin` (and `ExportOptions.plugin`, default on) also get the plugin graphs
(model_trt.onnx and its fp16 twin, plugin_graph.py), the plugin's sources and build_plugin.sh (plugin_files.py);
build_engine.sh then builds from the plugin graph. The cost model prices both graphs on every shipped profile
(cost.json, bundle.json `modelled_ms_per_tile`), tracing the plugin graph aside when the bundle holds none.

Atomic: everything is written into a temporary folder beside the target and renamed onto it only when every step
(parity included) passed, so a failed or interrupted export leaves no bundle, not even a partial one; an existing
bundle is only replaced with `force=True` (renamed away first, removed after the new one is in place). A full disk
raises `DiskFullError`. Only a process killed outright (SIGKILL) can leave the staging folder `.NAME.tmp-*` (or, in
the instant between the two renames, the old bundle as `.NAME.old-*`) beside the target: delete it, export again.
The files and bundle.json's fields are the artifact contract in mambaesr_edge/bundle.py (docs/interfaces.md,
"Export bundle"); the report keys no reader interprets (files, tensorrt status, versions, created) go in
``Bundle.extra``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..bundle import (
    BUILD_PLUGIN_SCRIPT_FILE,
    BUILD_SCRIPT_FILE,
    BUNDLE_FILE,
    COST_FILE,
    ENGINE_FILE,
    ONNX_FILE,
    ONNX_FP16_FILE,
    ONNX_TRT_FILE,
    ONNX_TRT_FP16_FILE,
    PARITY_FILE,
    Bundle,
    BundleError,
    OnnxFile,
    write_bundle,
)
from ..engine_manifest import write_engine_manifest
from ..errors import ConfigError, DiskFullError
from ..fileio import disk_full_error
from ..machine import package_versions, utc_now
from ..model import MambaSR
from ..profiles import MIN_TILE, DeviceProfile, list_profiles, load_profile
from . import tensorrt as trt_support
from .cost import GraphCost, RooflineEstimate, analytic_macs_per_pixel, graph_cost, roofline
from .onnx import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, OnnxExport, build_metadata, export_onnx
from .parity import ParityError, ParityReport, ParityThresholds, image_batch, random_batch, run_parity
from .plugin_files import copy_plugin_sources, plugin_build_script
from .plugin_graph import PluginParity, plugin_parity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportOptions:
    """What to export for which device. None = the profile's value."""

    profile: DeviceProfile
    tile: int | None = None
    batch: int | None = None
    fp16: bool | None = None  # also export and check the fp16 graph (default: profile precision is fp16)
    dynamic_hw: bool = False
    max_size: int | None = None  # dynamic only: largest side in LR pixels the graph must support (default 4 x tile)
    opset: int = DEFAULT_OPSET
    simplify: bool = True
    force: bool = False
    build_engine: bool = True  # when the profile's backend is tensorrt and `import tensorrt` works
    plugin: bool = True  # TensorRT profiles with scan_plugin: also the plugin graph(s) + sources (False: pure-op only)
    thresholds: ParityThresholds = field(default_factory=ParityThresholds)

    def resolved(self) -> "ExportOptions":
        p = self.profile
        out = replace(
            self,
            tile=self.tile or p.tile,
            batch=self.batch or p.batch,
            fp16=(p.precision == "fp16") if self.fp16 is None else self.fp16,
        )
        if out.tile < MIN_TILE:
            raise ConfigError(f"tile {out.tile} is below the minimum of {MIN_TILE}", hint=f"use --tile {MIN_TILE} or more")
        if out.batch < 1:
            raise ConfigError(f"batch {out.batch} must be >= 1", hint="use --batch 1 or more")
        if out.dynamic_hw:
            max_size = out.max_size or 4 * out.tile
            if max_size < out.tile:
                raise ConfigError(f"max size {max_size} is below the tile {out.tile}", hint="raise --max-size")
            out = replace(out, max_size=max_size)
        return out


@dataclass(frozen=True)
class ExportResult:
    bundle_dir: Path
    files: tuple[str, ...]
    bundle: Bundle
    parity: ParityReport
    cost: GraphCost
    rooflines: dict[str, RooflineEstimate]  # every shipped profile, plus the export's own
    analytic_macs_per_pixel: dict[str, float]
    tensorrt_status: str
    seconds: float
    plugin_cost: GraphCost | None = None  # the plugin graph's cost (modelled even when the bundle holds no plugin graph)
    plugin_rooflines: dict[str, RooflineEstimate] = field(default_factory=dict)
    plugin_parity: tuple[PluginParity, ...] = ()  # the bundle's plugin graphs, checked in ONNX Runtime around their nodes

    @property
    def manifest(self) -> dict:
        """bundle.json as written."""
        return self.bundle.to_dict()


def export_model(
    device: str | Path | DeviceProfile,
    weights: str | Path | None = None,
    *,
    out: str | Path | None = None,
    preset: str | None = None,
    param_key: str | None = None,
    **options: object,
) -> ExportResult:
    """What ``mambaesr-edge export --device DEVICE`` does: load ``weights`` (None: the shipped default model) with
    the exportable scan and write the bundle for ``device`` (a profile name, .toml path or DeviceProfile) into
    ``out`` (default ``bundle-<device>``). ``options``: ExportOptions fields (tile, batch, fp16, dynamic_hw, force, ...).
    Raises ParityError when the graph does not reproduce the model (no bundle is written)."""
    from ..checkpoint import load_model

    profile = device if isinstance(device, DeviceProfile) else load_profile(device)
    model, loaded = load_model(weights, preset, scan_impl="chunked", param_key=param_key)
    out_dir = Path(out) if out is not None else Path(f"bundle-{profile.name}")
    return export_bundle(model, loaded.sha256, out_dir, ExportOptions(profile=profile, **options))


def export_bundle(model: MambaSR, weights_sha256: str, out_dir: str | Path, options: ExportOptions) -> ExportResult:
    """Export `model` for `options.profile` into the folder `out_dir` (atomically). Raises ParityError on failed parity."""
    start = time.perf_counter()
    opts = options.resolved()
    out_dir = Path(out_dir)
    existed = out_dir.is_dir() and any(out_dir.iterdir())
    staging = _make_staging(out_dir, opts.force)
    try:
        result = _export_into(model, weights_sha256, staging, opts)
        _install(staging, out_dir)
    except BaseException as exc:  # Ctrl-C included: no staging folder is left behind
        _remove_tree(staging)
        full = disk_full_error(exc.__cause__ if isinstance(exc, DiskFullError) else exc, f"the bundle {out_dir}",
                               "nothing was written" + (", the previous bundle there is intact" if existed else ""),
                               "pass --out on another disk, then export again")
        if full is None:
            raise
        raise full from exc
    installed = replace(result.bundle, root=out_dir)  # the staging folder it was written in is gone
    return replace(result, bundle_dir=out_dir, bundle=installed, seconds=time.perf_counter() - start)


def _make_staging(out_dir: Path, force: bool) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise BundleError(f"{out_dir} exists and is not a folder", hint="choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise BundleError(f"{out_dir} already exists", hint="pass --force to replace it, or choose another --out")
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
        umask = os.umask(0o022)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the bundle gets the usual folder permissions
        return staging
    except OSError as exc:
        raise BundleError(f"cannot write the bundle next to {out_dir}: {exc.strerror or exc}", hint="choose a writable --out") from exc


def _install(staging: Path, out_dir: Path) -> None:
    """Rename the finished staging folder onto out_dir; an old bundle is moved aside first and removed after."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{int(time.time())}")
        os.rename(out_dir, old)
    try:
        os.rename(staging, out_dir)
    except BaseException:  # Ctrl-C between the two renames too: the old bundle goes back
        if old is not None:
            os.rename(old, out_dir)
        raise
    if old is not None:
        _remove_tree(old)


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    try:
        shutil.rmtree(path)
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


def _export_into(model: MambaSR, weights_sha256: str, bundle: Path, opts: ExportOptions) -> ExportResult:
    profile, config = opts.profile, model.config
    shape = (opts.batch, config.in_channels, opts.tile, opts.tile)
    max_tokens = opts.max_size**2 if opts.dynamic_hw else None
    use_plugin = opts.plugin and profile.backend == "tensorrt" and profile.scan_plugin
    graphs: dict[str, OnnxExport] = {}
    plugin_graphs: dict[str, OnnxExport] = {}
    for precision, filename, trt_filename in (("fp32", ONNX_FILE, ONNX_TRT_FILE), ("fp16", ONNX_FP16_FILE, ONNX_TRT_FP16_FILE)):
        if precision == "fp16" and not opts.fp16:
            continue
        metadata = build_metadata(
            config, weights_sha256=weights_sha256, profile=profile.name, tile=opts.tile, batch=opts.batch,
            dynamic_hw=opts.dynamic_hw, precision=precision,
        )  # fmt: skip
        graphs[precision] = export_onnx(
            model, bundle / filename, input_shape=shape, precision=precision, dynamic_hw=opts.dynamic_hw,
            max_tokens=max_tokens, opset=opts.opset, metadata=metadata, simplify=opts.simplify,
        )  # fmt: skip
        log.info("exported %s: %d nodes", filename, graphs[precision].node_count)
        if use_plugin:  # not simplified: onnxslim is untested on custom-domain nodes, and the graph is small already
            plugin_graphs[precision] = export_onnx(
                model, bundle / trt_filename, input_shape=shape, precision=precision, dynamic_hw=opts.dynamic_hw,
                max_tokens=max_tokens, opset=opts.opset, metadata={**metadata, "scan": "plugin"}, simplify=False,
                plugin=True,
            )  # fmt: skip
            log.info("exported %s: %d nodes", trt_filename, plugin_graphs[precision].node_count)
    other = _other_shape(shape, graphs["fp32"].max_tokens) if opts.dynamic_hw else None
    report = run_parity(model, {k: g.path for k, g in graphs.items()}, shape, other_shape=other, thresholds=opts.thresholds)
    tiles = [image_batch(shape, config.scale)[0]] + ([random_batch(other, seed=99)] if other is not None else [])
    t = opts.thresholds
    checked = tuple(
        plugin_parity(model, g.path, lr, precision, fp32_max_abs=t.fp32_max_abs, fp16_min_psnr_db=t.fp16_min_psnr_db)
        for precision, g in plugin_graphs.items() for lr in tiles
    )  # fmt: skip
    _write_json(bundle / PARITY_FILE, {**report.to_dict(), "plugin_graphs": [c.to_dict() for c in checked]})
    failures = report.failures() + [f"{c.graph}: {c.reason}" for c in checked if not c.passed]
    if failures:
        raise ParityError(
            "parity check failed, export refused: " + "; ".join(failures),
            hint="the ONNX graph does not reproduce the PyTorch model; run with --debug and report it",
            report=report,
        )
    cost_precision = "fp16" if profile.precision == "fp16" and "fp16" in graphs else "fp32"
    cost = _cost_of(model, graphs[cost_precision], bundle, opts)
    plugin_cost = _cost_of(model, plugin_graphs.get(cost_precision) or graphs[cost_precision], bundle, opts, plugin=True)
    rooflines = _rooflines(cost, profile)
    plugin_rooflines = _rooflines(plugin_cost, profile)
    macs = analytic_macs_per_pixel(config)
    latency = {
        name: {"pure_op": rooflines[name].per_tile_ms, "plugin": plugin_rooflines[name].per_tile_ms,
               "plugin_on_device": _profile_uses_plugin(name, profile)}
        for name in rooflines
    }  # fmt: skip
    _write_json(
        bundle / COST_FILE,
        {
            "graph": graphs[cost_precision].path.name,
            "cost": cost.to_dict(),
            "roofline": {name: r.to_dict() for name, r in rooflines.items()},
            "plugin_graph": {
                "graph": plugin_graphs[cost_precision].path.name if plugin_graphs else None,  # None: modelled, not in the bundle
                "cost": plugin_cost.to_dict(),
                "roofline": {name: r.to_dict() for name, r in plugin_rooflines.items()},
            },
            "modelled_ms_per_tile": latency,
            "analytic_macs_per_lr_pixel": macs,
            "note": "modelled latency = max(FLOPs / peak FLOP/s, bytes / bandwidth); see mambaesr_edge/export/cost.py",
        },
    )
    contents = _bundle_contents(bundle, model, weights_sha256, profile, opts, graphs, plugin_graphs)
    status = _tensorrt_step(contents, profile, opts)
    files = sorted(p.name for p in bundle.iterdir()) + [BUNDLE_FILE]
    tensorrt = {"status": status, "engine": ENGINE_FILE if (bundle / ENGINE_FILE).exists() else None}
    modelled = {"graph_precision": cost_precision, "profiles": latency}
    contents = replace(contents, extra={**contents.extra, "tensorrt": tensorrt, "files": files, "modelled_ms_per_tile": modelled})
    write_bundle(contents)
    return ExportResult(bundle, tuple(files), contents, report, cost, rooflines, macs, status, 0.0, plugin_cost, plugin_rooflines, checked)


def _rooflines(cost: GraphCost, profile: DeviceProfile) -> dict[str, RooflineEstimate]:
    """The modelled latency on every shipped profile, plus the export's own (a profile file may be none of them)."""
    rooflines = {name: roofline(cost, load_profile(name)) for name in list_profiles()}
    rooflines[profile.name] = roofline(cost, profile)
    return rooflines


def _profile_uses_plugin(name: str, profile: DeviceProfile) -> bool:
    p = profile if name == profile.name else load_profile(name)
    return p.backend == "tensorrt" and p.scan_plugin


def _other_shape(shape: tuple[int, int, int, int], capacity: int | None) -> tuple[int, int, int, int]:
    """A shape other than the traced one for the dynamic parity case: another batch, odd non-square sides."""
    n, c, h, w = shape
    h2, w2 = h // 2 + 3, w + 5
    while capacity is not None and h2 * w2 > capacity:
        w2 -= 8
    return (n + 1, c, h2, max(w2, 1))


def _cost_of(model: MambaSR, graph: OnnxExport, bundle: Path, opts: ExportOptions, *, plugin: bool = False) -> GraphCost:
    """Cost of the exported graph at its tile shape; a dynamic graph's shapes cannot all be inferred, so its cost is
    taken from a static trace of the same fixed-depth scan (same nodes, static shapes), not kept in the bundle.
    `plugin`: the cost of the plugin graph, traced here (and not kept) when `graph` is a pure-op one."""
    is_plugin = graph.path.name in (ONNX_TRT_FILE, ONNX_TRT_FP16_FILE)
    if not graph.dynamic_hw and plugin == is_plugin:
        return graph_cost(graph.path)
    with tempfile.TemporaryDirectory(dir=bundle) as tmp:
        static = export_onnx(
            model, Path(tmp) / "cost.onnx", input_shape=graph.input_shape, precision=graph.precision,
            max_tokens=graph.max_tokens, opset=graph.opset, simplify=opts.simplify and not plugin, plugin=plugin,
        )  # fmt: skip
        return graph_cost(static.path)


def _bundle_contents(
    root: Path, model: MambaSR, weights_sha256: str, profile: DeviceProfile, opts: ExportOptions, graphs: dict[str, OnnxExport],
    plugin_graphs: dict[str, OnnxExport],
) -> Bundle:
    def entry(g: OnnxExport) -> OnnxFile:
        return OnnxFile(g.path.name, g.sha256, g.opset, g.node_count, g.simplifier)

    return Bundle(
        root=root,
        config=model.config,
        profile=profile.name,
        precision=profile.precision,
        tile=opts.tile,
        overlap=_overlap(profile.overlap, opts.tile),
        batch=opts.batch,
        dynamic_hw=opts.dynamic_hw,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        onnx=entry(graphs["fp32"]),
        onnx_fp16=entry(graphs["fp16"]) if "fp16" in graphs else None,
        weights_sha256=weights_sha256,
        max_tokens=graphs["fp32"].max_tokens,
        onnx_trt=entry(plugin_graphs["fp32"]) if plugin_graphs else None,
        onnx_trt_fp16=entry(plugin_graphs["fp16"]) if "fp16" in plugin_graphs else None,
        plugin=copy_plugin_sources(root) if plugin_graphs else None,
        extra={"versions": package_versions(), "created": utc_now()},
    )


def _tensorrt_step(bundle: Bundle, profile: DeviceProfile, opts: ExportOptions) -> str:
    """Write build_engine.sh; build the engine here when TensorRT and a GPU are present. Returns a status line."""
    if profile.backend != "tensorrt":
        return f"profile backend is {profile.backend}: no TensorRT engine needed"
    settings = trt_support.engine_settings(profile, bundle)
    scripts = {BUILD_SCRIPT_FILE: trt_support.build_script(settings, profile)}
    if settings.plugin_file:
        scripts[BUILD_PLUGIN_SCRIPT_FILE] = plugin_build_script(profile)
    for name, text in scripts.items():
        (bundle.root / name).write_text(text)
        (bundle.root / name).chmod(0o755)
    trt = trt_support.import_tensorrt() if opts.build_engine else None
    if trt is None:
        return trt_support.NOT_AVAILABLE
    gpu_name, capability = trt_support.detect_gpu()
    if not gpu_name:
        return f"TensorRT {trt.__version__} imports but no GPU was found: engine left to build on the device with {BUILD_SCRIPT_FILE}"
    if settings.plugin_file:  # the library is built by nvcc on the device, never here on the side
        return (f"TensorRT {trt.__version__} is here, but the plugin graph needs the scan plugin library: run {BUILD_PLUGIN_SCRIPT_FILE}, "
                f"then {BUILD_SCRIPT_FILE} (or mambaesr-edge build-engine)")
    trt_support.build_engine(bundle.root, settings, trt=trt)
    manifest = trt_support.engine_manifest(bundle, settings, trt_version=trt.__version__, gpu_name=gpu_name, compute_capability=capability)
    write_engine_manifest(bundle.engine_manifest_path, manifest)
    return f"built {ENGINE_FILE} with TensorRT {trt.__version__} on {gpu_name} (sm {capability or '?'})"


def _overlap(overlap: int, tile: int) -> int:
    """The profile's overlap, reduced to a quarter of the tile when --tile makes it >= half the tile."""
    if 2 * overlap < tile:
        return overlap
    log.info("overlap %d is too large for tile %d: using %d", overlap, tile, tile // 4)
    return tile // 4


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
