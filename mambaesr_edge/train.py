"""Training: one straight loop, plain (L1 to ground truth) or distilled from a teacher, on 1 device or under torchrun.

    loss = alpha * L1(student, teacher) + (1 - alpha) * L1(student, GT)        (alpha = 0 without a teacher)

Adam, cosine (or multistep) learning rate as a pure function of the step, bf16 autocast on CUDA, EMA weights,
periodic validation PSNR, the best checkpoint by the PSNR of a validation split held out of the training images
(``val_from_train``: the run's result is then ``model_best.safetensors``, else ``model_ema.safetensors``; eval.json
says which), atomic checkpoints (safetensors with the model config + optimizer state) with exact
resume: batches are a pure function of (seed, step, rank) and the learning rate of the step, so a resumed run
continues exactly, also after Ctrl-C or a kill (the last complete checkpoint is always intact; see
`run_folder.save_checkpoint`). Multi-GPU: `torchrun --nproc_per_node N -m mambaesr_edge.cli train ...` runs the same code with
DDP (NCCL on CUDA, gloo on CPU); the batch size is global and split over the ranks.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .checkpoint import load_model
from .data import ValidationSplit, list_hr_files, load_train_images, load_validation_pairs, sample_patches, split_validation
from .errors import ConfigError
from .evaluate import evaluate_dataset, evaluate_pairs, super_resolve
from .fileio import atomic_write
from .model import MambaSR, count_parameters
from .presets import ModelConfig, get_preset
from .run_folder import (
    BEST_WEIGHTS,
    CONFIG,
    EVAL,
    FINAL_WEIGHTS,
    METRICS,
    SPLIT_NAME,
    SPLIT_PSNR_KEY,
    STATE,
    best_so_far,
    load_checkpoint,
    save_checkpoint,
    weights_step,
    write_json,
    write_weights,
)
from .weights_format import STEP_KEY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "student"  # ignored with init_weights: the network is the one stored in that file
    scale: int = 4
    dt_rank: int | None = None  # replaces the preset's dt rank (the seed paper's rank study: 2 vs 30)
    train_dirs: tuple[str, ...] = ()
    val_dir: str | None = None  # a benchmark folder scored at each validation (reported only: never selects a checkpoint)
    val_from_train: int = 0  # hold this many training images out (data.split_validation); selects model_best by their PSNR
    teacher: str | None = None  # weights file of the teacher (config read from the file or inferred)
    teacher_preset: str | None = None
    alpha: float = 0.8  # weight of the distillation term when a teacher is given
    iterations: int = 10_000
    batch_size: int = 32  # global: split over DDP ranks
    patch: int = 64  # LR patch side
    lr: float = 2e-4
    schedule: str = "cosine"  # or "multistep"
    milestones: tuple[int, ...] = ()  # multistep: lr halves at each
    min_lr: float = 1e-6
    warmup: int = 0
    ema_decay: float = 0.999  # the cap of the warmed-up decay, see ema_decay()
    grad_clip: float | None = None
    log_every: int = 50
    val_every: int = 1000
    ckpt_every: int = 1000
    seed: int = 0
    scan_impl: str = "auto"
    amp: str = "auto"  # "bf16" on CUDA, "none" on CPU
    compile: bool = False
    max_minutes: float | None = None  # stop (with a checkpoint) when the wall-clock budget is spent
    out_dir: str = "runs"
    run_name: str | None = None
    cache_dir: str | None = ".cache/mambaesr"
    init_weights: str | None = None  # start from these weights and their network (fine-tuning, pruned students)

    def __post_init__(self) -> None:
        if not self.train_dirs:
            raise ConfigError("no training folders given", hint="pass --train-dir DIR (HR images), once per folder")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}", hint="e.g. --alpha 0.8")
        if self.schedule not in ("cosine", "multistep"):
            raise ConfigError(f"unknown schedule {self.schedule!r}", hint="use cosine or multistep")
        if self.val_from_train < 0:
            raise ConfigError(f"val_from_train must be >= 0, got {self.val_from_train}", hint="e.g. --val-from-train 20")
        if self.iterations < 1 or self.batch_size < 1 or self.patch < 4:
            raise ConfigError("iterations, batch size must be >= 1 and patch >= 4", hint="check the training flags")


def learning_rate(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "multistep":
        return cfg.lr * 0.5 ** sum(step >= m for m in cfg.milestones)
    progress = (step - cfg.warmup) / max(1, cfg.iterations - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def ema_decay(cfg: TrainConfig, step: int) -> float:
    """EMA decay after optimizer step `step` (0-based), warmed up as (1 + step) / (10 + step): a short run's EMA
    is not mostly its initial weights (with 0.999 flat, 500 steps leave 61% of them in)."""
    return min(cfg.ema_decay, (1 + step) / (10 + step))


def git_state() -> dict[str, object]:
    """Commit and dirtiness of the source tree (MAMBAESR_GIT_COMMIT overrides when .git is not there)."""
    if os.environ.get("MAMBAESR_GIT_COMMIT"):
        return {"commit": os.environ["MAMBAESR_GIT_COMMIT"], "dirty": os.environ.get("MAMBAESR_GIT_DIRTY", "unknown")}
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True).stdout
        return {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown (no git checkout)", "dirty": "unknown"}


def _build_model(cfg: TrainConfig, resume: Path | None) -> MambaSR:
    """The network to train: the run folder's (resume), the --init file's (with its weights), else the preset's."""
    if resume is not None:
        config = ModelConfig.from_dict(json.loads((Path(resume) / CONFIG).read_text())["model"])
        return MambaSR(config, scan_impl=cfg.scan_impl)
    if cfg.init_weights:
        init, _ = load_model(cfg.init_weights, scan_impl="reference")
        if init.scale != cfg.scale or (cfg.dt_rank is not None and cfg.dt_rank != init.config.dt_rank):
            raise ConfigError(f"{cfg.init_weights} holds a x{init.scale} network with dt rank {init.config.dt_rank}",
                              hint="drop --dt-rank / --scale: a run started from --init trains the network stored in that file")
        model = MambaSR(init.config, scan_impl=cfg.scan_impl)
        model.load_state_dict(init.state_dict())
        return model
    overrides = {"dt_rank": cfg.dt_rank} if cfg.dt_rank is not None else {}
    return MambaSR(get_preset(cfg.preset, scale=cfg.scale, **overrides), scan_impl=cfg.scan_impl)


