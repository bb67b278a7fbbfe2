"""The native CUDA scan (csrc/, `impl="cuda"`) against the Triton and chunked scans on one GPU.

1. Copy bandwidth: a large device-to-device copy (bytes read + written), the ceiling for the kernel.
2. Kernel: the default model's scan shapes (d_inner 120, N 16, L = 64x64 tokens) in the model's memory layouts, batch
   1 and 32, fp32 and fp16 activations: median ms and GB/s on minimal bytes (u, delta, z, B, C read once, y written
   once; A, D, bias) for cuda, triton (one fused kernel) and chunked (pure PyTorch); for cuda and triton also the host
   time to issue one call (at batch 1 it exceeds the kernel's, so a do_bench time there is the host's).
3. Network: the default model (torch autocast for fp16, as the torch backend) per 64x64 tile at batch 1 and 32, and per
   540p / 1080p LR frame cut into 64x64 tiles with 8 px overlap (170 / 700 tiles, batches of 128), per scan impl;
   cuda and triton in alternating rounds (median of ROUNDS).

Prints a table; writes JSON with the command, device and date (--json).
Usage: python benchmarks/scan_native.py --json benchmarks/scan_native_h100.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from datetime import datetime, timezone

import torch
from triton.testing import do_bench

from mambaesr_edge.checkpoint import load_model
from mambaesr_edge.scan import selective_scan

IMPLS = ("cuda", "triton", "chunked")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def copy_bandwidth_gbs() -> float:
    src = torch.empty(2**30 // 4, device="cuda", dtype=torch.float32).uniform_()  # 1 GiB
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * 4 / ms / 1e6


def scan_inputs(batch: int, dim: int, length: int, n_state: int, dtype: torch.dtype, rank: int = 4) -> dict:
    """Random inputs in the mixer's layouts: u (batch, dim, L), delta/z (batch, L, dim), B/C slices of (batch, L, R+2N)."""
    g = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, device="cuda", generator=g)

    x_dbl = rand(batch, length, rank + 2 * n_state).to(dtype)
    return {
        "u": rand(batch, dim, length).to(dtype),
        "delta": rand(batch, length, dim).to(dtype).transpose(1, 2),
        "A": -torch.exp(rand(dim, n_state)),
        "B": x_dbl[..., rank : rank + n_state].transpose(1, 2),
        "C": x_dbl[..., rank + n_state :].transpose(1, 2),
        "D": rand(dim),
        "z": rand(batch, length, dim).to(dtype).transpose(1, 2),
        "delta_bias": rand(dim) - 4.0,
        "delta_softplus": True,
    }


def minimal_bytes(batch: int, dim: int, length: int, n_state: int, dtype: torch.dtype) -> int:
    elt = torch.finfo(dtype).bits // 8
    return (4 * batch * dim * length + 2 * batch * n_state * length) * elt + (dim * n_state + 2 * dim) * 4


