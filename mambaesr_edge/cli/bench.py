"""`mambaesr-edge bench`: latency, throughput and power of one backend (the measurement: mambaesr_edge/bench.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..bench import DEFAULT_TILE_CAP, BenchError, open_bench_backend, run_bench
from ..machine import load_average, machine_info, package_versions, utc_now
from .app import app, console, global_options, set_torch_threads, titled_table
from .options import ThreadsOpt, check_backend


@app.command("bench")
def bench_command(
    ctx: typer.Context,
    samples: int = typer.Option(1000, "--samples", "-n", help="Timed inferences (the seed paper used 1000)."),
    device: str = typer.Option("x86-cpu", "--device", "-d", help="Device profile (mambaesr-edge profiles)."),
    backend: Optional[str] = typer.Option(
        None, "--backend", help="torch, numpy, onnxruntime or tensorrt (default: what upscale --device PROFILE runs)."
    ),
    model: Optional[Path] = typer.Option(
        None, "--model", "-m", "--model-name", "--model_name",
        help="Model: a name (`mambaesr-edge models`), weights (.safetensors/.pth), .onnx or .engine (-n is --samples here).",
    ),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="An export bundle folder."),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Preset of --model; without --model: a random-init network of it."),
    tile: Optional[int] = typer.Option(None, "--tile", help=f"LR tile side (default: the profile's, at most {DEFAULT_TILE_CAP})."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Tiles per inference (default: the profile's)."),
    frame: str = typer.Option("1920x1080", "--frame", help="LR frame WxH that frames/s is stated for."),
    overlap: Optional[int] = typer.Option(None, "--overlap", help="Tile overlap for frames/s (default: the profile's, at most tile/4)."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed inferences first."),
    idle_seconds: float = typer.Option(5.0, "--idle-seconds", help="Idle window measured before timing."),
    power: str = typer.Option("auto", "--power", help="auto, tegrastats, jtop, nvml or none."),
    power_interval_ms: Optional[float] = typer.Option(None, "--power-interval", help="Sampling interval in ms."),
    run_on: Optional[str] = typer.Option(None, "--run-on", help="cpu, cuda or auto (default: the profile's; the CPU where its device is not here)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 or fp16 (default: the profile's; fp32 on cpu)."),
    scan: str = typer.Option("auto", "--scan", help="Scan implementation for the torch backend."),
    out_dir: Path = typer.Option(Path("bench_out"), "--out", "-o", help="Folder for the JSON, CSVs and PNG."),
    name: str = typer.Option("bench", "--name", help="File name stem of the outputs."),
    note: str = typer.Option("", "--note", help="Free text kept in the JSON (power mode, conditions ...)."),
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """Latency, throughput and power of one backend: warm-up, idle baseline, N timed inferences."""
    import tempfile

    from ..bench_report import check_output_dir, summary_rows, write_reports
    from ..power import select_sampler
    from ..profiles import load_profile

    options = global_options(ctx)
    if samples < 1:
        raise BenchError(f"--samples must be at least 1, got {samples}", hint="e.g. --samples 1000")
    if model is not None and bundle is not None:
        raise BenchError("--model and --bundle are exclusive", hint="pass one of them")
    try:
        frame_w, frame_h = (int(v) for v in frame.lower().split("x"))
    except ValueError as exc:
        raise BenchError(f"--frame must be WxH, got {frame!r}", hint="e.g. --frame 1920x1080") from exc
    backend_name = check_backend(backend)  # None: the library picks
    profile = load_profile(device)
    tile = tile if tile is not None else min(profile.tile, DEFAULT_TILE_CAP)
    batch = batch if batch is not None else profile.batch
    overlap = overlap if overlap is not None else min(profile.overlap, tile // 4)
    threads = options.threads_for(threads)
    check_output_dir(out_dir)
    interval = power_interval_ms / 1000 if power_interval_ms is not None else None
    sampler = select_sampler(profile, override=power, interval_s=interval)
    if sampler.available:
        options.note(f"power: {sampler.name} (every {sampler.interval_s * 1000:.0f} ms)")
    else:
        options.note(f"power: unavailable ({sampler.describe()['reason']})")
    started, load_before = utc_now(), load_average()
    with tempfile.TemporaryDirectory(prefix="mambaesr-bench-") as work:
        opened, model_info = open_bench_backend(
            backend_name, model=model, bundle=bundle, preset=preset, scan=scan, tile_hw=(tile, tile), batch=batch,
            run_on=run_on, precision=precision, threads=threads, workdir=Path(work), profile=profile)
        info = opened.info  # what runs: the library's choice where an option was left out
        set_torch_threads(threads, only_if_loaded=True)
        options.note(f"{info.name} on {info.device} ({info.precision}): {model_info.get('weights')}, tile {tile}x{tile}, batch {batch}, "
                     f"{warmup} warm-up, {idle_seconds:g} s idle, {samples} timed")
        with options.progress(transient=True) as bar:
            task = bar.add_task("inferences", total=samples)
            result = run_bench(opened, samples=samples, warmup=warmup, idle_seconds=idle_seconds, sampler=sampler,
                               tile=tile, batch=batch, frame_hw=(frame_h, frame_w), overlap=overlap,
                               progress=lambda done, _total: bar.update(task, completed=done))
    command = (f"mambaesr-edge{f' --threads {threads}' if threads else ''} bench --samples {samples} --device {device} "
               f"--backend {info.name}" + (f" --model {model}" if model else "")
               + (f" --bundle {bundle}" if bundle else "") + (f" --preset {preset}" if preset else "")
               + f" --tile {tile} --batch {batch} --frame {frame_w}x{frame_h} --overlap {overlap}"
               f" --warmup {warmup} --idle-seconds {idle_seconds:g} --power {power} --run-on {info.device}"
               f" --precision {info.precision} --out {out_dir} --name {name}" + (f" --note {note!r}" if note else ""))
    meta = {"command": command, "date": started, "finished": utc_now(), "machine": machine_info(),
            "load_average": {"before": load_before, "after": load_average()}, "versions": package_versions(),
            "profile": profile.name, "model": model_info, "backend": info.to_dict(), "run_on": info.device, "precision": info.precision,
            "threads": threads, "backend_repr": repr(opened), "note": note}
    paths = write_reports(result, out_dir, name, meta)
    report = json.loads(paths["json"].read_text())
    table = titled_table(title=f"bench: {profile.name}, {info.name}", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for metric, value in summary_rows(report):
        table.add_row(metric, value)
    console.print(table)
    console.print(f"wrote {', '.join(str(p) for p in paths.values())}", highlight=False, markup=False)
    if result.partial:  # Ctrl-C during the measurement: what was measured is kept, marked partial
        from ..errors import Interrupted

        raise Interrupted(f"{result.completed} of {samples} timed inferences done; a complete report marked partial "
                          f"was written to {paths['json']}")
