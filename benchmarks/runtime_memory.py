"""Peak memory and time of a 960x540 -> 3840x2160 upscale on CPU through the Upscaler (tile 64, overlap 16).

Issue 5 asks for peak RSS <= 1.5 GB. Run it in a fresh process (peak RSS is per process):

    python benchmarks/runtime_memory.py [--weights W] [--threads N] [--json benchmarks/runtime_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "runtime_memory.json")
    args = parser.parse_args()
    import torch

    from mambaesr_edge.fileio import atomic_write
    from mambaesr_edge.images import load_image
    from mambaesr_edge.resources import default_weights_path, sample_image_path
    from mambaesr_edge.runtime import Upscaler

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        weights = args.weights or default_weights_path()
    except Exception:  # noqa: BLE001 - no shipped model yet: the DVMSR release (same network)
        weights = SHARED / "weights" / "dvmsr" / "team07_DVMSR.pth"
    sample = load_image(sample_image_path())
    image = np.ascontiguousarray(np.tile(sample, (3, 4, 1))[:540, :960])  # 960x540 from the shipped sample
    up = Upscaler.from_path(weights, tile=args.tile, overlap=args.overlap, scan_impl="chunked")
    before = rss_mib()
    start = time.perf_counter()
    out = up(image)
    seconds = time.perf_counter() - start
    peak = rss_mib()
    assert out.shape == (2160, 3840, 3)
    report = {
        "command": f"python benchmarks/runtime_memory.py --threads {torch.get_num_threads()}",
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "weights": Path(weights).name,
        "input": "960x540",
        "output": "3840x2160",
        "tile": args.tile,
        "overlap": args.overlap,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "peak_rss_mib": peak,
        "rss_before_mib": before,
    }
    with atomic_write(args.json) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"960x540 -> 3840x2160 in {seconds:.1f} s, peak RSS {peak:.0f} MiB (before the call {before:.0f} MiB); wrote {args.json}")


if __name__ == "__main__":
    main()
