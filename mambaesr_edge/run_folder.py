"""A training run's folder: what `train` writes there and what resume, eval and shipping read back, in one place.

    RUN/config.json                      the TrainConfig, the model config, git state, device, validation split
    RUN/metrics.jsonl                    one row per logged step (loss, lr, validation PSNR, GPU power)
    RUN/checkpoints/last_state.pt        the checkpoint a resume reads: step, weights, EMA weights, optimizer
    RUN/checkpoints/last{,_ema}.safetensors  its weights, for use elsewhere (eval, export)
    RUN/model_best.safetensors           EMA weights of the best validation-split PSNR (its value in the metadata)
    RUN/model_ema.safetensors            EMA weights at the last step
    RUN/eval.json, *.png                 the run's result and its plots

Every file is written whole or not at all (temporary file, fsync, rename); a full disk or a read-only folder is a
``CheckpointWriteError`` naming what was kept and how to continue.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import secrets
from pathlib import Path

import torch

from .checkpoint import load_model
from .errors import MambaESRError
from .fileio import TEMP_MARKER, atomic_write, space_problem
from .model import MambaSR
from .weights_format import STEP_KEY

__all__ = [
    "BEST_WEIGHTS", "CONFIG", "EVAL", "FINAL_WEIGHTS", "METRICS", "SPLIT_NAME", "SPLIT_PSNR_KEY", "STATE",
    "CheckpointWriteError", "best_so_far", "checkpoint_step", "interrupted_note", "load_checkpoint", "save_checkpoint",
    "weights_step", "write_bytes", "write_json", "write_weights",
]

log = logging.getLogger(__name__)

CONFIG = "config.json"  # the run's model and training config (resume reads it)
METRICS = "metrics.jsonl"  # one row per logged step
EVAL = "eval.json"  # the run's result: which weights, their step and scores
CHECKPOINTS = "checkpoints"  # the folder of the last checkpoint
STATE = f"{CHECKPOINTS}/last_state.pt"  # the checkpoint a resume reads
BEST_WEIGHTS = "model_best.safetensors"  # the EMA weights of the best validation-split PSNR so far
FINAL_WEIGHTS = "model_ema.safetensors"  # the EMA weights at the last step
SPLIT_NAME = "val_split"  # the validation split's name in metrics.jsonl (val_split_psnr) and eval.json
SPLIT_PSNR_KEY = "mambaesr_edge.val_split_psnr"  # metadata of model_best.safetensors


def write_json(path: Path, obj: object) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str))


class CheckpointWriteError(MambaESRError):
    """A checkpoint or the final weights could not be written (disk full, read-only folder, ...)."""


def _write_error(exc: OSError, what: str, run_dir: Path) -> CheckpointWriteError:
    no_room = space_problem(exc)
    problem = no_room[0] if no_room else f"an OS error ({exc.strerror or exc})"
    kept = "the previous checkpoint there is intact" if (run_dir / STATE).is_file() else "nothing partial was left"
    return CheckpointWriteError(
        f"{problem} while writing {what} in {run_dir}; {kept}",
        hint=(f"{no_room[1]} (or use --out on a larger disk), then continue with: mambaesr-edge train --resume "
              f"{run_dir}") if no_room else f"check that {run_dir} is writable, then continue with --resume {run_dir}",
    )


def _weights_bytes(model: MambaSR, meta: dict[str, str]) -> bytes:
    """The file `save_weights` writes, made in memory (so a failed write is a plain OSError with its errno)."""
    from safetensors.torch import save

    from .weights_format import CONFIG_KEY, FORMAT, FORMAT_KEY

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return save(tensors, metadata={CONFIG_KEY: model.config.to_json(), FORMAT_KEY: FORMAT, **meta})


def write_bytes(path: Path, data: bytes) -> None:
    """Write and fsync one file (Python's own I/O: ENOSPC arrives as OSError, unlike torch/safetensors writers)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def save_checkpoint(run_dir: Path, model: MambaSR, ema: MambaSR, optimizer, step: int, train_config: dict) -> None:
    """Write the set (weights, EMA weights, full state) to temporary files, then rename all three.

    Nothing is renamed until every file is complete on disk, so a full disk leaves the previous set untouched.
    `last_state.pt` alone is the checkpoint a resume reads (step, weights, EMA weights, optimizer), renamed last in
    one step; the two .safetensors beside it are its weights for use elsewhere (eval, export). A kill between the
    renames can leave those one checkpoint ahead of the state, never the state half-written.
    """
    ckpt = run_dir / CHECKPOINTS
    meta = {STEP_KEY: str(step)}
    names = ("last.safetensors", "last_ema.safetensors", Path(STATE).name)  # renamed in this order: the state last
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmps = [ckpt / f".{Path(n).stem}{TEMP_MARKER}{token}{Path(n).suffix}" for n in names]
    state = io.BytesIO()
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "train_config": train_config,
                "model": _cpu_state(model), "ema": _cpu_state(ema)}, state)
    try:
        ckpt.mkdir(parents=True, exist_ok=True)
        for tmp, data in zip(tmps, (_weights_bytes(model, meta), _weights_bytes(ema, meta), state.getvalue()), strict=True):
            write_bytes(tmp, data)
        for tmp, name in zip(tmps, names, strict=True):
            os.replace(tmp, ckpt / name)
    except OSError as exc:
        raise _write_error(exc, f"the step-{step} checkpoint", run_dir) from exc
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


