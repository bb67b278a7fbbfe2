"""The work behind ``mambaesr-edge upscale INPUT -o OUTPUT`` (cli.py declares the options and calls ``run_upscale``).

INPUT is an image, a folder, or a video (.mp4/.avi/.mov/.mkv/.m4v/.webm, needs the ``video`` extra).

* Image: OUTPUT is a file (format from its suffix) or an existing folder (then ``NAME[_SUFFIX].EXT`` inside it).
  An existing OUTPUT is an error unless ``--overwrite``.
* Folder: every image below INPUT (png, jpg, jpeg, bmp, tif, tiff, webp; hidden files skipped) goes to the same
  relative path below OUTPUT as ``NAME[_SUFFIX].EXT``. Existing outputs are *skipped* (so an interrupted run resumes)
  unless ``--overwrite``; a file that fails is reported and skipped, the others complete, and then ``ImageError``
  ("N of M images failed") makes the exit code 2. OUTPUT may not be INPUT itself unless ``--suffix`` makes the names differ.
  A full disk stops the run at once (``DiskFullError``); Ctrl-C stops it with ``Interrupted`` (exit 130): in both
  cases the outputs written are complete and a rerun does the rest. Several processes may write into one OUTPUT
  folder at once (temporary names are unique per process; the last complete write of a name wins).
* Video: frames stream through ``Upscaler.stream``; written at the input's frame rate.
* EXT ``auto`` keeps the input's format (16-bit PNGs stay 16-bit; grayscale stays grayscale; alpha is kept).
* Every write is atomic (temp file + rename): no partial output, ever. OUTPUT == INPUT is an error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.markup import escape

from ..errors import DiskFullError, ImageError, Interrupted, MambaESRError
from ..images import load_image_any, save_image
from .errors import RuntimeConfigError
from .upscaler import Upscaler
from .video import VIDEO_SUFFIXES, check_frame_count, is_video, probe_video, read_frames, write_video

__all__ = ["IMAGE_SUFFIXES", "UpscaleRequest", "UpscaleSummary", "build_upscaler", "output_name", "run_upscale"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_GRAY_MODES = frozenset({"L", "1", "I", "I;16", "I;16L", "I;16B", "I;16N"})


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


@dataclass(frozen=True)
class UpscaleSummary:
    written: int
    skipped: int
    failed: tuple[tuple[Path, str], ...]
    seconds: float


def build_upscaler(req: UpscaleRequest) -> Upscaler:
    precision = None if req.half is None else ("fp16" if req.half else "fp32")
    common = dict(tile=req.tile, overlap=req.overlap, batch=req.batch, blend=req.blend, precision=precision)
    common.update(preset=req.preset, scan_impl=req.scan_impl)
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


def upscale_file(up: Upscaler, source: Path, target: Path) -> tuple[tuple[int, int], tuple[int, int]]:
    """Read, upscale and atomically write one image; returns (input WxH, output WxH)."""
    data, info = load_image_any(source)
    if info.bit_depth == 16:
        image = np.rint(data * 65535.0).astype(np.uint16)
    else:
        image = np.rint(data * 255.0).astype(np.uint8)
    if info.mode in _GRAY_MODES and not info.has_alpha:
        image = image[..., 0]
    result = up(image)
    save_image(target, result)
    return (image.shape[1], image.shape[0]), (result.shape[1], result.shape[0])


def _image_target(req: UpscaleRequest) -> Path:
    target = req.output / output_name(req.input, req.ext, req.suffix) if req.output.is_dir() else req.output
    if req.ext != "auto" and not req.output.is_dir():
        target = target.with_suffix("." + req.ext.lstrip("."))
    return target


def _run_image(req: UpscaleRequest, up: Upscaler, console) -> UpscaleSummary:
    target = _image_target(req)
    start = time.perf_counter()
    (w, h), (ow, oh) = upscale_file(up, req.input, target)
    seconds = time.perf_counter() - start
    console.print(f"{req.input} {w}x{h} -> {target} {ow}x{oh} in {seconds:.2f} s")
    return UpscaleSummary(1, 0, (), seconds)


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


def _progress(console):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console)


def _run_folder(req: UpscaleRequest, up: Upscaler, console) -> UpscaleSummary:
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
    with _progress(console) as progress:
        task = progress.add_task("upscaling", total=len(sources))
        try:
            for source in sources:
                target = out_root / source.relative_to(req.input).parent / output_name(source, req.ext, req.suffix)
                if target.exists() and not req.overwrite:
                    skipped += 1
                else:
                    try:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        in_flight = (target, target.stat().st_mtime_ns if target.exists() else None)
                        upscale_file(up, source, target)
                        written += 1
                        in_flight = None
                    except DiskFullError as exc:  # every further image would fail the same way: stop here
                        raise DiskFullError(
                            f"{exc.message}; {written} images written before it are complete",
                            hint=f"{exc.hint}; then {rerun}",
                        ) from exc
                    except MambaESRError as exc:
                        failed.append((source, str(exc)))
                        progress.console.print(f"[red]failed[/] {escape(str(source))}: {escape(str(exc))}", highlight=False, soft_wrap=True)
                progress.advance(task)
        except KeyboardInterrupt:
            if in_flight is not None and _replaced(*in_flight):  # Ctrl-C came after the rename, before the count
                written += 1
            raise Interrupted(f"{written} images written to {out_root}, all complete; {rerun}") from None
    seconds = time.perf_counter() - start
    console.print(f"{written} written, {skipped} skipped (exist; --overwrite replaces), {len(failed)} failed, in {seconds:.1f} s")
    if failed:
        raise ImageError(
            f"{len(failed)} of {len(sources)} images failed (first: {failed[0][0]})",
            hint="the others were written; fix or remove the failed files and run again (existing outputs are skipped)",
        )
    return UpscaleSummary(written, skipped, (), seconds)


def _video_target(req: UpscaleRequest) -> Path:
    return req.output / output_name(req.input, req.ext, req.suffix) if req.output.is_dir() else req.output


def _run_video(req: UpscaleRequest, up: Upscaler, console) -> UpscaleSummary:
    target = _video_target(req)
    info = probe_video(req.input)
    start = time.perf_counter()
    with _progress(console) as progress:
        task = progress.add_task("frames", total=info.frames or None)

        def source():  # BGR -> RGB for an "rgb" Upscaler; a stream that stops early fails (no output written)
            decoded = 0
            for frame in read_frames(req.input):
                decoded += 1
                yield frame[..., ::-1]
            check_frame_count(req.input, decoded, info.frames)

        def frames_out():
            with up.stream(source()) as stream:
                for frame in stream:
                    progress.advance(task)
                    yield np.ascontiguousarray(frame[..., ::-1])

        count = write_video(target, frames_out(), info.fps)
    seconds = time.perf_counter() - start
    console.print(
        f"{req.input} {info.width}x{info.height} -> {target} x{up.scale}: {count} frames in {seconds:.1f} s ({count / seconds:.2f} frames/s)"
    )
    return UpscaleSummary(count, 0, (), seconds)


def _check_numbers(req: UpscaleRequest) -> None:
    """Negative sizes are refused before the model loads (0 means: whole image / automatic)."""
    for flag, value in (("--tile", req.tile), ("--tile-overlap", req.overlap), ("--batch", req.batch)):
        if value is not None and value < 0:
            raise RuntimeConfigError(f"{flag} must be >= 0, got {value}", hint="e.g. --tile 64 --tile-overlap 16; --tile 0: whole image")


def run_upscale(req: UpscaleRequest, console) -> UpscaleSummary:
    """Check paths, build the Upscaler, and upscale an image, a folder or a video. Prints through ``console``."""
    if not req.input.exists():
        raise ImageError(f"input not found: {req.input}", hint="check the path")
    if _same(req.output, req.input) and not req.input.is_dir():
        raise ImageError(f"output path is the input path: {req.input}", hint="choose another -o so the input is kept")
    if req.input.is_file() and not is_video(req.input) and req.input.suffix.lower() not in IMAGE_SUFFIXES:
        log.info("%s has an unusual suffix; trying to read it as an image", req.input)
    if not req.input.is_dir() and not req.output.is_dir() and not req.output.parent.is_dir():
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
    up = build_upscaler(req)
    for decision in up.startup_decisions:
        console.print(f"[dim]{escape(str(decision))}[/]", highlight=False)
    if req.input.is_dir():
        return _run_folder(req, up, console)
    if is_video(req.input):
        return _run_video(req, up, console)
    return _run_image(req, up, console)
