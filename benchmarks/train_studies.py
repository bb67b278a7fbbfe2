"""The seed paper's two studies at small scale, as a table: dt rank 2 vs 30, and the distillation weight alpha.

Reads the run folders that tools/gpu_studies.sh made on the GPU machine (config.json, metrics.jsonl, eval.json)
and prints one row per run: network, parameters, steps, Set5 PSNR/SSIM of the EMA weights, median step time,
mean GPU power and energy from NVML (the GPU's, so only runs that had the GPU alone: the dt-rank runs).

Usage: python benchmarks/train_studies.py benchmarks/train_runs/studies --json benchmarks/train_studies.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from itertools import pairwise
from pathlib import Path


def summarise(run: Path) -> dict:
    config = json.loads((run / "config.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    final = json.loads((run / "eval.json").read_text())["datasets"]["Set5"]
    steps = [(b["step"] - a["step"], b["elapsed_s"] - a["elapsed_s"]) for a, b in pairwise(rows) if b["step"] > a["step"]]
    powers = [r["gpu_power_w"] for r in rows if r.get("gpu_power_w") is not None]
    train = config["train"]
    return {
        "run": run.name,
        "init": Path(train["init_weights"]).name if train.get("init_weights") else f"{train['preset']} (random)",
        "dt_rank": config["model"]["dt_rank"],
        "alpha": train["alpha"] if train.get("teacher") else None,
        "params": config["params"],
        "steps": rows[-1]["step"],
        "set5_psnr": final["psnr"],
        "set5_ssim": final["ssim"],
        "val_curve": [(r["step"], r["val_psnr"]) for r in rows if "val_psnr" in r],
        "step_ms_median": 1e3 * statistics.median(dt / n for n, dt in steps) if steps else None,
        "gpu_power_w_mean": statistics.fmean(powers) if powers else None,
        "gpu_energy_kj": rows[-1].get("gpu_energy_kj"),
        "device": config.get("device"),
        "git": config.get("git"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, help="folder holding the run folders")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = [summarise(run) for run in sorted(args.runs.iterdir()) if (run / "eval.json").is_file()]
    header = (f"{'run':12s} {'init':22s} {'dt rank':>7s} {'alpha':>5s} {'params':>8s} {'steps':>5s} {'Set5 PSNR':>9s} {'SSIM':>6s} "
              f"{'ms/step':>7s} {'W':>5s} {'kJ':>6s}")
    print(header)
    for r in results:
        alpha = "-" if r["alpha"] is None else f"{r['alpha']:.1f}"
        print(f"{r['run']:12s} {r['init']:22s} {r['dt_rank']:7d} {alpha:>5s} {r['params']:8,d} {r['steps']:5d} {r['set5_psnr']:9.3f} "
              f"{r['set5_ssim']:6.4f} {r['step_ms_median'] or float('nan'):7.1f} {r['gpu_power_w_mean'] or float('nan'):5.0f} "
              f"{r['gpu_energy_kj'] or float('nan'):6.1f}")
    if args.json:
        args.json.write_text(json.dumps({"command": f"python benchmarks/train_studies.py {args.runs} --json {args.json}",
                                         "made_by": "tools/gpu_studies.sh 1500 600 on the device machine", "runs": results}, indent=1))


if __name__ == "__main__":
    main()
