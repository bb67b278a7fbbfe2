"""Export the released DVMSR weights to ONNX and evaluate them through ONNX Runtime (fp32 and fp16) on Set5.

    python benchmarks/eval_onnx_dvmsr.py                    # dynamic H/W export, whole-image eval (writes the JSON below)
    python benchmarks/eval_onnx_dvmsr.py --static           # static 64x64 tile export, tiled eval (overlap 16)
    python benchmarks/eval_onnx_dvmsr.py --torch-reference  # also the PyTorch eval of the same weights, for comparison

Issue 4's acceptance: Set5 Y-PSNR 32.18 +/- 0.01 dB through ONNX Runtime (fp32 graph), >= 32.16 dB for the fp16 graph
(weights/activations fp16, scan fp32). Runs the user-facing commands (`mambaesr-edge export`, `mambaesr-edge eval`)
as subprocesses and writes benchmarks/eval_onnx_dvmsr.json with the commands, the machine, the date and the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from mambaesr_edge.machine import cpu_model

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MAMBAESR_SHARED", REPO.parent / "shared"))
TARGET_FP32, TOLERANCE, FLOOR_FP16 = 32.18, 0.01, 32.16


def machine() -> dict[str, object]:
    return {"uname": " ".join(platform.uname()), "cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version()}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("mambaesr-edge", "torch", "onnx", "onnxruntime", "onnxslim", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def cli(*args: object) -> tuple[str, float]:
    """Run `mambaesr-edge ARGS` (as `python -m mambaesr_edge`); returns (the command as a user types it, seconds)."""
    argv = [str(a) for a in args]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "mambaesr_edge", *argv], check=False, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    sys.stdout.write(result.stdout[-4000:])
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-4000:])
        raise SystemExit(f"mambaesr-edge {argv[0]} failed with exit code {result.returncode}")
    return "mambaesr-edge " + shlex.join(argv), round(seconds, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=SHARED / "weights" / "dvmsr" / "team07_DVMSR.pth")
    parser.add_argument("--dataset", type=Path, default=SHARED / "datasets" / "benchmark" / "Set5")
    parser.add_argument("--device", default="x86-cpu", help="device profile of the export (ONNX Runtime CPU)")
    parser.add_argument("--static", action="store_true", help="static 64x64 tile export + tiled eval instead of dynamic H/W")
    parser.add_argument("--overlap", type=int, default=16, help="tile overlap of the --static eval (LR pixels)")
    parser.add_argument("--torch-reference", action="store_true", help="also evaluate the weights in PyTorch")
    parser.add_argument("--keep", type=Path, default=None, help="keep the bundle in this folder (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "eval_onnx_dvmsr.json")
    args = parser.parse_args()
    for path in (args.weights, args.dataset):
        if not path.exists():
            parser.error(f"{path} not found (set MAMBAESR_SHARED or pass --weights/--dataset)")

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="eval_onnx_dvmsr.") as tmp:
        work = Path(tmp)
        bundle = args.keep or work / "bundle"
        shape = ["--tile", 64] if args.static else ["--tile", 64, "--dynamic", "--max-size", 128]  # Set5 LR: at most 128x128
        export_cmd, export_s = cli(
            "export", "--device", args.device, "--preset", "dvmsr", "--weights", args.weights, *shape, "--fp16", "--out", bundle, "--force"
        )
        manifest = json.loads((bundle / "bundle.json").read_text())
        parity = json.loads((bundle / "parity.json").read_text())
        tiling = ["--tile", 64, "--overlap", args.overlap] if args.static else ["--tile", 0]
        evals = {}
        runs = [("onnxruntime_fp32", ["--model", bundle, "--backend", "onnxruntime", "--fp32"]),
                ("onnxruntime_fp16", ["--model", bundle, "--backend", "onnxruntime", "--fp16"])]  # fmt: skip
        if args.torch_reference:
            runs.append(("torch_fp32", ["--weights", args.weights, "--preset", "dvmsr", "--scan", "chunked"]))
        for name, model_args in runs:
            report_path = work / f"{name}.json"
            command, seconds = cli("eval", *model_args, "--dataset", args.dataset, *tiling, "--json", report_path)
            report = json.loads(report_path.read_text())
            result = next(iter(report["datasets"].values()))
            evals[name] = {
                "command": command,
                "seconds": seconds,
                "psnr_y": round(result["psnr"], 4),
                "ssim_y": round(result["ssim"], 5),
                "per_image_psnr_y": {k: round(v["psnr"], 4) for k, v in result["per_image"].items()},
                **{k: report[k] for k in ("backend", "precision", "tile", "overlap", "weights_sha256")},
            }
    fp32, fp16 = evals["onnxruntime_fp32"]["psnr_y"], evals["onnxruntime_fp16"]["psnr_y"]
    record = {
        "script": "python " + shlex.join([str(Path(sys.argv[0]).resolve().relative_to(REPO))] + sys.argv[1:]),
        "date": started,
        "machine": machine(),
        "load_average_1_5_15": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "versions": versions(),
        "dataset": args.dataset.name,
        "weights": args.weights.name,
        "export": {
            "command": export_cmd,
            "seconds": export_s,
            "dynamic_hw": manifest["dynamic_hw"],
            "max_tokens": manifest.get("max_tokens"),
            "tile": manifest["tile"],
            "onnx_nodes": {"fp32": manifest["onnx"]["nodes"], "fp16": (manifest.get("onnx_fp16") or {}).get("nodes")},
            "parity_passed": parity["passed"],
            "fp16_psnr_drop_vs_hr_db": parity.get("fp16_psnr_drop_vs_hr_db"),
        },
        "eval": evals,
        "tiling_note": (
            f"static {manifest['tile']}x{manifest['tile']} graph: tiled eval, overlap {args.overlap}" if not manifest["dynamic_hw"] else
            f"--tile 0 asks for whole images; the dynamic graph takes at most {manifest.get('max_tokens')} tokens, so the Upscaler "
            f"caps tiles at {int((manifest.get('max_tokens') or 0) ** 0.5)} (the 'tile' reported): every Set5 LR image "
            "(at most 128x128) still runs whole, in one piece"
        ),
        "acceptance": {
            "fp32_target_db": f"{TARGET_FP32} +/- {TOLERANCE}",
            "fp32_ok": abs(fp32 - TARGET_FP32) <= TOLERANCE + 1e-9,
            "fp16_floor_db": FLOOR_FP16,
            "fp16_ok": fp16 >= FLOOR_FP16,
        },
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"Set5 Y-PSNR through ONNX Runtime: fp32 {fp32:.4f} dB, fp16 {fp16:.4f} dB -> {args.out}")
    return 0 if record["acceptance"]["fp32_ok"] and record["acceptance"]["fp16_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
