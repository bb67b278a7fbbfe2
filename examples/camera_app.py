"""A small camera app: read a video file or a camera, upscale every frame with ``Upscaler.stream``, write a video.

    python examples/camera_app.py input.mp4 -o upscaled.mp4 --model bundle/         # a file
    python examples/camera_app.py 0 -o upscaled.mp4 --target-fps 15 --max-frames 300 # camera 0, live: may drop frames
    python examples/camera_app.py input.mp4 -o up.mp4 --overlay                      # frames/s drawn on the video

Needs OpenCV (``pip install 'mambaesr-edge[video]'``). OpenCV frames are BGR, so the Upscaler is built with
``channel_order="bgr"``. Frames/s is printed every second (and drawn on the frames with ``--overlay``). With
``--target-fps`` the stream adapts (overlap, batch, then dropping the oldest waiting frames) and prints each decision.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from mambaesr_edge.errors import MambaESRError
from mambaesr_edge.runtime import Upscaler
from mambaesr_edge.runtime.video import import_cv2, read_frames, write_video


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="video file, or a camera index such as 0")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output video (.mp4 or .avi)")
    parser.add_argument("--model", type=Path, default=None, help="weights, .onnx, .engine or bundle (default: shipped model)")
    parser.add_argument("--backend", default=None, help="torch, onnxruntime or tensorrt (default: from --model)")
    parser.add_argument("--cuda", action="store_true", help="run on the CUDA GPU")
    parser.add_argument("--tile", type=int, default=None, help="LR tile size (0: whole frame)")
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap in LR pixels")
    parser.add_argument("--target-fps", type=float, default=None, help="adapt to this frame rate (drops frames if needed)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames (cameras never end)")
    parser.add_argument("--overlay", action="store_true", help="draw frames/s onto the output frames")
    parser.add_argument("--fps-out", type=float, default=None, help="frame rate of the written video (default: the source's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cv2 = import_cv2()
    source: str | int = int(args.source) if args.source.isdigit() else args.source
    try:
        capture = cv2.VideoCapture(source)
        source_fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        capture.release()
        up = Upscaler.from_path(
            args.model, backend=args.backend, device="cuda" if args.cuda else "cpu",
            tile=args.tile, overlap=args.overlap, channel_order="bgr",
        )
        print(f"upscaler: {up}")
        live = isinstance(source, int)
        stream = up.stream(read_frames(source, args.max_frames), target_fps=args.target_fps, pace=False, indexed=True)
        stats = {"frames": 0, "start": time.perf_counter(), "last_print": time.perf_counter()}

        def frames_out():
            with stream:
                for index, frame in stream:
                    stats["frames"] += 1
                    now = time.perf_counter()
                    fps = stats["frames"] / (now - stats["start"])
                    if args.overlay:
                        cv2.putText(frame, f"{fps:.1f} fps", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 255, 0), 2)
                    if now - stats["last_print"] >= 1.0 or live:
                        print(f"frame {index}: {fps:.2f} frames/s", flush=True)
                        stats["last_print"] = now
                    yield frame
                for decision in stream.decisions:
                    print(f"decision: {decision}")

        count = write_video(args.output, frames_out(), args.fps_out or source_fps)
    except MambaESRError as exc:
        print(f"error: {exc.message}\nhint: {exc.hint}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - stats["start"]
    print(f"wrote {count} frames to {args.output}: {count / seconds:.2f} frames/s overall ({len(stream.dropped)} dropped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
