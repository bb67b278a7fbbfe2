"""Export the released DVMSR weights for a device profile and record parity + cost model numbers.

    python benchmarks/export_parity.py                       # ../shared/weights/dvmsr/team07_DVMSR.pth, orin-nano, tile 64
    python benchmarks/export_parity.py --out benchmarks/export_dvmsr_cpu.json

Runs the same export as `mambaesr-edge export --device orin-nano --preset dvmsr --weights ... --tile 64` into a
temporary folder, then times ONNX Runtime CPU on the exported fp32 and fp16 graphs, prints a table and writes JSON
with the command, the machine (uname -a, CPU) and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from mambaesr_edge.machine import cpu_model

REPO = Path(__file__).resolve().parents[1]


def machine() -> dict[str, object]:
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {"uname": " ".join(platform.uname()), "cpu": cpu_model(), "cpus": os.cpu_count(), "load_average_1_5_15": load}


def ort_latency_ms(path: Path, shape: tuple[int, ...], runs: int) -> dict[str, float]:
    import numpy as np

    from mambaesr_edge.export.parity import ort_session

    session = ort_session(path)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    session.run(None, {"lr": x})  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"lr": x})
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=REPO.parent / "shared" / "weights" / "dvmsr" / "team07_DVMSR.pth")
    parser.add_argument("--preset", default="dvmsr")
    parser.add_argument("--device", default="orin-nano")
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5, help="ONNX Runtime timing runs per graph")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "export_dvmsr_cpu.json")
    args = parser.parse_args()

    import torch

    from mambaesr_edge.checkpoint import load_model
    from mambaesr_edge.export.bundle import ExportOptions, export_bundle
    from mambaesr_edge.fileio import atomic_write
    from mambaesr_edge.profiles import load_profile

    if not args.weights.is_file():
        print(f"weights not found: {args.weights} (set --weights)", file=sys.stderr)
        return 2
    profile = load_profile(args.device)
    model, loaded = load_model(args.weights, args.preset, scan_impl="chunked")
    machine_at_start = machine()  # the load average says whether other work shared the CPU during the timings
    with tempfile.TemporaryDirectory() as tmp:
        result = export_bundle(model, loaded.sha256, Path(tmp) / "bundle", ExportOptions(profile=profile, tile=args.tile))
        bundle = result.bundle_dir
        shape = (result.manifest["batch"], 3, args.tile, args.tile)
        latency = {"fp32": ort_latency_ms(bundle / "model.onnx", shape, args.runs)}
        if (bundle / "model_fp16.onnx").is_file():
            latency["fp16"] = ort_latency_ms(bundle / "model_fp16.onnx", shape, args.runs)
        with torch.no_grad():
            x = torch.rand(shape)
            start = time.perf_counter()
            model(x, scan_impl="chunked")
            torch_ms = (time.perf_counter() - start) * 1e3
        cost = json.loads((bundle / "cost.json").read_text())
        parity = json.loads((bundle / "parity.json").read_text())
        report = {
            "command": shlex.join([sys.executable, *sys.argv]),
            "equivalent_cli": f"mambaesr-edge export --device {args.device} --preset {args.preset} --weights {args.weights} --tile {args.tile}",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_at_start,
            "load_average_at_end": machine()["load_average_1_5_15"],
            "torch_threads": torch.get_num_threads(),
            "weights": str(args.weights.name),
            "weights_sha256": loaded.sha256,
            "profile": profile.name,
            "export_seconds": round(result.seconds, 1),
            "onnx": result.manifest["onnx"],
            "onnx_fp16": result.manifest["onnx_fp16"],
            "parity": parity,
            "cost": cost,
            "onnxruntime_cpu_latency": latency,
            "torch_cpu_chunked_ms": torch_ms,
            "tensorrt": result.tensorrt_status,
            "versions": result.manifest["versions"],
        }
    with atomic_write(args.out) as tmp_path:
        tmp_path.write_text(json.dumps(report, indent=2) + "\n")

    print(f"DVMSR export for {profile.name}, tile {args.tile}: {result.seconds:.1f} s, parity {'PASS' if parity['passed'] else 'FAIL'}")
    print(f"{'graph':6} {'input':8} {'max abs err':>12} {'PSNR dB':>9} {'vs HR dB':>9}")
    for case in parity["cases"]:
        psnr = "inf" if case["psnr_db"] is None else f"{case['psnr_db']:.2f}"
        vs_hr = "-" if case["psnr_vs_hr_db"] is None else f"{case['psnr_vs_hr_db']:.3f}"
        print(f"{case['variant']:6} {case['name']:8} {case['max_abs']:12.3e} {psnr:>9} {vs_hr:>9}")
    c = cost["cost"]
    print(f"fp16 PSNR drop vs HR: {parity['fp16_psnr_drop_vs_hr_db']}")
    print(
        f"cost ({cost['graph']}): {c['node_count']} nodes, {c['gflops']:.3f} GFLOP, intermediates {c['intermediate_mb']:.1f} MB, "
        f"largest {c['largest_tensor']['mb']:.1f} MB {c['largest_tensor']['shape']}"
    )
    for name, r in cost["roofline"].items():
        print(f"  modelled {name:12} {r['per_tile_ms']:8.3f} ms/tile ({r['bound']}-bound)")
    for name, lat in latency.items():
        print(f"ONNX Runtime CPU {name}: median {lat['median_ms']:.1f} ms per batch of {shape[0]}")
    print(f"wrote {args.out}")
    return 0 if parity["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
