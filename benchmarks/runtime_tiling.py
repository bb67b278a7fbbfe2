"""Seam quality and speed of tiled inference with the real model.

For every image of a benchmark set (default Set14 x4, else the shipped sample downscaled x4): the whole-image output,
then tiles of 64x64 LR pixels at overlaps 0/8/16/32, each tile run once and blended with every blend
(runtime.tiling.BLENDS). Reported per (overlap, blend), averaged over the images:

* ``psnr_y_gt``: Y-PSNR against ground truth (border 4), next to the whole image's (the "done when" of issue 5:
  tiled within 0.05 dB of whole);
* ``psnr_vs_whole``: RGB PSNR of the tiled output against the whole-image output (how close tiling gets to no tiling);
* ``seam_excess_pct``: seam metric. Mean |gradient| of the Y channel across the HR rows/columns where a tile starts
  or ends, divided by the mean |gradient| everywhere else; the same ratio on the whole-image output (same rows and
  columns) is the baseline, and the excess is 100 * (ratio_tiled / ratio_whole - 1). 0 = no visible seams.

Speed: LR tiles per second through the torch backend on CPU (tile 64, batch 1 and 4) at the given thread counts.

    python benchmarks/runtime_tiling.py [--weights W] [--dataset DIR] [--threads 2 16] [--json benchmarks/runtime_tiling.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from mambaesr_edge.checkpoint import load_model
from mambaesr_edge.datasets import load_pairs
from mambaesr_edge.fileio import atomic_write
from mambaesr_edge.images import load_image
from mambaesr_edge.metrics import bicubic_downscale_uint8, psnr, rgb_to_y
from mambaesr_edge.resources import default_weights_path, sample_image_path
from mambaesr_edge.runtime.backends.torch import TorchBackend
from mambaesr_edge.runtime.tiling import (
    BLENDS,
    blend_tiles,
    make_batches,
    pad_image,
    plan_tiles,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TILE = 64
OVERLAPS = (0, 8, 16, 32)


def default_weights() -> Path:
    try:
        return default_weights_path()
    except Exception:  # noqa: BLE001 - the shipped model may not exist yet; the DVMSR release is the same network
        return SHARED / "weights" / "dvmsr" / "team07_DVMSR.pth"


def to_uint8(chw: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(chw, 0, 1) * np.float32(255)).astype(np.uint8).transpose(1, 2, 0)


def seam_lines(plan, scale: int) -> tuple[list[int], list[int]]:
    """HR row / column indices i where the gradient I[i] - I[i-1] crosses a tile edge (crop coordinates)."""
    lines = []
    axes = ((plan.ys, plan.tile_hw[0], plan.pad[0], plan.image_hw[0]), (plan.xs, plan.tile_hw[1], plan.pad[2], plan.image_hw[1]))
    for origins, tile, pad, size in axes:
        edges = {o for o in origins[1:]} | {o + tile for o in origins[:-1]}
        lines.append(sorted(scale * (e - pad) for e in edges if 0 < e - pad < size))
    return lines[0], lines[1]


def seam_ratio(image: np.ndarray, rows: list[int], cols: list[int]) -> float:
    y = rgb_to_y(image.astype(np.float64))
    dy, dx = np.abs(np.diff(y, axis=0)), np.abs(np.diff(y, axis=1))  # dy[i-1] = |y[i] - y[i-1]|
    row_mask = np.zeros(dy.shape[0], bool)
    col_mask = np.zeros(dx.shape[1], bool)
    row_mask[[r - 1 for r in rows]] = True
    col_mask[[c - 1 for c in cols]] = True
    at = np.concatenate([dy[row_mask].ravel(), dx[:, col_mask].ravel()])
    away = np.concatenate([dy[~row_mask].ravel(), dx[:, ~col_mask].ravel()])
    return float(at.mean() / away.mean()) if at.size else 1.0


def run_tiles(backend: TorchBackend, image: np.ndarray, overlap: int):
    plan = plan_tiles(image.shape[1:], TILE, overlap)
    padded = pad_image(image, plan)
    outputs = []
    for batch in make_batches([(0, padded, plan)], 1):
        for ref, out in zip(batch.refs, backend.run(batch.tiles), strict=True):
            outputs.append((ref.index, out))
    return plan, outputs


def images(dataset: Path | None):
    if dataset is not None and dataset.is_dir():
        for pair in load_pairs(dataset, 4):
            yield pair.name, pair.lr, pair.hr
        return
    hr = load_image(sample_image_path())
    hr = hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4]
    yield "sample", bicubic_downscale_uint8(hr, 4), hr


def quality(backend: TorchBackend, dataset: Path | None) -> tuple[list[dict], dict]:
    rows: dict[tuple[int, str], list[dict]] = {}
    whole_psnr = []
    names = []
    for name, lr, hr in images(dataset):
        names.append(name)
        x = (lr.astype(np.float32) / 255).transpose(2, 0, 1)
        whole = to_uint8(backend.run(x[None])[0])
        whole_psnr.append(psnr(whole, hr, crop_border=4))
        for overlap in OVERLAPS:
            plan, outputs = run_tiles(backend, x, overlap)
            lines = seam_lines(plan, 4)
            base = seam_ratio(whole, *lines)
            for blend in BLENDS:
                tiled = to_uint8(blend_tiles(plan, outputs, 4, blend))
                rows.setdefault((overlap, blend), []).append(
                    {
                        "psnr_y_gt": psnr(tiled, hr, crop_border=4),
                        "psnr_vs_whole": psnr(tiled, whole, crop_border=0, y_channel=False),
                        "seam_excess_pct": 100 * (seam_ratio(tiled, *lines) / base - 1),
                        "tiles": plan.num_tiles,
                    }
                )
        print(f"  {name}: whole {whole_psnr[-1]:.3f} dB", flush=True)
    table = []
    for (overlap, blend), items in rows.items():
        finite = [i["psnr_vs_whole"] for i in items if np.isfinite(i["psnr_vs_whole"])]
        table.append(
            {
                "overlap": overlap,
                "blend": blend,
                "psnr_y_gt": float(np.mean([i["psnr_y_gt"] for i in items])),
                "delta_vs_whole_db": float(np.mean([i["psnr_y_gt"] for i in items]) - np.mean(whole_psnr)),
                "psnr_vs_whole": float(np.mean(finite)) if finite else float("inf"),
                "seam_excess_pct": float(np.mean([i["seam_excess_pct"] for i in items])),
                "tiles": int(sum(i["tiles"] for i in items)),
            }
        )
    return table, {"images": names, "whole_psnr_y_gt": float(np.mean(whole_psnr))}


def speed(backend: TorchBackend, threads: list[int], seconds: float = 8.0) -> list[dict]:
    out = []
    rng = np.random.default_rng(0)
    for n in threads:
        torch.set_num_threads(n)
        for batch in (1, 4):
            tiles = rng.random((batch, 3, TILE, TILE), dtype=np.float32)
            backend.run(tiles)  # warm-up
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                backend.run(tiles)
                count += batch
            rate = count / (time.perf_counter() - start)
            out.append({"threads": n, "batch": batch, "tile": TILE, "tiles_per_s": rate})
            print(f"  threads {n:2d} batch {batch}: {rate:.2f} tiles/s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--dataset", type=Path, default=SHARED / "datasets" / "benchmark" / "Set14")
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "runtime_tiling.json")
    parser.add_argument("--quality-device", default="cpu", help="device for the quality part (cuda: faster, fp32 all the same)")
    args = parser.parse_args()
    weights = args.weights or default_weights()
    model, loaded = load_model(weights, scan_impl="chunked")
    print(f"weights {weights.name} ({loaded.sha256[:12]}), tile {TILE}, dataset {args.dataset if args.dataset.is_dir() else 'sample'}")
    start = time.perf_counter()
    if args.quality_device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # plain fp32, as on CPU
        torch.backends.cudnn.allow_tf32 = False
    table, info = quality(TorchBackend(model, device=args.quality_device), args.dataset)
    backend = TorchBackend(model.cpu())
    quality_s = time.perf_counter() - start
    print(f"\nwhole image: Y-PSNR {info['whole_psnr_y_gt']:.3f} dB over {len(info['images'])} images")
    print(f"{'overlap':>7} {'blend':>11} {'Y-PSNR':>8} {'vs whole':>9} {'PSNR to whole':>14} {'seam excess':>12} {'tiles':>6}")
    for r in table:
        print(f"{r['overlap']:7d} {r['blend']:>11} {r['psnr_y_gt']:8.3f} {r['delta_vs_whole_db']:+9.3f} {r['psnr_vs_whole']:14.2f} "
              f"{r['seam_excess_pct']:11.2f}% {r['tiles']:6d}")
    print("\ntiles/s (torch CPU, chunked scan):")
    rates = speed(backend, args.threads)
    report = {
        "command": f"python benchmarks/runtime_tiling.py --quality-device {args.quality_device} --threads " + " ".join(map(str, args.threads)),
        "quality_device": args.quality_device,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": __import__("os").cpu_count(),
                    "torch": torch.__version__},
        "weights": weights.name,
        "weights_sha256": loaded.sha256,
        "dataset": args.dataset.name if args.dataset.is_dir() else "sample",
        "tile": TILE,
        **info,
        "quality": table,
        "quality_seconds": quality_s,
        "speed": rates,
    }
    with atomic_write(args.json) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
