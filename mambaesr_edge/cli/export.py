"""`mambaesr-edge export` (ONNX bundle for a device profile) and `mambaesr-edge build-engine` (its TensorRT engine)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from .app import app, console, err_console, global_options, titled_table


@app.command("export")
def export_command(
    ctx: typer.Context,
    device: str = typer.Option(..., "--device", "-d", help="Device profile: a name (mambaesr-edge profiles) or a .toml file."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Weights (.safetensors, .pth). Default: the shipped model."),
    model: Optional[Path] = typer.Option(
        None, "--model", "-m", "--model-name", "--model_name", "-n",
        help="Model to export: a name (`mambaesr-edge models`; -n is Real-ESRGAN's spelling) or weights, as --weights.",
    ),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Preset the weights were trained with (default: from the file)."),
    param_key: Optional[str] = typer.Option(None, "--param-key", help="Entry of a BasicSR .pth (params_ema or params)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Bundle folder to write (default: bundle-<device>)."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Tile size in LR pixels (default: the profile's)."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Tiles per inference (default: the profile's)."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Dynamic batch and H/W (up to --max-size) instead of a static tile."),
    max_size: Optional[int] = typer.Option(None, "--max-size", help="With --dynamic: largest side supported (default 4 x tile)."),
    fp16: Optional[bool] = typer.Option(None, "--fp16/--no-fp16", help="Also export model_fp16.onnx (default: when the profile is fp16)."),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="Simplify with onnxslim when installed."),
    no_engine: bool = typer.Option(False, "--no-engine", help="Do not build a TensorRT engine even when TensorRT is here."),
    no_plugin: bool = typer.Option(False, "--no-plugin", help="No scan-plugin graph (model_trt.onnx): TensorRT runs the pure-op graph."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle folder."),
) -> None:
    """Export ONNX (+ fp16 variant) for a device, prove it against PyTorch, model its cost, and build or script the engine."""
    from ..checkpoint import load_model
    from ..errors import ConfigError
    from ..export.parity import ParityError
    from ..export.writer import ExportOptions, export_bundle
    from ..profiles import load_profile
    from ..runtime.source import classify

    if weights is not None and model is not None:
        raise ConfigError("give --model or --weights, not both", hint="--model takes weights files too")
    profile = load_profile(device)
    what = str(weights) if weights is not None else "the default model"
    if model is not None:  # --model: a name (-> its shipped weights, via the one resolver) or a weights file
        source = classify(model)
        if not source.is_weights:
            raise ConfigError(f"export takes weights, not {source.label}", hint="pass a model name or a .safetensors/.pth file")
        weights, what = source.path, source.label
    network, loaded = load_model(weights, preset, scan_impl="chunked", param_key=param_key)
    out_dir = out or Path(f"bundle-{profile.name}")
    options = ExportOptions(
        profile=profile, tile=tile, batch=batch, fp16=fp16, dynamic_hw=dynamic, max_size=max_size,
        simplify=simplify, force=force, build_engine=not no_engine, plugin=not no_plugin,
    )  # fmt: skip
    global_options(ctx).note(f"exporting {what} for {profile.name} ({profile.description})")
    existed = out_dir.is_dir() and any(out_dir.iterdir())
    try:
        result = export_bundle(network, loaded.sha256, out_dir, options)
    except KeyboardInterrupt:
        from ..errors import Interrupted

        kept = "the bundle there is unchanged" if existed else "nothing was left behind"
        raise Interrupted(f"no bundle written to {out_dir} ({kept}); an export is all or nothing: run it again") from None
    except ParityError as exc:
        if exc.report is not None:
            err_console.print(_parity_table(exc.report))
        err_console.print(f"[bold red]parity failed:[/] {exc.message}", highlight=False, soft_wrap=True)
        err_console.print(f"no bundle written to {out_dir}", highlight=False)
        raise typer.Exit(1) from exc
    console.print(_files_table(result.bundle_dir, result.files))
    console.print(_parity_table(result.parity))
    console.print(_cost_table(result, profile.name))
    console.print(_roofline_table(result, profile.name))
    console.print(f"TensorRT: {result.tensorrt_status}", highlight=False, soft_wrap=True)
    console.print(f"bundle {result.bundle_dir}/ written in {result.seconds:.1f} s", highlight=False)


def _files_table(bundle: Path, files: tuple[str, ...]) -> Table:
    table = titled_table(title=f"bundle {bundle}/", box=box.SIMPLE_HEAD)
    table.add_column("file")
    table.add_column("size", justify="right")
    for name in files:
        path = bundle / name
        table.add_row(name, f"{path.stat().st_size / 1024:,.1f} KiB" if path.is_file() else "-")
    return table


def _db(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) and value > 0 else f"{value:.2f}"


def _parity_table(report) -> Table:
    t = report.thresholds
    title = (
        f"parity vs {report.reference} (fp32: max abs <= {t.fp32_max_abs:g}, PSNR >= {t.fp32_min_psnr_db:g} dB; "
        f"fp16: PSNR >= {t.fp16_min_psnr_db:g} dB)"
    )
    drop = report.fp16_drop_db()
    caption = f"fp16 PSNR drop vs HR on the image tile: {drop:.4f} dB" if drop is not None else None
    table = titled_table(title=title, caption=caption, box=box.SIMPLE_HEAD)
    for column in ("graph", "input", "shape", "max abs err", "PSNR dB", "PSNR vs HR (torch)", "result"):
        table.add_column(column, justify="left" if column in ("graph", "input", "result") else "right")
    for c in report.cases:
        vs_hr = f"{_db(c.psnr_vs_hr_db)} ({_db(c.torch_psnr_vs_hr_db)})" if c.torch_psnr_vs_hr_db is not None else "-"
        result = "[green]ok[/]" if c.passed else "[red]FAIL[/]"  # the reasons follow in the error line
        table.add_row(c.variant, c.name, "x".join(map(str, c.shape)), f"{c.max_abs:.2e}", _db(c.psnr_db), vs_hr, result)
    return table


def _cost_table(result, profile_name: str) -> Table:
    cost = result.cost
    name, op, shape, size = cost.largest_tensor
    table = titled_table(
        title=f"graph cost at {'x'.join(map(str, cost.input_shape))} ({cost.node_count} nodes)",
        box=box.SIMPLE_HEAD,
        caption=(
            f"{cost.flops / 1e9:.3f} GFLOP, intermediates {cost.intermediate_bytes / 1e6:.1f} MB, weights "
            f"{cost.weight_bytes / 1e6:.2f} MB; largest tensor {size / 1e6:.2f} MB ({op} {list(shape)}); analytic "
            f"{result.analytic_macs_per_pixel['total'] / 1e3:.1f} kMAC per LR pixel"
        ),
    )
    for column in ("op", "count", "GFLOP", "MB written"):
        table.add_column(column, justify="left" if column == "op" else "right")
    for entry in cost.by_op[:8]:
        table.add_row(entry.op_type, str(entry.count), f"{entry.flops / 1e9:.4f}", f"{entry.bytes_written / 1e6:.2f}")
    return table


def _roofline_table(result, profile_name: str) -> Table:
    title = "modelled ms per tile = max(FLOPs / peak, bytes / bandwidth), no fusion (* = this export's device)"
    table = titled_table(title=title, box=box.SIMPLE_HEAD)
    for column in ("device", "pure-op ms", "bound", "scan-plugin ms", "bound "):
        table.add_column(column, justify="left" if column.startswith(("device", "bound")) else "right")
    for name, r in sorted(result.rooflines.items(), key=lambda kv: (kv[0] != profile_name, kv[0])):
        plugin = result.plugin_rooflines.get(name)
        table.add_row(name + ("*" if name == profile_name else ""), f"{r.per_tile_ms:.3f}", r.bound,
                      f"{plugin.per_tile_ms:.3f}" if plugin else "-", plugin.bound if plugin else "")  # fmt: skip
    return table


@app.command("build-engine")
def build_engine_command(
    ctx: typer.Context,
    bundle: Path = typer.Argument(..., help="Bundle folder written by `mambaesr-edge export`."),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="Profile for the build settings (default: the bundle's)."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Timing cache to reuse across builds (default: in the bundle)."),
    no_plugin: bool = typer.Option(False, "--no-plugin", help="Build from the pure-op model.onnx even when the bundle has a plugin graph."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the engine is up to date."),
    manifest_only: bool = typer.Option(False, "--manifest-only", help="Only record model.engine.json for an engine built by trtexec."),
) -> None:
    """Build the bundle's TensorRT engine here with the Python API (on the target device), or say why it is up to date."""
    from ..bundle import read_bundle
    from ..engine_manifest import EngineEnvironment, bundle_engine_problems, write_engine_manifest
    from ..export import tensorrt as trt_support
    from ..profiles import load_profile

    notes = global_options(ctx)
    contents = read_bundle(bundle)
    profile = load_profile(device or contents.profile)
    trt = trt_support.require_tensorrt()
    gpu_name, capability = trt_support.detect_gpu()
    settings = trt_support.engine_settings(profile, contents, plugin=False if no_plugin else None)
    if profile.tensorrt and trt_support.parse_version(trt.__version__)[:2] != trt_support.parse_version(profile.tensorrt)[:2]:
        notes.note(f"note: profile {profile.name} expects TensorRT {profile.tensorrt}, this is {trt.__version__}")
    if not manifest_only:
        reasons = bundle_engine_problems(contents, EngineEnvironment(gpu_name, capability, trt.__version__))
        if not reasons and not force:
            console.print(f"{contents.engine_path} is up to date (TensorRT {trt.__version__}, {gpu_name})", highlight=False)
            return
        for reason in reasons:
            notes.note(f"rebuilding: {reason}")
        trt_support.build_engine(bundle, settings, trt=trt, timing_cache=timing_cache)
    elif not (bundle / settings.engine_file).is_file():
        from ..errors import MambaESRError

        raise MambaESRError(f"no {settings.engine_file} in {bundle}", hint="run build_engine.sh (trtexec) first, or drop --manifest-only")
    manifest_path = write_engine_manifest(
        contents.engine_manifest_path,
        trt_support.engine_manifest(contents, settings, trt_version=trt.__version__, gpu_name=gpu_name, compute_capability=capability),
    )
    console.print(f"engine {bundle / settings.engine_file} and {manifest_path.name} written", highlight=False)
