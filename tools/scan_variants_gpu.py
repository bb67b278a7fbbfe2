"""Check and time every native scan kernel variant (tools/scan_variants.cu) in one process on one GPU.

1. Build tools/scan_variants.cu once for this GPU's arch (native_build's nvcc flags): the shipped kernel
   (csrc/selective_scan.cuh) at several shapes and the token-parallel kernel it replaced (tools/selective_scan_tokens.cuh,
   with its async and pair variants) behind one C function, picked by id; id 0 is the committed launcher
   (`launch_selective_scan`).
2. Correctness, per variant: outputs poisoned with NaN first, then matched against the fp32 `reference` on the GPU
   and the fp64 truth (fp32 rel <= 1e-5, fp16 <= 2e-3) for L = 1, 17, 255, 1000, 4097, 20000 (none a multiple of a
   chunk), delta 1e-4..20, A -1e-3..-100, all 16 flag combinations (D, z, delta_bias, softplus) at L 17 and 1000,
   both memory layouts (contiguous, the model's), dim 20 (not a multiple of a block's channels), split variants with
   their own segment count and with 3 segments. A variant with any failure is reported as failed, never as a winner.
   The checks run in a child process: a variant whose launch crashes it (a poisoned CUDA context) is reported as
   failed, left out, and the others are checked again and timed.
   "diag" variants (a kernel without its global loads, or without its scan steps) are wrong by design: launched in
   the checks (so a crash is caught) but not compared, timed to tell memory latency from arithmetic latency, never
   counted as winners.
3. Timing: the default model's scan (d_inner 120, N 16, L 4096, the model's layouts, every flag it uses) at batch 1,
   8 and 32, fp32 and fp16: CUDA events around each call after a 256 MB L2 flush (as triton's do_bench), median of
   --reps after warm-up ("ms"), and the mean of --reps back-to-back calls ("ms_warm"); split variants also at fixed
   segment counts. Triton (impl="triton") the same way, and the device copy bandwidth (1 GiB device-to-device).
   "pct" = minimal bytes (u, delta, z, B, C read once, y written once) per second as % of the copy bandwidth; the
   issue 14 target is >= 25% at batch 32, and batch 1 at least as fast as triton.

A time guard (--budget-s, default 170 s from the start, the build included) stops measuring and writes what was
measured ("truncated": true).
Usage, from the repo root on the GPU machine: python3 tools/scan_variants_gpu.py --json $OUT/scan_variants.json
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from scan_native import minimal_bytes, scan_inputs  # noqa: E402
from test_csrc import _model_layout, _truth_and_ref  # noqa: E402
from test_scan import make_inputs, rel_error  # noqa: E402

from mambaesr_edge import native_build  # noqa: E402
from mambaesr_edge.scan import selective_scan  # noqa: E402
from mambaesr_edge.scan_cuda import _DTYPES, _ScanParams  # noqa: E402

VARIANTS_SOURCE = ROOT / "tools" / "scan_variants.cu"
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
FLAGS = ("D", "z", "bias", "softplus")
# Every flag combination the model can produce: a delta bias comes with softplus (model.py). Without softplus, a
# bias makes delta negative (make_inputs draws it from N(0, 1)), the state grows as exp(|delta * A|) and the fp64
# truth itself overflows to inf / NaN, so such cases cannot be checked (the first run of this script failed every
# variant, the shipped launcher included, on them alone).
ALL_FLAGS = [flags for flags in (tuple(f for f, on in zip(FLAGS, bits, strict=True) if on) for bits in itertools.product((0, 1), repeat=4))
             if "bias" not in flags or "softplus" in flags]
CASES = [(17, opts) for opts in ALL_FLAGS] + [(1000, opts) for opts in ALL_FLAGS] + [
    (1, FLAGS), (255, ("D",)), (4097, ("z",)), (4097, ("bias", "softplus")), (4097, FLAGS), (20000, FLAGS)]
SHAPE = {"dim": 120, "n_state": 16, "length": 4096}
BATCHES = (1, 8, 16, 32)
FIXED_SEGMENTS = (2, 4, 8, 16, 32)
INVALID_VALUE = 1  # cudaErrorInvalidValue: the variant does not take these inputs (fp16 for async, smem too small)


def splits(variant: dict) -> bool:
    """Whether the variant splits L into segments (scan_variants.cu's split, async, pair and lanes families)."""
    return variant["name"].startswith(("split", "async", "pair", "lanes"))


def diagnostic(variant: dict) -> bool:
    """A diagnostic kernel (wrong results by design: without its loads or its scan steps): timed, never checked or a winner."""
    return variant["name"].startswith("diag")


def build_library(folder: Path) -> Path:
    major, minor = torch.cuda.get_device_capability()
    arch = f"sm_{major}{minor}"
    output = folder / f"libscan_variants_{arch}.so"
    command = native_build.scan_library_command(output, [arch], nvcc=native_build.find_nvcc(), source=VARIANTS_SOURCE)
    return native_build.build(command, output)


def load_library(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.mambaesr_scan_variant_count.restype = ctypes.c_int32
    lib.mambaesr_scan_variant_name.restype = ctypes.c_char_p
    lib.mambaesr_scan_variant_name.argtypes = [ctypes.c_int32]
    lib.mambaesr_scan_variant_workspace_bytes.restype = ctypes.c_int64
    lib.mambaesr_scan_variant_workspace_bytes.argtypes = [ctypes.c_int32] * 4
    lib.mambaesr_scan_variant.restype = ctypes.c_int32
    lib.mambaesr_scan_variant.argtypes = [ctypes.POINTER(_ScanParams), ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32,
                                          ctypes.c_void_p, ctypes.c_int64]
    return lib


class Call:
    """One prepared launch of a variant on fixed inputs: params, y (batch, dim, L) over a (batch, L, dim) buffer as
    scan_cuda lays it out, and the split workspace; calling it only crosses ctypes (no per-call host work)."""

    def __init__(self, lib, inputs: dict):
        u, A = inputs["u"], inputs["A"].float().contiguous()
        D, z, bias = inputs.get("D"), inputs.get("z"), inputs.get("delta_bias")
        D, bias = (t.float().contiguous() if t is not None else None for t in (D, bias))
        batch, dim, length = u.shape
        self.y = torch.empty(batch, length, dim, device=u.device, dtype=u.dtype).transpose(1, 2)
        nbytes = lib.mambaesr_scan_variant_workspace_bytes(batch, dim, length, A.shape[1])
        self.workspace = torch.empty(max(nbytes, 4), device=u.device, dtype=torch.uint8)
        self.keep = (A, D, bias)  # alive as long as the params point at them

        def strides(t):
            return (ctypes.c_int64 * 3)(*(t.stride() if t is not None else (0, 0, 0)))

        self.params = _ScanParams(
            batch=batch, dim=dim, length=length, n_state=A.shape[1], dtype=_DTYPES[u.dtype],
            delta_softplus=int(bool(inputs.get("delta_softplus", False))),
            u=u.data_ptr(), delta=inputs["delta"].data_ptr(), A=A.data_ptr(), B=inputs["B"].data_ptr(),
            C=inputs["C"].data_ptr(), D=D.data_ptr() if D is not None else None, z=z.data_ptr() if z is not None else None,
            delta_bias=bias.data_ptr() if bias is not None else None, y=self.y.data_ptr(),
            u_stride=strides(u), delta_stride=strides(inputs["delta"]), A_stride=(ctypes.c_int64 * 2)(*A.stride()),
            B_stride=strides(inputs["B"]), C_stride=strides(inputs["C"]), z_stride=strides(z), y_stride=strides(self.y))
        self.lib = lib
        self.stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)

    def __call__(self, variant: int, segments: int = 0) -> int:
        return self.lib.mambaesr_scan_variant(ctypes.byref(self.params), self.stream, variant, segments,
                                              ctypes.c_void_p(self.workspace.data_ptr()), self.workspace.numel())


def check_variants(lib, variants: list[dict], deadline: float, progress=None) -> bool:
    """Fills each variant's "failures" / "unsupported"; False when the time guard stopped it. progress(id, label) is
    called before each launch (check_isolated names a variant that crashes the process by it)."""
    for length, options in CASES:
        if time.monotonic() > deadline:
            return False
        inputs = make_inputs(2, 20, length, 16, seed=length * 31 + sum(1 << FLAGS.index(f) for f in options), options=options)
        for dtype in TOLERANCE:
            truth, ref, on_device = _truth_and_ref(inputs, dtype, "cuda")
            for layout_name, layout in (("contiguous", on_device), ("model", _model_layout(on_device))):
                call = Call(lib, layout)
                for v in variants:
                    for segments in (0, 3) if splits(v) else (0,):
                        call.y.fill_(float("nan"))
                        label = f"{dtype} L={length} {'+'.join(options) or 'plain'} {layout_name} segments={segments}"
                        if progress is not None:
                            progress(v["id"], label)
                        code = call(v["id"], segments)
                        if code == INVALID_VALUE:
                            v["unsupported"].add(str(dtype))
                            continue
                        if code != 0:
                            v["failures"].append(f"{label}: launch error {code}")
                            continue
                        torch.cuda.synchronize()  # a launch that faults fails here
                        if diagnostic(v):
                            continue  # wrong by design: launched (so a crash shows up here), not compared
                        err = max(rel_error(call.y, ref), rel_error(call.y.cpu(), truth))
                        if not (err <= TOLERANCE[dtype]) or not torch.isfinite(call.y).all():
                            v["failures"].append(f"{label}: rel err {err:.2e}")
    return True


def check_isolated(library: Path, variants: list[dict], budget_s: float, folder: Path) -> bool:
    """check_variants in a child process, so that a variant whose launch poisons the CUDA context (an illegal address)
    is reported as failed and the others are still checked and timed here; the crashing variant is left out and the
    child rerun. False when the time guard stopped the checks."""
    deadline = time.monotonic() + budget_s
    crashed: set[int] = set()
    result, progress = folder / "checks.json", folder / "checks.progress"
    while True:
        ids = [v["id"] for v in variants if v["id"] not in crashed]
        left = deadline - time.monotonic()
        if not ids:
            return True
        if left <= 0:
            return False
        result.unlink(missing_ok=True)
        progress.write_text("")
        command = [sys.executable, __file__, "--check-child", str(library), "--child-out", str(result),
                   "--variants", ",".join(map(str, ids)), "--budget-s", f"{left:.0f}"]
        done = subprocess.run(command, check=False, timeout=left + 60)
        if done.returncode == 0 and result.is_file():
            report = json.loads(result.read_text())
            for v in variants:
                if str(v["id"]) in report["variants"]:
                    v["failures"] += report["variants"][str(v["id"])]["failures"]
                    v["unsupported"] |= set(report["variants"][str(v["id"])]["unsupported"])
            return report["done"]
        lines = progress.read_text().splitlines()
        if not lines:  # died before any launch: nothing to blame on one variant
            for v in variants:
                if v["id"] in ids:
                    v["failures"].append(f"the check process failed before any launch (exit {done.returncode})")
            return False
        vid, label = lines[-1].split(" ", 1)
        crashed.add(int(vid))
        next(v for v in variants if v["id"] == int(vid))["failures"].append(
            f"{label}: the launch crashed the process (exit {done.returncode}); left out of the rest of the checks")
        print(f"variant {vid} crashed the check process at {label}; checking the others again without it", flush=True)


def check_child(args) -> None:
    """--check-child: check_variants on the given library and variants; results to --child-out (JSON)."""
    lib = load_library(Path(args.check_child))
    wanted = {int(i) for i in args.variants.split(",")}
    variants = [{"id": i, "name": lib.mambaesr_scan_variant_name(i).decode(), "failures": [], "unsupported": set()}
                for i in sorted(wanted)]
    progress_path = Path(args.child_out).with_suffix(".progress")
    with progress_path.open("a") as progress_file:

        def progress(vid: int, label: str) -> None:
            progress_file.write(f"{vid} {label}\n")
            progress_file.flush()

        done = check_variants(lib, variants, time.monotonic() + args.budget_s, progress)
    report = {"done": done, "variants": {str(v["id"]): {"failures": v["failures"], "unsupported": sorted(v["unsupported"])}
                                         for v in variants}}
    Path(args.child_out).write_text(json.dumps(report))


def time_ms(fn, reps: int, flush: torch.Tensor) -> tuple[float, float]:
    """(median ms of single calls after an L2 flush, mean ms of back-to-back calls)."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return statistics.median(times), start.elapsed_time(end) / reps


def copy_bandwidth_gbs(reps: int) -> float:
    src = torch.empty(2**30 // 4, device="cuda", dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    flush = torch.empty(1, device="cuda")
    ms, _ = time_ms(lambda: dst.copy_(src), reps, flush)
    return 2 * src.numel() * 4 / ms / 1e6


def time_variants(lib, variants: list[dict], copy_gbs: float, reps: int, deadline: float, rows: list) -> bool:
    flush = torch.empty(256 * 2**20, device="cuda", dtype=torch.uint8)
    for (dtype_name, dtype), batch in itertools.product(DTYPES.items(), BATCHES):
        finished = time_config(lib, variants, dtype_name, dtype, batch, copy_gbs, reps, deadline, flush, rows)
        torch.cuda.empty_cache()
        if not finished:
            return False
    return True


def time_config(lib, variants, dtype_name, dtype, batch, copy_gbs, reps, deadline, flush, rows) -> bool:
    """Triton and every variant (split ones also at FIXED_SEGMENTS) on the default shape at one dtype and batch."""
    inputs = scan_inputs(batch, SHAPE["dim"], SHAPE["length"], SHAPE["n_state"], dtype)
    nbytes = minimal_bytes(batch, SHAPE["dim"], SHAPE["length"], SHAPE["n_state"], dtype)
    call = Call(lib, inputs)
    base = {"dtype": dtype_name, "batch": batch}
    with torch.no_grad():
        ref = selective_scan(**inputs, impl="triton").float()
        runs = [("triton", None, 0, lambda: selective_scan(**inputs, impl="triton"))]
        for v in variants:
            settings = (0, *FIXED_SEGMENTS) if splits(v) else (0,)
            runs += [(v["name"], v, s, lambda v=v, s=s: call(v["id"], s)) for s in settings]
        for name, v, segments, fn in runs:
            if time.monotonic() > deadline:
                return False
            row = {"variant": name, "id": v["id"] if v else None, "segments": segments, **base}
            if v is not None:
                code = fn()
                if code != 0:
                    rows.append({**row, "error": "unsupported" if code == INVALID_VALUE else f"launch error {code}"})
                    continue
            out = fn() if v is None else call.y
            torch.cuda.synchronize()
            err = rel_error(out.float(), ref)
            ms, ms_warm = time_ms(fn, reps, flush)
            rows.append({**row, "ms": ms, "ms_warm": ms_warm, "gbs": nbytes / ms / 1e6, "pct": 100 * nbytes / ms / 1e6 / copy_gbs,
                         "rel_err_vs_triton": err, "passed_checks": v is None or not (v["failures"] or diagnostic(v)),
                         "diagnostic": v is not None and diagnostic(v)})
    return True


def summary(rows: list) -> list[str]:
    lines = []
    for (dtype, batch) in itertools.product(DTYPES, BATCHES):
        group = [r for r in rows if r["dtype"] == dtype and r["batch"] == batch and "ms" in r]
        triton = next((r for r in group if r["variant"] == "triton"), None)
        ok = [r for r in group if r["variant"] != "triton" and r["passed_checks"]]
        if not ok:
            continue
        best = min(ok, key=lambda r: r["ms"])
        vs = f", triton {triton['ms']:.4f} ms" if triton else ""
        lines.append(f"best {dtype} b{batch:<2d}: {best['variant']} (id {best['id']}, segments {best['segments']}) "
                     f"{best['ms']:.4f} ms = {best['pct']:.1f}% of copy{vs}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--reps", type=int, default=60, help="timed calls per measurement (median)")
    parser.add_argument("--budget-s", type=float, default=170.0, help="stop measuring after this many seconds")
    parser.add_argument("--skip-checks", action="store_true", help="time only (every variant then counts as unchecked)")
    parser.add_argument("--variants", help="comma-separated ids to run (default: all), e.g. to leave out one that crashed")
    parser.add_argument("--check-child", help=argparse.SUPPRESS)  # the library path, in check_isolated's child
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check_child:
        check_child(args)
        return
    with tempfile.TemporaryDirectory() as folder:
        measure(args, Path(folder))


def measure(args, folder: Path) -> None:
    started = time.monotonic()
    deadline = started + args.budget_s
    torch.backends.cuda.matmul.allow_tf32 = False
    library = build_library(folder)
    lib = load_library(library)
    build_s = time.monotonic() - started
    wanted = {int(i) for i in args.variants.split(",")} if args.variants else None
    variants = [{"id": i, "name": lib.mambaesr_scan_variant_name(i).decode(), "failures": [], "unsupported": set()}
                for i in range(lib.mambaesr_scan_variant_count()) if wanted is None or i in wanted]
    print(f"built {lib.mambaesr_scan_variant_count()} variants in {build_s:.0f} s", flush=True)
    rows: list = []
    copy_gbs = float("nan")
    checks_done = timing_done = False
    try:
        checks_done = args.skip_checks or check_isolated(library, variants, deadline - time.monotonic(), folder)
        report_checks(variants, args.skip_checks)
        copy_gbs = copy_bandwidth_gbs(20)
        crashed = [v for v in variants if any("crashed the process" in f for f in v["failures"])]
        timed = [v for v in variants if v not in crashed]
        timing_done = time_variants(lib, timed, copy_gbs, args.reps, deadline, rows)
        print_rows(rows, copy_gbs)
    finally:  # a crash (a CUDA error poisons the context) still leaves what was measured, and says where it stopped
        truncated = not (checks_done and timing_done)
        if truncated:
            print(f"stopped early (time guard {args.budget_s:.0f} s or an error): results truncated")
        if args.json:
            report = {
                "command": "python3 " + " ".join(sys.argv),
                "device": torch.cuda.get_device_name(),
                "capability": ".".join(map(str, torch.cuda.get_device_capability())),
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "torch": torch.__version__,
                "shape": SHAPE, "copy_bandwidth_gbs": copy_gbs, "build_s": build_s, "truncated": truncated,
                "checks_done": checks_done, "wall_s": time.monotonic() - started,
                "variants": [{**v, "unsupported": sorted(v["unsupported"])} for v in variants],
                "rows": rows, "summary": summary(rows),
            }
            Path(args.json).write_text(json.dumps(report, indent=1))


def report_checks(variants: list[dict], skipped: bool) -> None:
    for v in variants:
        if skipped and not diagnostic(v):
            v["failures"].append("not checked (--skip-checks)")
        unsupported = f" (unsupported: {', '.join(sorted(v['unsupported']))})" if v["unsupported"] else ""
        state = "FAILED" if v["failures"] else "passed"
        checked = f"checks {state}, {len(v['failures'])} failures{unsupported}"
        outcome = "diagnostic, timed only" if diagnostic(v) and not v["failures"] else checked
        print(f"variant {v['id']:2d} {v['name']:28s} {outcome}", flush=True)
        for failure in v["failures"][:5]:
            print(f"    {failure}")


def verdict(row: dict) -> str:
    return " (diagnostic)" if row["diagnostic"] else "" if row["passed_checks"] else " FAILED CHECKS"


def print_rows(rows: list, copy_gbs: float) -> None:
    print(f"{torch.cuda.get_device_name()}: copy {copy_gbs:.0f} GB/s; Di {SHAPE['dim']} N {SHAPE['n_state']} L {SHAPE['length']}")
    for r in rows:
        head = f"{r['variant']:28s} seg {r['segments']:2d} {r['dtype']} b{r['batch']:<2d}"
        if "error" in r:
            print(f"{head} {r['error']}")
        else:
            print(f"{head} {r['ms']:8.4f} ms (warm {r['ms_warm']:8.4f}) {r['pct']:5.1f}% of copy "
                  f"err {r['rel_err_vs_triton']:.1e}{verdict(r)}")
    for line in summary(rows):
        print(line)


if __name__ == "__main__":
    main()