def default_run_name(cfg: TrainConfig) -> str:
    """`cfg.run_name`, else TIMESTAMP_PRESET (+ _kd when distilling): the name `train` gives a new run folder."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return cfg.run_name or f"{stamp}_{cfg.preset}{'_kd' if cfg.teacher else ''}"


def load_train_config(run_dir: Path, **overrides: object) -> TrainConfig:
    """The TrainConfig a run folder was started with (for --resume), with some fields replaced."""
    path = Path(run_dir) / CONFIG
    if not (Path(run_dir) / STATE).is_file():
        raise ConfigError(f"no complete checkpoint in {run_dir}",
                          hint="pass the run folder that holds checkpoints/last_state.pt (a run stopped before its first "
                               "checkpoint cannot resume: delete it and start again)")
    raw = json.loads(path.read_text())["train"]
    for key in ("train_dirs", "milestones"):
        raw[key] = tuple(raw[key])
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**raw)


def train(cfg: TrainConfig, resume: Path | None = None) -> Path:
    """Run training; returns the run folder (config.json, metrics.jsonl, checkpoints/, final weights, eval, plots)."""
    world, rank, local_rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if cfg.batch_size % world:
        raise ConfigError(f"batch size {cfg.batch_size} does not split over {world} ranks", hint="use a multiple of the GPU count")
    amp = cfg.amp if cfg.amp != "auto" else ("bf16" if cuda else "none")
    torch.manual_seed(cfg.seed)

    model = _build_model(cfg, resume).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    teacher = None
    if cfg.teacher:
        teacher = load_model(cfg.teacher, cfg.teacher_preset, scan_impl=cfg.scan_impl)[0].to(device).requires_grad_(False)
        if teacher.scale != cfg.scale:
            raise ConfigError(f"teacher {cfg.teacher} is x{teacher.scale}, student x{cfg.scale}",
                              hint=f"distil from a teacher trained for x{cfg.scale}, the student's scale")
    # before any run folder is made: bad data (missing, empty, all unreadable or too small) fails at once
    folders = [Path(d) for d in cfg.train_dirs]
    split = split_validation(list_hr_files(folders), cfg.val_from_train)
    val_pairs, val_left_out = load_validation_pairs(split.val, cfg.scale) if split.val else ([], [])
    images = load_train_images(folders, cfg.scale, cfg.patch, Path(cfg.cache_dir) if cfg.cache_dir else None,
                               files=list(split.train)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99))

    if resume is not None:
        run_dir = Path(resume)
        start_step = load_checkpoint(run_dir, model, ema, optimizer)
    else:
        name = [default_run_name(cfg)]
        if world > 1:
            dist.broadcast_object_list(name, src=0)  # rank 0's timestamp: one folder for all ranks
        run_dir = Path(cfg.out_dir) / name[0]
        start_step = 0
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError(f"run folder {run_dir} already holds a run", hint=f"continue it with --resume {run_dir}, or pick another --name")
        if world > 1:
            dist.barrier()  # every rank has checked the folder before rank 0 writes into it
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / CONFIG, {
            "train": dataclasses.asdict(cfg), "model": json.loads(model.config.to_json()), "params": count_parameters(model),
            "git": git_state(), "world_size": world, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
            "torch": torch.__version__, "amp": amp, "resumed_from_step": start_step,
            "validation_split": _split_record(split, val_left_out),
        })

    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if cuda else None) if world > 1 else model
    forward = torch.compile(net) if cfg.compile else net
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")
    power = _power_logger(device) if rank == 0 else None
    log_file = (run_dir / METRICS).open("a") if rank == 0 else None
    start_time, window_start, samples_seen = time.perf_counter(), time.perf_counter(), 0
    best_psnr = best_so_far(run_dir) if rank == 0 and val_pairs else None
    step = start_step
    while step < cfg.iterations:
        if cfg.max_minutes is not None and time.perf_counter() - start_time > 60 * cfg.max_minutes:
            log.warning("time budget of %.1f min spent at step %d: stopping with a checkpoint", cfg.max_minutes, step)
            break
        lr_now = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        lr_batch, hr_batch = sample_patches(images, batch_size=cfg.batch_size // world, patch=cfg.patch, seed=cfg.seed, step=step, rank=rank)
        with autocast:
            sr = forward(lr_batch).float()
        loss_gt = F.l1_loss(sr, hr_batch)
        loss, loss_kd = loss_gt, None
        if teacher is not None:
            with torch.no_grad(), autocast:
                target = teacher(lr_batch).float()
            loss_kd = F.l1_loss(sr, target)
            loss = cfg.alpha * loss_kd + (1 - cfg.alpha) * loss_gt
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        with torch.no_grad():
            decay = ema_decay(cfg, step)
            for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                p_ema.lerp_(p, 1.0 - decay)
        step += 1
        samples_seen += cfg.batch_size

        validate = bool(cfg.val_dir or val_pairs) and (step % cfg.val_every == 0 or step == cfg.iterations)
        if rank == 0 and (step % cfg.log_every == 0 or step == cfg.iterations or validate):
            now = time.perf_counter()
            row = {"step": step, "loss": loss.item(), "loss_gt": loss_gt.item(), "lr": lr_now, "elapsed_s": now - start_time,
                   "samples_per_s": samples_seen / (now - window_start)}
            if loss_kd is not None:
                row["loss_kd"] = loss_kd.item()
            if power is not None:
                row.update(power())
            window_start, samples_seen = now, 0
            if validate and cfg.val_dir:
                result = evaluate_dataset(ema, cfg.val_dir, scale=cfg.scale)
                row.update(val_psnr=result.psnr, val_ssim=result.ssim)
            if validate and val_pairs:
                result = _score_split(ema, val_pairs, cfg.scale)
                row.update(val_split_psnr=result.psnr, val_split_ssim=result.ssim)
                if best_psnr is None or result.psnr > best_psnr:
                    best_psnr = result.psnr
                    write_weights(run_dir, BEST_WEIGHTS, ema, {STEP_KEY: str(step), SPLIT_PSNR_KEY: repr(result.psnr)})
                    row["best"] = True
            log_file.write(json.dumps(row) + "\n")
            log_file.flush()
            log.info("step %d %s", step, {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()})
        if rank == 0 and step % cfg.ckpt_every == 0:
            save_checkpoint(run_dir, model, ema, optimizer, step, dataclasses.asdict(cfg))
    if rank == 0:
        log_file.close()
        save_checkpoint(run_dir, model, ema, optimizer, step, dataclasses.asdict(cfg))
        write_weights(run_dir, FINAL_WEIGHTS, ema, {STEP_KEY: str(step)})
        _finish_run(run_dir, ema, cfg, val_pairs)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return run_dir


def _split_record(split: ValidationSplit, left_out: list[str]) -> dict[str, object]:
    """What config.json says about the validation split: the rule, N, and which images."""
    return {"count": len(split.val), "rule": ValidationSplit.RULE, "images": [p.name for p in split.val],
            "left_out_unscorable": left_out, "selects": BEST_WEIGHTS if split.val else None}


def _score_split(model: MambaSR, pairs, scale: int):
    was_training = model.training
    result = evaluate_pairs(lambda lr: super_resolve(model.eval(), lr), pairs, name=SPLIT_NAME, scale=scale)
    model.train(was_training)
    return result


def _power_logger(device: torch.device):
    """A function returning GPU power over the last window and energy so far, read from NVML's energy counter.

    None on CPU or when nvidia-ml-py is absent (training goes on; config.json says why in the log).
    """
    if device.type != "cuda":
        return None
    try:
        import pynvml
    except ImportError:
        log.warning("GPU power is not logged: nvidia-ml-py is not installed (pip install 'mambaesr-edge[nvml]')")
        return None
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
    first = last = (time.perf_counter(), pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))  # (s, mJ)

    def window() -> dict[str, float]:
        nonlocal last
        now = (time.perf_counter(), pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
        watts = (now[1] - last[1]) / 1000.0 / max(1e-9, now[0] - last[0])
        last = now
        return {"gpu_power_w": watts, "gpu_energy_kj": (now[1] - first[1]) / 1e6}

    return window


def _finish_run(run_dir: Path, ema: MambaSR, cfg: TrainConfig, val_pairs) -> None:
    """eval.json (the run's result weights on the validation split and --val-dir) and plots of loss and validation PSNR.

    The result is model_best.safetensors when a validation split was held out (selected by its PSNR), else the
    final EMA weights (model_ema.safetensors)."""
    result_name, model = FINAL_WEIGHTS, ema
    if val_pairs and (run_dir / BEST_WEIGHTS).is_file():
        result_name = BEST_WEIGHTS
        model = load_model(run_dir / BEST_WEIGHTS, scan_impl=cfg.scan_impl)[0].to(next(ema.parameters()).device)
    if cfg.val_dir or val_pairs:
        results = [_score_split(model, val_pairs, cfg.scale)] if val_pairs else []
        if cfg.val_dir:
            results.append(evaluate_dataset(model, cfg.val_dir, scale=cfg.scale))
        step = weights_step(run_dir / result_name)
        write_json(run_dir / EVAL, {
            "result": result_name, "result_step": step, "selected_by": f"{SPLIT_NAME} PSNR" if result_name == BEST_WEIGHTS else "last step",
            "datasets": {r.name: r.to_dict() for r in results}, "params": count_parameters(model),
        })
        log.info("run result: %s (step %s)", run_dir / result_name, step)
    rows = [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines() if line.strip()]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots in %s", run_dir)
        return
    for key, name in (("loss", "loss.png"), ("val_psnr", "val_psnr.png"), ("val_split_psnr", "val_split_psnr.png")):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(*zip(*points, strict=True), marker="." if key != "loss" else None)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_write(run_dir / name) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
