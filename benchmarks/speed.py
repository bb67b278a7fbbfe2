"""One speed benchmark against the limits (issue 7): scan kernels, whole network, tiled frames, training, a same-FLOPs CNN.

Measures, in one run, on the device present (CUDA if torch sees one, else CPU):

1. scan: every scan impl available here (`chunked`; `triton` and `mamba_ssm` on CUDA when importable; `reference`
   on CPU at --ref-L only, or everywhere at full size with --with-reference) at L x dim x N = 4096 x 64 x 16 (the
   student's d_inner) for batch 1 and 32: forward ms, achieved GB/s = minimal bytes (u, delta, B, C read once, y
   written once, fp32) / time, and that as a fraction of the device copy bandwidth measured in the same run (one
   large device-to-device copy, bytes read + written / time); forward + backward ms at batch 32. The call is the
   model's (delta_bias, softplus, D; no z, so the minimal bytes are exactly the five tensors above). Inputs are laid
   out as in the model ((batch, L, dim) in memory) and rotated over >= 3 sets (more when they fit in L2).
2. tile / frame: the whole network per 64x64 LR tile (batch 1 and 16), and per tiled LR frame (tile 64, overlap 8,
   runtime.tiling.plan_tiles): 1920x1080 LR (-> 7680x4320 at x4) for every preset, plus 960x540 LR (-> 3840x2160,
   "4K") for the student. "model" frame rows: all tiles already on the device, batched, network only (no blend, no
   transfer). "e2e" rows: the runtime itself (TorchBackend + Upscaler: upload, tiling, checks and blending on the
   device (runtime/device_tiling.py), copy back): "e2e" = Upscaler.upscale_chw (float32 CHW in, the float32 result
   copied back), "e2e-u8" = Upscaler(uint8 HWC frame), what apps call (converted to uint8 on the device).
   Per preset (student, dvmsr) and scan impl, optionally under autocast (--amp none fp16 bf16).
3. train: one training step (forward + backward + Adam, batch 32 of 64x64 LR, bf16 autocast on CUDA) per preset and
   scan impl through benchmarks/train_step.py's `time_step` (imported, not copied), and 10K iterations in minutes.
4. cnn: a plain CNN (conv3x3 -> N residual blocks conv3x3-ReLU-conv3x3 -> conv3x3 + skip -> conv3x3 + PixelShuffle)
   as wide as the preset (embed_dim) with the depth whose multiply-adds per LR pixel come closest to the preset's
   (export.cost.analytic_macs_per_pixel), timed the same way (tile, frame, train); Mamba / CNN time ratios.
5. stream (issue 16): what an app gets, ``Upscaler.from_path(None, backend="torch", device=...)`` with its defaults,
   through ``Upscaler.stream``: --stream-frames uint8 960x540x3 frames in (8 distinct random frames, cycled), uint8
   3840x2160x3 out, after a warm-up stream; frames/s = frames / wall time of the whole stream, latency = from the
   source generator handing frame i over to the consumer receiving output i (queueing included), p50 and p99. One
   row per --stream-precisions entry ("default": the precision the plan picks).
   With --profile, the 1080p network-only frame of the first preset (best impl/amp of its rows) runs once more
   under torch.profiler; the top CUDA kernels go to <json stem>_profile.json beside the JSON.
6. upscale (CPU): the `mambaesr-edge upscale` work on a 128x128 LR image (Set5 baby when ../shared has it, else the
   shipped sample downscaled) with the student preset (random weights: timing only) through the chunked scan, the
   reference scan and ONNX Runtime on the exported graph; ratios to the chunked (plain exportable-scan) path; and
   the CLI itself as a subprocess (wall time including Python start-up).

Every measurement is guarded: an exception becomes an "error" string in its row; once --max-seconds have passed no
new measurement starts (rows say "skipped"). The JSON is rewritten after every row, so a killed run leaves what it
had. The table is printed last.

    PYTHONPATH=$PWD python benchmarks/speed.py --amp none fp16 --max-seconds 170 --json OUT.json   # GPU, < 4 minutes
    PYTHONPATH=$PWD python benchmarks/speed.py --sections stream frame --presets dvmsr-g1 --impls triton --amp none fp16 bf16 \
        --tile 128 --overlap 16 --frame-batch 256 --stream-precisions default fp16 bf16 --profile --json OUT.json  # issue 16
    OMP_WAIT_POLICY=PASSIVE python benchmarks/speed.py --cpu-budget --json benchmarks/speed_cpu.json   # this CPU, 2 threads
    python benchmarks/speed.py --quick --json /tmp/s.json                # seconds; tests/test_speed_script.py

On a shared CPU use OMP_WAIT_POLICY=PASSIVE: with the default (spinning) policy two OpenMP threads on two busy cores run
up to ~10x slower (the upscale rows time the CLI both ways). Rows record load1_before and this process's user/sys CPU
seconds (large sys = page faults of fresh allocations).
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()  # the --max-seconds budget counts from process start (imports included)

import argparse
import contextlib
import datetime
import gc
import importlib.metadata
import importlib.util
import itertools
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mambaesr_edge.export.cost import analytic_macs_per_pixel
from mambaesr_edge.machine import cpu_model
from mambaesr_edge.model import MambaSR, count_parameters
from mambaesr_edge.presets import get_preset
from mambaesr_edge.runtime.tiling import plan_tiles
from mambaesr_edge.scan import selective_scan

HERE = Path(__file__).resolve().parent
SET5_BABY = "datasets/benchmark/Set5/LR_bicubic/X4/babyx4.png"
GOAL_FPS = 60.0  # student 1080p frame (issue 7)
GOAL_PRESET = "dvmsr-g1"  # the goals' "student": the network of the shipped default (the distilled student)
GOAL_RATIO = 1.3  # Mamba / same-FLOPs CNN time
GOAL_TRAIN_MIN = 15.0  # 10K iterations at batch 32
GOAL_CPU_UPSCALE_S = 1.0  # 128x128 -> 512x512 on 2 cores
GOAL16_STREAM_FPS = 60.0  # issue 16: 960x540 -> 3840x2160 through Upscaler.stream with the defaults
GOAL16_NET_FPS_1080P = 30.0  # issue 16: 1920x1080 LR, network only
GOAL16_RATIO_1080P = 2.0  # issue 16: Mamba / same-MACs CNN on the 1080p frame


class Interrupted(BaseException):
    """SIGTERM/SIGINT: stop measuring, still write the JSON and print the table."""


# ----------------------------------------------------------------------------------------------------------- config
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=None, help="write the results here (rewritten after every row)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds on a CPU (the test uses it)")
    p.add_argument("--cpu-budget", action="store_true", help="reduced sizes for a 2-core CPU (a few minutes)")
    p.add_argument("--max-seconds", type=float, default=None, help="start no new measurement after this (default 180; cpu-budget 420; quick 60)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (cpu-budget: 2)")
    p.add_argument("--sections", nargs="+", default=["stream", "scan", "tile", "frame", "train", "upscale"],
                   choices=["stream", "scan", "tile", "frame", "train", "upscale"], help="what to measure")
    p.add_argument("--presets", nargs="+", default=None, help=f"default {GOAL_PRESET} student dvmsr (quick: test)")
    p.add_argument("--impls", nargs="+", default=None,
                   help="scan impls for the network rows (default: chunked, triton on CUDA, mamba_ssm if importable)")
    p.add_argument("--amp", nargs="+", default=["none"], choices=["none", "fp16", "bf16"], help="inference autocast variants (CUDA only)")
    p.add_argument("--with-reference", action="store_true", help="reference scan at full size (and on CUDA)")
    p.add_argument("--scan-L", type=int, default=4096)
    p.add_argument("--scan-dim", type=int, default=64)
    p.add_argument("--scan-N", type=int, default=16)
    p.add_argument("--scan-batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--fwdbwd-batch", type=int, default=32)
    p.add_argument("--ref-L", type=int, default=1024, help="sequence length of the reference scan rows (unless --with-reference)")
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--overlap", type=int, default=8)
    p.add_argument("--unit-tile", type=int, default=None,
                   help="tile size of the per-tile rows (default: --tile; issue 14 compares impls on 64x64 tiles)")
    p.add_argument("--tile-batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--frame-batch", type=int, default=128, help="tiles per call for frames (halved on out-of-memory)")
    p.add_argument("--frame-max-tiles", type=int, default=0, help="time this many tiles of a frame and extrapolate (0: all)")
    p.add_argument("--no-e2e-frame", action="store_true", help="skip the runtime (Upscaler) frame rows")
    p.add_argument("--stream-frames", type=int, default=300, help="frames timed per stream row")
    p.add_argument("--stream-warmup", type=int, default=10, help="frames of the warm-up stream before each stream row")
    p.add_argument("--stream-precisions", nargs="+", default=["default"], choices=["default", "fp32", "fp16", "bf16"],
                   help="stream rows: the plan's precision (default) and/or these")
    p.add_argument("--stream-scans", nargs="+", default=["auto"],
                   help="scan impl per stream row (auto = the app default; e.g. cuda = the native kernel)")
    p.add_argument("--stream-tile", type=int, default=None, help="stream rows: LR tile (default: the app's; 0: whole frames)")
    p.add_argument("--stream-batch", type=int, default=None, help="stream rows: tiles per call (default: the app's)")
    p.add_argument("--stream-model", default=None, help="model for the stream rows (default: the shipped default)")
    p.add_argument("--matmul-tf32", action="store_true",
                   help="fp32 matmuls on TF32 tensor cores (torch.backends.cuda.matmul.allow_tf32; cuDNN convs use TF32 by default)")
    p.add_argument("--profile", action="store_true", help="torch.profiler table of the 1080p network -> <json stem>_profile.json")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--train-patch", type=int, default=64)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--target-s", type=float, default=0.6, help="time spent measuring one row (after warm-up)")
    p.add_argument("--upscale-image", default=None, help="LR image for the upscale rows (default Set5 baby, else the sample)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime upscale row")
    p.add_argument("--no-cli", action="store_true", help="skip the CLI subprocess upscale row")
    args = p.parse_args(argv)
    args.frames = {"1080p": (1080, 1920), "540p": (540, 960)}
    args.frame_540p_presets = (GOAL_PRESET,)
    args.stream_hw = (540, 960)
    args.upscale_size = 128
    if args.quick:
        args.presets = args.presets or ["test"]
        args.scan_L, args.scan_dim, args.scan_N, args.scan_batches, args.fwdbwd_batch, args.ref_L = 256, 16, 4, [1, 2], 2, 64
        args.tile, args.overlap, args.tile_batches, args.frame_batch = 16, 4, [1, 2], 4
        args.frames = {"tiny": (40, 56)}
        args.frame_540p_presets = ()
        args.stream_hw, args.stream_frames, args.stream_warmup = (20, 28), 6, 2
        args.train_batch, args.train_patch, args.train_steps = 2, 16, 1
        args.target_s = 0.05
        args.upscale_size = 24
        args.no_cli = True
        args.max_seconds = args.max_seconds or 60.0
    elif args.cpu_budget:
        args.threads = args.threads or 2
        args.scan_batches, args.fwdbwd_batch = [1, 8], 4
        args.tile_batches, args.frame_batch, args.frame_max_tiles = [1, 4], 4, 4
        args.frame_540p_presets = ()
        args.stream_hw, args.stream_frames, args.stream_warmup = (64, 96), 10, 2
        args.train_batch, args.train_patch, args.train_steps = 2, 32, 1
        args.target_s = 0.5
        args.max_seconds = args.max_seconds or 420.0
    args.presets = args.presets or [GOAL_PRESET, "student", "dvmsr"]
    args.max_seconds = args.max_seconds or 180.0
    return args


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def scan_impls(device: torch.device) -> list[str]:
    impls = ["chunked"]
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is not None:
            impls.append("triton")
        if importlib.util.find_spec("mamba_ssm") is not None:
            impls.append("mamba_ssm")
    return impls


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


# ----------------------------------------------------------------------------------------------------------- runner
class Runner:
    """Holds the report; `measure` runs one row guarded by try/except and the time budget, then saves the JSON."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args = args
        self.device = device
        self.deadline = _T0 + args.max_seconds
        cuda = device.type == "cuda"
        self.report: dict = {
            "command": " ".join([sys.executable, *sys.argv]),
            "cwd": os.getcwd(),
            "device": device_name(device),
            "device_type": device.type,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": {
                "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                "triton": _version("triton"), "mamba_ssm": _version("mamba-ssm"), "onnx": _version("onnx"),
                "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"), "numpy": np.__version__,
                "mambaesr_edge": _version("mambaesr-edge"),
            },
            "torch_threads": torch.get_num_threads(),
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                                                   "PYTORCH_CUDA_ALLOC_CONF", "TRITON_INTERPRET")},
            "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "note": "rows carry load1_before and this process's CPU seconds (cpu_user_s, cpu_sys_s; children included): on a shared "
                    "CPU, wall >> cpu / threads means the run was starved, a large cpu_sys_s means page-fault (allocation) cost",
            "cpu_count": os.cpu_count(),
            "settings": {
                "max_seconds": args.max_seconds, "quick": args.quick, "cpu_budget": args.cpu_budget,
                "presets": args.presets, "amp": args.amp if cuda else ["none"],
                "scan": {"L": args.scan_L, "dim": args.scan_dim, "N": args.scan_N, "batches": args.scan_batches,
                         "fwdbwd_batch": args.fwdbwd_batch, "ref_L": args.ref_L},
                "tile": args.tile, "unit_tile": unit_tile(args), "overlap": args.overlap, "tile_batches": args.tile_batches,
                "frames": {k: list(v) for k, v in args.frames.items()}, "frame_batch": args.frame_batch,
                "frame_max_tiles": args.frame_max_tiles,
                "stream": {"lr_hw": list(args.stream_hw), "frames": args.stream_frames, "warmup": args.stream_warmup,
                           "precisions": args.stream_precisions, "scans": args.stream_scans,
                           "tile": args.stream_tile, "batch": args.stream_batch, "model": args.stream_model or "shipped default"},
                "train": {"batch": args.train_batch, "patch": args.train_patch, "steps": args.train_steps},
                "cudnn_benchmark": cuda, "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
                "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            },
            "timing": "median over reps after warm-up; CUDA events for kernels/network rows, perf_counter + synchronize for frames/e2e/train",
            "copy_bandwidth": None,
            "stream": [], "scan": [], "tile": [], "frame": [], "train": [], "upscale": [],
            "cnn": {}, "ratios": [], "goals": {}, "errors": 0, "skipped": 0,
        }
        if cuda:
            props = torch.cuda.get_device_properties(device)
            self.report["gpu"] = {"sms": props.multi_processor_count, "memory_gib": props.total_memory / 2**30,
                                  "l2_mib": getattr(props, "L2_cache_size", 0) / 2**20,
                                  "capability": f"{props.major}.{props.minor}"}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def measure(self, section: str, label: dict, fn) -> dict:
        row = dict(label)
        if self.left() <= 0:
            row["skipped"] = "max-seconds budget spent"
            self.report["skipped"] += 1
        else:
            start, cpu0 = time.perf_counter(), os.times()
            row["load1_before"] = _load1()
            try:
                row.update(fn())
            except Interrupted:
                raise
            except Exception as exc:  # noqa: BLE001 - a benchmark row records its failure and the run goes on
                row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
                row["traceback_tail"] = traceback.format_exc().strip().splitlines()[-3:]
                self.report["errors"] += 1
            row["wall_s"] = round(time.perf_counter() - start, 3)
            cpu1 = os.times()
            row["cpu_user_s"] = round(cpu1.user - cpu0.user + cpu1.children_user - cpu0.children_user, 3)
            row["cpu_sys_s"] = round(cpu1.system - cpu0.system + cpu1.children_system - cpu0.children_system, 3)
            cleanup(self.device)
        if section == "copy_bandwidth":
            self.report[section] = row
        else:
            self.report[section].append(row)
        status = "skipped" if "skipped" in row else ("ERROR " + row["error"] if "error" in row else "ok")
        print(f"[{time.perf_counter() - _T0:6.1f}s] {section:8s} {_short(label)} -> {status}", flush=True)
        self.save()
        return row

    def save(self) -> None:
        self.report["elapsed_s"] = round(time.perf_counter() - _T0, 2)
        self.report["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        if not self.args.json:
            return
        path = Path(self.args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.report, indent=2, default=_json_default))
        os.replace(tmp, path)


