"""`mambaesr-edge upscale` of Set5 baby (128x128 -> 512x512) on the CPU, end to end (issue 7: <= 1.0 s on 2 cores).

Two definitions, both reported:

* process wall: `python3 -m mambaesr_edge upscale IMG -o OUT --overwrite` as a child process, from spawn to exit:
  Python start-up, every import (torch when the path needs it), weight load, upscale, PNG write, interpreter exit.
* in-process: a child process that times each stage itself: imports (torch, then the package), building the
  Upscaler (weights, model), reading the image, inference (tiling included), writing the PNG; "load_to_saved" is
  build + read + infer + save (no imports).

Paths compared, interleaved (round r starts at variant r mod n) and repeated (--rounds):

* default: this tree as a user runs it (the numpy backend on the CPU, no torch import);
* torch: this tree with --backend torch (the chunked scan in place, block by block; the CLI's default
  OMP_WAIT_POLICY=PASSIVE);
* base-chunked: the plain exportable-scan path as it was before (the code of git commit --base with this tree's
  default weights, `git archive` into a temp dir,
  `--scan chunked`, the functional chunked scan in torch: what the base ran by default on the CPU, with the
  OpenMP default wait policy);
* base-chunked[PASSIVE], torch[ACTIVE]: the OpenMP wait policy lever both ways (PASSIVE: idle threads sleep;
  ACTIVE: they spin).

Every child gets the parent's environment minus OMP_WAIT_POLICY / OMP_NUM_THREADS / GOMP_SPINCOUNT /
MKL_NUM_THREADS (unless the variant sets them). Ratios are per round (variant / base-chunked in the same round), then the median. The load
average is recorded before and after every run: on a shared 2-core machine compare ratios, not absolute times.

    PYTHONPATH=$PWD python3 benchmarks/cpu_upscale.py --rounds 5 --json benchmarks/cpu_upscale.json
    PYTHONPATH=$PWD python3 benchmarks/cpu_upscale.py --rounds 1 --quick      # seconds; no base, no breakdown
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mambaesr_edge.machine import cpu_model

REPO = Path(__file__).resolve().parents[1]
BASE_COMMIT = "1f41958"
BABY = "datasets/benchmark/Set5/LR_bicubic/X4/babyx4.png"
GOAL_S = 1.0
CLEAN_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")

# The in-process breakdown, run in a child with PYTHONPATH set to the tree under test. argv: image, output,
# backend ("" = the tree's default), scan impl, whether to import torch first (the torch paths import it anyway).
BREAKDOWN_CODE = r"""
import json, sys, time
t0 = time.perf_counter()
image, output, backend, scan, torch_first = sys.argv[1:6]
timings = {}
if torch_first == "1":
    import torch
    timings["import_torch"] = time.perf_counter() - t0
