"""Upscaling files: an image, a folder of images or a video (the work behind ``mambaesr-edge upscale``).

Torch-free and print-free: ``upscale_path`` reports progress and per-file failures through plain callbacks and
returns an ``UpscaleSummary``; the CLI (mambaesr_edge/cli/upscale.py) renders them. Order of use: ``check_request``
(paths and numbers, before any model loads), ``build_upscaler``, ``upscale_path``, ``UpscaleSummary.raise_for_failures``.

INPUT is an image, a folder, or a video (.mp4/.avi/.mov/.mkv/.m4v/.webm, needs the ``video`` extra).

* Image: OUTPUT is a file (format from its suffix) or a folder (then ``NAME[_SUFFIX].EXT`` inside it): an existing
  folder, or one named with a trailing slash (``output_is_folder``), created when the image is written.
  An existing OUTPUT is an error unless ``--overwrite``.
* Folder: every image below INPUT (png, jpg, jpeg, bmp, tif, tiff, webp; hidden files skipped) goes to the same
  relative path below OUTPUT as ``NAME[_SUFFIX].EXT``. Existing outputs are *skipped* (so an interrupted run resumes)
  unless ``--overwrite``; a file that fails is reported (``on_failed``) and skipped, the others complete, and then
  ``raise_for_failures`` raises ``ImageError`` ("N of M images failed", exit code 2). OUTPUT may not be INPUT itself
  unless ``--suffix`` makes the names differ.
  A full disk stops the run at once (``DiskFullError``); Ctrl-C stops it with ``Interrupted`` (exit 130): in both
  cases the outputs written are complete and a rerun does the rest. Several processes may write into one OUTPUT
  folder at once (temporary names are unique per process; the last complete write of a name wins).
* Video: frames stream through ``Upscaler.stream``; written at the input's frame rate.
* EXT ``auto`` keeps the input's format (16-bit PNGs stay 16-bit; grayscale stays grayscale; alpha is kept).
* ``outscale`` (Real-ESRGAN's ``--outscale``): the result is resized to ``int(input size * outscale)`` with Lanczos
  (runtime/resize.py) unless that is the model's own size.
* Every write is atomic (temp file + rename): no partial output, ever. OUTPUT == INPUT is an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DiskFullError, ImageError, Interrupted, MambaESRError
from ..images import load_image_any, save_image
from .errors import RuntimeConfigError
from .resize import lanczos_resize, outscale_size
from .upscaler import Upscaler
from .video import (
    VIDEO_SUFFIXES,
    check_frame_count,
    is_video,
    probe_video,
    read_frames,
    write_video,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "UpscaleRequest",
    "UpscaleSummary",
    "build_upscaler",
    "check_request",
    "output_name",
    "upscale_file",
    "upscale_path",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_GRAY_MODES = frozenset({"L", "1", "I", "I;16", "I;16L", "I;16B", "I;16N"})

Progress = Callable[[int, "int | None"], None]  # (done, total or None when unknown), called at the start and per item
Failed = Callable[[Path, str], None]  # (source, why): a folder's file that failed and was skipped


@dataclass(frozen=True)
class UpscaleRequest:
    input: Path
    output: Path
    model: Path | None = None
    preset: str | None = None
    scan_impl: str = "auto"
    backend: str | None = None
    device_profile: str | None = None
    cuda: bool = False
    tile: int | None = None
    overlap: int | None = None
    batch: int | None = None
    blend: str = "cosine"
    half: bool | None = None  # None: the profile's/bundle's precision (fp32 on CPU)
    ext: str = "auto"
    suffix: str = ""
    overwrite: bool = False
    output_is_folder: bool = False  # OUTPUT names a folder even if it does not exist yet (`-o newdir/`)
    outscale: float | None = None  # None: the model's scale
    threads: int | None = None  # CPU threads of the backend (None: its default)


@dataclass(frozen=True)
class UpscaleSummary:
    kind: str  # "image", "folder" or "video"
    written: int  # images (image, folder) or frames (video) written
    skipped: int
    failed: tuple[tuple[Path, str], ...]
    total: int  # images found (folder), 1 (image), frames (video)
    seconds: float
    target: Path  # the file written (image, video) or the output folder
    input_size: tuple[int, int] | None = None  # (width, height): image, video
    output_size: tuple[int, int] | None = None
    scale: float | None = None  # the output / input size factor (outscale, else the model's)

    def raise_for_failures(self) -> None:
        """``ImageError`` when files of a folder failed (after the others were written): exit code 2 in the CLI."""
        if self.failed:
            raise ImageError(
                f"{len(self.failed)} of {self.total} images failed (first: {self.failed[0][0]})",
                hint="the others were written; fix or remove the failed files and run again (existing outputs are skipped)",
            )


def build_upscaler(req: UpscaleRequest) -> Upscaler:
    precision = None if req.half is None else ("fp16" if req.half else "fp32")
    common = dict(tile=req.tile, overlap=req.overlap, batch=req.batch, blend=req.blend, precision=precision)
    common.update(preset=req.preset, scan_impl=req.scan_impl, threads=req.threads)
    if req.device_profile:
        overrides = {k: v for k, v in common.items() if v is not None}
        if req.backend:
            overrides["backend"] = req.backend
        if req.cuda:
            overrides["device"] = "cuda"
        return Upscaler.from_profile(req.device_profile, req.model, **overrides)
    return Upscaler.from_path(req.model, backend=req.backend, device="cuda" if req.cuda else "cpu", **common)


def output_name(source: Path, ext: str, suffix: str) -> str:
    extension = source.suffix if ext == "auto" else "." + ext.lstrip(".")
    return f"{source.stem}{'_' + suffix if suffix else ''}{extension}"


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _outscaled(result: np.ndarray, input_hw: tuple[int, int], outscale: float | None) -> np.ndarray:
    if outscale is None:
        return result
    return lanczos_resize(result, outscale_size(input_hw, outscale))


def upscale_file(up: Upscaler, source: Path, target: Path, outscale: float | None = None) -> tuple[tuple[int, int], tuple[int, int]]:
    """Read, upscale (then resize to ``outscale``) and atomically write one image; returns (input WxH, output WxH).

    The target's folder is created when missing (after the upscale: a failure leaves nothing behind)."""
    data, info = load_image_any(source)
    if info.bit_depth == 16:
        image = np.rint(data * 65535.0).astype(np.uint16)
    else:
        image = np.rint(data * 255.0).astype(np.uint8)
    if info.mode in _GRAY_MODES and not info.has_alpha:
        image = image[..., 0]
    result = _outscaled(up(image), image.shape[:2], outscale)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_image(target, result)
    return (image.shape[1], image.shape[0]), (result.shape[1], result.shape[0])


