"""Training with bad input: missing/empty data, small and corrupt images, a teacher of another scale, a full disk."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mambaesr_edge.run_folder as run_folder
from mambaesr_edge.checkpoint import load_model, save_weights
from mambaesr_edge.cli import main
from mambaesr_edge.data import load_train_images
from mambaesr_edge.errors import ConfigError, DatasetError, MambaESRError
from mambaesr_edge.model import MambaSR
from mambaesr_edge.presets import get_preset
from mambaesr_edge.train import TrainConfig, load_train_config, train

CKPT_FILES = ["last.safetensors", "last_ema.safetensors", "last_state.pt"]


@pytest.fixture()
def hr_folder(tmp_path: Path) -> Path:
    """Four smooth random 64x48 HR images (an 8x8 LR patch needs 32x32 HR)."""
    folder = tmp_path / "hr"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((64, 48), Image.BICUBIC).save(folder / f"img{i}.png")
    return folder


def _cfg(hr_folder: Path, tmp_path: Path, **kw) -> TrainConfig:
    base = dict(preset="test", train_dirs=(str(hr_folder),), iterations=6, batch_size=2, patch=8, log_every=3,
                val_every=1000, ckpt_every=3, out_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"),
                scan_impl="chunked", run_name="r")
    base.update(kw)
    return TrainConfig(**base)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "mambaesr_edge.data"]


def test_missing_or_empty_data_dir(tmp_path, capsys):
    with pytest.raises(DatasetError, match="training folder not found") as info:
        load_train_images([tmp_path / "missing"], scale=4, patch=8, cache_dir=None)
    assert "--train-dir" in info.value.hint
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="no images in"):
        load_train_images([tmp_path / "empty"], scale=4, patch=8, cache_dir=None)
    # the CLI: one line + hint, exit 2, and no run folder left behind
    code = main(["train", "--preset", "test", "--train-dir", str(tmp_path / "empty"), "-n", "1", "--out", str(tmp_path / "runs")])
    assert code == 2 and "no images in" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_images_smaller_than_the_patch(hr_folder, tmp_path, caplog):
    for i in range(2):
        Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(hr_folder / f"small{i}.png")  # 20 < 32 HR pixels
    with caplog.at_level(logging.WARNING):
        images = load_train_images([hr_folder], scale=4, patch=8, cache_dir=None)
    assert len(images.names) == 4 and images.too_small == ("small0.png", "small1.png")
    assert any("2 of 6 training images are smaller than one 32x32 HR patch" in w for w in _warnings(caplog))
    with pytest.raises(DatasetError, match="no usable training image: 6 smaller than one 128x128") as info:
        load_train_images([hr_folder], scale=4, patch=32, cache_dir=None)
    assert "--patch" in info.value.hint


def test_corrupt_images_are_skipped_counted_and_warned_once(hr_folder, tmp_path, caplog):
    good = (hr_folder / "img0.png").read_bytes()
    (hr_folder / "a_truncated.png").write_bytes(good[: len(good) // 2])  # valid header, data cut off
    (hr_folder / "b_garbage.jpg").write_bytes(b"this is not a jpeg")
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING):
        images = load_train_images([hr_folder], scale=4, patch=8, cache_dir=cache)
    assert images.names == ("img0", "img1", "img2", "img3")
    assert images.unreadable == ("a_truncated.png", "b_garbage.jpg")
    warnings = [w for w in _warnings(caplog) if "cannot be read" in w]
    assert len(warnings) == 1 and "2 of 6 training images cannot be read" in warnings[0] and "a_truncated.png" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # from the cache: still counted and warned
        cached = load_train_images([hr_folder], scale=4, patch=8, cache_dir=cache)
    assert cached.unreadable == images.unreadable and any("2 of 6" in w for w in _warnings(caplog))
    # training runs on the readable images
    run = train(_cfg(hr_folder, tmp_path, iterations=2, ckpt_every=100))
    assert (run / "model_ema.safetensors").is_file()


def test_a_set_of_only_corrupt_images_is_an_error(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(3):
        (folder / f"x{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(DatasetError, match="none of the 3 training images can be read") as info:
        load_train_images([folder], scale=4, patch=8, cache_dir=tmp_path / "cache")
    assert "corrupt" in info.value.hint
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing cached


def test_teacher_of_another_scale(hr_folder, tmp_path, capsys):
    teacher = save_weights(MambaSR(get_preset("test", scale=2)), tmp_path / "teacher_x2.safetensors")
    with pytest.raises(ConfigError, match=r"teacher_x2.safetensors is x2, student x4") as info:
        train(_cfg(hr_folder, tmp_path, teacher=str(teacher)))
    assert "x4" in info.value.hint
    assert not (tmp_path / "runs").exists()  # refused before a run folder is made
    code = main(["train", "--preset", "test", "--train-dir", str(hr_folder), "--teacher", str(teacher), "-n", "1",
                 "--patch", "8", "--batch-size", "2", "--scan", "chunked", "--out", str(tmp_path / "runs")])
    assert code == 2 and "is x2, student x4" in capsys.readouterr().err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _disk_full(path: Path, data: bytes) -> None:
    """Half the file reaches the disk, then the disk is full (a real ENOSPC from /dev/full where there is one)."""
    path.write_bytes(data[: len(data) // 2])
    if Path("/dev/full").exists():
        real_write_bytes(Path("/dev/full"), data)
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


real_write_bytes = run_folder.write_bytes


@pytest.mark.parametrize("failing", ["last.safetensors", "last_ema.safetensors", "last_state.pt"])
def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(hr_folder, tmp_path, monkeypatch, failing):
    """Step 3 writes a checkpoint; at step 6 the disk fills up while one of its three files is being written."""
    ckpt = tmp_path / "runs" / "r" / "checkpoints"
    seen: dict[str, object] = {}

    def write_bytes(path: Path, data: bytes) -> None:
        if "before" not in seen and (ckpt / "last_state.pt").exists():
            seen["before"] = _snapshot(ckpt)  # the complete step-3 checkpoint, as the second one starts
        if "before" in seen and path.name.startswith(f".{Path(failing).stem}.tmp-"):
            _disk_full(path, data)
        real_write_bytes(path, data)

    monkeypatch.setattr(run_folder, "write_bytes", write_bytes)
    with pytest.raises(MambaESRError, match="no space left on the disk while writing the step-6 checkpoint") as info:
        train(_cfg(hr_folder, tmp_path))
    assert "intact" in info.value.message and "--resume" in info.value.hint
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    # the step-3 checkpoint is byte for byte what it was, and no temporary file is left
    assert sorted(p.name for p in ckpt.iterdir()) == CKPT_FILES
    assert _snapshot(ckpt) == seen["before"]
    assert torch.load(ckpt / "last_state.pt", weights_only=True)["step"] == 3
    load_model(ckpt / "last.safetensors")
    if failing == "last_state.pt":  # once there is space again, the run continues from it
        monkeypatch.setattr(run_folder, "write_bytes", real_write_bytes)
        run = train(load_train_config(ckpt.parent), resume=ckpt.parent)
        assert torch.load(run / "checkpoints" / "last_state.pt", weights_only=True)["step"] == 6


def test_disk_full_on_the_final_weights_and_from_the_cli(hr_folder, tmp_path, monkeypatch, capsys):
    def write_bytes(path: Path, data: bytes) -> None:
        if path.name.startswith(".model_ema.tmp-"):  # the final EMA weights, after the last checkpoint
            _disk_full(path, data)
        real_write_bytes(path, data)

    monkeypatch.setattr(run_folder, "write_bytes", write_bytes)
    code = main(["train", "--preset", "test", "--train-dir", str(hr_folder), "-n", "2", "--patch", "8", "--batch-size", "2",
                 "--scan", "chunked", "--ckpt-every", "100", "--out", str(tmp_path / "runs"), "--name", "r"])
    err = capsys.readouterr().err
    assert code == 2 and "no space left on the disk" in err and "model_ema.safetensors" in err and "--resume" in err
    run = tmp_path / "runs" / "r"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == CKPT_FILES  # the final checkpoint is there
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temp file


def test_checkpoint_files_load_like_save_weights_output(hr_folder, tmp_path):
    """The in-memory writer gives the same file format as checkpoint.save_weights (config in the metadata)."""
    run = train(_cfg(hr_folder, tmp_path, iterations=1))
    model, loaded = load_model(run / "model_ema.safetensors")
    assert loaded.config == get_preset("test") and loaded.metadata["mambaesr_edge.step"] == "1"
    ref = save_weights(model, tmp_path / "ref.safetensors", {"mambaesr_edge.step": "1"})
    assert load_model(ref)[1].metadata == loaded.metadata
