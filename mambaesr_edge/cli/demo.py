"""`mambaesr-edge demo`: the shipped default model on the shipped sample, against bicubic."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from .app import app, console, global_options, set_torch_threads, titled_table
from .options import ScanOpt, ThreadsOpt, check_scan


@app.command("demo")
def demo_command(
    ctx: typer.Context,
    out_dir: Path = typer.Option(Path("mambaesr_demo"), "--out", "-o", help="Folder for the demo images."),
    scan: str = ScanOpt,
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """Main job on the shipped default model: downscale the shipped sample x4, super-resolve it, compare with bicubic."""
    from ..checkpoint import load_model
    from ..evaluate import super_resolve
    from ..images import load_image, save_image
    from ..metrics import bicubic_downscale_uint8, bicubic_upscale_uint8, psnr, ssim
    from ..model import count_parameters
    from ..resources import sample_image_path

    set_torch_threads(global_options(ctx).threads_for(threads))
    model, loaded = load_model(scan_impl=check_scan(scan))
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
    table = titled_table(title=f"default model ({count_parameters(model):,} params), sample {lr.shape[1]}x{lr.shape[0]} -> x{scale}")
    for column in ("method", "PSNR (Y)", "SSIM (Y)"):
        table.add_column(column)
    table.add_row("bicubic", f"{psnr(bicubic, hr, crop_border=scale):.2f}", f"{ssim(bicubic, hr, crop_border=scale):.4f}")
    table.add_row("mambaesr-edge", f"{psnr(sr, hr, crop_border=scale):.2f}", f"{ssim(sr, hr, crop_border=scale):.4f}")
    console.print(table)
    console.print(f"super-resolved in {seconds:.2f} s on CPU; images in {out_dir}/", highlight=False, markup=False)
