"""Video files through OpenCV (the optional extra ``video``: ``pip install 'mambaesr-edge[video]'``), imported lazily.

Frames are BGR uint8 as OpenCV gives them. ``write_video`` writes to a temporary file beside the target and renames
it on success (``fileio.atomic_write``): an interrupted or failed run leaves no partial video.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DependencyMissingError, ImageError
from ..fileio import atomic_write

__all__ = [
    "VIDEO_SUFFIXES",
    "VideoInfo",
    "check_frame_count",
    "import_cv2",
    "is_video",
    "probe_video",
    "read_frames",
    "write_video",
]

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm")
_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG", ".webm": "VP80"}


def import_cv2():
    if not log.isEnabledFor(logging.DEBUG):  # FFmpeg's own complaints about a damaged file, on stderr: only with --debug
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        import cv2
    except ImportError as exc:
        raise DependencyMissingError(
            "video needs OpenCV, which is not installed", hint="pip install 'mambaesr-edge[video]' (opencv-python-headless)"
        ) from exc
    return cv2


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int  # as the container reports it (0 when unknown)


def _open(cv2, source: str | Path | int):
    capture = cv2.VideoCapture(source if isinstance(source, int) else str(source))
    if not capture.isOpened():
        capture.release()
        what = f"camera {source}" if isinstance(source, int) else f"video {source}"
        raise ImageError(f"cannot open {what}", hint="check the path / camera index and that OpenCV supports the codec")
    return capture


def probe_video(source: str | Path | int) -> VideoInfo:
    cv2 = import_cv2()
    capture = _open(cv2, source)
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        return VideoInfo(
            int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            fps if fps > 0 else 25.0,
            max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))),
        )
    finally:
        capture.release()


def read_frames(source: str | Path | int, limit: int | None = None) -> Iterator[np.ndarray]:
    """BGR uint8 frames of a video file or camera index (closed when the generator is closed)."""
    cv2 = import_cv2()
    capture = _open(cv2, source)
    try:
        count = 0
        while limit is None or count < limit:
            ok, frame = capture.read()
            if not ok:
                return
            count += 1
            yield frame
    finally:
        capture.release()


def check_frame_count(source: str | Path, decoded: int, declared: int) -> None:
    """A stream that ends before the frame count its container declares is broken or truncated: ``ImageError``.

    One frame short is only logged: containers without a stored count give OpenCV an estimate (duration x fps)."""
    if declared - decoded > 1:
        raise ImageError(
            f"video {source} ends after {decoded} of its {declared} frames: the stream is truncated or broken",
            hint="re-encode or re-download it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4); no output was written",
        )
    if decoded < declared:
        log.warning("video %s: decoded %d frames, its container declares %d", source, decoded, declared)


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float) -> int:
    """Write BGR uint8 frames (all of one size) atomically; returns the number written. No frames: error."""
    cv2 = import_cv2()
    target = Path(path)
    fourcc = _FOURCC.get(target.suffix.lower())
    if fourcc is None:
        raise ImageError(f"unknown video format for {target}", hint=f"use one of {', '.join(VIDEO_SUFFIXES)}")
    count = 0
    try:
        with atomic_write(target) as tmp:
            writer = None
            try:
                for frame in frames:
                    if writer is None:
                        h, w = frame.shape[:2]
                        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), float(fps), (w, h))
                        if not writer.isOpened():
                            raise ImageError(f"OpenCV cannot write {target.suffix} video ({fourcc})", hint="try -o out.avi")
                    writer.write(np.ascontiguousarray(frame))
                    count += 1
            finally:
                if writer is not None:
                    writer.release()
            if count == 0:
                raise ImageError("the video has no frames to write", hint="check that the input video decodes (ffprobe it)")
    except OSError as exc:  # the temp file / rename: folder not writable, disk full (the temp file is already removed)
        raise ImageError(f"cannot write video {target}: {exc.strerror or exc}", hint="check that the output folder is writable") from exc
    return count
