"""Soak test of `Upscaler.stream`: 10,000 frames through the threaded pipeline with flat memory (issue 8).

Pushes N small frames (a pool of 16 distinct random frames, cycled) through `Upscaler.stream`, samples the resident
set size (RSS, /proc/self/statm) every `--every` frames, and compares the RSS after warm-up (frame `--warm`) with the
RSS at the end: growth must stay under 5 %. Also checks that results stay right (each output equals the output of
the same input frame in the first cycle), and counts threads and open file descriptors before and after.
Each backend runs in a fresh process (RSS is per process).

    python benchmarks/stream_soak.py [--frames 10000] [--size 32] [--preset test] [--backends torch,onnxruntime]
                                     [--threads 1] [--json benchmarks/stream_soak.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mambaesr_edge.machine import cpu_model

REPO = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")
LIMIT_PCT = 5.0


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def build_upscaler(backend: str, preset: str, size: int, workdir: Path, threads: int):
    import torch

    from mambaesr_edge.model import MambaSR
    from mambaesr_edge.presets import get_preset
    from mambaesr_edge.runtime import Upscaler
    from mambaesr_edge.runtime.backends import open_backend
    from mambaesr_edge.runtime.backends.torch import TorchBackend

    torch.manual_seed(0)
    model = MambaSR(get_preset(preset), scan_impl="chunked").eval()
    if backend == "torch":
        return Upscaler(TorchBackend(model, device="cpu", precision="fp32", scan_impl="chunked"), tile=0)
    from mambaesr_edge.export.onnx import export_onnx

    path = export_onnx(model, workdir / "model.onnx", input_shape=(1, 3, size, size), simplify=False).path
    return Upscaler(open_backend(path, "onnxruntime", device="cpu", threads=threads), tile=size, overlap=0)


def soak(backend: str, frames: int, size: int, preset: str, every: int, warm: int, queue_size: int) -> dict:
    """One backend, in this process: the measurements as a dict."""
    import torch

    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(16)]
    with tempfile.TemporaryDirectory() as work:
        up = build_upscaler(backend, preset, size, Path(work), torch.get_num_threads())
        first: list[str] = []
        samples: list[tuple[int, float]] = [(0, rss_mib())]
        threads_before, fds_before = threading.active_count(), open_fds()
        start = time.perf_counter()
        warm_time = None
        stream = up.stream(pool[i % len(pool)] for i in range(frames))
        with stream:
            for i, out in enumerate(stream, start=1):
                digest = hashlib.sha1(out.tobytes()).hexdigest()
                if i <= len(pool):
                    first.append(digest)
                elif digest != first[(i - 1) % len(pool)]:
                    raise AssertionError(f"frame {i}: output differs from the same input's first output")
                if i % every == 0 or i == frames:
                    samples.append((i, rss_mib()))
                if i == warm:
                    warm_time = time.perf_counter()
        seconds = time.perf_counter() - start
        leftovers = {"threads_before": threads_before, "threads_after": threading.active_count(),
                     "fds_before": fds_before, "fds_after": open_fds(), "decisions": len(stream.decisions),
                     "dropped": len(stream.dropped), "queued_items_after": sum(q.qsize() for q in stream._queues)}
    rss = dict(samples)
    growth = 100.0 * (rss[frames] - rss[warm]) / rss[warm]
    return {
        "backend": backend,
        "preset": preset,
        "lr_frame": f"{size}x{size}",
        "sr_frame": f"{4 * size}x{4 * size}",
        "frames": frames,
        "queue_size": queue_size,
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 2),
        "frames_per_s": round(frames / seconds, 1),
        "frames_per_s_after_warmup": round((frames - warm) / (time.perf_counter() - warm_time), 1) if warm_time else None,
        "rss_start_mib": round(rss[0], 2),
        "rss_warm_mib": round(rss[warm], 2),
        "warm_frame": warm,
        "rss_end_mib": round(rss[frames], 2),
        "rss_growth_pct": round(growth, 3),
        "rss_min_after_warm_mib": round(min(v for f, v in samples if f >= warm), 2),
        "rss_max_after_warm_mib": round(max(v for f, v in samples if f >= warm), 2),
        "peak_rss_mib": round(max(peak_rss_mib(), *rss.values()), 2),  # the kernel's high-water mark lags a little
        "passed": growth < LIMIT_PCT,
        "after_the_stream": leftovers,
        "rss_samples_mib": [[f, round(v, 2)] for f, v in samples],
    }



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=32, help="LR frame side")
    parser.add_argument("--preset", default="test")
    parser.add_argument("--backends", default="torch,onnxruntime")
    parser.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime intra-op threads")
    parser.add_argument("--every", type=int, default=100, help="sample RSS every N frames")
    parser.add_argument("--warm", type=int, default=500, help="the frame whose RSS is the baseline")
    parser.add_argument("--queue-size", type=int, default=2)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "stream_soak.json")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one backend, print its JSON
    args = parser.parse_args()
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        result = soak(args.one, args.frames, args.size, args.preset, args.every, args.warm, args.queue_size)
        print("RESULT " + json.dumps(result))
        return

    from mambaesr_edge.fileio import atomic_write

    command = (f"python benchmarks/stream_soak.py --frames {args.frames} --size {args.size} --preset {args.preset} "
               f"--backends {args.backends} --threads {args.threads} --every {args.every} --warm {args.warm} "
               f"--queue-size {args.queue_size}")
    load_before = [round(v, 2) for v in os.getloadavg()]
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    runs = []
    for backend in args.backends.split(","):
        child = [sys.executable, __file__, "--one", backend, *sys.argv[1:]]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        done = subprocess.run(child, capture_output=True, text=True, env=env, check=True)
        runs.append(json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:]))
    import torch

    report = {
        "command": command,
        "date": date,
        "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                    "load_average_before": load_before, "load_average_after": [round(v, 2) for v in os.getloadavg()],
                    "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "numpy": np.__version__, **_onnxruntime_version()},
        "criterion": f"RSS growth from frame {args.warm} to the last frame < {LIMIT_PCT} %",
        "runs": runs,
    }
    with atomic_write(args.json) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'backend':<12} {'frames':>7} {'frames/s':>9} {'RSS start':>10} {f'RSS @{args.warm}':>10} {'RSS end':>9} "
          f"{'growth':>8} {'peak':>8}  ok")
    for r in runs:
        print(f"{r['backend']:<12} {r['frames']:>7} {r['frames_per_s']:>9.1f} {r['rss_start_mib']:>8.1f}Mi "
              f"{r['rss_warm_mib']:>8.1f}Mi {r['rss_end_mib']:>7.1f}Mi {r['rss_growth_pct']:>7.2f}% {r['peak_rss_mib']:>6.1f}Mi"
              f"  {'yes' if r['passed'] else 'NO'}")
    print(f"wrote {args.json}")
    if not all(r["passed"] for r in runs):
        sys.exit(1)


def _onnxruntime_version() -> dict[str, str]:
    try:
        import onnxruntime
    except ImportError:
        return {}
    return {"onnxruntime": onnxruntime.__version__}


if __name__ == "__main__":
    main()
