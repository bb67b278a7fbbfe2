"""Issue 5's bad-input list for `mambaesr-edge upscale`, the cases tests/test_runtime_cli.py does not already cover:
zero-size images, unreadable (permission) input, unwritable output (file and folder runs). Each: one-line error,
exit 2, no partial file. (Covered there: empty/garbage/truncated files, the 20000x20000 decompression bomb, existing
output without --overwrite, an unopenable video, a folder run with one bad file; tests/test_video.py: video cases.)"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mambaesr_edge import fileio
from mambaesr_edge.checkpoint import save_weights
from mambaesr_edge.cli import main
from mambaesr_edge.errors import ImageError
from mambaesr_edge.model import MambaSR
from mambaesr_edge.presets import get_preset
from mambaesr_edge.runtime import Upscaler
from mambaesr_edge.runtime.backends.torch import TorchBackend

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(7)
    return save_weights(MambaSR(get_preset("test")), tmp_path_factory.mktemp("w") / "test.safetensors")


def png_with_size(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (zero allowed: invalid, but files like it exist)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def write_png(path: Path, h: int = 6, w: int = 5) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3)).astype(np.uint8)).save(path)
    return path


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".tmp-" in p.name]


def fails_cleanly(args: list[object], capsys, expected: str) -> str:
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err
    assert err.count("\n") <= 3, err  # the error line and its hint
    return err


@pytest.mark.parametrize("width,height", [(0, 0), (0, 10), (10, 0)])
def test_zero_size_image_file(tmp_path, weights, capsys, width, height):
    src = png_with_size(tmp_path / "zero.png", width, height)
    out = tmp_path / "out.png"
    fails_cleanly(["upscale", src, "-o", out, "-w", weights], capsys, "not a readable image")
    assert not out.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 7, 3), (5, 0), (0, 4, 4)])
def test_zero_size_array_in_the_upscaler(shape):
    up = Upscaler(TorchBackend(MambaSR(get_preset("test"))), tile=0)
    with pytest.raises(ImageError, match="empty image"):
        up(np.zeros(shape, np.uint8))


@pytest.mark.skipif(IS_ROOT, reason="root reads files whatever their permissions")
def test_unreadable_input_file(tmp_path, weights, capsys):
    src = write_png(tmp_path / "secret.png")
    src.chmod(0)
    try:
        code = main(["upscale", str(src), "-o", str(tmp_path / "out.png"), "-w", str(weights)])
    finally:
        src.chmod(0o644)
    err = capsys.readouterr().err
    # typer checks the path argument first ("... is not readable"); else images.py says "no permission to read image"
    assert code == 2 and ("not readable" in err or "no permission to read image" in err) and "Traceback" not in err, err
    assert not (tmp_path / "out.png").exists()


def test_unreadable_input_file_simulated(tmp_path, weights, capsys, monkeypatch):
    src = write_png(tmp_path / "secret.png")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(src))

    monkeypatch.setattr(Image, "open", refuse)
    fails_cleanly(["upscale", src, "-o", tmp_path / "out.png", "-w", weights], capsys, "no permission to read image")
    assert not (tmp_path / "out.png").exists() and not leftovers(tmp_path)


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders; see the simulated test below")
def test_unwritable_output_folder(tmp_path, weights, capsys):
    src = write_png(tmp_path / "in.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        fails_cleanly(["upscale", src, "-o", locked / "out.png", "-w", weights, "--tile", 0], capsys, "cannot write image")
        assert not any(locked.iterdir())
    finally:
        locked.chmod(0o755)


def refuse_writes(monkeypatch) -> None:
    """What an unwritable folder does to an atomic write: creating the temporary file fails."""

    def refuse(target: Path) -> Path:
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(fileio, "_create_temp", refuse)


def test_unwritable_output_image_simulated(tmp_path, weights, capsys, monkeypatch):
    src = write_png(tmp_path / "in.png")
    out = tmp_path / "out.png"
    refuse_writes(monkeypatch)
    fails_cleanly(["upscale", src, "-o", out, "-w", weights, "--tile", 0], capsys, "cannot write image")
    assert not out.exists() and not leftovers(tmp_path)


def test_write_failing_midway_leaves_no_partial_file(tmp_path, weights, capsys, monkeypatch):
    """The encoder dies after writing part of the file (disk full): the temp file goes, the old output stays."""
    src = write_png(tmp_path / "in.png")
    out = tmp_path / "out.png"
    out.write_bytes(b"previous result")
    real_save = Image.Image.save

    def save_then_fail(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", save_then_fail)
    err = fails_cleanly(["upscale", src, "-o", out, "-w", weights, "--tile", 0, "--overwrite"], capsys, "no space left on the disk")
    assert "previous version is intact" in err and "free disk space" in err
    assert out.read_bytes() == b"previous result" and not leftovers(tmp_path)


def test_folder_run_into_an_unwritable_folder_reports_every_file(tmp_path, weights, capsys, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b.png"):
        write_png(src / name)
    out = tmp_path / "out"
    out.mkdir()
    refuse_writes(monkeypatch)
    assert main(["upscale", str(src), "-o", str(out), "-w", str(weights), "--tile", "0"]) == 2
    captured = capsys.readouterr()
    assert "2 of 2 images failed" in captured.err and "Traceback" not in captured.err
    assert not any(out.iterdir())
