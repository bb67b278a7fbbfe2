"""Make mambaesr_edge/assets/sample_hr.png: a synthetic 256x256 scene (edges, text, curves, texture, gradients).

Procedural so the package ships no third-party image. Run: python tools/make_sample_image.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIZE = 256


def make_sample(seed: int = 7) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    base = np.stack([0.55 + 0.35 * xx, 0.45 + 0.3 * yy, 0.6 - 0.3 * xx * yy], axis=-1)
    noise = rng.normal(0, 1, (SIZE // 8, SIZE // 8, 3))
    texture = np.array(Image.fromarray(((noise - noise.min()) / np.ptp(noise) * 255).astype(np.uint8)).resize((SIZE, SIZE), Image.BICUBIC)) / 255.0
    img = Image.fromarray(np.clip((0.8 * base + 0.2 * texture) * 255, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for i in range(12):  # converging lines (aliasing-prone)
        draw.line([(8, 8 + i * 9), (120, 60 + i * 2)], fill=(20, 20, 40), width=1)
    for r in range(4, 60, 6):  # concentric rings
        draw.ellipse([190 - r, 70 - r, 190 + r, 70 + r], outline=(140 + r, 30, 60), width=2)
    draw.rectangle([20, 150, 110, 230], fill=(240, 230, 200), outline=(30, 60, 120), width=3)
    for k in range(0, 90, 6):  # checker strip
        draw.rectangle([20 + k, 200, 23 + k, 203], fill=(10, 10, 10))
    font = ImageFont.load_default()
    for row, text in enumerate(("mambaesr-edge", "x4 SUPER-RES", "Jetson Orin 0123")):
        draw.text((26, 158 + row * 13), text, fill=(20, 30, 90), font=font)
    draw.polygon([(150, 240), (200, 140), (250, 240)], fill=(60, 150, 90), outline=(10, 60, 20))
    for k in range(8):  # thin diagonal hatching
        draw.line([(140 + k * 14, 130), (180 + k * 14, 170)], fill=(250, 250, 250), width=1)
    return img.filter(ImageFilter.GaussianBlur(0.6))  # camera-like softness


if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "mambaesr_edge" / "assets" / "sample_hr.png"
    make_sample().save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
