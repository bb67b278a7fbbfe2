"""Training data: HR folders -> cached (HR, LR) pairs -> random paired patches with flips and rotations.

LR images are made once with the MATLAB-exact bicubic (metrics.bicubic_downscale_uint8) and cached in one .npz per
folder set. ``split_validation`` holds N images out of training for checkpoint selection (the validation split:
the N files whose sha256(file stem) sorts first; it depends on the file stems and N only, never on the folders, the
suffixes, the machine, the image sizes or the seed), and ``load_validation_pairs`` gives them as (HR, LR) pairs scored like a benchmark.
Patches are drawn by `sample_patches`, a pure function of (seed, step, rank): a resumed run draws exactly the
batches it would have drawn, and each DDP rank draws its own. The images live on the training device, so drawing a
batch costs a few small indexing ops and no loader process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .datasets import IMAGE_SUFFIXES, ImagePair
from .errors import DatasetError, ImageError
from .fileio import atomic_write
from .images import load_image
from .metrics import bicubic_downscale_uint8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainImages:
    """HR/LR pairs as uint8 tensors (3, H, W) on one device; LR is HR / scale."""

    hr: tuple[torch.Tensor, ...]
    lr: tuple[torch.Tensor, ...]
    names: tuple[str, ...]
    scale: int
    unreadable: tuple[str, ...] = ()  # files left out: corrupt / not images
    too_small: tuple[str, ...] = ()  # files left out: smaller than one HR patch

    def to(self, device: torch.device | str) -> "TrainImages":
        return dataclasses.replace(self, hr=tuple(t.to(device) for t in self.hr), lr=tuple(t.to(device) for t in self.lr))


def list_hr_files(folders: list[Path]) -> list[Path]:
    files: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise DatasetError(f"training folder not found: {folder}", hint="pass --train-dir DIR with HR images inside")
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not found:
            raise DatasetError(f"no images in {folder}", hint="put HR training images (.png, .bmp, .jpg) there")
        files.extend(found)
    return files


@dataclass(frozen=True)
class ValidationSplit:
    """Training files split in two: ``train`` (in their listed order) and the held-out ``val`` (by file name)."""

    train: tuple[Path, ...]
    val: tuple[Path, ...]

    RULE = "the N files whose sha256(file stem, UTF-8) hex digest sorts first (ties: by full path) are held out of training"


def split_key(path: Path) -> str:
    """The sort key of the validation split: sha256 of the file stem (not the folder, not the suffix: the same on every
    machine, and for images repacked losslessly under another suffix, as tools/pack_training_images.py does)."""
    return hashlib.sha256(path.stem.encode("utf-8")).hexdigest()


def split_validation(files: list[Path], count: int) -> ValidationSplit:
    """Hold ``count`` of ``files`` out of training (ValidationSplit.RULE); ``count`` 0: nothing held out."""
    if count < 0 or (count and count >= len(files)):
        raise DatasetError(f"cannot hold {count} of {len(files)} training images out for validation",
                           hint=f"pass --val-from-train between 1 and {len(files) - 1} (0: no validation split)")
    held = sorted(files, key=lambda p: (split_key(p), str(p)))[:count]
    chosen = set(held)
    return ValidationSplit(tuple(f for f in files if f not in chosen), tuple(sorted(held, key=lambda p: (p.name, str(p)))))


def load_validation_pairs(files: tuple[Path, ...], scale: int) -> tuple[list[ImagePair], list[str]]:
    """(pairs, names left out) for the held-out files: HR cropped to a multiple of ``scale``, LR by MATLAB bicubic
    (as the benchmark sets' LR files). Unreadable images and ones too small to score after the border crop of
    ``scale`` pixels (a side of at most 4 x scale) are left out with a warning; none left is a DatasetError."""
    pairs, left_out = [], []
    for path in files:
        try:
            hr = load_image(path)
        except ImageError as exc:
            log.warning("validation image %s cannot be read and is left out: %s", path.name, exc.message)
            left_out.append(path.name)
            continue
        hr = hr[: hr.shape[0] - hr.shape[0] % scale, : hr.shape[1] - hr.shape[1] % scale]
        if min(hr.shape[:2]) <= 4 * scale:
            log.warning("validation image %s (%dx%d) is too small to score and is left out", path.name, hr.shape[1], hr.shape[0])
            left_out.append(path.name)
            continue
        pairs.append(ImagePair(path.stem, hr, bicubic_downscale_uint8(hr, scale)))
    if not pairs:
        raise DatasetError(f"none of the {len(files)} validation images can be scored", hint="hold out more images (--val-from-train N)")
    return pairs, left_out


def _cache_key(files: list[Path], scale: int, patch: int) -> str:
    digest = hashlib.sha256(f"x{scale}|p{patch}".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def load_train_images(folders: list[Path], scale: int, patch: int, cache_dir: Path | None, *, files: list[Path] | None = None) -> TrainImages:
    """Read every HR image (cropped to a multiple of scale), make LR by MATLAB bicubic; cache the pairs once.

    ``files``: these files of the folders instead of all of them (the training side of a validation split)."""
    files = list(files) if files is not None else list_hr_files(folders)
    cache = Path(cache_dir) / f"train_pairs_{_cache_key(files, scale, patch)}.npz" if cache_dir else None
    first_error = ""
    if cache is not None and cache.is_file():
        with np.load(cache) as data:
            names = [str(n) for n in data["names"]]
            hrs = [data[f"hr_{i}"] for i in range(len(names))]
            lrs = [data[f"lr_{i}"] for i in range(len(names))]
            unreadable = [str(n) for n in data["unreadable"]] if "unreadable" in data else []
            skipped = [str(n) for n in data["too_small"]] if "too_small" in data else []
        log.info("loaded %d cached training pairs from %s", len(names), cache)
    else:
        names, hrs, lrs, skipped, unreadable = [], [], [], [], []
        for path in files:
            try:
                hr = load_image(path)
            except ImageError as exc:  # one bad file does not stop training: skipped and counted
                unreadable.append(path.name)
                first_error = first_error or exc.message
                log.debug("skipping unreadable training image %s: %s", path, exc.message)
                continue
            hr = hr[: hr.shape[0] - hr.shape[0] % scale, : hr.shape[1] - hr.shape[1] % scale]
            if min(hr.shape[:2]) < patch * scale:
                skipped.append(path.name)
                continue
            names.append(path.stem)
            hrs.append(hr)
            lrs.append(bicubic_downscale_uint8(hr, scale))
        if cache is not None and names:
            cache.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            np.savez(buffer, names=np.array(names), unreadable=np.array(unreadable, dtype=str), too_small=np.array(skipped, dtype=str),
                     **{f"hr_{i}": a for i, a in enumerate(hrs)}, **{f"lr_{i}": a for i, a in enumerate(lrs)})
            with atomic_write(cache) as tmp:
                tmp.write_bytes(buffer.getvalue())
    if unreadable:
        log.warning("%d of %d training images cannot be read and are left out (first: %s%s)", len(unreadable), len(files),
                    unreadable[0], f": {first_error}" if first_error else "")
    if skipped:
        log.warning("%d of %d training images are smaller than one %dx%d HR patch and are left out (e.g. %s)",
                    len(skipped), len(files), patch * scale, patch * scale, skipped[0])
    if not names:
        if unreadable and not skipped:
            raise DatasetError(f"none of the {len(files)} training images can be read (first: {unreadable[0]})",
                               hint="the files are corrupt or not images; re-export or re-download them")
        raise DatasetError(f"no usable training image: {len(skipped)} smaller than one {patch * scale}x{patch * scale} HR patch, "
                           f"{len(unreadable)} unreadable", hint="use a smaller --patch, or larger images")
    to_tensor = lambda a: torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1).contiguous()  # noqa: E731
    return TrainImages(tuple(map(to_tensor, hrs)), tuple(map(to_tensor, lrs)), tuple(names), scale, tuple(unreadable), tuple(skipped))


def sample_patches(
    images: TrainImages, *, batch_size: int, patch: int, seed: int, step: int, rank: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of paired random crops (LR patch x patch, HR scale*patch), randomly flipped and rotated.

    Returns float tensors in [0, 1] on the images' device: lr (B, 3, p, p), hr (B, 3, s*p, s*p).
    Images are drawn with probability proportional to their area. Pure in (seed, step, rank).
    """
    gen = np.random.default_rng([seed, step, rank])
    areas = np.array([t.shape[1] * t.shape[2] for t in images.lr], dtype=np.float64)
    picks = gen.choice(len(areas), size=batch_size, p=areas / areas.sum())
    scale = images.scale
    lr_out, hr_out = [], []
    for index in picks:
        lr_img, hr_img = images.lr[index], images.hr[index]
        top = int(gen.integers(0, lr_img.shape[1] - patch + 1))
        left = int(gen.integers(0, lr_img.shape[2] - patch + 1))
        lr = lr_img[:, top : top + patch, left : left + patch]  # (3, p, p)
        hr = hr_img[:, top * scale : (top + patch) * scale, left * scale : (left + patch) * scale]  # (3, sp, sp)
        flip, rotations = bool(gen.integers(0, 2)), int(gen.integers(0, 4))
        if flip:
            lr, hr = lr.flip(-1), hr.flip(-1)
        if rotations:
            lr, hr = torch.rot90(lr, rotations, (1, 2)), torch.rot90(hr, rotations, (1, 2))
        lr_out.append(lr)
        hr_out.append(hr)
    return torch.stack(lr_out).float().div_(255.0), torch.stack(hr_out).float().div_(255.0)
