"""Where a batch of tiles spends its GPU time: torch.profiler over the network forward, top CUDA kernels.

Usage (on a CUDA machine): python tools/profile_gpu.py --preset dvmsr-g1 --batch 128 --tile 64 [--amp fp16] [--json out.json]
Random weights (timing does not depend on them); the triton scan; CUDA time per kernel summed over --reps forwards.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.profiler import ProfilerActivity, profile

from mambaesr_edge.model import MambaSR
from mambaesr_edge.presets import get_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="dvmsr-g1")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--amp", choices=["none", "fp16"], default="none")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    model = MambaSR(get_preset(args.preset), scan_impl="triton").cuda().eval()
    x = torch.rand(args.batch, 3, args.tile, args.tile, device="cuda")
    amp = torch.autocast("cuda", dtype=torch.float16, enabled=args.amp == "fp16")
    with torch.inference_mode(), amp:
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.reps):
                model(x)
            torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        cuda_us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if cuda_us > 0:
            rows.append({"name": event.key[:120], "calls": event.count // args.reps, "ms_per_forward": cuda_us / 1e3 / args.reps})
    rows.sort(key=lambda r: -r["ms_per_forward"])
    total = sum(r["ms_per_forward"] for r in rows)
    print(f"{args.preset}, batch {args.batch} x {args.tile}x{args.tile}, amp {args.amp}: {total:.2f} ms of kernels per forward")
    for r in rows[: args.top]:
        print(f"{r['ms_per_forward']:8.3f} ms {100 * r['ms_per_forward'] / total:5.1f}%  x{r['calls']:<4d} {r['name']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": "python tools/profile_gpu.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "json"),
                       "device": torch.cuda.get_device_name(), "torch": torch.__version__, "total_ms": total, "kernels": rows}, f, indent=1)


if __name__ == "__main__":
    main()
