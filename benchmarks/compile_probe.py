"""Does torch.compile close the gap to the same-MACs CNN on CUDA? Network time for the tiles of one 1080p LR frame.

The default network (dvmsr-g1, random weights: timing only), tiles of 64 with overlap 8 already on the GPU in
batches of 128, the Triton scan, fp32: eager against torch.compile (default and max-autotune-no-cudagraphs modes).
Compile time is reported separately. Prints a table; writes JSON (--json).

Usage (CUDA): python benchmarks/compile_probe.py [--json benchmarks/compile_probe_h100.json]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone

import torch

from mambaesr_edge.model import MambaSR
from mambaesr_edge.presets import get_preset
from mambaesr_edge.runtime.tiling import plan_tiles


def frame_ms(model, tiles: torch.Tensor, batch: int, reps: int) -> float:
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            for first in range(0, tiles.shape[0], batch):
                model(tiles[first : first + batch])
        torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - start))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="dvmsr-g1")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    plan = plan_tiles((1080, 1920), 64, 8)
    frame = torch.rand(3, *plan.padded_hw, device="cuda")
    tiles = torch.stack([frame[:, y : y + 64, x : x + 64] for y, x in plan.origins])  # (700, 3, 64, 64)
    tiles = tiles[: (tiles.shape[0] // args.batch) * args.batch]  # whole batches only: one compiled shape
    eager = MambaSR(get_preset(args.preset), scan_impl="triton").cuda().eval()
    rows = []
    variants = [("eager", None), ("compile", "default"), ("compile", "max-autotune-no-cudagraphs")]
    for name, mode in variants:
        model = eager if mode is None else torch.compile(eager, mode=mode, dynamic=False)
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                reference = eager(tiles[: args.batch])
                out = model(tiles[: args.batch])
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - a failed compile is a result to record
            rows.append({"variant": name, "mode": mode, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            print(f"{name:8s} {mode or '':28s} failed: {rows[-1]['error']}", flush=True)
            continue
        first_s = time.perf_counter() - start
        ms = frame_ms(model, tiles, args.batch, args.reps) * plan.num_tiles / tiles.shape[0]
        error = (out - reference).abs().max().item()
        rows.append({"variant": name, "mode": mode, "first_call_s": first_s, "ms_per_1080p_frame": ms, "fps": 1e3 / ms,
                     "max_abs_diff_vs_eager": error})
        print(f"{name:8s} {mode or '':28s} first call {first_s:6.1f} s  {ms:7.1f} ms/frame  {1e3 / ms:6.2f} fps  diff {error:.1e}", flush=True)
    result = {"command": "python benchmarks/compile_probe.py", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "preset": args.preset, "batch": args.batch,
              "frame": "1920x1080 LR, 700 tiles of 64 (overlap 8), network only; timed on the whole batches, scaled to 700", "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
