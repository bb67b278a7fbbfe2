"""Time one training step (forward + backward + Adam, batch B of PxP LR patches) per preset, scan impl and compile.

Usage: python benchmarks/train_step.py [--presets student dvmsr] [--batch 32] [--patch 64] [--compile] [--json OUT]
Prints a table; writes JSON with the device, torch version and command.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch
import torch.nn.functional as F

from mambaesr_edge.model import MambaSR, count_parameters
from mambaesr_edge.presets import get_preset


def time_step(preset: str, batch: int, patch: int, scan: str, compiled: bool, device: torch.device, steps: int) -> dict:
    model = MambaSR(get_preset(preset), scan_impl=scan).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    fwd = torch.compile(model) if compiled else model
    lr = torch.rand(batch, 3, patch, patch, device=device)
    hr = torch.rand(batch, 3, 4 * patch, 4 * patch, device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with amp:
            loss = F.l1_loss(fwd(lr).float(), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    start = time.perf_counter()
    step()  # compile / warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warm = time.perf_counter() - start
    step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "preset": preset, "params": count_parameters(model), "batch": batch, "patch": patch, "scan": scan,
        "compile": compiled, "step_ms_median": 1e3 * times[len(times) // 2], "first_step_s": warm,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["student"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--scans", nargs="+", default=["chunked"])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for preset in args.presets:
        for scan in args.scans:
            for compiled in ([False, True] if args.compile else [False]):
                rows.append(time_step(preset, args.batch, args.patch, scan, compiled, device, args.steps))
                r = rows[-1]
                print(f"{preset:8s} {scan:9s} compile={compiled!s:5s} step {r['step_ms_median']:8.1f} ms  "
                      f"first {r['first_step_s']:6.1f} s  peak {r['peak_mem_gib'] or 0:.1f} GiB", flush=True)
    report = {
        "command": " ".join([sys.executable, *sys.argv]),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "results": rows,
    }
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
