"""The quality / latency frontier of the models by name (issue 15): one row per shipped model (models.py), plus the
released DVMSR weights and bicubic as reference rows. Writes the JSON `mambaesr-edge models` reads and a PNG of
PSNR against the modelled Orin Nano latency, with the command, the machine and the date.

    PYTHONPATH=$PWD python3 benchmarks/models.py                           # every column this machine can measure
    PYTHONPATH=$PWD python3 benchmarks/models.py --datasets Set5 --rows dvmsr-g1 --no-export --json /tmp/f.json
    PYTHONPATH=$PWD python3 benchmarks/models.py --gpu-only --json $OUT/models_gpu.json      # on the GPU machine
    PYTHONPATH=$PWD python3 benchmarks/models.py --gpu-from benchmarks/models_gpu_h200.json  # here: all columns

Columns, each measured by this project's own code:
- params: count_parameters of the loaded network;
- Set5 / Set14 / BSD100 Y-PSNR and SSIM (x4, border 4, MATLAB conventions): evaluate_upscaler on an Upscaler over
  the backend `mambaesr-edge eval` opens (torch, whole image; the in-place chunked scan on the CPU), data from
  $MAMBAESR_SHARED or ../shared; bicubic: the MATLAB-exact bicubic of the same LR files;
- fp16 ONNX drop and the modelled Orin Nano ms per 64x64 tile of the pure-op and the scan-plugin graph: what
  `mambaesr-edge export --device orin-nano` reports (export_model: parity report, ExportResult.rooflines and
  plugin_rooflines, the roofline cost model: modelled, not measured);
- CPU seconds for 128x128 -> 512x512 (Set5 baby): the whole `mambaesr-edge upscale` process, median of --cpu-rounds,
  as benchmarks/cpu_upscale.py times it (the backend upscale picks: numpy for our .safetensors, torch for a .pth);
- GPU ms per 64x64 tile at batch 16 and per 960x540 uint8 LR frame (fp32, the torch backend with its default scan,
  perf_counter + synchronize, median of 20 after 5 warm-ups; the frame through ``Upscaler(backend)`` with the
  defaults an app gets, its settings recorded beside the figure): only on a CUDA machine,
  else taken from a `--gpu-only` run's JSON given with --gpu-from (its command, device and date go into the
  report), else null with the reason in `null_reasons`.
DVMSR's weights are read from the shared folder at run time, never copied.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MAMBAESR_SHARED", REPO.parent / "shared"))
DVMSR_WEIGHTS = "weights/dvmsr/team07_DVMSR.pth"
BABY = "datasets/benchmark/Set5/LR_bicubic/X4/babyx4.png"
SCALE = 4


def _models(rows: list[str]) -> list[dict]:
    """(name, kind, weights path or None) of each row asked for."""
    from mambaesr_edge.models import MODELS
    from mambaesr_edge.resources import model_weights_path

    out = []
    for name in rows:
        if name == "DVMSR":
            out.append({"name": name, "kind": "reference", "weights": SHARED / DVMSR_WEIGHTS})
        elif name == "bicubic":
            out.append({"name": name, "kind": "reference", "weights": None})
        else:
            out.append({"name": name, "kind": "shipped" if MODELS[name].shipped else "planned", "weights": model_weights_path(name)})
    return out


def evaluate(weights: Path | None, datasets: list[str]) -> dict[str, dict]:
    from mambaesr_edge.evaluate import evaluate_upscaler, open_eval_backend
    from mambaesr_edge.metrics import bicubic_upscale_uint8
    from mambaesr_edge.runtime import Upscaler

    if weights is None:
        upscale = lambda lr: bicubic_upscale_uint8(lr, SCALE)  # noqa: E731
    else:
        backend, _ = open_eval_backend(weights, None)
        upscale = Upscaler(backend, tile=0)
    results = {}
    for name in datasets:
        result = evaluate_upscaler(upscale, SHARED / "datasets" / "benchmark" / name, scale=SCALE)
        results[name] = {"psnr": result.psnr, "ssim": result.ssim, "images": result.images, "seconds": round(result.seconds, 1)}
        print(f"  {name}: {result.psnr:.3f} / {result.ssim:.4f} ({result.seconds:.0f} s)", flush=True)
    return results


def export_columns(weights: Path, workdir: Path) -> dict:
    """fp16 drop and the modelled Orin Nano ms per tile, from the export `mambaesr-edge export --device orin-nano` does."""
    from mambaesr_edge.export.writer import export_model

    result = export_model("orin-nano", weights, out=workdir / "bundle", build_engine=False)
    return {"fp16_onnx_drop_db": result.parity.fp16_drop_db(),
            "orin_nano_ms_per_tile": {"pure_op": result.rooflines["orin-nano"].per_tile_ms,
                                      "plugin": result.plugin_rooflines["orin-nano"].per_tile_ms,
                                      "tile": result.bundle.tile},
            "export_seconds": round(result.seconds, 1)}


def cpu_seconds(weights: Path, rounds: int, workdir: Path) -> dict:
    """The whole `mambaesr-edge upscale` process on Set5 baby (128x128 -> 512x512), median of `rounds`."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mambaesr_edge", "-q", "upscale", str(SHARED / BABY), "-o", str(workdir / "baby.png"),
                        "--overwrite", "--model", str(weights)], check=True, env=env, capture_output=True)
        times.append(time.perf_counter() - start)
    return {"cpu_seconds_128": statistics.median(times), "cpu_seconds_128_runs": [round(t, 3) for t in times]}