def _cpu_state(model: MambaSR) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_checkpoint(run_dir: Path, model: MambaSR, ema: MambaSR, optimizer) -> int:
    ckpt = run_dir / CHECKPOINTS
    state = torch.load(run_dir / STATE, map_location="cpu", weights_only=True)
    if "model" in state:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
    else:  # run folders from before the state held the weights
        for target, name in ((model, "last.safetensors"), (ema, "last_ema.safetensors")):
            loaded, _ = load_model(ckpt / name, scan_impl="reference")
            target.load_state_dict(loaded.state_dict())
    optimizer.load_state_dict(state["optimizer"])
    step = int(state["step"])
    for leftover in [*run_dir.glob(f".*{TEMP_MARKER}*"), *ckpt.glob(f".*{TEMP_MARKER}*")]:
        log.info("removing %s, left by a run that was killed while writing it", leftover)  # a run folder has one writer
        leftover.unlink(missing_ok=True)
    metrics = run_dir / METRICS
    if metrics.is_file():  # drop rows after the checkpoint (logged again by the resumed run) and a row cut by a kill
        rows = []
        for line in metrics.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    rows.append(line)
            except (ValueError, KeyError, TypeError):
                log.warning("dropping an incomplete line of %s: %r", metrics, line[:80])
        with atomic_write(metrics) as tmp:
            tmp.write_text("".join(row + "\n" for row in rows))
    return step


def checkpoint_step(run_dir: Path) -> int | None:
    """The step of the run folder's last complete checkpoint, or None when it has none (or it cannot be read)."""
    try:
        return int(torch.load(Path(run_dir) / STATE, map_location="cpu", weights_only=True)["step"])
    except (OSError, RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError):
        return None


def interrupted_note(run_dir: Path) -> str:
    """What a training stopped by Ctrl-C kept in `run_dir`, and how to go on (the CLI's "interrupted: ..." line)."""
    step = checkpoint_step(run_dir)
    if step is not None:
        return f"{run_dir} keeps its checkpoint of step {step}; continue with: mambaesr-edge train --resume {run_dir}"
    if run_dir.is_dir():
        return f"no checkpoint was written yet (the first comes at --ckpt-every); delete {run_dir} and start again"
    return "no run folder was written"


def write_weights(run_dir: Path, name: str, model: MambaSR, meta: dict[str, str]) -> None:
    try:
        with atomic_write(run_dir / name) as tmp:
            write_bytes(tmp, _weights_bytes(model, meta))
    except OSError as exc:
        raise _write_error(exc, f"the weights {name}", run_dir) from exc


def best_so_far(run_dir: Path) -> float | None:
    """The validation-split PSNR stored with the run's model_best.safetensors (a resumed run), None when there is none."""
    path = run_dir / BEST_WEIGHTS
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        value = (handle.metadata() or {}).get(SPLIT_PSNR_KEY)
    return float(value) if value is not None else None


def weights_step(path: Path) -> int | None:
    """The training step a weights file was saved at (its STEP_KEY metadata), None when it has none."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        step = (handle.metadata() or {}).get(STEP_KEY)
    return int(step) if step is not None else None