t1 = time.perf_counter()
from pathlib import Path
import numpy as np
from mambaesr_edge.images import load_image_any, save_image
from mambaesr_edge.runtime.files import UpscaleRequest, build_upscaler
t2 = time.perf_counter()
timings["import_package"] = t2 - t1
up = build_upscaler(UpscaleRequest(input=Path(image), output=Path(output), backend=backend or None, scan_impl=scan, overwrite=True))
t3 = time.perf_counter()
timings["build_upscaler"] = t3 - t2
data, info = load_image_any(Path(image))
lr = np.rint(data * 255.0).astype(np.uint8)
t4 = time.perf_counter()
timings["read_image"] = t4 - t3
sr = up(lr)
t5 = time.perf_counter()
timings["infer"] = t5 - t4
save_image(Path(output), sr)
t6 = time.perf_counter()
timings["save_png"] = t6 - t5
timings["load_to_saved"] = t6 - t2
timings["total_in_process"] = t6 - t0
timings["backend"] = up.backend.name
timings["settings"] = str(up.settings)
print(json.dumps(timings))
"""

# Other levers, in one child process of this tree (--levers): the numpy forward with 1 and 2 scan threads; torch
# eager vs torch.compile (compile time = first call minus an eager call); the exported ONNX graph in ONNX Runtime
# (export and session times, then runs). Interleaved, `reps` each. argv: image, reps, which ("numpy torch compile ort").
LEVERS_CODE = r"""
import json, os, statistics, sys, tempfile, time
import numpy as np
from PIL import Image
image, reps, which = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
x = np.asarray(Image.open(image).convert("RGB"), dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
out, fns = {}, {}
def timed(fn):
    t = time.perf_counter(); fn(); return time.perf_counter() - t
if "numpy" in which:
    from mambaesr_edge.model_numpy import NumpyMambaSR, read_numpy_weights
    from mambaesr_edge.resources import default_weights_path
    arrays, config = read_numpy_weights(default_weights_path())
    for threads in (1, 2):
        fns[f"numpy threads={threads}"] = (lambda m=NumpyMambaSR(config, arrays, threads=threads): m(x))
if {"torch", "compile", "ort"} & set(which):
    import torch
    from mambaesr_edge.checkpoint import load_model
    model, _ = load_model(None, scan_impl="chunked")
    xt = torch.from_numpy(x)
    def eager():
        with torch.inference_mode():
            return model(xt)
    fns["torch eager (in place)"] = eager
    eager_first = timed(eager)
    if "compile" in which:
        compiled = torch.compile(model)
        def run_compiled():
            with torch.inference_mode():
                return compiled(xt)
        first = timed(run_compiled)
        out["torch.compile first call s"] = round(first, 3)
        out["torch.compile compile s (first - eager)"] = round(first - eager_first, 3)
        fns["torch.compile steady"] = run_compiled
    if "ort" in which:
        import onnxruntime as ort
        from mambaesr_edge.export.onnx import export_onnx
        path = os.path.join(tempfile.mkdtemp(), "m.onnx")
        t = time.perf_counter(); export_onnx(model, path, input_shape=tuple(x.shape)); out["ort export s"] = round(time.perf_counter() - t, 3)
        options = ort.SessionOptions(); options.log_severity_level = 3
        t = time.perf_counter(); session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        out["ort session s"] = round(time.perf_counter() - t, 3)
        fns["onnxruntime (exported chunked graph)"] = lambda: session.run(None, {"lr": x})
for fn in fns.values():
    fn()
times = {k: [] for k in fns}
for r in range(reps):
    for k, fn in fns.items():
        times[k].append(timed(fn))
out["forward_s"] = {k: {"min": round(min(v), 4), "median": round(statistics.median(v), 4)} for k, v in times.items()}
out["load1"] = round(os.getloadavg()[0], 2)
print(json.dumps(out))
"""


def find_image(given: str | None) -> Path:
    if given:
        return Path(given)
    shared = Path(os.environ["MAMBAESR_SHARED"]) if os.environ.get("MAMBAESR_SHARED") else REPO.parent / "shared"
    path = shared / BABY
    if not path.is_file():
        raise SystemExit(f"{path} not found: pass --image or set MAMBAESR_SHARED")
    return path


def checkout_base(commit: str, into: Path) -> Path:
    """The package's code as it was at `commit` (git archive of mambaesr_edge/ into a temp dir) with this tree's
    default weights, so both paths run the same network; returns the dir."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "mambaesr_edge"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    weights = Path("mambaesr_edge") / "assets" / "default_x4.safetensors"
    shutil.copyfile(REPO / weights, into / weights)
    return into


def child_env(tree: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    env["PYTHONPATH"] = str(tree)
    env.update(extra)
    return env


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def run_cli(variant: dict, image: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "mambaesr_edge", "upscale", str(image), "-o", str(out), "--overwrite", *variant["args"]]
    before = load1()
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(variant["tree"], variant["env"]), cwd=variant["tree"])
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{variant['name']}: exit {done.returncode}: {done.stderr.strip()[-400:]}")
    reported = re.search(r"in ([0-9.]+) s", done.stdout.replace("\n", " "))
    cli_reported = float(reported.group(1)) if reported else None
    return {"wall_s": round(wall, 4), "cli_reported_s": cli_reported, "load1_before": before, "load1_after": load1()}


def run_breakdown(tree: Path, image: Path, out: Path, backend: str, scan: str, torch_first: bool, env: dict[str, str]) -> dict:
    cmd = [sys.executable, "-c", BREAKDOWN_CODE, str(image), str(out), backend, scan, "1" if torch_first else "0"]
    before = load1()
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(tree, env), cwd=tree)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"breakdown in {tree}: {done.stderr.strip()[-400:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
    row.update(process_wall_s=round(wall, 4), load1_before=before, load1_after=load1())
    return row


