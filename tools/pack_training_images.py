"""Repack training HR images as lossless WebP so they travel to the GPU machine (68 MB of PNG/BMP -> 41 MB).

Usage: python tools/pack_training_images.py SRC_DIR [SRC_DIR ...] --out .carry/data/train
Each image is verified to decode back to the same pixels. `.carry/` is git-ignored; name it in the device tool's carry.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for source in args.sources:
        for path in sorted(p for p in source.rglob("*") if p.suffix.lower() in (".png", ".bmp")):
            image = Image.open(path).convert("RGB")
            target = args.out / f"{path.parent.name}_{path.stem}.webp"
            image.save(target, lossless=True, method=1, quality=50)
            if not np.array_equal(np.asarray(Image.open(target).convert("RGB")), np.asarray(image)):
                raise SystemExit(f"lossless round trip failed for {path}")
            total += target.stat().st_size
    print(f"wrote {args.out} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