def _load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _short(label: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in label.items())


def cleanup(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        try:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001 - a sticky CUDA error: later rows record their own errors
            print(f"cleanup: {type(exc).__name__}: {exc}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device: torch.device, *, target_s: float, warmup: int = 1, min_reps: int = 3, max_reps: int = 200,
            events: bool = True) -> dict:
    """Median time of fn(i) (i = rep index, for rotating inputs). CUDA events when `events`, else perf_counter + sync.

    Stops after `max_reps`, or once `min_reps` are done and `target_s` spent, or once 4 x target_s are spent."""
    t0 = time.perf_counter()
    for i in range(warmup):
        fn(i)
        sync(device)
        if time.perf_counter() - t0 > 2 * target_s:  # a slow call: one warm-up is enough
            warmup = i + 1
            break
    use_events = events and device.type == "cuda"
    times: list[float] = []
    while True:
        i = warmup + len(times)
        if use_events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(i)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn(i)
            sync(device)
            times.append(time.perf_counter() - t0)
        spent = sum(times)
        if len(times) >= max_reps or (len(times) >= min_reps and spent >= target_s) or spent >= 4 * target_s:
            break
    return {"ms": 1e3 * statistics.median(times), "ms_min": 1e3 * min(times), "reps": len(times)}


def autocast(device: torch.device, amp: str):
    if amp == "none" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


def is_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


# ----------------------------------------------------------------------------------------------------------- 0: copy
def copy_bandwidth(device: torch.device, args) -> dict:
    mib = 4 if args.quick else (256 if device.type == "cpu" else 2048)
    src = torch.empty(mib * 2**20 // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    res = time_fn(lambda i: dst.copy_(src), device, target_s=args.target_s, warmup=2, min_reps=5)
    moved = 2 * src.numel() * 4
    return {"bytes": moved, **res, "gbs": moved / (res["ms"] / 1e3) / 1e9,
            "how": f"{mib} MiB fp32 tensor copy_ on the device; bytes read + written / median time"}


# ----------------------------------------------------------------------------------------------------------- 1: scan
def _scan_sets(batch: int, length: int, dim: int, n_state: int, device: torch.device, grad: bool, l2_bytes: int) -> list[dict]:
    per_set = 4 * (3 * batch * dim * length + 2 * batch * n_state * length)
    n_sets = 3 if device.type != "cuda" else max(3, min(16, math.ceil(2 * l2_bytes / per_set)))
    gen = torch.Generator(device="cpu").manual_seed(0)
    dt = torch.exp(torch.rand(dim, generator=gen) * math.log(100.0) + math.log(1e-3))  # Mamba's dt init in [1e-3, 0.1]
    common = {
        "A": (-torch.arange(1, n_state + 1, dtype=torch.float32).repeat(dim, 1)).to(device).requires_grad_(grad),  # (dim, N)
        "D": torch.ones(dim, device=device).requires_grad_(grad),
        "delta_bias": (dt + torch.log(-torch.expm1(-dt))).to(device).requires_grad_(grad),
    }
    sets = []
    for _ in range(n_sets):
        # the model's layout: (batch, L, channels) in memory, seen as (batch, channels, L)
        leaves = {
            "u": torch.randn(batch, length, dim, device=device),
            "delta": 0.5 * torch.randn(batch, length, dim, device=device),
            "B": torch.randn(batch, length, n_state, device=device),
            "C": torch.randn(batch, length, n_state, device=device),
        }
        for t in leaves.values():
            t.requires_grad_(grad)
        sets.append({"leaves": leaves, **common})
    return sets


def _scan_call(s: dict, impl: str) -> torch.Tensor:
    lv = s["leaves"]
    return selective_scan(
        lv["u"].transpose(1, 2), lv["delta"].transpose(1, 2), s["A"], lv["B"].transpose(1, 2), lv["C"].transpose(1, 2),
        D=s["D"], delta_bias=s["delta_bias"], delta_softplus=True, impl=impl,
    )


def scan_forward(impl: str, batch: int, length: int, args, device: torch.device, copy_gbs: float | None, l2: int) -> dict:
    dim, n_state = args.scan_dim, args.scan_N
    sets = _scan_sets(batch, length, dim, n_state, device, False, l2)

    def fn(i: int) -> None:
        with torch.inference_mode():
            _scan_call(sets[i % len(sets)], impl)

    res = time_fn(fn, device, target_s=args.target_s, warmup=2)
    minimal = 4 * (3 * batch * dim * length + 2 * batch * n_state * length)
    gbs = minimal / (res["ms"] / 1e3) / 1e9
    return {**res, "input_sets": len(sets), "minimal_bytes": minimal, "gbs": gbs,
            "frac_of_copy_bw": gbs / copy_gbs if copy_gbs else None,
            "floor_ms_at_copy_bw": 1e3 * minimal / (copy_gbs * 1e9) if copy_gbs else None}


def scan_fwd_bwd(impl: str, batch: int, length: int, args, device: torch.device, l2: int) -> dict:
    sets = _scan_sets(batch, length, args.scan_dim, args.scan_N, device, True, l2)
    grads = [torch.randn(batch, args.scan_dim, length, device=device) for _ in range(2)]

    def fn(i: int) -> None:
        s = sets[i % len(sets)]
        y = _scan_call(s, impl)
        inputs = [*s["leaves"].values(), s["A"], s["D"], s["delta_bias"]]
        torch.autograd.grad(y, inputs, grads[i % 2])

    res = time_fn(fn, device, target_s=args.target_s, warmup=2)
    return {**res, "input_sets": len(sets)}


def run_scan(r: Runner, impls: list[str]) -> None:
    args, device = r.args, r.device
    copy_gbs = (r.report["copy_bandwidth"] or {}).get("gbs")
    l2 = int(r.report.get("gpu", {}).get("l2_mib", 0) * 2**20) or 50 * 2**20
    L, dim, N = args.scan_L, args.scan_dim, args.scan_N
    rows = [(impl, b, L) for impl in impls for b in args.scan_batches]
    if device.type == "cpu" or args.with_reference:
        if args.with_reference:
            rows += [("reference", b, L) for b in args.scan_batches]
        else:  # the sequential definition is slow: batch 1 at --ref-L, with chunked at the same size beside it
            rows += [("reference", 1, args.ref_L), ("chunked", 1, args.ref_L)] if args.ref_L != L else [("reference", 1, L)]
    for impl, b, length in rows:
        label = {"impl": impl, "mode": "fwd", "batch": b, "L": length, "dim": dim, "N": N}
        r.measure("scan", label, lambda impl=impl, b=b, length=length: scan_forward(impl, b, length, args, device, copy_gbs, l2))
    bwd_impls = impls + (["reference"] if args.with_reference else [])
    for impl in bwd_impls:
        label = {"impl": impl, "mode": "fwd+bwd", "batch": args.fwdbwd_batch, "L": L, "dim": dim, "N": N}
        r.measure("scan", label, lambda impl=impl: scan_fwd_bwd(impl, args.fwdbwd_batch, L, args, device, l2))


# ----------------------------------------------------------------------------------------------------------- 4: CNN
class PlainCNN(nn.Module):
    """conv3x3 -> `blocks` x (conv3x3-ReLU-conv3x3 + skip) -> conv3x3 + long skip -> conv3x3 to 3*s^2 + PixelShuffle."""

    def __init__(self, width: int, blocks: int, scale: int = 4, channels: int = 3,
                 rgb_mean: tuple[float, float, float] = (0.4488, 0.4371, 0.4040)) -> None:
        super().__init__()
        self.scale, self.width, self.n_blocks = scale, width, blocks
        self.register_buffer("mean", torch.tensor(rgb_mean).view(1, 3, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(width, width, 3, padding=1))
            for _ in range(blocks)
        )
        self.conv_after_body = nn.Conv2d(width, width, 3, padding=1)
        self.upsample = nn.Sequential(nn.Conv2d(width, channels * scale**2, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor, scan_impl: str | None = None) -> torch.Tensor:  # scan_impl: same call as MambaSR
        feat = self.conv_first(x - self.mean)
        body = feat
        for block in self.blocks:
            body = body + block(body)
        return self.upsample(self.conv_after_body(body) + feat) + self.mean


def conv_macs_per_lr_pixel(model: nn.Module, hw: int = 16) -> float:
    """Multiply-adds per LR pixel counted from the model's Conv2d layers (forward hooks on a hw x hw input)."""
    total = [0]

    def hook(mod, _inp, out):
        total[0] += out[0].numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, hw, hw))
    finally:
        for h in handles:
            h.remove()
    return total[0] / (hw * hw)


def matched_cnn(preset: str) -> dict:
    """The CNN spec (width = the preset's embed_dim, depth chosen) whose MACs per LR pixel are closest to the preset's."""
    config = get_preset(preset)
    target = analytic_macs_per_pixel(config)["total"]
    one, two = (conv_macs_per_lr_pixel(PlainCNN(config.embed_dim, n, config.scale)) for n in (1, 2))  # linear in depth
    blocks = max(1, round((target - one) / (two - one)) + 1)
    model = PlainCNN(config.embed_dim, blocks, config.scale)
    macs = conv_macs_per_lr_pixel(model)  # counted from the layers of the chosen network
    return {"width": config.embed_dim, "blocks": blocks, "scale": config.scale, "macs_per_lr_pixel": macs,
            "mamba_macs_per_lr_pixel": target, "mamba_macs_parts": analytic_macs_per_pixel(config),
            "rel_diff": macs / target - 1.0, "params": count_parameters(model),
            "mamba_params": count_parameters(MambaSR(config)),
            "layout": f"conv3x3(3->{config.embed_dim}), {blocks} x [conv3x3-ReLU-conv3x3 + skip], conv3x3 + skip, "
                      f"conv3x3({config.embed_dim}->{3 * config.scale**2}) + PixelShuffle({config.scale})"}


def build_model(kind: str, preset: str, cnn_specs: dict, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    if kind == "cnn":
        spec = cnn_specs[preset]
        return PlainCNN(spec["width"], spec["blocks"], spec["scale"]).to(device).eval()
    return MambaSR(get_preset(preset)).to(device).eval()


# ----------------------------------------------------------------------------------------------------------- 2: tile
def unit_tile(args) -> int:
    """The tile size of the per-tile rows: --unit-tile, else --tile (64 where --tile 0; the frame rows always use --tile)."""
    return args.unit_tile or args.tile or 64


def tile_forward(model: nn.Module, impl: str | None, batch: int, amp: str, args, device: torch.device) -> dict:
    xs = [torch.rand(batch, 3, unit_tile(args), unit_tile(args), device=device) for _ in range(3)]

    def fn(i: int) -> None:
        with torch.inference_mode(), autocast(device, amp):
            model(xs[i % 3], scan_impl=impl)

    res = time_fn(fn, device, target_s=args.target_s, warmup=2)
    return {**res, "ms_per_tile": res["ms"] / batch, "tiles_per_s": 1e3 * batch / res["ms"]}


# ----------------------------------------------------------------------------------------------------------- 2: frame
def frame_plan(frame_hw: tuple[int, int], args):
    """The tiles of one LR frame: ``--tile`` with ``--overlap``; ``--tile 0``: the whole frame as one tile."""
    return plan_tiles(frame_hw, frame_hw, 0) if args.tile == 0 else plan_tiles(frame_hw, args.tile, args.overlap)


def frame_tiles(frame: torch.Tensor, plan, count: int) -> torch.Tensor:
    th, tw = plan.tile_hw
    return torch.stack([frame[:, y : y + th, x : x + tw] for y, x in plan.origins[:count]])  # (count, 3, th, tw)


def frame_model(model: nn.Module, impl: str | None, frame_hw: tuple[int, int], amp: str, args, device: torch.device) -> dict:
    """Network time for all tiles of one LR frame, tiles already on the device (no blend, no transfer)."""
    plan = frame_plan(frame_hw, args)
    gen = torch.Generator(device="cpu").manual_seed(1)
    frame = torch.rand(3, *plan.padded_hw, generator=gen).to(device)
    n_total = plan.num_tiles
    n_timed = min(n_total, args.frame_max_tiles) if args.frame_max_tiles else n_total
    tiles = frame_tiles(frame, plan, n_timed)  # (n, 3, th, tw)
    batch = args.frame_batch
    while True:
        def run(_i: int, batch=batch) -> None:
            with torch.inference_mode(), autocast(device, amp):
                for start in range(0, n_timed, batch):
                    model(tiles[start : start + batch], scan_impl=impl)
        try:
            t0 = time.perf_counter()
            run(0)  # warm-up: every batch shape once (Triton compiles per launch shape)
            sync(device)
            first = time.perf_counter() - t0
            break
        except Exception as exc:
            if not is_oom(exc) or batch == 1:
                raise
            cleanup(device)
            batch //= 2
    res = time_fn(run, device, target_s=args.target_s * 2, warmup=0, min_reps=2, max_reps=20, events=False)
    ms = res["ms"] * n_total / n_timed
    return {"lr_hw": list(frame_hw), "hr_hw": [frame_hw[0] * model.scale, frame_hw[1] * model.scale], "tiles": n_total, "tiles_timed": n_timed,
            "extrapolated": n_timed < n_total, "batch_used": batch, "first_run_s": first,
            "ms_timed": res["ms"], "reps": res["reps"], "ms": ms, "fps": 1e3 / ms}


def frame_e2e(model: nn.Module, impl: str | None, frame_hw: tuple[int, int], amp: str, args, device: torch.device,
              batch: int, call: str) -> dict:
    """The runtime path: TorchBackend + Upscaler (upload, device tiling, output checks, device blend, copy back).

    ``call``: "chw" times ``upscale_chw`` (float32 (3, H, W) in, float32 result copied back); "u8" times
    ``up(frame)`` on a uint8 HxWx3 frame (host preprocess, clamp/round/uint8 on the device, uint8 copied back).
    """
    from mambaesr_edge.runtime.backends.torch import TorchBackend
    from mambaesr_edge.runtime.upscaler import Upscaler

    precision = "fp16" if amp == "fp16" else "fp32"
    backend = TorchBackend(model, device=str(device), precision=precision, scan_impl=impl)
    up = Upscaler(backend, tile=args.tile, overlap=args.overlap, batch=batch)
    rng = np.random.default_rng(2)
    if call == "chw":
        image, method = rng.random((3, *frame_hw), dtype=np.float32), up.upscale_chw  # (3, H, W) float32
    else:
        image, method = rng.integers(0, 256, (*frame_hw, 3), dtype=np.uint8), up  # (H, W, 3) uint8
    res = time_fn(lambda i: method(image), device, target_s=args.target_s, warmup=1, min_reps=1, max_reps=3, events=False)
    return {**res, "lr_hw": list(frame_hw), "batch": batch, "precision": precision, "fps": 1e3 / res["ms"],
            "settings": str(up.settings), "call": call}


# ----------------------------------------------------------------------------------------------------------- 5: stream
def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def stream_row(precision: str, scan: str, args, device: torch.device) -> dict:
    """Upscaler.stream with an app's defaults, uint8 HxWx3 in and out (see the module docstring, section 5)."""
    from mambaesr_edge.runtime.upscaler import Upscaler

    t0 = time.perf_counter()
    tile = {} if args.stream_tile is None else {"tile": args.stream_tile}  # none given: the defaults an app gets
    if args.stream_batch is not None:
        tile["batch"] = args.stream_batch
    up = Upscaler.from_path(args.stream_model, backend="torch", device=device.type, precision=None if precision == "default" else precision,
                            scan_impl=scan, **tile)
    open_s = time.perf_counter() - t0
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (*args.stream_hw, 3), dtype=np.uint8) for _ in range(8)]  # (H, W, 3) uint8
    t0 = time.perf_counter()
    for _ in up.stream(frames[i % len(frames)] for i in range(args.stream_warmup)):  # Triton compiles, cuDNN picks
        pass
    warmup_s = time.perf_counter() - t0
    n = args.stream_frames
    t_in, t_out = [0.0] * n, [0.0] * n

    def source():
        for i in range(n):
            t_in[i] = time.perf_counter()
            yield frames[i % len(frames)]

    shape = None
    start = time.perf_counter()
    with up.stream(source(), indexed=True) as stream:
        for i, out in stream:
            t_out[i] = time.perf_counter()
            shape = out.shape
        dropped, decisions = len(stream.dropped), [str(d) for d in stream.decisions]
    wall = time.perf_counter() - start
    latency = sorted(1e3 * (t_out[i] - t_in[i]) for i in range(n) if t_out[i])
    info = up.backend.info
    return {"lr_hw": list(args.stream_hw), "out_shape": list(shape) if shape else None, "frames": n, "stream_wall_s": wall,
            "fps": n / wall, "ms": 1e3 * wall / n, "latency_ms_p50": _percentile(latency, 0.5), "latency_ms_p99": _percentile(latency, 0.99),
            "precision_used": info.precision, "backend": f"{info.name} {info.device} {info.detail}", "settings": str(up.settings),
            "startup_decisions": [str(d) for d in up.startup_decisions], "stream_decisions": decisions, "dropped": dropped,
            "open_s": open_s, "warmup_s": warmup_s, "weights": info.source}


