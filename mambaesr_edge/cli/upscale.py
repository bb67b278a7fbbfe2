"""`mambaesr-edge upscale IN -o OUT`: an image, a folder or a video (the work: runtime/files.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .app import GlobalOptions, app, console, global_options, set_torch_threads
from .options import (
    CudaOpt,
    GpuIdOpt,
    ModelOpt,
    PresetOpt,
    ScanOpt,
    ThreadsOpt,
    WeightsOpt,
    check_backend,
    check_scan,
    use_gpu,
)


@app.command("upscale")
def upscale_command(
    ctx: typer.Context,
    image: Optional[Path] = typer.Argument(
        None, help="Input image, folder of images, or video (.mp4/.avi/.mov/.mkv; needs the video extra). Or -i."
    ),
    input_opt: Optional[Path] = typer.Option(None, "--input", "-i", help="The input, as the argument (Real-ESRGAN's -i)."),
    output: str = typer.Option(
        ..., "--output", "-o", help="Output file (format from its suffix) or folder (an existing one, or NAME/: created)."
    ),
    weights: Optional[Path] = WeightsOpt,
    model: Optional[Path] = ModelOpt,
    preset: Optional[str] = PresetOpt,
    scan: str = ScanOpt,
    backend: Optional[str] = typer.Option(
        None, "--backend", "-b", help="torch, numpy, onnxruntime or tensorrt (default: from the model path; numpy for our weights on the CPU)."
    ),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="Device profile (e.g. orin-nano, x86-cpu): backend, tile, precision."),
    cuda: bool = CudaOpt,
    gpu_id: Optional[int] = GpuIdOpt,
    tile: Optional[int] = typer.Option(
        None, "--tile", "-t", help="LR tile size; 0 = whole image at once. Default: profile/bundle, else from free memory."
    ),
    overlap: Optional[int] = typer.Option(
        None, "--tile-overlap", "--overlap", "--tile-pad", "--tile_pad", help="Overlap between tiles in LR pixels (default 16)."
    ),
    batch: Optional[int] = typer.Option(None, "--batch", help="Tiles per inference call."),
    blend: str = typer.Option("cosine", "--blend", help="Tile blending: cosine, cosine-inner, uniform, crop."),
    half: Optional[bool] = typer.Option(None, "--fp16/--fp32", "--half", help="Precision (default: profile/bundle; fp32 on CPU)."),
    outscale: Optional[float] = typer.Option(
        None, "--outscale", "-s", help="Final scale: the model's (4) as it is, another (e.g. 2, 3.5) resizes its result (Lanczos)."
    ),
    ext: str = typer.Option("auto", "--ext", help="Output format for folders/-o folder: auto (as input), png, jpg, ..."),
    suffix: str = typer.Option("", "--suffix", help="Appended to output names as NAME_SUFFIX.EXT (folders, -o folder)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs (folders: otherwise skipped)."),
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """Upscale an image, a folder (structure mirrored) or a video, tiled with blended overlaps; writes are atomic."""
    from ..runtime.files import UpscaleRequest, build_upscaler, check_request

    if weights is not None and model is not None:
        raise typer.BadParameter("give --model or --weights, not both", param_hint="--model")
    if (image is None) == (input_opt is None):
        problem = "give the input once: as the argument or as -i/--input" if image else "missing the input (an argument, or -i/--input)"
        raise typer.BadParameter(problem, param_hint="IMAGE")
    options = global_options(ctx)
    request = UpscaleRequest(
        input=image or input_opt,
        output=Path(output),
        model=model or weights,
        preset=preset,
        scan_impl=check_scan(scan),
        backend=check_backend(backend),
        device_profile=device,
        cuda=use_gpu(cuda, gpu_id),
        tile=tile,
        overlap=overlap,
        batch=batch,
        blend=blend,
        half=half,
        ext=ext,
        suffix=suffix,
        overwrite=overwrite,
        output_is_folder=output.endswith(("/", os.sep)),
        outscale=outscale,
        threads=options.threads_for(threads),
    )
    check_request(request)
    up = build_upscaler(request)
    set_torch_threads(request.threads, only_if_loaded=True)
    options.decisions(up.startup_decisions)
    summary = _run(request, up, options)
    console.print(_summary_line(request, summary), highlight=False, markup=False)
    summary.raise_for_failures()  # a folder run with failed files fails after finishing the others (exit 2)


def _summary_line(request, summary) -> str:
    if summary.kind == "image":
        (w, h), (ow, oh) = summary.input_size, summary.output_size
        return f"{request.input} {w}x{h} -> {summary.target} {ow}x{oh} in {summary.seconds:.2f} s"
    if summary.kind == "video":
        fps = summary.written / summary.seconds if summary.seconds else 0.0
        return (f"{request.input} {summary.input_size[0]}x{summary.input_size[1]} -> {summary.target} x{summary.scale:g}: "
                f"{summary.written} frames in {summary.seconds:.1f} s ({fps:.2f} frames/s)")
    return (f"{summary.written} written, {summary.skipped} skipped (exist; --overwrite replaces), {len(summary.failed)} failed, "
            f"in {summary.seconds:.1f} s")


def _run(request, up, options: GlobalOptions):
    """``upscale_path``; folders and videos under a progress bar on stderr, a folder's failed files printed there."""
    from ..runtime.files import upscale_path
    from ..runtime.video import is_video

    if not (request.input.is_dir() or is_video(request.input)):
        return upscale_path(request, up)
    with options.progress() as progress:
        task = None

        def on_progress(done: int, total: Optional[int]) -> None:
            nonlocal task
            if task is None:
                task = progress.add_task("upscaling" if request.input.is_dir() else "frames", total=total)
            progress.update(task, completed=done)

        def on_failed(source: Path, why: str) -> None:
            progress.console.print(f"[red]failed[/] {escape(str(source))}: {escape(why)}", highlight=False, soft_wrap=True)

        return upscale_path(request, up, on_progress=on_progress, on_failed=on_failed)