def host_us_per_call(fn, calls: int = 300) -> float:
    """Host time to issue one call (no synchronisation among `calls` back-to-back calls; at most a few hundred
    launches stay queued, so the GPU does not hold the host back): the floor under a host-bound caller."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return 1e6 * elapsed / calls


def bench_kernels(rows: list, dim: int = 120, n_state: int = 16, length: int = 4096) -> None:
    for dtype_name, dtype in DTYPES.items():
        for batch in (1, 32):
            inputs = scan_inputs(batch, dim, length, n_state, dtype)
            nbytes = minimal_bytes(batch, dim, length, n_state, dtype)
            with torch.no_grad():
                ref = selective_scan(**inputs, impl="triton").float()
                for impl in IMPLS:
                    out = selective_scan(**inputs, impl=impl).float()
                    err = ((out - ref).norm() / ref.norm()).item()
                    def call(impl=impl, inputs=inputs):
                        return selective_scan(**inputs, impl=impl)

                    ms = do_bench(call, warmup=25, rep=200, return_mode="median")
                    host_us = host_us_per_call(call) if impl != "chunked" else None  # chunked queues dozens of kernels a call
                    rows.append({"part": "kernel", "impl": impl, "dtype": dtype_name, "batch": batch, "dim": dim, "n_state": n_state,
                                 "length": length, "ms": ms, "gbs": nbytes / ms / 1e6, "minimal_bytes": nbytes, "rel_err_vs_triton": err,
                                 "host_us_per_call": host_us})
            del inputs
            torch.cuda.empty_cache()


def frame_tiles(width: int, height: int, tile: int = 64, overlap: int = 8) -> int:
    stride = tile - overlap
    return math.ceil((width - overlap) / stride) * math.ceil((height - overlap) / stride)


ROUNDS = 4  # cuda and triton alternate within each round, first one then the other: host speed drifts between calls


def bench_network(rows: list) -> None:
    """Per configuration, cuda and triton are timed in ROUNDS alternating rounds and each row keeps the median and every
    round (at batch 1 the network is host-bound, so the two differ by their host work per scan call, and host speed
    drifts from minute to minute on a shared machine); chunked is timed once."""
    model, _ = load_model(scan_impl="chunked")
    model = model.cuda().eval()
    for dtype_name in DTYPES:
        for label, tiles, batch in (("tile", 1, 1), ("tile", 32, 32), ("540p", frame_tiles(960, 540), 128),
                                    ("1080p", frame_tiles(1920, 1080), 128)):
            x = torch.rand(batch, 3, 64, 64, device="cuda")
            batches = [min(batch, tiles - start) for start in range(0, tiles, batch)]

            def run(impl, x=x, batches=batches, fp16=dtype_name == "fp16"):
                autocast = torch.autocast("cuda", dtype=torch.float16) if fp16 else contextlib.nullcontext()
                with torch.inference_mode(), autocast:
                    for n in batches:
                        model(x[:n], scan_impl=impl)

            impls = [impl for impl in IMPLS if not (impl == "chunked" and label == "1080p")]  # ~0.6 s, ~30 GiB a frame
            rounds: dict[str, list[float]] = {impl: [] for impl in impls}
            peaks: dict[str, float] = {}
            for r in range(ROUNDS):
                order = [i for i in impls if i != "chunked"]
                order = order if r % 2 == 0 else order[::-1]
                for impl in order + (["chunked"] if r == 0 and "chunked" in impls else []):
                    torch.cuda.reset_peak_memory_stats()
                    rounds[impl].append(do_bench(lambda impl=impl: run(impl), warmup=3 if label != "tile" else 10,
                                                 rep=300 if label == "tile" else 1000, return_mode="median"))
                    peaks[impl] = torch.cuda.max_memory_allocated() / 2**30
            for impl in impls:
                ms = statistics.median(rounds[impl])
                rows.append({"part": "network", "impl": impl, "dtype": dtype_name, "what": label, "tiles": tiles, "batch": batch,
                             "ms": ms, "ms_per_tile": ms / tiles, "rounds_ms": rounds[impl], "peak_gib": peaks[impl]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows: list = []
    copy = copy_bandwidth_gbs()
    bench_kernels(rows)
    bench_network(rows)
    print(f"device copy bandwidth (read + write): {copy:.0f} GB/s")
    for r in rows:
        if r["part"] == "kernel":
            print(f"kernel  {r['impl']:8s} {r['dtype']} batch {r['batch']:3d}: {r['ms']:8.4f} ms  {r['gbs']:7.1f} GB/s "
                  f"({100 * r['gbs'] / copy:5.1f}% of copy)  rel.err vs triton {r['rel_err_vs_triton']:.1e}"
                  + (f"  host {r['host_us_per_call']:.1f} us/call" if r["host_us_per_call"] is not None else ""))
        else:
            print(f"network {r['impl']:8s} {r['dtype']} {r['what']:5s} x{r['tiles']:3d} (batch {r['batch']:3d}): {r['ms']:9.3f} ms "
                  f"= {r['ms_per_tile']:.4f} ms/tile, peak {r['peak_gib']:.2f} GiB")
    if args.json:
        report = {
            "command": "python " + " ".join(sys.argv),
            "device": torch.cuda.get_device_name(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "copy_bandwidth_gbs": copy,
            "rows": rows,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
