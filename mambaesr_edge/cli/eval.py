"""`mambaesr-edge eval SET [SET ...]`: Y-channel PSNR / SSIM of any model on benchmark folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .app import app, console, global_options, set_torch_threads, titled_table
from .options import (
    CudaOpt,
    GpuIdOpt,
    ModelOpt,
    PresetOpt,
    ScanOpt,
    ThreadsOpt,
    WeightsOpt,
    check_scan,
    use_gpu,
)


@app.command("eval")
def eval_command(
    ctx: typer.Context,
    datasets: Optional[list[Path]] = typer.Argument(None, help="Folders NAME/ holding HR/ (+ LR_bicubic/X<scale>/), e.g. Set5/ Set14/."),
    dataset: list[Path] = typer.Option([], "--dataset", help="A dataset folder, as the arguments (repeatable)."),
    weights: Optional[Path] = WeightsOpt,
    model_path: Optional[Path] = ModelOpt,
    preset: Optional[str] = PresetOpt,
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="torch, onnxruntime or tensorrt (default: from the model path)."),
    scale: int = typer.Option(4, "--scale", help="Upscaling factor of the LR inputs."),
    scan: str = ScanOpt,
    tile: int = typer.Option(0, "--tile", "-t", help="LR tile size; 0 = whole image (a static-shape ONNX/engine forces its own tile)."),
    overlap: Optional[int] = typer.Option(None, "--overlap", "--tile-overlap", help="Tile overlap in LR pixels (default: the bundle's, else 16)."),
    half: bool = typer.Option(False, "--fp16/--fp32", help="fp16: a bundle's model_fp16.onnx (any device), torch autocast (CUDA)."),
    cuda: bool = CudaOpt,
    gpu_id: Optional[int] = GpuIdOpt,
    rgb: bool = typer.Option(False, "--rgb", help="Also report PSNR on RGB."),
    param_key: Optional[str] = typer.Option(None, "--param-key", help="Entry of a BasicSR .pth (params_ema or params)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON here."),
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """Y-channel PSNR / SSIM (border = scale, MATLAB conventions) on benchmark folders, through any runtime backend."""
    from ..errors import ConfigError
    from ..evaluate import evaluate_upscaler, open_eval_backend
    from ..fileio import atomic_write
    from ..runtime import Upscaler

    options = global_options(ctx)
    sets = [*(datasets or []), *dataset]
    if not sets:
        raise typer.BadParameter("give at least one dataset folder, e.g. mambaesr-edge eval Set5/ Set14/", param_hint="DATASETS")
    if weights is not None and model_path is not None:
        raise ConfigError("give --model or --weights, not both", hint="--model takes weights too (.safetensors/.pth)")
    if tile < 0 or (overlap is not None and overlap < 0):
        raise ConfigError("--tile and --overlap must be >= 0", hint="--tile 0 evaluates whole images")
    if json_out is not None and (json_out.is_dir() or not json_out.parent.is_dir()):
        problem = "is a folder" if json_out.is_dir() else "is in a folder that does not exist"
        raise ConfigError(f"--json {json_out} {problem}", hint="pass a file path in an existing folder")
    cuda = use_gpu(cuda, gpu_id)
    set_torch_threads(options.threads_for(threads))  # evaluate imports torch in any case
    path = model_path or weights
    backend_obj, bundle = open_eval_backend(
        path, backend, preset=preset, scan_impl=check_scan(scan), param_key=param_key, precision="fp16" if half else "fp32",
        device="cuda" if cuda else "cpu",
    )  # fmt: skip
    info = backend_obj.info
    config, sha256, precision = info.config, info.weights_sha256, info.precision
    up = Upscaler(backend_obj, tile=tile, overlap=overlap, profile=bundle)
    tile_hw = up.settings.tile
    tile_used = 0 if tile_hw is None else (tile_hw[0] if tile_hw[0] == tile_hw[1] else list(tile_hw))
    options.decisions(up.startup_decisions)
    results = [evaluate_upscaler(up, d, scale=scale, model_scale=info.scale, rgb_psnr=rgb) for d in sets]
    params = _count_params(config)
    how = "whole image" if tile_used == 0 else f"tile {tile_used}, overlap {up.settings.overlap}"
    table = titled_table(
        title=f"x{scale}  {path or 'default model'}  ({info.name} {precision}, {how}"
        + (f", {params:,} params" if params is not None else "")
        + (f", {info.detail}" if info.name == "torch" else "")
        + ")"
    )
    for column in ("dataset", "images", "PSNR (Y)", "SSIM (Y)", *(("PSNR (RGB)",) if rgb else ()), "seconds"):
        table.add_column(column, justify="left" if column == "dataset" else "right")
    for r in results:
        extra = (f"{r.psnr_rgb:.3f}",) if rgb else ()
        table.add_row(r.name, str(r.images), f"{r.psnr:.3f}", f"{r.ssim:.4f}", *extra, f"{r.seconds:.1f}")
    console.print(table)
    if json_out is not None:
        report = {
            "datasets": {r.name: r.to_dict() for r in results},
            "params": params,
            "weights": str(path) if path else "default",
            "weights_sha256": sha256,
            "config": json.loads(config.to_json()) if config is not None else None,
            "scale": scale,
            "scan": scan if info.name == "torch" else "chunked (exported graph)",
            "backend": info.name,
            "tile": tile_used,
            "overlap": up.settings.overlap,
            "blend": up.settings.blend,
            "precision": precision,
            "decisions": [str(d) for d in up.startup_decisions],
        }
        with atomic_write(json_out) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {json_out}", highlight=False, markup=False)


def _count_params(config) -> Optional[int]:
    if config is None:
        return None
    from ..model import MambaSR, count_parameters

    return count_parameters(MambaSR(config))