def gpu_columns(weights: Path) -> dict:
    """GPU ms per 64x64 tile batch 16 (network only) and per 960x540 uint8 LR frame through the Upscaler with the
    defaults an app gets (fp32, torch backend, its default scan; settings recorded); measured on CUDA only."""
    import torch

    if not torch.cuda.is_available():
        return {}
    from mambaesr_edge.runtime import Upscaler
    from mambaesr_edge.runtime.backends import open_backend

    backend = open_backend(weights, "torch", device="cuda")
    tiles = np.random.default_rng(0).random((16, 3, 64, 64), dtype=np.float32)
    frame = np.random.default_rng(1).integers(0, 255, (540, 960, 3), dtype=np.uint8)
    up = Upscaler(backend)

    def timed(fn) -> float:
        for _ in range(5):
            fn()
        backend.synchronize()
        runs = []
        for _ in range(20):
            start = time.perf_counter()
            fn()
            backend.synchronize()
            runs.append((time.perf_counter() - start) * 1000)
        return statistics.median(runs)

    return {"gpu_device": torch.cuda.get_device_name(), "gpu_ms_per_tile_batch16": timed(lambda: backend.run(tiles)),
            "gpu_ms_per_frame_960x540": timed(lambda: up(frame)), "gpu_frame_settings": str(up.settings),
            "gpu_backend": backend.info.detail}


GPU_KEYS = ("gpu_ms_per_tile_batch16", "gpu_ms_per_frame_960x540")


def gpu_only(rows: list[dict], path: Path, command: str) -> None:
    """The GPU columns alone, for --gpu-from on a machine without the GPU (the CPU columns need ../shared); rows
    without a weights file here (bicubic; DVMSR without the shared folder) are left out."""
    import torch

    from mambaesr_edge.machine import utc_now

    if not torch.cuda.is_available():
        raise SystemExit("--gpu-only needs a CUDA GPU")
    measured = {row["name"]: gpu_columns(row["weights"]) for row in rows if row["weights"] is not None and Path(row["weights"]).is_file()}
    report = {"command": command, "date": utc_now(), "device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": measured}
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def measure(row: dict, args: argparse.Namespace, workdir: Path) -> dict:
    from mambaesr_edge.fileio import sha256_file

    weights = row["weights"]
    print(f"{row['name']}: {weights or 'MATLAB-exact bicubic'}", flush=True)
    out = {"name": row["name"], "kind": row["kind"], "weights": _shown(weights), "params": None, "null_reasons": {}}
    if weights is not None:
        from mambaesr_edge.checkpoint import load_model
        from mambaesr_edge.model import count_parameters

        out["weights_sha256"] = sha256_file(weights)
        out["params"] = count_parameters(load_model(weights)[0])
    out["datasets"] = evaluate(weights, args.datasets)
    reasons = out["null_reasons"]
    if weights is None:
        reason = "bicubic is not a network: nothing to export, and no mambaesr-edge command upscales with it"
        for key in ("fp16_onnx_drop_db", "orin_nano_ms_per_tile", "cpu_seconds_128", "gpu_ms_per_tile_batch16", "gpu_ms_per_frame_960x540"):
            out[key], reasons[key] = None, reason
        return out
    if args.export:
        out.update(export_columns(weights, workdir / row["name"]))
    else:
        out["fp16_onnx_drop_db"] = out["orin_nano_ms_per_tile"] = None
        reasons["fp16_onnx_drop_db"] = reasons["orin_nano_ms_per_tile"] = "not run (--no-export)"
    out.update(cpu_seconds(weights, args.cpu_rounds, workdir))
    gpu = gpu_columns(weights) or (args.gpu_report or {}).get("rows", {}).get(row["name"], {})
    if gpu:
        out.update(gpu)
    else:
        for key in GPU_KEYS:
            out[key], reasons[key] = None, "no CUDA GPU on the machine this ran on: run benchmarks/models.py on the GPU machine"
    return out


