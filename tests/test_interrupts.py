"""Issue 8, interrupted work: Ctrl-C (SIGINT) and SIGKILL sent to the real CLI in a subprocess while it works.

Ctrl-C: exit code 130, one line "interrupted: <what was kept>", no traceback, no partial or temporary file, inputs
unchanged. SIGKILL: nothing can clean up, but every visible file is complete (atomic writes); the only leftovers
are hidden temporary files named `.NAME.tmp-PID-RANDOM.EXT`, which the next run ignores (folder upscale, export) or
removes (train --resume, whose run folder has one writer). Then the same command finishes the work.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from cli_processes import Cli, check_complete, one_line_error, run_cli, snapshot, temp_files, write_images

from mambaesr_edge.checkpoint import load_model, save_weights
from mambaesr_edge.model import MambaSR
from mambaesr_edge.presets import get_preset
from mambaesr_edge.run_folder import checkpoint_step


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    return save_weights(MambaSR(get_preset("test")), tmp_path_factory.mktemp("w") / "test.safetensors")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("lr") / "in", 20)


def interrupted_line(cli: Cli) -> str:
    assert cli.wait() == 130, cli.stderr
    lines = one_line_error(cli)
    assert len(lines) == 1 and lines[0].startswith("interrupted"), cli.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------------ upscale a folder
def upscale(images: Path, out: Path, weights: Path, cwd: Path) -> Cli:
    return Cli("upscale", images, "-o", out, "-w", weights, "--tile", 0, "--scan", "chunked", cwd=cwd)


def first_output(out: Path):
    return lambda: out.is_dir() and any(p.suffix == ".png" and not p.name.startswith(".") for p in out.iterdir())


def summary(cli: Cli) -> str:
    return next(line for line in cli.out if " written, " in line)


def test_ctrl_c_during_a_folder_upscale_then_a_rerun_does_the_rest(images, weights, tmp_path):
    before = snapshot(images)
    out = tmp_path / "out"
    cli = upscale(images, out, weights, tmp_path)
    cli.wait_until(first_output(out), "a first upscaled image")
    cli.signal(signal.SIGINT)
    line = interrupted_line(cli)
    done = check_complete(out, sources=images)
    assert f"interrupted: {len(done)} images written to {out}, all complete" in line and "run the same command again" in line
    assert 1 <= len(done) < 20 and not temp_files(out)
    rerun = run_cli("upscale", images, "-o", out, "-w", weights, "--tile", 0, "--scan", "chunked", cwd=tmp_path)
    assert rerun.proc.returncode == 0, rerun.stderr
    assert f"{20 - len(done)} written, {len(done)} skipped" in summary(rerun)  # complete outputs are not redone
    assert len(check_complete(out, sources=images)) == 20 and not temp_files(out)
    assert snapshot(images) == before


def test_sigkill_during_a_folder_upscale_leaves_only_complete_outputs(images, weights, tmp_path):
    out = tmp_path / "out"
    cli = upscale(images, out, weights, tmp_path)
    cli.wait_until(first_output(out), "a first upscaled image")
    cli.signal(signal.SIGKILL)
    assert cli.wait() == -signal.SIGKILL
    done = check_complete(out, sources=images)  # whatever is visible is whole; hidden leftovers are temp files
    assert 1 <= len(done) < 20
    # what a kill in the middle of a write leaves: the next run neither reads it nor trips over it
    stale = out / ".img19.tmp-999999-0badf00d.png"
    stale.write_bytes(b"\x89PNG half of a file")
    rerun = run_cli("upscale", images, "-o", out, "-w", weights, "--tile", 0, "--scan", "chunked", cwd=tmp_path)
    assert rerun.proc.returncode == 0, rerun.stderr
    assert f"{20 - len(done)} written, {len(done)} skipped" in summary(rerun)
    assert len(check_complete(out, sources=images)) == 20
    assert stale.read_bytes() == b"\x89PNG half of a file"  # left alone: it may be another process's


# ------------------------------------------------------------------------------------------------ export
def export(weights: Path, out: Path, cwd: Path) -> Cli:
    return Cli("export", "--device", "x86-cpu", "-w", weights, "-o", out, "--tile", 16, "--no-simplify", "--force", cwd=cwd)


def staging_of(out: Path):
    return lambda: any(p.name.startswith(f".{out.name}.tmp-") for p in out.parent.iterdir())


def test_ctrl_c_during_export_keeps_the_previous_bundle(weights, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "bundle.json").write_text('{"previous": true}')
    before = snapshot(tmp_path)
    cli = export(weights, out, tmp_path)
    cli.wait_until(staging_of(out), "the export's staging folder")
    cli.signal(signal.SIGINT)
    line = interrupted_line(cli)
    assert f"no bundle written to {out} (the bundle there is unchanged)" in line
    assert snapshot(tmp_path) == before  # the old bundle as it was
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging folder left


def test_sigkill_during_export_then_export_again(weights, tmp_path):
    out = tmp_path / "bundle"
    cli = export(weights, out, tmp_path)
    cli.wait_until(staging_of(out), "the export's staging folder")
    cli.signal(signal.SIGKILL)
    assert cli.wait() == -signal.SIGKILL
    assert not out.exists()  # no bundle at all rather than part of one
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert all(name.startswith(".bundle.tmp-") for name in leftovers), leftovers
    again = run_cli("export", "--device", "x86-cpu", "-w", weights, "-o", out, "--tile", 16, "--no-simplify", cwd=tmp_path)
    assert again.proc.returncode == 0, again.stderr
    files = {p.name for p in check_complete(out)}
    assert {"model.onnx", "bundle.json", "parity.json", "cost.json"} <= files


# ------------------------------------------------------------------------------------------------ train
TRAIN = ("--preset", "test", "-n", 200, "--batch-size", 2, "--patch", 8, "--log-every", 1, "--ckpt-every", 5,
         "--scan", "chunked", "--seed", 1)


def start_training(train_dir: Path, cwd: Path) -> Cli:
    return Cli("--threads", 1, "train", "--train-dir", train_dir, *TRAIN, "--out", cwd / "runs", "--name", "r", cwd=cwd)


def has_checkpoint(run: Path):
    return lambda: (run / "checkpoints" / "last_state.pt").is_file()


def test_ctrl_c_during_training_names_the_checkpoint_to_resume_from(images, tmp_path):
    run = tmp_path / "runs" / "r"
    cli = start_training(images, tmp_path)
    cli.wait_until(has_checkpoint(run), "a first checkpoint")
    cli.signal(signal.SIGINT)
    line = interrupted_line(cli)
    step = checkpoint_step(run)
    assert step is not None and step % 5 == 0 and step < 200
    assert line == f"interrupted: {run} keeps its checkpoint of step {step}; continue with: mambaesr-edge train --resume {run}"
    check_complete(run)
    assert not temp_files(run)
    load_model(run / "checkpoints" / "last.safetensors")


@pytest.mark.slow  # about 10 s: the killed run, the resumed one, and the straight one to compare with
def test_sigkill_during_training_then_resume_reaches_the_same_final_loss(images, tmp_path):
    run = tmp_path / "runs" / "r"
    cli = start_training(images, tmp_path)
    cli.wait_until(has_checkpoint(run), "a first checkpoint")
    cli.signal(signal.SIGKILL)
    assert cli.wait() == -signal.SIGKILL
    killed_at = checkpoint_step(run)
    assert killed_at is not None and killed_at < 200
    check_complete(run)
    # what a kill can also leave: a metrics row cut short and a checkpoint file half-written under a temporary name
    with (run / "metrics.jsonl").open("a") as log:
        log.write('{"step": 9999, "loss": 0.')
    (run / "checkpoints" / ".last_state.tmp-999999-0badf00d.pt").write_bytes(b"half")
    resumed = run_cli("--threads", 1, "train", "--resume", run, cwd=tmp_path)
    assert resumed.proc.returncode == 0, resumed.stderr
    assert not temp_files(run)  # a run folder has one writer: its leftovers are removed on resume

    # the straight run goes through the same CLI process setup (CPU, one thread): the same kernels, the same sums
    done = run_cli("--threads", 1, "train", "--train-dir", images, *TRAIN, "--out", tmp_path / "runs", "--name", "straight", cwd=tmp_path)
    assert done.proc.returncode == 0, done.stderr
    straight = tmp_path / "runs" / "straight"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 201))  # each step once: the cut row and re-run steps dropped
    assert json.loads((run / "config.json").read_text())["resumed_from_step"] == killed_at
    assert rows[-1]["loss"] == expected[-1]["loss"]  # the same final loss, exactly
    a, _ = load_model(run / "model_ema.safetensors")
    b, _ = load_model(straight / "model_ema.safetensors")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# ------------------------------------------------------------------------------------------------ bench
def start_bench(weights: Path, out: Path, cwd: Path) -> Cli:
    return Cli("bench", "--device", "x86-cpu", "--backend", "torch", "--model", weights, "--tile", 16, "--samples", 10**6,
               "--warmup", 1, "--idle-seconds", 0, "--power", "none", "--scan", "chunked", "--out", out, cwd=cwd)


def timing(cli: Cli):
    return lambda: any("timed" in line for line in cli.err)  # the note "..., 0 s idle, 1000000 timed" (stderr)


def test_ctrl_c_during_bench_writes_a_complete_partial_report(weights, tmp_path):
    out = tmp_path / "bench"
    cli = start_bench(weights, out, tmp_path)
    cli.wait_until(timing(cli), "the start of the timed inferences")
    time.sleep(1.0)  # the line comes just before the measurement starts (progress bar, sampler): let it start
    cli.signal(signal.SIGINT)
    line = interrupted_line(cli)
    assert "of 1000000 timed inferences done" in line and f"report marked partial was written to {out / 'bench.json'}" in line
    files = {p.name for p in check_complete(out)}
    assert files == {"bench.json", "bench_latency.csv", "bench_power.csv", "bench.png"} and not temp_files(out)
    report = json.loads((out / "bench.json").read_text())
    assert report["partial"] is True
    rows = (out / "bench_latency.csv").read_text().splitlines()
    assert len(rows) == 1 + report["settings"]["samples_completed"]


def test_sigkill_during_bench_leaves_the_previous_report(weights, tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "bench.json").write_text('{"previous": true}')
    cli = start_bench(weights, out, tmp_path)
    cli.wait_until(timing(cli), "the start of the timed inferences")
    cli.signal(signal.SIGKILL)
    assert cli.wait() == -signal.SIGKILL
    assert [p.name for p in out.iterdir()] == ["bench.json"] and json.loads((out / "bench.json").read_text()) == {"previous": True}


# ------------------------------------------------------------------------------------------------ anywhere else
def test_ctrl_c_where_no_command_catches_it_is_one_line_and_130(monkeypatch, capsys):
    import mambaesr_edge.model
    from mambaesr_edge.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mambaesr_edge.model, "count_parameters", interrupted)  # what `presets` calls
    assert main(["presets"]) == 130
    assert capsys.readouterr().err == "interrupted\n"