def summary(values: list[float]) -> dict:
    return {"min": round(min(values), 4), "median": round(statistics.median(values), 4), "n": len(values)}


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image", default=None, help="LR image (default: Set5 baby from ../shared or $MAMBAESR_SHARED)")
    parser.add_argument("--base", default=BASE_COMMIT, help="commit whose chunked-scan path is the baseline")
    parser.add_argument("--quick", action="store_true", help="this tree only (default and torch), no breakdown")
    parser.add_argument("--no-omp", action="store_true", help="skip the OMP_WAIT_POLICY variants")
    parser.add_argument("--levers", nargs="*", default=None, choices=["numpy", "torch", "compile", "ort"],
                        help="also time these in-process (forward only): numpy threads, torch eager, torch.compile, ONNX Runtime")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    image = find_image(args.image)
    work = Path(tempfile.mkdtemp(prefix="cpu_upscale_"))
    try:
        variants = [
            {"name": "default", "tree": REPO, "args": [], "env": {}},
            {"name": "torch", "tree": REPO, "args": ["--backend", "torch"], "env": {}},
        ]
        if not args.quick:
            base = checkout_base(args.base, work / "base")
            variants.append({"name": "base-chunked", "tree": base, "args": ["--scan", "chunked"], "env": {}})
            if not args.no_omp:
                variants.append({"name": "base-chunked[PASSIVE]", "tree": base, "args": ["--scan", "chunked"], "env": {"OMP_WAIT_POLICY": "PASSIVE"}})
                variants.append({"name": "torch[ACTIVE]", "tree": REPO, "args": ["--backend", "torch"], "env": {"OMP_WAIT_POLICY": "ACTIVE"}})
        report: dict = {
            "command": " ".join([sys.executable, *sys.argv]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "load_average_before": [round(x, 2) for x in os.getloadavg()]},
            "versions": {"python": platform.python_version(), "torch": version("torch"), "numpy": version("numpy"),
                         "onnxruntime": version("onnxruntime"), "pillow": version("pillow")},
            "image": str(image),
            "base_commit": args.base,
            "definitions": {
                "process_wall_s": "python3 -m mambaesr_edge upscale IMG -o OUT --overwrite, spawn to exit: includes Python start-up, all imports "
                                  "(torch on the torch paths), weight load, upscale, PNG write and interpreter exit",
                "cli_reported_s": "what the CLI prints ('in X s'): read + upscale + write, after the imports and the model load",
                "load_to_saved_s": "in-process breakdown: build the Upscaler (weights, model) + read + infer + write PNG; no imports",
            },
            "variants": {v["name"]: {"args": v["args"], "env": v["env"], "tree": "base" if v["tree"] != REPO else "this tree", "runs": []}
                         for v in variants},
        }
        names = [v["name"] for v in variants]
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[: r % len(variants)]
            for v in order:
                row = run_cli(v, image, work / f"{v['name'].replace('[', '_').replace(']', '')}.png")
                report["variants"][v["name"]]["runs"].append(row)
                print(f"round {r + 1}  {v['name']:24s} {row['wall_s']:7.3f} s  (cli {row['cli_reported_s']} s, load {row['load1_before']})",
                      flush=True)
        for name in names:
            runs = report["variants"][name]["runs"]
            report["variants"][name]["process_wall_s"] = summary([x["wall_s"] for x in runs])
            reported = [x["cli_reported_s"] for x in runs if x["cli_reported_s"] is not None]
            report["variants"][name]["cli_reported_s"] = summary(reported) if reported else None
        reference = "base-chunked" if "base-chunked" in names else "torch"
        ratios = {}
        for name in names:
            runs, reference_runs = report["variants"][name]["runs"], report["variants"][reference]["runs"]
            per_round = [a["wall_s"] / b["wall_s"] for a, b in zip(runs, reference_runs, strict=True)]
            ratios[f"{name} / {reference}"] = {"median_of_rounds": round(statistics.median(per_round), 3),
                                               "per_round": [round(x, 3) for x in per_round]}
        report["ratios_process_wall"] = ratios
        if not args.quick:
            breakdown = []
            # each as its CLI runs it: this tree's CLI sets OMP_WAIT_POLICY=PASSIVE (cli.run), the base's did not
            cases = [("default", REPO, "", "auto", False, {}), ("torch", REPO, "torch", "auto", True, {"OMP_WAIT_POLICY": "PASSIVE"}),
                     ("base-chunked", work / "base", "", "chunked", True, {})]
            for _ in range(max(1, min(3, args.rounds))):
                for name, tree, backend, scan, torch_first, env in cases:
                    row = run_breakdown(tree, image, work / "breakdown.png", backend, scan, torch_first, env)
                    breakdown.append({"path": name, **row})
            report["breakdown_runs"] = breakdown
            report["breakdown_median"] = {}
            for name, *_ in cases:
                rows = [x for x in breakdown if x["path"] == name]
                keys = [k for k, v in rows[0].items() if isinstance(v, float)]
                report["breakdown_median"][name] = {k: round(statistics.median(x[k] for x in rows), 4) for k in keys}
                report["breakdown_median"][name]["backend"] = rows[0]["backend"]
        if args.levers:
            cmd = [sys.executable, "-c", LEVERS_CODE, str(image), str(max(3, args.rounds)), " ".join(args.levers)]
            done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(REPO, {"OMP_WAIT_POLICY": "PASSIVE"}), cwd=REPO)
            if done.returncode != 0:
                raise RuntimeError(f"levers: {done.stderr.strip()[-600:]}")
            report["levers_in_process"] = json.loads(done.stdout.strip().splitlines()[-1])
            print("levers (forward only, in-process):", json.dumps(report["levers_in_process"], indent=1))
        report["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        default = report["variants"]["default"]
        report["goal"] = {
            "target_s": GOAL_S,
            "process_wall_min_met": default["process_wall_s"]["min"] <= GOAL_S,
            "process_wall_median_met": default["process_wall_s"]["median"] <= GOAL_S,
            "note": "issue 7: `mambaesr-edge upscale` of Set5 baby with the default student <= 1.0 s end to end on 2 cores",
        }
        print_table(report, names, reference)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
            print(f"wrote {args.json}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_table(report: dict, names: list[str], reference: str) -> None:
    m = report["machine"]
    print(f"\ncpu_upscale  {m['cpu']}  nproc {m['nproc']}  load {m['load_average_before']} -> {m['load_average_after']}  {report['date']}")
    print(f"image {report['image']}  torch {report['versions']['torch']}  numpy {report['versions']['numpy']}")
    print(f"{'variant':24s} {'wall min':>9s} {'wall med':>9s} {'cli med':>8s} {'x ' + reference:>18s}")
    for name in names:
        v = report["variants"][name]
        cli = v["cli_reported_s"]["median"] if v["cli_reported_s"] else float("nan")
        ratio = report["ratios_process_wall"][f"{name} / {reference}"]["median_of_rounds"]
        print(f"{name:24s} {v['process_wall_s']['min']:9.3f} {v['process_wall_s']['median']:9.3f} {cli:8.3f} {ratio:18.3f}")
    if "breakdown_median" in report:
        keys = ["import_torch", "import_package", "build_upscaler", "read_image", "infer", "save_png", "load_to_saved", "process_wall_s"]
        print("\nin-process breakdown (median s): " + "  ".join(keys))
        for name, row in report["breakdown_median"].items():
            print(f"{name:14s} ({row['backend']:5s}) " + "  ".join(f"{row.get(k, float('nan')):.3f}" for k in keys))
    g = report["goal"]
    print(f"\ngoal <= {g['target_s']} s process wall (default path): min {'MET' if g['process_wall_min_met'] else 'NOT MET'}, "
          f"median {'MET' if g['process_wall_median_met'] else 'NOT MET'}")


if __name__ == "__main__":
    sys.exit(main())
