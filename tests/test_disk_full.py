"""Issue 8, a full disk while writing: the real CLI in a subprocess whose file-size limit (RLIMIT_FSIZE, SIGXFSZ
ignored) makes the kernel refuse a write midway with EFBIG, as a full disk refuses it with ENOSPC (tests in
test_train_inputs.py and test_upscale_bad_inputs.py simulate ENOSPC itself). Each writer: exit code 2, one line
naming the problem plus a hint naming the fix, the previous file of the same name intact, no temporary file left.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_processes import check_complete, one_line_error, run_cli, snapshot, temp_files, write_images

from mambaesr_edge.checkpoint import save_weights
from mambaesr_edge.model import MambaSR
from mambaesr_edge.presets import get_preset
from mambaesr_edge.run_folder import checkpoint_step
from mambaesr_edge.train import TrainConfig, train

LIMIT = "the file-size limit was reached"
FIX = "raise the file-size limit (ulimit -f)"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(4)
    return save_weights(MambaSR(get_preset("test")), tmp_path_factory.mktemp("w") / "test.safetensors")


def error_and_hint(cli) -> tuple[str, str]:
    assert cli.proc.returncode == 2, cli.stderr
    lines = one_line_error(cli)
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), cli.stderr
    return lines[0], lines[1]


def test_folder_upscale_stops_at_the_first_image_that_does_not_fit(weights, tmp_path):
    src = tmp_path / "in"
    write_images(src, 2, size=4)  # img00, img01: 16x16 outputs of about 1 KB
    write_images(src / "z", 1, size=32)  # z/img00 (done last): a 128x128 output of about 50 KB
    out = tmp_path / "out"
    (out / "z").mkdir(parents=True)
    (out / "z" / "img00.png").write_bytes(b"previous output")
    cli = run_cli("upscale", src, "-o", out, "-w", weights, "--tile", 0, "--scan", "chunked", "--overwrite",
                  cwd=tmp_path, file_size_limit=16_000)
    error, hint = error_and_hint(cli)
    assert f"{LIMIT} while writing image {out / 'z' / 'img00.png'}; its previous version is intact" in error
    assert "2 images written before it are complete" in error
    assert FIX in hint and "run the same command again" in hint
    assert (out / "z" / "img00.png").read_bytes() == b"previous output" and not temp_files(out)
    (out / "z" / "img00.png").unlink()
    assert [p.name for p in check_complete(out, sources=src)] == ["img00.png", "img01.png"]


def test_export_that_does_not_fit_keeps_the_previous_bundle(weights, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "bundle.json").write_text('{"previous": true}')
    before = snapshot(tmp_path)
    cli = run_cli("export", "--device", "x86-cpu", "-w", weights, "-o", out, "--tile", 16, "--no-simplify", "--force",
                  cwd=tmp_path, file_size_limit=100_000)  # model.onnx is about 240 KB
    error, hint = error_and_hint(cli)
    assert f"{LIMIT} while writing the bundle {out}; nothing was written, the previous bundle there is intact" in error
    assert FIX in hint and "--out" in hint
    assert snapshot(tmp_path) == before and [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_bench_report_that_does_not_fit_keeps_the_previous_report(weights, tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    for name in ("bench.json", "bench_latency.csv", "bench_power.csv", "bench.png"):
        (out / name).write_text(f"previous {name}")
    before = snapshot(out)
    cli = run_cli("bench", "--device", "x86-cpu", "--backend", "torch", "--model", weights, "--tile", 16, "--samples", 20,
                  "--warmup", 1, "--idle-seconds", 0, "--power", "none", "--scan", "chunked", "--out", out,
                  cwd=tmp_path, file_size_limit=20_000)  # the JSON and CSVs fit, the PNG (about 40 KB) does not
    error, hint = error_and_hint(cli)
    assert f"{LIMIT} while writing the bench report in {out}; the previous report files there are intact" in error
    assert FIX in hint
    assert snapshot(out) == before and not temp_files(out)  # all four as they were: no new JSON beside an old PNG


def test_checkpoint_that_does_not_fit_keeps_the_previous_one(tmp_path):
    images = write_images(tmp_path / "hr", 4)
    cfg = TrainConfig(preset="test", train_dirs=(str(images),), iterations=10, batch_size=2, patch=8, ckpt_every=5,
                      scan_impl="chunked", out_dir=str(tmp_path / "runs"), run_name="r", cache_dir=str(tmp_path / ".cache"))
    run = train(cfg)
    ckpt = run / "checkpoints"
    before = snapshot(ckpt)
    cli = run_cli("train", "--resume", run, "-n", 20, cwd=tmp_path, file_size_limit=64_000)  # last_state.pt: ~150 KB
    error, hint = error_and_hint(cli)
    assert f"{LIMIT} while writing the step-15 checkpoint in {run}; the previous checkpoint there is intact" in error
    assert FIX in hint and f"train --resume {run}" in hint
    assert snapshot(ckpt) == before and checkpoint_step(run) == 10 and not temp_files(run)
    assert json.loads((run / "config.json").read_text())["resumed_from_step"] == 10
