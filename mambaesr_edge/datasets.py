"""Benchmark folders: ``NAME/HR/*.png`` with optional ``NAME/LR_bicubic/X<scale>/<stem>x<scale>.png``.

``find_images`` lists the images; ``load_pairs`` yields ``ImagePair``s with the HR image
cropped to a multiple of the scale and the LR image read from ``LR_bicubic`` when a file is
there, else made with MATLAB-exact bicubic downscaling (``metrics.bicubic_downscale_uint8``),
which reproduces the standard LR files bit-exactly. Grayscale HR images become RGB.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .images import load_image
from .metrics import bicubic_downscale_uint8

__all__ = ["ImagePair", "find_images", "load_pairs"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImagePair:
    """One benchmark image: HR (uint8 RGB, cropped to a multiple of the scale) and its LR."""

    name: str
    hr: np.ndarray
    lr: np.ndarray


def _images_in(folder: Path) -> list[Path]:
    return [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ]


def find_images(dataset_dir: str | os.PathLike[str], scale: int) -> list[tuple[str, Path, Path | None]]:
    """List ``(stem, hr_path, lr_path or None)`` for every HR image, sorted by stem."""
    root = Path(dataset_dir)
    if scale < 1:
        raise DatasetError(f"scale must be a positive integer, got {scale}", hint="use e.g. --scale 4")
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}", hint="pass a folder laid out as NAME/HR/*.png")
    hr_dir = root / "HR"
    if not hr_dir.is_dir():
        raise DatasetError(f"no HR/ subfolder in {root}", hint=f"expected {root}/HR/*.png")
    hr_paths = _images_in(hr_dir)
    if not hr_paths:
        raise DatasetError(f"no images in {hr_dir}", hint=f"put the ground-truth images in {hr_dir} (.png, .bmp, .jpg)")
    by_stem: dict[str, Path] = {}
    for p in hr_paths:
        if p.stem in by_stem:
            raise DatasetError(
                f"two HR images share the name {p.stem!r}: {by_stem[p.stem].name} and {p.name}",
                hint="keep one file per image name",
            )
        by_stem[p.stem] = p
    lr_dir = root / "LR_bicubic" / f"X{scale}"
    lr_by_stem: dict[str, Path] = {}
    if lr_dir.is_dir():
        for p in sorted(_images_in(lr_dir), key=lambda q: (q.suffix.lower() != ".png", q.name)):
            lr_by_stem.setdefault(p.stem, p)  # .png preferred when several suffixes exist
    return [(stem, by_stem[stem], lr_by_stem.get(f"{stem}x{scale}")) for stem in sorted(by_stem)]


def _load_pair(stem: str, hr_path: Path, lr_path: Path | None, scale: int) -> ImagePair:
    hr = load_image(hr_path)
    h, w = hr.shape[:2]
    if h < scale or w < scale:
        raise DatasetError(
            f"HR image {hr_path} is {w}x{h}, smaller than the scale {scale}",
            hint=f"the image must be at least {scale}x{scale} pixels; remove it from {hr_path.parent}",
        )
    hr = np.ascontiguousarray(hr[: h - h % scale, : w - w % scale])
    expected = (hr.shape[0] // scale, hr.shape[1] // scale, 3)
    if lr_path is None:
        logger.debug("%s: no LR file, generating bicubic x%d", stem, scale)
        return ImagePair(stem, hr, bicubic_downscale_uint8(hr, scale))
    lr = load_image(lr_path)
    if lr.shape != expected:
        raise DatasetError(
            f"LR image {lr_path} has shape {lr.shape}, expected {expected} "
            f"(HR {hr_path.name} cropped to {hr.shape} divided by {scale})",
            hint="regenerate the LR file or delete it so it is made from the HR image",
        )
    return ImagePair(stem, hr, lr)


def load_pairs(dataset_dir: str | os.PathLike[str], scale: int) -> Iterator[ImagePair]:
    """Yield an ``ImagePair`` per HR image, sorted by name; folder errors are raised at once."""
    entries = find_images(dataset_dir, scale)
    return (_load_pair(stem, hr_path, lr_path, scale) for stem, hr_path, lr_path in entries)
