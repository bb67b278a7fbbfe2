"""`mambaesr-edge train`: train a network, plain or distilled; the same code under torchrun."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional

import typer

from ..errors import Interrupted
from .app import app, console, global_options, set_torch_threads
from .options import ScanOpt, check_scan


@app.command("train")
def train_command(
    ctx: typer.Context,
    train_dir: list[Path] = typer.Option([], "--train-dir", help="Folder of HR training images (repeatable)."),
    preset: str = typer.Option("student", "--preset", "-p", help="Preset of the network to train (not with --init)."),
    dt_rank: Optional[int] = typer.Option(None, "--dt-rank", help="Replace the preset's dt projection rank (e.g. 2 or 30)."),
    val_dir: Optional[Path] = typer.Option(None, "--val-dir", help="A benchmark NAME/ with HR/ scored at each validation (reported, never selects)."),
    val_from_train: int = typer.Option(
        0, "--val-from-train",
        help="Hold N training images out (those whose sha256(file stem) sorts first) and keep model_best.safetensors by their PSNR.",
    ),
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
    from ..run_folder import EVAL, interrupted_note
    from ..train import TrainConfig, default_run_name, load_train_config, train

    set_torch_threads(global_options(ctx).threads)  # mambaesr-edge --threads N train ...
    if resume is not None:
        cfg = load_train_config(resume, iterations=iterations, max_minutes=max_minutes)
    else:
        cfg = TrainConfig(
            preset=preset, dt_rank=dt_rank, train_dirs=tuple(str(d) for d in train_dir), val_dir=str(val_dir) if val_dir else None,
            val_from_train=val_from_train,
            teacher=str(teacher) if teacher else None, teacher_preset=teacher_preset, alpha=alpha if teacher else 0.0,
            iterations=iterations or 10_000, batch_size=batch_size, patch=patch, lr=lr, schedule=schedule, warmup=warmup,
            milestones=tuple(milestones), val_every=val_every, ckpt_every=ckpt_every, log_every=log_every, seed=seed,
            scan_impl=check_scan(scan), compile=compile_model, max_minutes=max_minutes, out_dir=str(out_dir),
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
    console.print(f"run folder: {run_dir}", highlight=False, markup=False)
    eval_file = run_dir / EVAL
    if eval_file.is_file():
        report = json.loads(eval_file.read_text())
        if "result" in report:
            console.print(f"result: {run_dir / report['result']} (step {report['result_step']}, {report['selected_by']})",
                          highlight=False, markup=False)
        for name, result in report["datasets"].items():
            console.print(f"{name}: PSNR {result['psnr']:.3f} dB, SSIM {result['ssim']:.4f}", highlight=False, markup=False)
