"""Triton scan forward on CUDA: the block-scan kernel (scan_triton.py) against the step-by-step kernel it replaced.

The step-by-step kernel (kept here, verbatim in its maths, only for this comparison) walks t = 0..L-1 one step at a
time; the block-scan kernel scans BLOCK_L steps at once with tl.associative_scan. Both run on the same inputs in one
process; the output of each launch shape is checked against the step-by-step kernel. Shapes: the model's layout
(batch, L, dim) in memory, N = 16. Prints a table; writes JSON (--json).

Usage: python benchmarks/scan_triton_kernels.py [--json benchmarks/scan_triton_kernels_h100.json]
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from functools import partial

import torch
import triton
import triton.language as tl

from mambaesr_edge.scan_triton import forward_launch_shape, scan_forward


@triton.jit
def _step_by_step_fwd(
    u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, y_ptr, length, dim, n_state,
    su_b, su_d, su_l, sb_b, sb_n, sb_l, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BD,)
    offs_n = tl.arange(0, BLOCK_N)  # (BN,)
    mask_d, mask_n = offs_d < dim, offs_n < n_state
    a = tl.load(a_ptr + offs_d[:, None] * n_state + offs_n[None, :], mask=mask_d[:, None] & mask_n[None, :], other=0.0)
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # (BD, BN)
    for t in range(length):
        u_t = tl.load(u_ptr + pid_b * su_b + offs_d * su_d + t * su_l, mask=mask_d, other=0.0)  # (BD,)
        dt_t = tl.load(dt_ptr + pid_b * su_b + offs_d * su_d + t * su_l, mask=mask_d, other=0.0)  # (BD,)
        b_t = tl.load(b_ptr + pid_b * sb_b + offs_n * sb_n + t * sb_l, mask=mask_n, other=0.0)  # (BN,)
        c_t = tl.load(c_ptr + pid_b * sb_b + offs_n * sb_n + t * sb_l, mask=mask_n, other=0.0)  # (BN,)
        h = tl.exp(dt_t[:, None] * a) * h + (dt_t * u_t)[:, None] * b_t[None, :]  # (BD, BN)
        tl.store(y_ptr + pid_b * su_b + offs_d * su_d + t * su_l, tl.sum(h * c_t[None, :], axis=1), mask=mask_d)


def step_by_step(u, dt, a, b, c):
    batch, dim, length = u.shape
    n_state = a.shape[1]
    block_d = min(16, triton.next_power_of_2(dim))
    sms = torch.cuda.get_device_properties(u.device).multi_processor_count
    while block_d > 2 and batch * triton.cdiv(dim, block_d) < 4 * sms:
        block_d //= 2
    y = torch.empty_like(u)
    _step_by_step_fwd[(batch, triton.cdiv(dim, block_d))](
        u, dt, a, b, c, y, length, dim, n_state, u.stride(0), u.stride(1), u.stride(2), b.stride(0), b.stride(1), b.stride(2),
        BLOCK_D=block_d, BLOCK_N=triton.next_power_of_2(n_state), num_warps=1 if block_d * 16 <= 128 else 2,
    )
    return y


def inputs(batch: int, dim: int, length: int, n_state: int = 16):
    g = torch.Generator(device="cuda").manual_seed(0)

    def model_layout(*shape):  # (batch, L, dim) in memory, seen as (batch, dim, L)
        return torch.randn(shape[0], shape[2], shape[1], device="cuda", generator=g).transpose(1, 2)

    u = model_layout(batch, dim, length)
    dt = torch.nn.functional.softplus(model_layout(batch, dim, length) - 2)
    a = -torch.exp(torch.randn(dim, n_state, device="cuda", generator=g))
    b, c = model_layout(batch, n_state, length), model_layout(batch, n_state, length)
    assert dt.stride() == u.stride() and c.stride() == b.stride()  # step_by_step reads dt with u's strides, C with B's
    return u, dt, a, b, c


def cuda_ms(fn, reps: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("--shapes", default="1x64x4096,16x64x4096,128x64x4096,32x64x4096,1x120x4096,128x120x4096,1x64x65536")
    args = parser.parse_args()
    rows = []
    for shape in args.shapes.split(","):
        batch, dim, length = map(int, shape.split("x"))
        u, dt, a, b, c = inputs(batch, dim, length)
        old_ms = cuda_ms(partial(step_by_step, u, dt, a, b, c))
        expected = step_by_step(u, dt, a, b, c)
        default = forward_launch_shape(batch, dim, length, u.device)
        launches = sorted({default, *((bl, bd, w) for bl in (32, 64, 128) for bd in (2, 4, 8) for w in (4, 8))})
        for launch in launches:
            y = scan_forward(u, dt, a, b, c, store_h=False, launch=launch)[0]
            error = ((y - expected).norm() / expected.norm()).item()
            ms = cuda_ms(partial(scan_forward, u, dt, a, b, c, store_h=False, launch=launch))
            rows.append({"batch": batch, "dim": dim, "L": length, "block_l": launch[0], "block_d": launch[1], "warps": launch[2],
                         "default": launch == default, "ms": ms, "step_by_step_ms": old_ms, "speedup": old_ms / ms,
                         "rel_error_vs_step_by_step": error})
            flag = "*" if launch == default else " "
            print(f"{batch:4d} x {dim:3d} x {length:6d} {flag} BL {launch[0]:3d} BD {launch[1]} w {launch[2]}: "
                  f"{ms:8.3f} ms  step-by-step {old_ms:8.3f} ms  x{old_ms / ms:6.1f}  err {error:.1e}", flush=True)
    result = {"command": "python benchmarks/scan_triton_kernels.py", "device": torch.cuda.get_device_name(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
              "triton": triton.__version__, "timing": "median of 20 CUDA-event timed launches after one warm-up",
              "note": "* = the launch shape forward_launch_shape picks", "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
