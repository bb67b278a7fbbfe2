"""Launch scan kernel variants (tools/scan_variants.cu, by id) a few times on the default model's batch-32 shapes, for
a profiler to catch: nothing is timed or checked here (tools/scan_variants_gpu.py does that).

Usage, on a GPU, with the variant library built by hand (-lineinfo for source-level views):
    nvcc -O3 -std=c++17 -shared -Xcompiler -fPIC -gencode=arch=compute_90,code=sm_90 -lineinfo \
        tools/scan_variants.cu -o /tmp/sv.so
    ncu --kernel-name regex:selective_scan_fwd_kernel --launch-count 2 --set full \
        python3 tools/scan_variant_launch.py /tmp/sv.so fp32 15
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent)]
import scan_variants_gpu as variants  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", help="the built tools/scan_variants.cu")
    parser.add_argument("dtype", choices=sorted(variants.DTYPES))
    parser.add_argument("ids", help="comma-separated variant ids")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    lib = variants.load_library(Path(args.library))
    shape = variants.SHAPE
    inputs = variants.scan_inputs(args.batch, shape["dim"], shape["length"], shape["n_state"], variants.DTYPES[args.dtype])
    call = variants.Call(lib, inputs)
    for vid in map(int, args.ids.split(",")):
        for _ in range(args.repeat):
            code = call(vid)
            if code != 0:
                raise SystemExit(f"variant {vid}: launch error {code}")
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