def _output_folder(req: UpscaleRequest) -> bool:
    return req.output_is_folder or req.output.is_dir()


def _image_target(req: UpscaleRequest) -> Path:
    folder = _output_folder(req)
    target = req.output / output_name(req.input, req.ext, req.suffix) if folder else req.output
    if req.ext != "auto" and not folder:
        target = target.with_suffix("." + req.ext.lstrip("."))
    return target


def _run_image(req: UpscaleRequest, up: Upscaler) -> UpscaleSummary:
    target = _image_target(req)
    start = time.perf_counter()
    (w, h), (ow, oh) = upscale_file(up, req.input, target, req.outscale)
    seconds = time.perf_counter() - start
    return UpscaleSummary("image", 1, 0, (), 1, seconds, target, (w, h), (ow, oh), req.outscale or up.scale)


def _folder_sources(root: Path, exclude: Path | None) -> list[Path]:
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if exclude is not None and exclude in path.resolve().parents:
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            found.append(path)
    return found


def _replaced(target: Path, mtime_before: int | None) -> bool:
    """Whether `target` was written since its mtime was `mtime_before` (None: it did not exist then)."""
    try:
        return target.stat().st_mtime_ns != mtime_before
    except FileNotFoundError:
        return False


def _run_folder(req: UpscaleRequest, up: Upscaler, on_progress: Progress, on_failed: Failed) -> UpscaleSummary:
    out_root = req.output
    if out_root.exists() and not out_root.is_dir():
        raise ImageError(f"input is a folder but output {out_root} is a file", hint="pass an output folder with -o")
    same_root = _same(out_root, req.input)
    if same_root and not req.suffix:
        raise ImageError("output folder is the input folder", hint="choose another -o, or pass --suffix so names differ")
    inside = out_root.resolve() if req.input.resolve() in out_root.resolve().parents else None
    sources = _folder_sources(req.input, inside)
    if not sources:
        raise ImageError(f"no images found in {req.input}", hint=f"supported: {', '.join(IMAGE_SUFFIXES)}")
    written, skipped, failed = 0, 0, []
    in_flight: tuple[Path, int | None] | None = None  # (target, its mtime before) while an image is being written
    start = time.perf_counter()
    rerun = "run the same command again to do the rest (complete outputs are skipped)"
    on_progress(0, len(sources))
    try:
        for done, source in enumerate(sources, start=1):
            target = out_root / source.relative_to(req.input).parent / output_name(source, req.ext, req.suffix)
            if target.exists() and not req.overwrite:
                skipped += 1
            else:
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    in_flight = (target, target.stat().st_mtime_ns if target.exists() else None)
                    upscale_file(up, source, target, req.outscale)
                    written += 1
                    in_flight = None
                except DiskFullError as exc:  # every further image would fail the same way: stop here
                    raise DiskFullError(
                        f"{exc.message}; {written} images written before it are complete",
                        hint=f"{exc.hint}; then {rerun}",
                    ) from exc
                except MambaESRError as exc:
                    failed.append((source, str(exc)))
                    on_failed(source, str(exc))
            on_progress(done, len(sources))
    except KeyboardInterrupt:
        if in_flight is not None and _replaced(*in_flight):  # Ctrl-C came after the rename, before the count
            written += 1
        raise Interrupted(f"{written} images written to {out_root}, all complete; {rerun}") from None
    seconds = time.perf_counter() - start
    return UpscaleSummary("folder", written, skipped, tuple(failed), len(sources), seconds, out_root)


