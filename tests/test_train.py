"""Training loop: patches, exact resume, distillation, DDP (2 gloo processes on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mambaesr_edge.checkpoint import load_model, save_weights
from mambaesr_edge.data import load_train_images, sample_patches
from mambaesr_edge.errors import ConfigError, DatasetError
from mambaesr_edge.model import MambaSR
from mambaesr_edge.presets import get_preset
from mambaesr_edge.train import TrainConfig, learning_rate, load_train_config, train


@pytest.fixture()
def hr_folder(tmp_path: Path) -> Path:
    """Six smooth random 64x48 HR images (and one too small for a patch)."""
    folder = tmp_path / "hr"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((64, 48), Image.BICUBIC).save(folder / f"img{i}.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "tiny.png")
    return folder


def _cfg(hr_folder: Path, tmp_path: Path, **kw) -> TrainConfig:
    base = dict(preset="test", train_dirs=(str(hr_folder),), iterations=6, batch_size=2, patch=8, log_every=2,
                val_every=1000, ckpt_every=3, out_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"), scan_impl="chunked")
    base.update(kw)
    return TrainConfig(**base)


def test_patches_are_paired_and_deterministic(hr_folder, tmp_path):
    images = load_train_images([hr_folder], scale=4, patch=8, cache_dir=tmp_path / "cache")
    assert len(images.names) == 6  # the 8x8 image cannot give a 32x32 HR patch
    lr, hr = sample_patches(images, batch_size=5, patch=8, seed=1, step=7)
    assert lr.shape == (5, 3, 8, 8) and hr.shape == (5, 3, 32, 32)
    lr2, hr2 = sample_patches(images, batch_size=5, patch=8, seed=1, step=7)
    assert torch.equal(lr, lr2) and torch.equal(hr, hr2)
    assert not torch.equal(lr, sample_patches(images, batch_size=5, patch=8, seed=1, step=8)[0])
    # LR patch = MATLAB-bicubic of its HR patch away from the crop border (the pair is aligned after flips/rotations)
    from mambaesr_edge.metrics import imresize

    down = imresize(hr[0].permute(1, 2, 0).numpy().astype(np.float64) * 255, 0.25)
    assert np.abs(down[2:-2, 2:-2] - lr[0].permute(1, 2, 0).numpy()[2:-2, 2:-2] * 255).mean() < 2.0
    cached = load_train_images([hr_folder], scale=4, patch=8, cache_dir=tmp_path / "cache")  # from the cache
    assert all(torch.equal(a, b) for a, b in zip(cached.lr, images.lr, strict=True))


def test_resume_after_a_crash_continues_exactly(hr_folder, tmp_path, monkeypatch):
    straight = train(_cfg(hr_folder, tmp_path, run_name="straight"))

    import mambaesr_edge.train as train_module

    real_sample = train_module.sample_patches

    def crash_at_step_4(*args, **kwargs):
        if kwargs["step"] == 4:
            raise RuntimeError("simulated crash")
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(train_module, "sample_patches", crash_at_step_4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(_cfg(hr_folder, tmp_path, run_name="split"))  # last complete checkpoint: step 3
    monkeypatch.setattr(train_module, "sample_patches", real_sample)
    first = tmp_path / "runs" / "split"
    resumed = train(load_train_config(first), resume=first)
    a, _ = load_model(straight / "checkpoints" / "last.safetensors")
    b, _ = load_model(resumed / "checkpoints" / "last.safetensors")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6), name
    rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    config = json.loads((straight / "config.json").read_text())
    assert {"train", "model", "git", "params"} <= set(config) and "commit" in config["git"]


def test_a_new_run_never_writes_into_an_existing_run_folder(hr_folder, tmp_path):
    train(_cfg(hr_folder, tmp_path, run_name="taken", iterations=1))
    with pytest.raises(ConfigError, match="already holds a run"):
        train(_cfg(hr_folder, tmp_path, run_name="taken", iterations=1))


def test_dt_rank_override_and_init_from_a_pruned_network(hr_folder, tmp_path):
    run = train(_cfg(hr_folder, tmp_path, run_name="rank", dt_rank=3, iterations=1))
    assert load_model(run / "checkpoints" / "last.safetensors")[0].config.dt_rank == 3
    # a two-group network, pruned to one group as tools/prune_groups.py does: --init trains the file's network
    two = MambaSR(get_preset("test", groups=2))
    one = MambaSR(get_preset("test", groups=1))
    one.load_state_dict({k.replace("layers.1.", "layers.0."): v for k, v in two.state_dict().items() if not k.startswith("layers.0.")})
    init = save_weights(one, tmp_path / "pruned.safetensors")
    run = train(_cfg(hr_folder, tmp_path, run_name="pruned", preset="student", init_weights=str(init), iterations=2, ckpt_every=1))
    trained = load_model(run / "checkpoints" / "last.safetensors")[0]
    assert trained.config == one.config
    assert load_train_config(run).init_weights == str(init)
    resumed = train(load_train_config(run, iterations=3), resume=run)  # resume builds the run's network, not the preset's
    assert load_model(resumed / "checkpoints" / "last.safetensors")[0].config == one.config
    with pytest.raises(ConfigError, match="dt rank"):
        train(_cfg(hr_folder, tmp_path, run_name="clash", init_weights=str(init), dt_rank=2, iterations=1))


def test_distillation_uses_the_teacher(hr_folder, tmp_path):
    teacher_path = save_weights(MambaSR(get_preset("test")), tmp_path / "teacher.safetensors")
    run = train(_cfg(hr_folder, tmp_path, run_name="kd", teacher=str(teacher_path), alpha=0.8, iterations=2, log_every=1))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        assert r["loss"] == pytest.approx(0.8 * r["loss_kd"] + 0.2 * r["loss_gt"], rel=1e-5)


def test_ema_decay_warms_up_to_its_cap(hr_folder, tmp_path):
    from mambaesr_edge.train import ema_decay

    cfg = _cfg(hr_folder, tmp_path, ema_decay=0.999)
    assert ema_decay(cfg, 0) == pytest.approx(0.1)
    assert 0.98 < ema_decay(cfg, 500) < 0.99
    assert ema_decay(cfg, 100_000) == 0.999
    # after 500 steps the initial weights keep < 1e-3 of the average
    assert np.prod([ema_decay(cfg, s) for s in range(500)]) < 1e-3


def test_learning_rate_schedules(hr_folder, tmp_path):
    cfg = _cfg(hr_folder, tmp_path, iterations=100, lr=1e-3, min_lr=0.0)
    assert learning_rate(cfg, 0) == pytest.approx(1e-3) and learning_rate(cfg, 50) == pytest.approx(5e-4)
    step_cfg = _cfg(hr_folder, tmp_path, schedule="multistep", milestones=(10, 20), lr=1e-3)
    assert [learning_rate(step_cfg, s) for s in (9, 10, 25)] == pytest.approx([1e-3, 5e-4, 2.5e-4])


def test_bad_training_inputs(tmp_path):
    with pytest.raises(ConfigError, match="no training folders"):
        TrainConfig()
    with pytest.raises(ConfigError, match="alpha"):
        TrainConfig(train_dirs=("x",), alpha=1.5)
    with pytest.raises(DatasetError, match="not found"):
        load_train_images([tmp_path / "missing"], scale=4, patch=8, cache_dir=None)


@pytest.mark.slow
def test_ddp_two_gloo_processes(hr_folder, tmp_path):
    """The same training code under torchrun with 2 CPU processes (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "mambaesr_edge.cli", "train", "--preset", "test", "--train-dir", str(hr_folder), "-n", "4",
           "--batch-size", "4", "--patch", "8", "--log-every", "2", "--ckpt-every", "2", "--scan", "chunked",
           "--out", str(tmp_path / "runs"), "--name", "ddp"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "runs" / "ddp"
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    assert (run / "model_ema.safetensors").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_validation_split_is_a_pure_function_of_names_and_count(tmp_path):
    from mambaesr_edge.data import split_key, split_validation

    a, b = tmp_path / "a", tmp_path / "b"
    files = [a / f"img{i}.png" for i in range(10)]
    split = split_validation(files, 3)
    assert len(split.val) == 3 and len(split.train) == 7 and not set(split.val) & set(split.train)
    assert [f.name for f in split.val] == sorted(f.name for f in sorted(files, key=split_key)[:3])
    moved = split_validation([b / f"{f.stem}.webp" for f in reversed(files)], 3)  # another folder, order, suffix: same images
    assert [f.stem for f in moved.val] == [f.stem for f in split.val]
    assert set(split.val) < set(split_validation(files, 4).val)  # one more held out keeps the first ones
    assert split_validation(files, 0).train == tuple(files)
    with pytest.raises(DatasetError, match="cannot hold 10 of 10"):
        split_validation(files, 10)


def test_training_holds_the_split_out_and_keeps_the_best_checkpoint(hr_folder, tmp_path, monkeypatch):
    import mambaesr_edge.train as train_module
    from mambaesr_edge.data import split_validation
    from mambaesr_edge.evaluate import DatasetResult

    held = {p.name for p in split_validation(sorted(hr_folder.iterdir()), 2).val}
    seen = {}
    real_load = train_module.load_train_images

    def spy(*args, **kwargs):
        seen["files"] = {p.name for p in kwargs["files"]}
        return real_load(*args, **kwargs)

    monkeypatch.setattr(train_module, "load_train_images", spy)
    scores = iter([20.0, 25.0, 22.0, 25.0])  # PSNR at steps 2, 4 (best), 6, then the result; rebound below
    real_score = train_module._score_split

    def scripted(model, pairs, scale):
        result = real_score(model, pairs, scale)
        return DatasetResult(result.name, next(scores), result.ssim, result.seconds, result.per_image)

    monkeypatch.setattr(train_module, "_score_split", scripted)
    run = train(_cfg(hr_folder, tmp_path, run_name="split", val_from_train=2, val_every=2, log_every=3))
    assert seen["files"].isdisjoint(held) and len(seen["files"]) == 5  # 7 files, 2 held out
    config = json.loads((run / "config.json").read_text())
    assert set(config["validation_split"]["images"]) == held and config["validation_split"]["count"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("val_split_psnr")) for r in rows] == [(2, 20.0), (3, None), (4, 25.0), (6, 22.0)]
    best, _ = load_model(run / "model_best.safetensors")
    from safetensors import safe_open

    with safe_open(str(run / "model_best.safetensors"), framework="pt") as handle:
        assert handle.metadata()["mambaesr_edge.step"] == "4"
    report = json.loads((run / "eval.json").read_text())
    assert report["result"] == "model_best.safetensors" and report["result_step"] == 4
    assert report["datasets"]["val_split"]["images"] == len(held) - len(config["validation_split"]["left_out_unscorable"])
    final, _ = load_model(run / "model_ema.safetensors")
    assert any(not torch.equal(p, q) for p, q in zip(best.state_dict().values(), final.state_dict().values(), strict=True))
    # resumed, the run remembers its best (read from model_best.safetensors): worse scores do not replace it
    scores = iter([10.0, 10.0, 30.0])  # steps 8, 10 (worse), then the result's score
    resumed = train(load_train_config(run, iterations=10), resume=run)
    with safe_open(str(resumed / "model_best.safetensors"), framework="pt") as handle:
        assert handle.metadata()["mambaesr_edge.step"] == "4"


def test_cli_val_from_train_names_the_result(hr_folder, tmp_path, monkeypatch, capsys):
    from mambaesr_edge.cli import main

    monkeypatch.chdir(tmp_path)  # the training cache goes under the working folder
    args = ["train", "--preset", "test", "--train-dir", str(hr_folder), "-n", "2", "--batch-size", "2", "--patch", "8",
            "--val-from-train", "2", "--val-every", "1", "--scan", "chunked", "--out", str(tmp_path / "runs"), "--name", "cli"]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"result: {tmp_path / 'runs' / 'cli' / 'model_best.safetensors'} (step " in out and "val_split: PSNR" in out
    assert main([*args[:-1], "cli2", "--val-from-train", "7"]) == 2  # all 7 files held out: nothing left to train on
    assert "cannot hold 7 of 7" in capsys.readouterr().err