def profile_frame(model: nn.Module, impl: str | None, frame_hw: tuple[int, int], amp: str, args, device: torch.device) -> dict:
    """One network-only pass over a tiled frame (as ``frame_model``) under torch.profiler: CUDA time per kernel (on
    the CPU: self CPU time per op)."""
    from torch.profiler import ProfilerActivity, profile

    plan = frame_plan(frame_hw, args)
    frame = torch.rand(3, *plan.padded_hw, generator=torch.Generator().manual_seed(1)).to(device)
    tiles = frame_tiles(frame, plan, plan.num_tiles)  # (n, 3, th, tw)
    batch, reps = args.frame_batch, 2

    def run() -> None:
        with torch.inference_mode(), autocast(device, amp):
            for start in range(0, len(tiles), batch):
                model(tiles[start : start + batch], scan_impl=impl)

    run()
    sync(device)
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            run()
        sync(device)
    rows = []
    for event in prof.key_averages():
        us = (getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)) if cuda else event.self_cpu_time_total
        if us > 0:
            rows.append({"name": event.key[:140], "calls": event.count // reps, "ms_per_frame": us / 1e3 / reps})
    rows.sort(key=lambda row: -row["ms_per_frame"])
    total = sum(row["ms_per_frame"] for row in rows)
    for row in rows:
        row["share"] = row["ms_per_frame"] / total if total else None
    return {"lr_hw": list(frame_hw), "tile": args.tile, "overlap": args.overlap, "tiles": plan.num_tiles, "batch": batch,
            "amp": amp, "impl": impl, "kernel_ms_per_frame": total, "kernels": rows[:40]}


def write_profile(r: Runner, cnn_specs: dict) -> None:
    """--profile: the 1080p (else first) frame of the first preset, best impl/amp of its network rows."""
    args, device = r.args, r.device
    name = "1080p" if "1080p" in args.frames else next(iter(args.frames))
    preset = args.presets[0]
    best = _best(r.report["frame"], preset=preset, model="mamba", frame=name, path="model")
    if best is None or not args.json:
        return
    model = build_model("mamba", preset, cnn_specs, device)
    row = r.measure("frame", {"preset": preset, "model": "mamba", "impl": best["impl"], "amp": best["amp"], "frame": name, "path": "profile"},
                    lambda m=model: profile_frame(m, best["impl"], args.frames[name], best["amp"], args, device))
    if "kernels" in row:
        path = Path(args.json).with_name(Path(args.json).stem + "_profile.json")
        doc = {"command": r.report["command"], "device": r.report["device"], "date": r.report["date"], "torch": torch.__version__,
               "preset": preset, **{k: v for k, v in row.items() if k not in ("load1_before",)}}
        path.write_text(json.dumps(doc, indent=1, default=_json_default))
        row["profile_json"] = str(path)
        row.pop("kernels")
        row["top_kernels"] = [f"{k['ms_per_frame']:.2f} ms {100 * (k['share'] or 0):.0f}% x{k['calls']} {k['name'][:60]}"
                              for k in doc["kernels"][:8]]
        r.save()
    del model
    cleanup(device)


# ----------------------------------------------------------------------------------------------------------- 3: train
def load_train_step():
    spec = importlib.util.spec_from_file_location("_bench_train_step", HERE / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _patched(module, **attrs):
    old = {k: getattr(module, k) for k in attrs}
    for k, v in attrs.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(module, k, v)


def train_row(ts, kind: str, preset: str, impl: str, cnn_specs: dict, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    if kind == "cnn":  # same timing code: train_step.time_step builds `MambaSR(get_preset(name))`; hand it the CNN
        spec = cnn_specs[preset]
        with _patched(ts, get_preset=lambda name: spec,
                      MambaSR=lambda s, scan_impl=None: PlainCNN(s["width"], s["blocks"], s["scale"])):
            res = ts.time_step(preset, args.train_batch, args.train_patch, impl, False, device, args.train_steps)
    else:
        res = ts.time_step(preset, args.train_batch, args.train_patch, impl, False, device, args.train_steps)
    out = {k: v for k, v in res.items() if k not in ("preset", "scan", "batch", "patch")}
    out["ms"] = res["step_ms_median"]
    out["minutes_10k"] = res["step_ms_median"] * 10_000 / 60_000
    out["autocast"] = "bf16" if device.type == "cuda" else "none"
    return out


# ----------------------------------------------------------------------------------------------------------- 5: upscale
def upscale_image(args, work: Path) -> tuple[Path, str]:
    """The LR image for the upscale rows: --upscale-image, Set5 baby (128x128), else the shipped sample downscaled."""
    from PIL import Image

    if args.upscale_image:
        return Path(args.upscale_image), "given"
    shared = Path(os.environ.get("MAMBAESR_SHARED", HERE.parent.parent / "shared"))
    baby = shared / SET5_BABY
    size = args.upscale_size
    if baby.is_file() and size == 128:
        return baby, "Set5 baby LR x4 (128x128)"
    from mambaesr_edge.resources import sample_image_path

    img = Image.open(sample_image_path()).convert("RGB").resize((size, size), Image.BICUBIC)
    path = work / f"sample_{size}.png"
    img.save(path)
    return path, f"shipped sample downscaled to {size}x{size}"


def upscale_rows(r: Runner, preset: str) -> None:
    """`mambaesr-edge upscale` work on one LR image: Upscaler.from_path + runtime.files.upscale_file (read, tile
    plan, run, blend, write PNG), as the CLI does, per path; then the CLI itself."""
    from mambaesr_edge.checkpoint import save_weights
    from mambaesr_edge.runtime.files import upscale_file
    from mambaesr_edge.runtime.upscaler import Upscaler

    args = r.args
    work = Path(tempfile.mkdtemp(prefix="speed_upscale_"))
    try:
        source, what = upscale_image(args, work)
        torch.manual_seed(0)
        weights = save_weights(MambaSR(get_preset(preset)), work / f"{preset}_random.safetensors")
        common = {"preset": preset, "image": what, "weights": "random (timing only)", "threads": torch.get_num_threads()}

        def timed(up: Upscaler, tag: str) -> dict:
            target = work / f"out_{tag}.png"
            res = time_fn(lambda i: upscale_file(up, source, target), torch.device("cpu"), target_s=2 * args.target_s,
                          warmup=1, min_reps=3, max_reps=7, events=False)  # ms_min: the least disturbed run on a shared CPU
            return {**res, "s": res["ms"] / 1e3, "settings": str(up.settings), "goal_s": GOAL_CPU_UPSCALE_S}

        for impl in ("chunked", "reference"):
            r.measure("upscale", {"path": f"torch-{impl}", **common},
                      lambda impl=impl: timed(Upscaler.from_path(weights, device="cpu", scan_impl=impl), impl))
        if not args.no_onnx:
            def ort_row() -> dict:
                from PIL import Image

                from mambaesr_edge.checkpoint import load_model
                from mambaesr_edge.export.onnx import export_onnx

                w, h = Image.open(source).size
                model, _ = load_model(weights, scan_impl="chunked")
                t0 = time.perf_counter()
                export_onnx(model, work / "model.onnx", input_shape=(1, 3, h, w))
                export_s = time.perf_counter() - t0
                up = Upscaler.from_path(work / "model.onnx", device="cpu", threads=torch.get_num_threads())
                return {**timed(up, "ort"), "export_s": export_s, "onnx_input": [1, 3, h, w]}

            r.measure("upscale", {"path": "onnxruntime", **common}, ort_row)
        if not args.no_cli:
            def cli_row(policy: str | None) -> dict:
                exe = shutil.which("mambaesr-edge")
                cmd = [exe] if exe else [sys.executable, "-m", "mambaesr_edge.cli"]
                cmd += ["upscale", str(source), "-o", str(work / "cli.png"), "--model", str(weights), "--scan", "chunked", "--overwrite"]
                env = dict(os.environ)
                env.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
                env.pop("OMP_WAIT_POLICY", None)
                if policy:
                    env["OMP_WAIT_POLICY"] = policy
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise RuntimeError(f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-300:]}")
                return {"s": wall, "ms": 1e3 * wall, "reps": 1, "cli_printed": proc.stdout.strip().splitlines()[-1:],
                        "note": "process wall time: Python start-up, imports, weight load, upscale, PNG write",
                        "command": " ".join(cmd[1:] if exe else cmd), "omp_num_threads": env["OMP_NUM_THREADS"],
                        "omp_wait_policy": policy or "default"}

            mine = os.environ.get("OMP_WAIT_POLICY")
            for policy in (mine, None if mine else "PASSIVE"):  # this process's setting, then the other one
                r.measure("upscale", {"path": f"cli-chunked[omp {policy or 'default'}]", **common}, lambda policy=policy: cli_row(policy))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = next((row for row in r.report["upscale"] if row.get("path") == "torch-chunked" and "ms" in row), None)
    for row in r.report["upscale"]:
        if base and "ms" in row:
            row["ratio_to_chunked"] = row["ms"] / base["ms"]


# ----------------------------------------------------------------------------------------------------------- plan
def run_all(r: Runner) -> None:
    args, device = r.args, r.device
    cuda = device.type == "cuda"
    impls = args.impls or scan_impls(device)
    amps = args.amp if cuda else ["none"]
    r.report["settings"]["impls"] = impls
    r.measure("copy_bandwidth", {"what": "device copy"}, lambda: copy_bandwidth(device, args))
    if "stream" in args.sections:  # issue 16's first target, so first
        frame = f"{args.stream_hw[1]}x{args.stream_hw[0]}"
        for scan, precision in itertools.product(args.stream_scans, args.stream_precisions):
            r.measure("stream", {"precision": precision, "scan": scan, "frame": frame},
                      lambda precision=precision, scan=scan: stream_row(precision, scan, args, device))
    if "scan" in args.sections:
        run_scan(r, impls)
    cnn_specs = {}
    for preset in args.presets:
        try:
            cnn_specs[preset] = matched_cnn(preset)
        except Exception as exc:  # noqa: BLE001 - recorded in the report, the run goes on
            cnn_specs[preset] = {"error": f"{type(exc).__name__}: {exc}"}
    r.report["cnn"] = cnn_specs
    r.save()
    if not cuda and "upscale" in args.sections and GOAL_PRESET in args.presets:
        upscale_rows(r, GOAL_PRESET)  # the CPU goal comes early: the rest of a CPU run is slow
    elif not cuda and "upscale" in args.sections:
        upscale_rows(r, args.presets[0])
    ts = None
    if "train" in args.sections:
        try:
            ts = load_train_step()
        except Exception as exc:  # noqa: BLE001 - recorded in the report, the run goes on
            r.report["train"].append({"error": f"cannot import benchmarks/train_step.py: {exc}"})
    e2e_done = False
    for preset in args.presets:  # priority order: the first preset (student) completely, then the next
        variants = [("mamba", impl) for impl in impls] + [("cnn", "none")]
        for kind, impl in variants:
            if "error" in cnn_specs.get(preset, {}) and kind == "cnn":
                continue
            try:
                model = build_model(kind, preset, cnn_specs, device)
            except Exception as exc:  # noqa: BLE001 - recorded in the report, the run goes on
                r.report["tile"].append({"preset": preset, "model": kind, "impl": impl, "error": f"{type(exc).__name__}: {exc}"})
                continue
            scan = impl if kind == "mamba" else None
            for amp in amps:
                if "tile" in args.sections:
                    for b in args.tile_batches:
                        label = {"preset": preset, "model": kind, "impl": impl, "amp": amp, "batch": b, "tile": unit_tile(args)}
                        r.measure("tile", label, lambda b=b, amp=amp, model=model, scan=scan: tile_forward(model, scan, b, amp, args, device))
                if "frame" in args.sections:
                    for name, hw in args.frames.items():
                        if name == "540p" and preset not in args.frame_540p_presets:
                            continue
                        label = {"preset": preset, "model": kind, "impl": impl, "amp": amp, "frame": name, "path": "model"}
                        r.measure("frame", label, lambda hw=hw, amp=amp, model=model, scan=scan: frame_model(model, scan, hw, amp, args, device))
            del model
            cleanup(device)
        if "frame" in args.sections and not args.no_e2e_frame and not e2e_done and cuda:
            e2e_done = True  # the runtime path once, for the first preset, with its fastest impl
            best = _best(r.report["frame"], preset=preset, model="mamba", frame=next(iter(args.frames)), path="model")
            if best:
                model = build_model("mamba", preset, cnn_specs, device)
                name, hw = next(iter(args.frames.items()))
                label = {"preset": preset, "model": "mamba", "impl": best["impl"], "amp": best["amp"] if best["amp"] != "bf16" else "none",
                         "frame": name, "path": "e2e"}
                batch = best.get("batch_used", args.frame_batch)
                for path, call in (("e2e", "chw"), ("e2e-u8", "u8")):
                    r.measure("frame", {**label, "path": path},
                              lambda m=model, impl=best["impl"], hw=hw, amp=label["amp"], b=batch, c=call:
                              frame_e2e(m, impl, hw, amp, args, device, b, c))
                del model
                cleanup(device)
        if ts is not None:
            for kind, impl in [("mamba", impl) for impl in impls] + [("cnn", "none")]:
                if kind == "cnn" and "error" in cnn_specs.get(preset, {}):
                    continue
                label = {"preset": preset, "model": kind, "impl": impl, "batch": args.train_batch, "patch": args.train_patch}
                r.measure("train", label, lambda kind=kind, impl=impl, preset=preset: train_row(ts, kind, preset, impl, cnn_specs, args, device))
    if args.profile and cuda and "frame" in args.sections:
        write_profile(r, cnn_specs)


def _best(rows: list[dict], **match) -> dict | None:
    ok = [row for row in rows if "ms" in row and all(row.get(k) == v for k, v in match.items())]
    return min(ok, key=lambda row: row["ms"]) if ok else None


def summarise(r: Runner) -> None:
    """Mamba / CNN ratios (each Mamba row against the CNN row of the same preset, batch/frame, amp) and the goals."""
    rep = r.report
    ratios = []
    for section, keys in (("tile", ("preset", "amp", "batch")), ("frame", ("preset", "amp", "frame", "path")), ("train", ("preset",))):
        for row in rep[section]:
            if row.get("model") != "mamba" or "ms" not in row:
                continue
            cnn = _best(rep[section], model="cnn", **{k: row.get(k) for k in keys})
            if cnn:
                row["x_cnn"] = row["ms"] / cnn["ms"]
                ratios.append({"section": section, **{k: row.get(k) for k in keys}, "impl": row["impl"],
                               "mamba_ms": row["ms"], "cnn_ms": cnn["ms"], "ratio": row["ms"] / cnn["ms"]})
    rep["ratios"] = ratios
    goals = {}
    args = r.args
    student = GOAL_PRESET if GOAL_PRESET in args.presets else args.presets[0]
    cuda = rep["device_type"] == "cuda"
    for name in args.frames:
        best = _best(rep["frame"], preset=student, model="mamba", frame=name, path="model")
        if best:
            hr = f"{best['hr_hw'][1]}x{best['hr_hw'][0]}"
            goals[f"student_fps_{name}_lr"] = _goal(best["fps"], GOAL_FPS, ">=", student == GOAL_PRESET and name in ("1080p", "540p") and cuda,
                                                    frame=f"{best['lr_hw'][1]}x{best['lr_hw'][0]} LR -> {hr}", impl=best["impl"],
                                                    amp=best["amp"], extrapolated=best.get("extrapolated"),
                                                    note="network only, tiles on the device")
        e2e = _best(rep["frame"], preset=student, model="mamba", frame=name, path="e2e")
        if e2e:
            goals[f"student_fps_{name}_lr_e2e"] = _goal(e2e["fps"], GOAL_FPS, ">=", student == GOAL_PRESET and cuda, impl=e2e["impl"],
                                                        amp=e2e["amp"],
                                                        note="runtime Upscaler.upscale_chw: device tiling and blend, float32 result to the host")
    stream = next((x for x in rep["stream"] if x.get("precision") == "default" and x.get("scan", "auto") == "auto" and "fps" in x), None)
    if stream:
        goals["issue16_stream_fps_540p_default"] = _goal(stream["fps"], GOAL16_STREAM_FPS, ">=", cuda and tuple(stream["lr_hw"]) == (540, 960)
                                                         and args.stream_tile is None and args.stream_batch is None,
                                                         precision=stream["precision_used"], settings=stream["settings"],
                                                         p50_ms=stream["latency_ms_p50"], p99_ms=stream["latency_ms_p99"],
                                                         note="Upscaler.from_path(None, backend='torch') defaults, uint8 in/out")
    net = _best(rep["frame"], preset=student, model="mamba", frame="1080p", path="model")
    if net:
        goals["issue16_network_fps_1080p_lr"] = _goal(net["fps"], GOAL16_NET_FPS_1080P, ">=", cuda and student == GOAL_PRESET,
                                                      impl=net["impl"], amp=net["amp"], tile=args.tile, overlap=args.overlap,
                                                      batch=net.get("batch_used"))
        if net.get("x_cnn") is not None:
            cnn_best = _best(rep["frame"], preset=student, model="cnn", frame="1080p", path="model")
            best_ratio = net["ms"] / cnn_best["ms"]  # fastest Mamba against the fastest CNN, any amp
            goals["issue16_mamba_cnn_ratio_1080p"] = _goal(best_ratio, GOAL16_RATIO_1080P, "<=", cuda and student == GOAL_PRESET,
                                                           mamba=f"{net['impl']} {net['amp']} {net['ms']:.1f} ms",
                                                           cnn=f"{cnn_best['amp']} {cnn_best['ms']:.1f} ms",
                                                           same_amp_ratio=net["x_cnn"])
    first_frame = next(iter(args.frames))
    for section, extra in (("frame", {"frame": first_frame, "path": "model"}), ("tile", {"batch": max(args.tile_batches)}), ("train", {})):
        cands = [x for x in ratios if x["section"] == section and x["preset"] == student and all(x.get(k) == v for k, v in extra.items())]
        if cands:
            b = min(cands, key=lambda x: x["ratio"])
            goals[f"mamba_cnn_ratio_{section}"] = _goal(b["ratio"], GOAL_RATIO, "<=", student == GOAL_PRESET and cuda, impl=b["impl"],
                                                        amp=b.get("amp"), **extra)
    tr = _best(rep["train"], preset=student, model="mamba")
    if tr:
        goals["train_10k_minutes"] = _goal(tr["minutes_10k"], GOAL_TRAIN_MIN, "<=",
                                           student == GOAL_PRESET and cuda and tr["batch"] == 32 and tr["patch"] == 64,
                                           impl=tr["impl"], batch=tr["batch"], patch=tr["patch"])
    up = next((x for x in rep["upscale"] if x.get("path") == "torch-chunked" and "s" in x), None)
    if up:
        timed = [x for x in rep["upscale"] if "s" in x and not x["path"].startswith("cli")]
        fastest = min(timed, key=lambda x: x["s"])
        goals["cpu_upscale_s"] = _goal(up["s"], GOAL_CPU_UPSCALE_S, "<=", "128x128" in up["image"] and up["threads"] == 2 and not cuda,
                                       path="torch-chunked", fastest=fastest["path"], fastest_s=fastest["s"], threads=up["threads"])
    rep["goals"] = goals


# ----------------------------------------------------------------------------------------------------------- table
def _f(x, fmt: str = "{:.3g}") -> str:
    return "-" if x is None else (fmt.format(x) if isinstance(x, (int, float)) else str(x))


def _status(row: dict) -> str:
    if "error" in row:
        return "ERROR " + row["error"][:90]
    if "skipped" in row:
        return "skipped (budget)"
    return ""


def _goal(value: float, goal: float, sense: str, goal_config: bool, **extra) -> dict:
    """One goal line; `met` is None when this run did not measure the goal's configuration (device, preset, sizes)."""
    ok = value >= goal if sense == ">=" else value <= goal
    return {"value": value, "goal": f"{sense} {goal}", "met": ok if goal_config else None, "goal_config": goal_config, **extra}


def print_table(r: Runner) -> None:
    rep = r.report
    load0 = _f((rep.get("load_average_start") or [None])[0], "{:.2f}")
    load1 = _f((rep.get("load_average_end") or [None])[0], "{:.2f}")
    lines = ["", "=" * 110,
             (f"speed.py  {rep['device']} ({rep['device_type']})  torch {rep['versions']['torch']}  triton {rep['versions']['triton']}  "
              f"{rep['date']}  threads {rep['torch_threads']}  elapsed {rep['elapsed_s']:.0f}s  errors {rep['errors']}  skipped {rep['skipped']}"),
             f"load average start {load0} end {load1}  command: {rep['command']}"]
    cb = rep["copy_bandwidth"] or {}
    lines.append(f"copy bandwidth: {_f(cb.get('gbs'), '{:.1f}')} GB/s {_status(cb)}")
    if rep["stream"]:
        lines += ["", "STREAM (Upscaler.stream, app defaults, uint8 HxWx3 in and out; latency = source -> consumer, queueing included)",
                  f"{'precision':9s} {'scan':6s} {'used':5s} {'frame':8s} {'frames':>6s} {'fps':>8s} {'p50 ms':>8s} {'p99 ms':>8s} "
                  f"{'drop':>5s}  settings"]
        for x in rep["stream"]:
            lines.append(f"{x.get('precision', '?'):9s} {x.get('scan', 'auto'):6s} {x.get('precision_used', '-'):5s} {x.get('frame', '?'):8s} "
                         f"{_f(x.get('frames'), '{:d}'):>6s} {_f(x.get('fps'), '{:8.2f}'):>8s} {_f(x.get('latency_ms_p50'), '{:8.1f}'):>8s} "
                         f"{_f(x.get('latency_ms_p99'), '{:8.1f}'):>8s} {_f(x.get('dropped'), '{:d}'):>5s}  {x.get('settings', '')} {_status(x)}")
    if rep["scan"]:
        lines += ["", "SCAN (ms median; GB/s = minimal bytes u,delta,B,C,y fp32 / time)",
                  f"{'impl':10s} {'mode':8s} {'batch':>5s} {'L':>6s} {'dim':>4s} {'N':>3s} {'ms':>10s} {'GB/s':>9s} {'%copy':>7s} {'floor ms':>9s}"]
        for x in rep["scan"]:
            frac = x.get("frac_of_copy_bw")
            lines.append(f"{x['impl']:10s} {x['mode']:8s} {x['batch']:5d} {x['L']:6d} {x['dim']:4d} {x['N']:3d} {_f(x.get('ms'), '{:10.3f}'):>10s} "
                         f"{_f(x.get('gbs'), '{:9.1f}'):>9s} {_f(None if frac is None else 100 * frac, '{:6.2f}%'):>7s} "
                         f"{_f(x.get('floor_ms_at_copy_bw'), '{:.3f}'):>9s} {_status(x)}")
    if rep["cnn"]:
        lines += ["", "CNN BASELINE (same MACs per LR pixel)"]
        for preset, spec in rep["cnn"].items():
            if "error" in spec:
                lines.append(f"{preset}: ERROR {spec['error']}")
            else:
                lines.append(f"{preset}: width {spec['width']} blocks {spec['blocks']}: {spec['macs_per_lr_pixel']:.0f} MACs/px vs Mamba "
                             f"{spec['mamba_macs_per_lr_pixel']:.0f} ({100 * spec['rel_diff']:+.1f}%); "
                             f"params {spec['params']} vs {spec['mamba_params']}")
    if rep["tile"]:
        lines += ["", f"NETWORK PER {unit_tile(r.args)}x{unit_tile(r.args)} LR TILE",
                  f"{'preset':8s} {'model':6s} {'impl':10s} {'amp':5s} {'batch':>5s} {'ms':>10s} {'ms/tile':>9s} {'tiles/s':>9s} {'x CNN':>7s}"]
        for x in rep["tile"]:
            lines.append(f"{x.get('preset', '?'):8s} {x.get('model', '?'):6s} {x.get('impl', '?'):10s} {x.get('amp', '-'):5s} {x.get('batch', 0):5d} "
                         f"{_f(x.get('ms'), '{:10.3f}'):>10s} {_f(x.get('ms_per_tile'), '{:9.3f}'):>9s} {_f(x.get('tiles_per_s'), '{:9.1f}'):>9s} "
                         f"{_f(x.get('x_cnn'), '{:7.2f}'):>7s} {_status(x)}")
    if rep["frame"]:
        lines += ["", (f"NETWORK PER TILED LR FRAME (tile {r.args.tile}, overlap {r.args.overlap}; model = tiles on device, network only; "
                       "e2e = Upscaler.upscale_chw, e2e-u8 = Upscaler on a uint8 frame, transfers included; * = extrapolated)"),
                  f"{'preset':8s} {'model':6s} {'impl':10s} {'amp':5s} {'frame':6s} {'path':6s} {'tiles':>5s} {'batch':>5s} "
                  f"{'ms':>10s} {'fps':>8s} {'x CNN':>7s}"]
        for x in rep["frame"]:
            star = "*" if x.get("extrapolated") else " "
            lines.append(f"{x.get('preset', '?'):8s} {x.get('model', '?'):6s} {x.get('impl', '?'):10s} {x.get('amp', '-'):5s} "
                         f"{x.get('frame', '?'):6s} {x.get('path', '?'):6s} {_f(x.get('tiles'), '{:d}'):>5s} "
                         f"{_f(x.get('batch_used', x.get('batch')), '{:d}'):>5s} {_f(x.get('ms'), '{:10.1f}'):>10s}{star}"
                         f"{_f(x.get('fps'), '{:7.2f}'):>8s} {_f(x.get('x_cnn'), '{:7.2f}'):>7s} {_status(x)}")
    if rep["train"]:
        lines += ["", "TRAINING STEP (fwd+bwd+Adam; bf16 autocast on CUDA)",
                  f"{'preset':8s} {'model':6s} {'impl':10s} {'batch':>5s} {'patch':>5s} {'ms/step':>10s} {'10K it min':>10s} "
                  f"{'peak GiB':>8s} {'x CNN':>7s}"]
        for x in rep["train"]:
            lines.append(f"{x.get('preset', '?'):8s} {x.get('model', '?'):6s} {x.get('impl', '?'):10s} {_f(x.get('batch'), '{:d}'):>5s} "
                         f"{_f(x.get('patch'), '{:d}'):>5s} {_f(x.get('ms'), '{:10.1f}'):>10s} {_f(x.get('minutes_10k'), '{:10.1f}'):>10s} "
                         f"{_f(x.get('peak_mem_gib'), '{:8.1f}'):>8s} {_f(x.get('x_cnn'), '{:7.2f}'):>7s} {_status(x)}")
    if rep["upscale"]:
        lines += ["", "CPU UPSCALE END TO END (`mambaesr-edge upscale` work: read, tile, run, blend, write PNG)",
                  f"{'path':26s} {'s':>8s} {'x chunked':>9s}  image / settings"]
        for x in rep["upscale"]:
            lines.append(f"{x.get('path', '?'):26s} {_f(x.get('s'), '{:8.3f}'):>8s} {_f(x.get('ratio_to_chunked'), '{:9.2f}'):>9s}  "
                         f"{x.get('image', '')}; {x.get('settings', x.get('note', ''))} {_status(x)}")
    if rep["goals"]:
        lines += ["", "GOALS (issue 7; x CNN = Mamba time / same-MACs CNN time, same preset, batch/frame and amp; goal <= 1.3)"]
        for name, g in rep["goals"].items():
            extra = {k: v for k, v in g.items() if k not in ("value", "goal", "met", "note", "goal_config")}
            verdict = "n/a (not the goal's configuration)" if g["met"] is None else ("MET" if g["met"] else "NOT MET")
            lines.append(f"{name:28s} {g['value']:10.3f}  goal {g['goal']:8s} {verdict:10s} {extra}")
    lines.append("=" * 110)
    print("\n".join(lines), flush=True)


# ----------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if args.matmul_tf32:
            torch.backends.cuda.matmul.allow_tf32 = True

    def stop(signum, _frame):
        raise Interrupted(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    r = Runner(args, device)
    try:
        run_all(r)
    except Interrupted as exc:
        r.report["interrupted"] = str(exc)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            summarise(r)
        except Exception as exc:  # noqa: BLE001 - recorded in the report, the run goes on
            r.report["summary_error"] = f"{type(exc).__name__}: {exc}"
        r.save()
        print_table(r)
        if args.json:
            print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
