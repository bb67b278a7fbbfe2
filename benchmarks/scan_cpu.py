"""Exportable (chunked) vs sequential (reference) selective scan on the CPU: time and peak memory for one 64x64 tile.

Shape: batch 1, dim 64, L 4096 (a 64x64 LR tile), N 16, with D, z, delta_bias and softplus as in the model.
Each case runs in a fresh child process so its peak RSS (ru_maxrss) is its own; memory is reported as the peak
minus the RSS after the inputs were made. Prints a table; writes JSON (--json).

Usage: python benchmarks/scan_cpu.py [--threads 2] [--repeats 5] [--json benchmarks/scan_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

CASE_CODE = r"""
import json, resource, sys, time, torch
from mambaesr_edge.scan import selective_scan
impl, threads, repeats, batch, dim, length, n_state = sys.argv[1], *map(int, sys.argv[2:8])
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)
args = dict(
    u=torch.randn(batch, dim, length, generator=g), delta=torch.randn(batch, dim, length, generator=g) - 2,
    A=-torch.exp(torch.randn(dim, n_state, generator=g)), B=torch.randn(batch, n_state, length, generator=g),
    C=torch.randn(batch, n_state, length, generator=g), D=torch.randn(dim, generator=g),
    z=torch.randn(batch, dim, length, generator=g), delta_bias=torch.randn(dim, generator=g), delta_softplus=True,
)
base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
with torch.inference_mode():
    selective_scan(**args, impl=impl)  # warm-up
    for _ in range(repeats):
        t0 = time.perf_counter()
        selective_scan(**args, impl=impl)
        times.append(time.perf_counter() - t0)
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times.sort()
print(json.dumps({"impl": impl, "ms_median": 1e3 * times[len(times) // 2], "ms_min": 1e3 * times[0],
                  "peak_extra_mib": (peak_kib - base_kib) / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    shape = [args.batch, args.dim, args.length, args.state]
    rows = []
    for impl in ("reference", "chunked"):
        cmd = [sys.executable, "-c", CASE_CODE, impl, str(args.threads), str(args.repeats), *map(str, shape)]
        rows.append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout))
    ratio = rows[1]["ms_median"] / rows[0]["ms_median"]
    report = {
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
        "load_average": list(__import__("os").getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "threads": args.threads,
        "shape": dict(zip(("batch", "dim", "L", "N"), shape, strict=True)),
        "results": rows,
        "chunked_over_reference_time": ratio,
    }
    print(f"selective scan, CPU, {args.threads} threads, batch {args.batch} dim {args.dim} L {args.length} N {args.state}")
    print(f"{'impl':10s} {'median ms':>10s} {'min ms':>8s} {'peak extra MiB':>15s}")
    for r in rows:
        print(f"{r['impl']:10s} {r['ms_median']:10.1f} {r['ms_min']:8.1f} {r['peak_extra_mib']:15.1f}")
    print(f"chunked / reference time: {ratio:.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