def _video_target(req: UpscaleRequest) -> Path:
    return req.output / output_name(req.input, req.ext, req.suffix) if _output_folder(req) else req.output


def _run_video(req: UpscaleRequest, up: Upscaler, on_progress: Progress) -> UpscaleSummary:
    target = _video_target(req)
    info = probe_video(req.input)
    start = time.perf_counter()
    total = info.frames or None
    on_progress(0, total)
    out_size: list[tuple[int, int]] = []

    def source():  # BGR -> RGB for an "rgb" Upscaler; a stream that stops early fails (no output written)
        decoded = 0
        for frame in read_frames(req.input):
            decoded += 1
            yield frame[..., ::-1]
        check_frame_count(req.input, decoded, info.frames)

    def frames_out():
        done = 0
        with up.stream(source()) as stream:
            for frame in stream:
                frame = _outscaled(frame, (info.height, info.width), req.outscale)
                out_size[:] = [(frame.shape[1], frame.shape[0])]
                done += 1
                on_progress(done, total)
                yield np.ascontiguousarray(frame[..., ::-1])

    target.parent.mkdir(parents=True, exist_ok=True)
    count = write_video(target, frames_out(), info.fps)
    seconds = time.perf_counter() - start
    size = out_size[0] if out_size else None
    return UpscaleSummary("video", count, 0, (), count, seconds, target, (info.width, info.height), size, req.outscale or up.scale)


def _check_numbers(req: UpscaleRequest) -> None:
    """Negative sizes are refused before the model loads (0 means: whole image / automatic)."""
    for flag, value in (("--tile", req.tile), ("--tile-overlap", req.overlap), ("--batch", req.batch)):
        if value is not None and value < 0:
            raise RuntimeConfigError(f"{flag} must be >= 0, got {value}", hint="e.g. --tile 64 --tile-overlap 16; --tile 0: whole image")
    if req.outscale is not None and not req.outscale > 0:
        raise RuntimeConfigError(f"--outscale must be > 0, got {req.outscale:g}", hint="e.g. --outscale 2 (the x4 result resized to x2)")


def check_request(req: UpscaleRequest) -> None:
    """Refuse bad paths and numbers before any model loads (nothing is written)."""
    if not req.input.exists():
        raise ImageError(f"input not found: {req.input}", hint="check the path")
    if _same(req.output, req.input) and not req.input.is_dir():
        raise ImageError(f"output path is the input path: {req.input}", hint="choose another -o so the input is kept")
    if req.input.is_file() and not is_video(req.input) and req.input.suffix.lower() not in IMAGE_SUFFIXES:
        log.info("%s has an unusual suffix; trying to read it as an image", req.input)
    if req.output_is_folder and req.output.exists() and not req.output.is_dir():
        raise ImageError(f"output folder is a file: {req.output}", hint="choose another -o")
    if not req.input.is_dir() and not _output_folder(req) and not req.output.parent.is_dir():
        if req.output.parent.exists():
            raise ImageError(f"output folder is a file: {req.output.parent}", hint="choose another -o")
        raise ImageError(f"output folder does not exist: {req.output.parent}", hint="create it first")
    if not req.input.is_dir():
        target = _image_target(req) if not is_video(req.input) else _video_target(req)
        if _same(target, req.input):
            raise ImageError(f"output path is the input path: {req.input}", hint="choose another -o so the input is kept")
        if target.exists() and not req.overwrite:
            raise ImageError(f"output exists: {target}", hint="pass --overwrite to replace it, or choose another -o")
        if is_video(req.input) and not is_video(target):
            raise ImageError(f"the input is a video but the output {target} is not", hint=f"use one of {', '.join(VIDEO_SUFFIXES)}")
    _check_numbers(req)


def _ignore(*_args: object) -> None:
    return None


def upscale_path(req: UpscaleRequest, up: Upscaler, *, on_progress: Progress = _ignore, on_failed: Failed = _ignore) -> UpscaleSummary:
    """Upscale the image, folder or video ``req.input`` with ``up`` (after ``check_request``).

    A folder's failed files are passed to ``on_failed`` and listed in the summary (``raise_for_failures``)."""
    if req.input.is_dir():
        return _run_folder(req, up, on_progress, on_failed)
    if is_video(req.input):
        return _run_video(req, up, on_progress)
    return _run_image(req, up)
