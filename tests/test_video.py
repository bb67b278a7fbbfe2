"""Issue 5, video: a 4-frame .mp4 through `mambaesr-edge upscale` and through examples/camera_app.py, and the video
bad inputs (cannot be opened, truncated, existing output, unwritable output): one-line error, exit 2, no partial file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2", reason="video tests need OpenCV (pip install 'mambaesr-edge[video]')")

from mambaesr_edge import fileio  # noqa: E402
from mambaesr_edge.checkpoint import save_weights  # noqa: E402
from mambaesr_edge.cli import main  # noqa: E402
from mambaesr_edge.model import MambaSR  # noqa: E402
from mambaesr_edge.presets import get_preset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
W, H, FRAMES = 32, 24, 4


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(5)
    return save_weights(MambaSR(get_preset("test")), tmp_path_factory.mktemp("w") / "test.safetensors")


@pytest.fixture()
def video(tmp_path) -> Path:
    """A 4-frame 32x24 mp4 (mp4v), written with OpenCV: a moving gradient so frames differ."""
    path = tmp_path / "in.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (W, H))
    assert writer.isOpened()
    ramp = np.linspace(0, 200, W, dtype=np.float32)[None, :, None]
    for i in range(FRAMES):
        writer.write(np.broadcast_to(ramp + 10 * i, (H, W, 3)).astype(np.uint8))
    writer.release()
    assert path.stat().st_size > 0
    return path


def frames_of(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def leftovers(folder: Path) -> list[str]:
    """Temporary files an atomic write would leave behind if it were not atomic."""
    return [p.name for p in folder.rglob("*") if ".tmp-" in p.name]


def fails_cleanly(args: list[object], capsys, expected: str) -> str:
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err
    assert err.count("\n") <= 3, err  # the error line and its hint
    return err


def camera_app(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / "camera_app.py"), *(str(a) for a in args)], check=False, capture_output=True, text=True, timeout=170
    )


def test_mp4_through_the_upscale_command(tmp_path, weights, video):
    out = tmp_path / "out.mp4"
    assert main(["upscale", str(video), "-o", str(out), "-w", str(weights), "--tile", "16", "--tile-overlap", "4"]) == 0
    frames = frames_of(out)
    assert len(frames) == FRAMES and frames[0].shape == (4 * H, 4 * W, 3)
    assert not leftovers(tmp_path)


def test_mp4_through_the_example_camera_app(tmp_path, weights, video):
    out = tmp_path / "cam.mp4"
    result = camera_app(video, "-o", out, "--model", weights, "--tile", 0, "--overlay")
    assert result.returncode == 0, result.stderr
    assert "frames/s" in result.stdout and f"wrote {FRAMES} frames" in result.stdout
    frames = frames_of(out)
    assert len(frames) == FRAMES and frames[0].shape == (4 * H, 4 * W, 3)


def test_existing_video_output_needs_overwrite(tmp_path, weights, video, capsys):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"keep me")
    fails_cleanly(["upscale", video, "-o", out, "-w", weights], capsys, "output exists")
    assert out.read_bytes() == b"keep me"
    assert main(["upscale", str(video), "-o", str(out), "-w", str(weights), "--tile", "0", "--overwrite"]) == 0
    assert len(frames_of(out)) == FRAMES


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
def test_video_that_cannot_be_read_fails_cleanly(tmp_path, weights, video, capsys, kind):
    bad = tmp_path / "bad.mp4"
    if kind == "garbage":
        bad.write_bytes(b"\0" * 100)
    elif kind == "truncated":
        bad.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    else:
        bad.write_bytes(b"")
    out = tmp_path / "o.mp4"
    # either OpenCV cannot open it, or it opens and yields no frames: both are one-line errors
    assert main(["upscale", str(bad), "-o", str(out), "-w", str(weights), "--tile", "0"]) == 2
    err = capsys.readouterr().err
    assert ("cannot open video" in err or "no frames" in err) and "Traceback" not in err, err
    assert not out.exists() and not leftovers(tmp_path)


def test_camera_app_on_a_video_that_cannot_be_opened(tmp_path, weights):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0" * 100)
    out = tmp_path / "o.mp4"
    result = camera_app(bad, "-o", out, "--model", weights)
    assert result.returncode == 2
    assert "error: cannot open video" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and not leftovers(tmp_path)


def test_unwritable_video_output_fails_cleanly(tmp_path, weights, video, capsys, monkeypatch):
    """Root ignores folder permissions, so the folder's refusal is simulated where the temp file is created."""

    def refuse(target: Path) -> Path:
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(fileio, "_create_temp", refuse)
    out = tmp_path / "o.mp4"
    fails_cleanly(["upscale", video, "-o", out, "-w", weights, "--tile", 0], capsys, "cannot write video")
    assert not out.exists() and not leftovers(tmp_path)
