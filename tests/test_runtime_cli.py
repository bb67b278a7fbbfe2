"""`mambaesr-edge upscale` on images, folders and videos, bad inputs, and the example camera app."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mambaesr_edge.checkpoint import save_weights
from mambaesr_edge.cli import main
from mambaesr_edge.model import MambaSR
from mambaesr_edge.presets import get_preset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(2)
    return save_weights(MambaSR(get_preset("test")), tmp_path_factory.mktemp("w") / "test.safetensors")


def write_png(path: Path, h: int, w: int, seed: int = 0, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    if mode == "RGB":
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(path)
    elif mode == "RGBA":
        Image.fromarray(rng.integers(0, 256, (h, w, 4)).astype(np.uint8), "RGBA").save(path)
    elif mode == "I;16":
        Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16)).save(path)
    return path


def bomb_png(path: Path, size: int = 20000) -> Path:
    """A valid PNG header that claims size x size pixels (Pillow refuses it before decoding)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))
    return path


def run(*args: object) -> int:
    return main([str(a) for a in args])


def no_temp_files(folder: Path) -> bool:
    return not any(p.name.startswith(".") and ".tmp-" in p.name for p in folder.rglob("*"))


def test_image_is_upscaled_and_existing_output_needs_overwrite(tmp_path, weights, capsys):
    src = write_png(tmp_path / "in.png", 10, 12)
    out = tmp_path / "out.png"
    assert run("upscale", src, "-o", out, "-w", weights, "--tile", 8, "--tile-overlap", 2) == 0
    assert Image.open(out).size == (48, 40)
    before = out.read_bytes()
    assert run("upscale", src, "-o", out, "-w", weights) == 2
    assert "output exists" in capsys.readouterr().err and out.read_bytes() == before
    assert run("upscale", src, "-o", out, "-w", weights, "--overwrite", "--tile", 0) == 0
    assert run("upscale", src, "-o", src, "-w", weights) == 2
    assert "input path" in capsys.readouterr().err


def test_gray16_and_rgba_keep_their_kind(tmp_path, weights):
    gray = write_png(tmp_path / "g.png", 6, 5, mode="I;16")
    rgba = write_png(tmp_path / "a.png", 6, 5, mode="RGBA")
    assert run("upscale", gray, "-o", tmp_path / "g4.png", "-w", weights, "--tile", 0) == 0
    assert run("upscale", rgba, "-o", tmp_path / "a4.png", "-w", weights, "--tile", 0) == 0
    g4, a4 = Image.open(tmp_path / "g4.png"), Image.open(tmp_path / "a4.png")
    assert g4.mode.startswith("I") and g4.size == (20, 24)
    assert a4.mode == "RGBA" and a4.size == (20, 24)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p.write_bytes(b""), "not a readable image"),
        (lambda p: p.write_text("not an image"), "not a readable image"),
        (lambda p: bomb_png(p), "too large"),
    ],
)
def test_bad_images_give_one_line_errors_and_no_output(tmp_path, weights, capsys, make, message):
    src = tmp_path / "bad.png"
    make(src)
    assert run("upscale", src, "-o", tmp_path / "out.png", "-w", weights) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out.png").exists() and no_temp_files(tmp_path)


def test_truncated_png_is_an_error(tmp_path, weights, capsys):
    src = write_png(tmp_path / "t.png", 20, 20)
    src.write_bytes(src.read_bytes()[:80])
    assert run("upscale", src, "-o", tmp_path / "o.png", "-w", weights) == 2
    assert not (tmp_path / "o.png").exists()


def test_exif_orientation_is_respected(tmp_path, weights):
    src = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(np.zeros((4, 8, 3), np.uint8)).save(src, exif=exif)  # stored 8 wide, 4 high
    assert run("upscale", src, "-o", tmp_path / "o.png", "-w", weights, "--tile", 0) == 0
    assert Image.open(tmp_path / "o.png").size == (16, 32)  # displayed 4 wide, 8 high, x4


def test_missing_output_folder_is_an_error(tmp_path, weights, capsys):
    src = write_png(tmp_path / "in.png", 4, 4)
    assert run("upscale", src, "-o", tmp_path / "nope" / "o.png", "-w", weights) == 2
    assert "does not exist" in capsys.readouterr().err


def test_folder_mirrors_structure_skips_existing_and_reports_failures(tmp_path, weights, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    write_png(src / "a.png", 8, 8)
    write_png(src / "sub" / "b.png", 6, 9, seed=1)
    (src / "sub" / "broken.png").write_text("garbage")
    (src / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    assert run("upscale", src, "-o", out, "-w", weights, "--tile", 0, "--suffix", "x4") == 2  # one failed
    assert Image.open(out / "a_x4.png").size == (32, 32)
    assert Image.open(out / "sub" / "b_x4.png").size == (36, 24)
    assert not (out / "sub" / "broken_x4.png").exists() and no_temp_files(out)
    captured = capsys.readouterr()
    assert "broken.png" not in captured.out  # a per-file failure is a diagnostic: stderr, like the final error
    assert any(line.startswith("failed ") and "broken.png" in line for line in captured.err.splitlines())
    assert "1 of 3 images failed" in captured.err
    (src / "sub" / "broken.png").unlink()
    assert run("upscale", src, "-o", out, "-w", weights, "--suffix", "x4") == 0  # resume: all exist, skipped
    assert "2 skipped" in capsys.readouterr().out
    assert run("upscale", src, "-o", src, "-w", weights) == 2  # into itself without a suffix


cv2 = pytest.importorskip("cv2", reason="video tests need OpenCV (pip install 'mambaesr-edge[video]')")


def tiny_video(path: Path, frames: int = 4, h: int = 12, w: int = 16) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((h, w, 3), 40 * i, np.uint8))
    writer.release()
    return path


def video_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def test_video_through_the_cli(tmp_path, weights):
    src = tiny_video(tmp_path / "in.avi")
    out = tmp_path / "out.avi"
    assert run("upscale", src, "-o", out, "-w", weights, "--tile", 8, "--tile-overlap", 2) == 0
    frames = video_frames(out)
    assert len(frames) == 4 and frames[0].shape == (48, 64, 3)


def test_unopenable_video_is_an_error(tmp_path, weights, capsys):
    src = tmp_path / "bad.mp4"
    src.write_bytes(b"\0" * 100)
    assert run("upscale", src, "-o", tmp_path / "o.mp4", "-w", weights) == 2
    assert "cannot open video" in capsys.readouterr().err and not (tmp_path / "o.mp4").exists()


def test_example_camera_app_on_a_tiny_video(tmp_path, weights):
    src = tiny_video(tmp_path / "cam.avi")
    out = tmp_path / "cam_x4.avi"
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "camera_app.py"), str(src), "-o", str(out), "--model", str(weights), "--tile", "8", "--overlay"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "frames/s" in result.stdout
    frames = video_frames(out)
    assert len(frames) == 4 and frames[0].shape == (48, 64, 3)