def _shown(weights: Path | None) -> str | None:
    """The weights path as written into the JSON: relative to the repo or to the shared folder."""
    if weights is None:
        return None
    for root, label in ((REPO, ""), (SHARED, "$MAMBAESR_SHARED/")):
        try:
            return label + str(Path(weights).resolve().relative_to(root.resolve()))
        except ValueError:
            continue
    return str(weights)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    right = 0.0
    for row in report["rows"]:
        ms = (row.get("orin_nano_ms_per_tile") or {}).get("plugin")
        set5 = row["datasets"].get("Set5")
        if set5 is None:
            continue
        if ms is None:  # bicubic: a horizontal reference line
            ax.axhline(set5["psnr"], color="grey", linestyle="--", linewidth=1)
            ax.annotate(f"{row['name']} {set5['psnr']:.2f}", (0, set5["psnr"]), xycoords=("axes fraction", "data"),
                        textcoords="offset points", xytext=(4, 4), fontsize=8, color="grey")
            continue
        params = row["params"] or 0
        ax.scatter(ms, set5["psnr"], s=20 + params / 5000, marker="o" if row["kind"] == "shipped" else "s")
        ax.annotate(f"{row['name']} ({params / 1000:.0f}K)", (ms, set5["psnr"]), textcoords="offset points", xytext=(6, -3), fontsize=8)
        right = max(right, ms)
    ax.set_xlabel("modelled Orin Nano ms per 64x64 tile (scan-plugin graph, fp16, roofline)")
    ax.set_ylabel("Set5 x4 Y-PSNR (dB)")
    ax.set_title(f"models: quality vs modelled edge latency ({report['date'][:10]})", fontsize=10)
    ax.set_xlim(0, right * 1.35 if right else 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    from mambaesr_edge.machine import load_average, machine_info, package_versions, utc_now
    from mambaesr_edge.models import shipped_names
    from mambaesr_edge.resources import frontier_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=[*shipped_names(), "DVMSR", "bicubic"], help="model names, DVMSR, bicubic")
    parser.add_argument("--datasets", nargs="+", default=["Set5", "Set14", "BSD100"])
    parser.add_argument("--no-export", dest="export", action="store_false", help="skip the export columns (fp16 drop, Orin Nano ms)")
    parser.add_argument("--cpu-rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=frontier_path())
    parser.add_argument("--png", type=Path, default=REPO / "benchmarks" / "models_frontier.png")
    parser.add_argument("--replot", action="store_true", help="only draw the PNG from the --json file (no measurement)")
    parser.add_argument("--gpu-only", action="store_true", help="measure the GPU columns alone, write them to --json")
    parser.add_argument("--gpu-from", type=Path, help="a --gpu-only run's JSON: the GPU columns of a machine without CUDA")
    args = parser.parse_args()
    args.gpu_report = json.loads(args.gpu_from.read_text()) if args.gpu_from else None
    if args.replot:
        plot(json.loads(args.json.read_text()), args.png)
        print(f"wrote {args.png}")
        return
    command = "PYTHONPATH=$PWD python3 benchmarks/models.py " + " ".join(sys.argv[1:])
    if args.gpu_only:
        gpu_only(_models(args.rows), args.json, command.strip())
        return
    started, load_before = utc_now(), load_average()
    machine = machine_info()
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU: {machine.get('cpu')} ({os.cpu_count()} cores)"
    with tempfile.TemporaryDirectory(prefix="mambaesr-models-") as work:
        rows = [measure(row, args, Path(work)) for row in _models(args.rows)]
    report = {
        "what": "quality / latency frontier of the models by name (issue 15); `mambaesr-edge models` prints it",
        "command": command.strip(), "date": started, "finished": utc_now(), "device": device, "machine": machine,
        "load_average": {"before": load_before, "after": load_average()}, "versions": package_versions(),
        "datasets": args.datasets, "scale": SCALE,
        "gpu_columns": ({k: args.gpu_report[k] for k in ("command", "date", "device")} | {"file": str(args.gpu_from)}
                        if args.gpu_report else None),
        "notes": ["Orin Nano ms: the roofline cost model of the exported graphs (cost.json), not a measurement on a Jetson",
                  "CPU seconds: the whole upscale process on a shared machine; compare rows of one run, not across machines"],
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.png)
    print(f"wrote {args.json} and {args.png}")


if __name__ == "__main__":
    main()
