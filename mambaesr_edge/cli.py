"""The `mambaesr-edge` command line: a thin face over the library.

User errors (MambaESRError, and OSError: the file system refusing a path) print one line and a hint and exit 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.table import Table

from .errors import Interrupted, MambaESRError
from .presets import SCAN_IMPLS  # not from .scan: that imports torch, which `upscale` on the CPU never needs

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="mambaesr-edge: a Mamba super-resolution model from training to the Jetson camera.",
)
console = Console()
err_console = Console(stderr=True)

WeightsOpt = typer.Option(None, "--weights", "-w", help="Weights (.safetensors, .pth). Default: the shipped model.")
PresetOpt = typer.Option(None, "--preset", "-p", help="Preset the weights were trained with (default: from the file).")
ScanOpt = typer.Option("auto", "--scan", help=f"Selective-scan implementation: {', '.join(SCAN_IMPLS)}.")


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's choice)."),
) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if threads:
        import torch

        torch.set_num_threads(threads)


def _check_scan(scan: str) -> str:
    if scan not in SCAN_IMPLS:
        raise typer.BadParameter(f"{scan!r} is not one of {', '.join(SCAN_IMPLS)}", param_hint="--scan")
    return scan


@app.command("eval")
def eval_command(
    dataset: list[Path] = typer.Option(..., "--dataset", "-d", help="Folder NAME/ holding HR/ (+ LR_bicubic/X<scale>/)."),
    weights: Optional[Path] = WeightsOpt,
    model_path: Optional[Path] = typer.Option(None, "--model", "-m", help="Model: weights, .onnx, .engine or an export bundle folder."),
    preset: Optional[str] = PresetOpt,
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="torch, onnxruntime or tensorrt (default: from the model path)."),
    scale: int = typer.Option(4, "--scale", help="Upscaling factor of the LR inputs."),
    scan: str = ScanOpt,
    tile: int = typer.Option(0, "--tile", "-t", help="LR tile size; 0 = whole image (a static-shape ONNX/engine forces its own tile)."),
    overlap: Optional[int] = typer.Option(None, "--overlap", "--tile-overlap", help="Tile overlap in LR pixels (default: the bundle's, else 16)."),
    half: bool = typer.Option(False, "--fp16/--fp32", help="fp16: a bundle's model_fp16.onnx (any device), torch autocast (CUDA)."),
    cuda: bool = typer.Option(False, "--cuda", help="Run on the CUDA GPU (torch / onnxruntime)."),
    rgb: bool = typer.Option(False, "--rgb", help="Also report PSNR on RGB."),
    param_key: Optional[str] = typer.Option(None, "--param-key", help="Entry of a BasicSR .pth (params_ema or params)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON here."),
) -> None:
    """Y-channel PSNR / SSIM (border = scale, MATLAB conventions) on benchmark folders, through any runtime backend."""
    from .errors import ConfigError
    from .evaluate import evaluate_upscaler, open_eval_backend
    from .fileio import atomic_write
    from .runtime import Upscaler

    if weights is not None and model_path is not None:
        raise ConfigError("give --model or --weights, not both", hint="--model takes weights too (.safetensors/.pth)")
    if tile < 0 or (overlap is not None and overlap < 0):
        raise ConfigError("--tile and --overlap must be >= 0", hint="--tile 0 evaluates whole images")
    if json_out is not None and (json_out.is_dir() or not json_out.parent.is_dir()):
        problem = "is a folder" if json_out.is_dir() else "is in a folder that does not exist"
        raise ConfigError(f"--json {json_out} {problem}", hint="pass a file path in an existing folder")
    path = model_path or weights
    backend_obj, bundle = open_eval_backend(
        path, backend, preset=preset, scan_impl=_check_scan(scan), param_key=param_key, precision="fp16" if half else "fp32",
        device="cuda" if cuda else "cpu",
    )  # fmt: skip
    info = backend_obj.info
    config, sha256, precision = info.config, info.weights_sha256, info.precision
    up = Upscaler(backend_obj, tile=tile, overlap=overlap, profile=bundle)
    tile_hw = up.settings.tile
    tile_used = 0 if tile_hw is None else (tile_hw[0] if tile_hw[0] == tile_hw[1] else list(tile_hw))
    for decision in up.startup_decisions:
        console.print(f"[dim]{decision}[/]", highlight=False)
    results = [evaluate_upscaler(up, d, scale=scale, model_scale=info.scale, rgb_psnr=rgb) for d in dataset]
    params = _count_params(config)
    how = "whole image" if tile_used == 0 else f"tile {tile_used}, overlap {up.settings.overlap}"
    table = Table(
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
        console.print(f"wrote {json_out}")


def _count_params(config) -> Optional[int]:
    if config is None:
        return None
    from .model import MambaSR, count_parameters

    return count_parameters(MambaSR(config))


@app.command("upscale")
def upscale_command(
    image: Path = typer.Argument(..., help="Input image, folder of images, or video (.mp4/.avi/.mov/.mkv; needs the video extra)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output file (format from its suffix) or folder."),
    weights: Optional[Path] = WeightsOpt,
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Model: weights, .onnx, .engine or an export bundle folder."),
    preset: Optional[str] = PresetOpt,
    scan: str = ScanOpt,
    backend: Optional[str] = typer.Option(
        None, "--backend", "-b", help="torch, numpy, onnxruntime or tensorrt (default: from the model path; numpy for our weights on the CPU)."
    ),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="Device profile (e.g. orin-nano, x86-cpu): backend, tile, precision."),
    cuda: bool = typer.Option(False, "--cuda", help="Run on the CUDA GPU (torch / onnxruntime)."),
    tile: Optional[int] = typer.Option(None, "--tile", "-t", help="LR tile size; 0 = whole image at once. Default: profile/bundle, else from free memory."),
    overlap: Optional[int] = typer.Option(None, "--tile-overlap", "--overlap", "--tile-pad", help="Overlap between tiles in LR pixels (default 16)."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Tiles per inference call."),
    blend: str = typer.Option("cosine", "--blend", help="Tile blending: cosine, cosine-inner, uniform, crop."),
    half: Optional[bool] = typer.Option(None, "--fp16/--fp32", "--half", help="Precision (default: profile/bundle; fp32 on CPU)."),
    ext: str = typer.Option("auto", "--ext", help="Output format for folders/-o folder: auto (as input), png, jpg, ..."),
    suffix: str = typer.Option("", "--suffix", help="Appended to output names as NAME_SUFFIX.EXT (folders, -o folder)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs (folders: otherwise skipped)."),
) -> None:
    """Upscale an image, a folder (structure mirrored) or a video, tiled with blended overlaps; writes are atomic."""
    from .runtime.commands import UpscaleRequest, run_upscale

    if weights is not None and model is not None:
        raise typer.BadParameter("give --model or --weights, not both", param_hint="--model")
    request = UpscaleRequest(
        input=image,
        output=output,
        model=model or weights,
        preset=preset,
        scan_impl=_check_scan(scan),
        backend=backend,
        device_profile=device,
        cuda=cuda,
        tile=tile,
        overlap=overlap,
        batch=batch,
        blend=blend,
        half=half,
        ext=ext,
        suffix=suffix,
        overwrite=overwrite,
    )
    run_upscale(request, console)  # a folder run with failed files raises after finishing the others (exit 2)


@app.command("demo")
def demo_command(
    out_dir: Path = typer.Option(Path("mambaesr_demo"), "--out", "-o", help="Folder for the demo images."),
    scan: str = ScanOpt,
) -> None:
    """Main job on the shipped default model: downscale the shipped sample x4, super-resolve it, compare with bicubic."""
    from .checkpoint import load_model
    from .evaluate import super_resolve
    from .images import load_image, save_image
    from .metrics import bicubic_downscale_uint8, bicubic_upscale_uint8, psnr, ssim
    from .model import count_parameters
    from .resources import sample_image_path

    model, loaded = load_model(scan_impl=_check_scan(scan))
    scale = model.scale
    hr = load_image(sample_image_path())
    hr = hr[: hr.shape[0] - hr.shape[0] % scale, : hr.shape[1] - hr.shape[1] % scale]
    lr = bicubic_downscale_uint8(hr, scale)
    start = time.perf_counter()
    sr = super_resolve(model, lr)
    seconds = time.perf_counter() - start
    bicubic = bicubic_upscale_uint8(lr, scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, array in (("lr", lr), ("bicubic_x4", bicubic), ("sr_x4", sr), ("hr", hr)):
        save_image(out_dir / f"sample_{name}.png", array)
    table = Table(title=f"default model ({count_parameters(model):,} params), sample {lr.shape[1]}x{lr.shape[0]} -> x{scale}")
    for column in ("method", "PSNR (Y)", "SSIM (Y)"):
        table.add_column(column)
    table.add_row("bicubic", f"{psnr(bicubic, hr, crop_border=scale):.2f}", f"{ssim(bicubic, hr, crop_border=scale):.4f}")
    table.add_row("mambaesr-edge", f"{psnr(sr, hr, crop_border=scale):.2f}", f"{ssim(sr, hr, crop_border=scale):.4f}")
    console.print(table)
    console.print(f"super-resolved in {seconds:.2f} s on CPU; images in {out_dir}/")


@app.command("train")
def train_command(
    train_dir: list[Path] = typer.Option([], "--train-dir", help="Folder of HR training images (repeatable)."),
    preset: str = typer.Option("student", "--preset", "-p", help="Preset of the network to train (not with --init)."),
    dt_rank: Optional[int] = typer.Option(None, "--dt-rank", help="Replace the preset's dt projection rank (e.g. 2 or 30)."),
    val_dir: Optional[Path] = typer.Option(None, "--val-dir", help="Validation set NAME/ with HR/ (e.g. Set5)."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="Teacher weights for knowledge distillation."),
    teacher_preset: Optional[str] = typer.Option(None, "--teacher-preset", help="Teacher preset (default: from the file)."),
    alpha: float = typer.Option(0.8, "--alpha", help="KD weight: alpha*L1(student,teacher) + (1-alpha)*L1(student,GT)."),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-n", help="Total optimizer steps [10000]."),
    batch_size: int = typer.Option(32, "--batch-size", help="Global batch (split over DDP ranks)."),
    patch: int = typer.Option(64, "--patch", help="LR patch side."),
    lr: float = typer.Option(2e-4, "--lr", help="Peak learning rate."),
    schedule: str = typer.Option("cosine", "--schedule", help="cosine or multistep."),
    warmup: int = typer.Option(0, "--warmup", help="Linear warm-up steps."),
    milestones: list[int] = typer.Option([], "--milestone", help="multistep: halve the lr at this step (repeatable)."),
    val_every: int = typer.Option(1000, "--val-every"),
    ckpt_every: int = typer.Option(1000, "--ckpt-every"),
    log_every: int = typer.Option(50, "--log-every"),
    seed: int = typer.Option(0, "--seed"),
    scan: str = ScanOpt,
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the network."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop with a checkpoint after this long."),
    out_dir: Path = typer.Option(Path("runs"), "--out", help="Parent folder of run folders."),
    run_name: Optional[str] = typer.Option(None, "--name", help="Run folder name (default: timestamp_preset)."),
    init_weights: Optional[Path] = typer.Option(None, "--init", help="Start from these weights and the network they store."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder exactly."),
) -> None:
    """Train a network (plain, or distilled from --teacher); same code under torchrun for several GPUs."""
    from .train import TrainConfig, default_run_name, interrupted_note, load_train_config, train

    if resume is not None:
        cfg = load_train_config(resume, iterations=iterations, max_minutes=max_minutes)
    else:
        cfg = TrainConfig(
            preset=preset, dt_rank=dt_rank, train_dirs=tuple(str(d) for d in train_dir), val_dir=str(val_dir) if val_dir else None,
            teacher=str(teacher) if teacher else None, teacher_preset=teacher_preset, alpha=alpha if teacher else 0.0,
            iterations=iterations or 10_000, batch_size=batch_size, patch=patch, lr=lr, schedule=schedule, warmup=warmup,
            milestones=tuple(milestones), val_every=val_every, ckpt_every=ckpt_every, log_every=log_every, seed=seed,
            scan_impl=_check_scan(scan), compile=compile_model, max_minutes=max_minutes, out_dir=str(out_dir),
            run_name=run_name, init_weights=str(init_weights) if init_weights else None,
        )
        if cfg.run_name is None and int(os.environ.get("WORLD_SIZE", "1")) == 1:  # (under torchrun rank 0 names it)
            cfg = dataclasses.replace(cfg, run_name=default_run_name(cfg))  # fixed now, to name it if interrupted
    run_dir = resume if resume is not None else (Path(cfg.out_dir) / cfg.run_name if cfg.run_name else None)
    try:
        run_dir = train(cfg, resume=resume)
    except KeyboardInterrupt:
        if run_dir is None:
            raise
        raise Interrupted(interrupted_note(run_dir)) from None
    console.print(f"run folder: {run_dir}")
    eval_file = run_dir / "eval.json"
    if eval_file.is_file():
        for name, result in json.loads(eval_file.read_text())["datasets"].items():
            console.print(f"{name}: PSNR {result['psnr']:.3f} dB, SSIM {result['ssim']:.4f}")


@app.command("presets")
def presets_command() -> None:
    """List the model presets with their measured parameter counts."""
    from .model import MambaSR, count_parameters
    from .presets import PRESETS

    table = Table(title="presets")
    for column in ("name", "dim", "groups x blocks", "d_state", "dt rank", "scan orders", "params (x4)"):
        table.add_column(column)
    for name, cfg in PRESETS.items():
        table.add_row(
            name,
            str(cfg.embed_dim),
            f"{cfg.groups} x {cfg.blocks_per_group}",
            str(cfg.d_state),
            str(cfg.dt_rank),
            ",".join(cfg.scan_orders),
            f"{count_parameters(MambaSR(cfg)):,}",
        )
    console.print(table)


from .export.commands import register as _register_export  # noqa: E402  (export + profiles commands, issue 4)

_register_export(app)

from .bench import register as _register_bench  # noqa: E402  (bench command, issue 6)

_register_bench(app)

from .data_commands import register as _register_data  # noqa: E402  (data prepare / list, issue 3)

_register_data(app)


INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what shells report for a Ctrl-C


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; turn user errors into one line + hint and exit code 2, Ctrl-C into exit code 130.

    Ctrl-C: commands that know what they kept raise `Interrupted` ("interrupted: 7 of 20 images written ...");
    anywhere else typer turns the KeyboardInterrupt into exit code 130 (older typer/click: Abort) and we say
    "interrupted". Either way every file written is complete (atomic writes) and no traceback is shown.
    """
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="mambaesr-edge", standalone_mode=False)
        if result == INTERRUPTED_EXIT_CODE:  # typer's answer to a KeyboardInterrupt (no command exits 130 itself)
            err_console.print("interrupted", highlight=False)
        if isinstance(result, int):  # a command's typer.Exit(code) comes back as the return value here
            return result
    except Interrupted as exc:
        if debug:
            raise
        err_console.print(f"interrupted: {exc.message}", highlight=False, soft_wrap=True)
        return INTERRUPTED_EXIT_CODE
    except MambaESRError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
        if exc.hint:
            err_console.print(f"hint: {exc.hint}", highlight=False, soft_wrap=True)
        return 2
    except OSError as exc:  # the file system refused (a path that is a file, a full disk, ...): the user's to fix
        if debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        err_console.print(f"[bold red]error:[/] {exc.strerror or exc}{where}", highlight=False, soft_wrap=True)
        err_console.print("hint: check the paths and their permissions; --debug shows where it happened", highlight=False)
        return 2
    except _EXIT_ERRORS as exc:
        return exc.exit_code
    except _USAGE_ERRORS as exc:  # bad or missing options: click's one-line usage message
        if hasattr(exc, "show"):
            exc.show()
        else:
            err_console.print(f"error: {exc}", highlight=False)
        return 2
    except (*_ABORT_ERRORS, KeyboardInterrupt):
        err_console.print("interrupted", highlight=False)
        return INTERRUPTED_EXIT_CODE
    return 0


def run() -> None:
    """Process entry point (console script, ``python -m mambaesr_edge``): ``main()``, then exit with its code.

    OMP_WAIT_POLICY defaults to PASSIVE (set before any command imports torch, whose OpenMP runtime reads it once):
    with the default spinning policy, torch's idle OpenMP threads spin for cores that other processes need; on 2
    shared cores that made a 1 s upscale take 14-18 s (benchmarks/cpu_upscale.py, torch vs torch[PASSIVE]).
    Objects are frozen before exiting: the interpreter's collections at exit would walk every object torch created
    (about 0.2 s) only to free memory the OS takes back anyway."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    code = main()
    gc.freeze()
    sys.exit(code)


# Recent typer ships its own copy of click, older typer uses click itself: accept the exceptions of both.
_EXIT_ERRORS = tuple({click.exceptions.Exit, typer.Exit})
_USAGE_ERRORS = tuple({click.ClickException, getattr(typer, "TyperException", click.ClickException)})
_ABORT_ERRORS = tuple({click.exceptions.Abort, typer.Abort})


if __name__ == "__main__":
    run()
