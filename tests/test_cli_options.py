"""Issue 13, the CLI as a new user meets it: piped output is never wrapped, diagnostics go to stderr, --version,
--quiet, --threads on either side of the subcommand, one meaning of -d, the default preset marked, ``-o NEWDIR/``,
``bench --backend`` checked, and Real-ESRGAN's spellings (-i, -s/--outscale, --tile_pad, -g/--gpu-id)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mambaesr_edge
from mambaesr_edge.checkpoint import save_weights
from mambaesr_edge.cli import main
from mambaesr_edge.errors import ConfigError
from mambaesr_edge.model import MambaSR
from mambaesr_edge.presets import get_preset
from mambaesr_edge.runtime import files
from mambaesr_edge.runtime.resize import lanczos_resize

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(5)
    return save_weights(MambaSR(get_preset("test")), tmp_path_factory.mktemp("w") / "test.safetensors")


def write_png(path: Path, h: int = 12, w: int = 10, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(path)
    elif mode == "RGBA":
        Image.fromarray(rng.integers(0, 256, (h, w, 4)).astype(np.uint8), "RGBA").save(path)
    else:  # 16-bit grayscale
        Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16)).save(path)
    return path


@pytest.fixture()
def requests(monkeypatch) -> list:
    """The UpscaleRequests `upscale` builds its Upscaler from (the real build still runs)."""
    seen = []
    real = files.build_upscaler

    def recording(request):
        seen.append(request)
        return real(request)

    monkeypatch.setattr(files, "build_upscaler", recording)
    return seen


# ----------------------------------------------------------------------------------------------- output streams
def test_piped_output_is_never_wrapped(tmp_path, weights):
    """Through a real pipe (rich wrapped at 80 columns when stdout is not a terminal: `a -> b` became `a ->\\nb`)."""
    deep = tmp_path / ("a_folder_with_a_rather_long_name_" * 3) / ("and_another_one_below_it_" * 3)
    src = write_png(deep / "input_image_with_a_long_name.png")
    out = deep / "output_image_with_a_long_name.png"
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "mambaesr_edge", "upscale", str(src), "-o", str(out), "-w", str(weights)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{src} 10x12 -> {out} 40x48 in "), done.stdout
    assert len(lines[0]) > 300
    for line in done.stderr.splitlines():  # the start-up decisions: whole lines too
        assert line.startswith("[startup] "), done.stderr


def test_piped_table_titles_are_never_wrapped(tmp_path):
    """rich wraps a table's title to the table's width: the demo's title broke in two when piped."""
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "mambaesr_edge", "demo", "-o", str(tmp_path / "demo")],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    title = done.stdout.splitlines()[0].strip()
    assert title.startswith("default model (") and title.endswith("-> x4"), done.stdout


def test_diagnostics_go_to_stderr_and_results_to_stdout(tmp_path, weights, capsys):
    src = write_png(tmp_path / "in.png")
    assert main(["upscale", str(src), "-o", str(tmp_path / "out.png"), "-w", str(weights)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{src} 10x12 -> {tmp_path / 'out.png'} 40x48 in ") and captured.out.count("\n") == 1
    assert "[startup] tile" in captured.err and "[startup]" not in captured.out


def test_library_warnings_are_one_clean_line_on_stderr(tmp_path, weights, capsys, monkeypatch):
    real = files.check_request

    def warns_then_checks(request):
        logging.getLogger("mambaesr_edge.runtime.files").warning("something to know about %s", request.input.name)
        real(request)

    monkeypatch.setattr(files, "check_request", warns_then_checks)
    src = write_png(tmp_path / "in.png")
    assert main(["upscale", str(src), "-o", str(tmp_path / "out.png"), "-w", str(weights), "--tile", "0"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["warning: something to know about in.png"] and "warning:" not in captured.out
    assert main(["--quiet", "upscale", str(src), "-o", str(tmp_path / "o2.png"), "-w", str(weights), "--tile", "0"]) == 0
    assert capsys.readouterr().err.splitlines() == ["warning: something to know about in.png"]  # --quiet keeps warnings


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"mambaesr-edge {mambaesr_edge.__version__}\n"


def test_quiet_drops_notes_and_decisions_but_not_errors(tmp_path, weights, capsys):
    src = write_png(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "broken.png").write_text("not an image")
    out = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(tmp_path / "one.png"), "-w", str(weights)]) == 0
    assert "[startup]" in capsys.readouterr().err
    for n, quiet_args in enumerate((["-q", "upscale", str(src)], ["upscale", str(src), "--quiet"], ["upscale", "-q", str(src)])):
        assert main([*quiet_args, "-o", str(tmp_path / f"two{n}.png"), "-w", str(weights)]) == 0
        captured = capsys.readouterr()
        assert captured.err == "" and "-> " in captured.out, quiet_args  # before or after the command
    assert main(["--quiet", "upscale", str(tmp_path / "in"), "-o", str(out), "-w", str(weights)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("failed ") and "broken.png" in err[0]  # a file's failure is an error: still shown
    assert err[1].startswith("error: 1 of 2 images failed") and err[2].startswith("hint: ") and len(err) == 3
    assert (out / "a.png").is_file()


# ----------------------------------------------------------------------------------------------- --threads
@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
def test_threads_before_or_after_the_subcommand(before, tmp_path, capsys, requests):
    src = write_png(tmp_path / "in.png")
    command = ["upscale", str(src), "-o", str(tmp_path / "out.png"), "--tile", "0"]  # the default model: numpy backend
    assert main(["--threads", "3", *command] if before else [*command, "--threads", "3"]) == 0
    assert requests[-1].threads == 3
    assert (tmp_path / "out.png").is_file()


def test_threads_after_eval(tmp_path, weights, capsys):
    dataset = tmp_path / "Tiny"
    write_png(dataset / "HR" / "a.png", 48, 40)
    threads = torch.get_num_threads()
    try:
        assert main(["eval", str(dataset), "-w", str(weights), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------- -d, eval's datasets
def test_eval_takes_datasets_as_arguments_and_with_dataset(tmp_path, weights, capsys):
    for name in ("SetA", "SetB", "SetC"):
        write_png(tmp_path / name / "HR" / "a.png", 48, 40)
    report = tmp_path / "r.json"
    args = ["eval", str(tmp_path / "SetA"), str(tmp_path / "SetB"), "--dataset", str(tmp_path / "SetC"), "-w", str(weights)]
    assert main([*args, "--json", str(report)]) == 0
    assert list(json.loads(report.read_text())["datasets"]) == ["SetA", "SetB", "SetC"]
    capsys.readouterr()
    assert main(["eval", "-d", str(tmp_path / "SetA"), "-w", str(weights)]) == 2  # -d is --device, which eval has not
    assert "-d" in capsys.readouterr().err
    assert main(["eval", "-w", str(weights)]) == 2
    assert "at least one dataset" in capsys.readouterr().err


def test_d_is_the_device_profile_of_bench(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "-d", "x86-cpu", "--backend", "ort", "--samples", "2", "--preset", "test", "--tile", "8",
                 "--warmup", "0", "--idle-seconds", "0", "--power", "none", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["meta"]["profile"] == "x86-cpu" and report["settings"]["backend"] == "onnxruntime"
    assert "--backend onnxruntime" in report["meta"]["command"]  # the alias is recorded by its name


@pytest.mark.parametrize("name", ["foo", "numpyy"])
def test_bench_refuses_an_unknown_backend(name, tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "--backend", name, "--samples", "2", "--preset", "test", "--tile", "8", "--warmup", "0",
                 "--idle-seconds", "0", "--power", "none", "--out", str(out)])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and lines == [f"error: unknown backend {name!r}", "hint: use one of torch, numpy, onnxruntime, tensorrt"]
    assert not out.exists()


def test_presets_marks_the_default(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "dvmsr-g1 *" in out and "* dvmsr-g1: the shipped default model" in out
    assert len([line for line in out.splitlines() if "*" in line]) == 2  # one marked row, one caption


# ----------------------------------------------------------------------------------------------- -o NEWDIR/
def test_output_with_a_trailing_slash_is_a_folder_made_when_written(tmp_path, weights, capsys):
    src = write_png(tmp_path / "in.png")
    assert main(["upscale", str(src), "-o", f"{tmp_path / 'new' / 'dir'}/", "-w", str(weights), "--tile", "0"]) == 0
    assert Image.open(tmp_path / "new" / "dir" / "in.png").size == (40, 48)
    assert f"-> {tmp_path / 'new' / 'dir' / 'in.png'} 40x48" in capsys.readouterr().out
    (tmp_path / "file").write_text("x")
    assert main(["upscale", str(src), "-o", f"{tmp_path / 'file'}/", "-w", str(weights)]) == 2
    assert "output folder is a file" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    assert main(["upscale", str(broken), "-o", f"{tmp_path / 'never'}/", "-w", str(weights)]) == 2
    assert not (tmp_path / "never").exists()  # nothing is made for an image that fails


# ----------------------------------------------------------------------------------------------- Real-ESRGAN spellings
def test_input_as_option_and_its_misuse(tmp_path, weights, capsys):
    src = write_png(tmp_path / "in.png")
    assert main(["upscale", "-i", str(src), "-o", str(tmp_path / "a.png"), "-w", str(weights), "--tile", "0"]) == 0
    assert main(["upscale", "--input", str(src), "-o", str(tmp_path / "b.png"), "-w", str(weights), "--tile", "0"]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    capsys.readouterr()
    assert main(["upscale", str(src), "-i", str(src), "-o", str(tmp_path / "c.png"), "-w", str(weights)]) == 2
    assert "give the input once" in capsys.readouterr().err
    assert main(["upscale", "-o", str(tmp_path / "c.png"), "-w", str(weights)]) == 2
    assert "missing the input" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "I;16"])
def test_outscale_resizes_the_x4_result(mode, tmp_path, weights, capsys):
    src = write_png(tmp_path / "in.png", 12, 10, mode=mode)
    base = ["upscale", str(src), "-w", str(weights), "--tile", "0"]
    assert main([*base, "-o", str(tmp_path / "x4.png")]) == 0
    assert main([*base, "-o", str(tmp_path / "s4.png"), "-s", "4"]) == 0
    assert main([*base, "-o", str(tmp_path / "s2.png"), "--outscale", "2"]) == 0
    assert main([*base, "-o", str(tmp_path / "s35.png"), "-s", "3.5"]) == 0
    assert (tmp_path / "x4.png").read_bytes() == (tmp_path / "s4.png").read_bytes()  # 4: the model's own result
    native = Image.open(tmp_path / "x4.png")
    for name, size in (("s2.png", (20, 24)), ("s35.png", (35, 42))):
        with Image.open(tmp_path / name) as result:
            assert result.size == size and result.mode == native.mode
    expected = lanczos_resize(np.asarray(native), (42, 35))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "s35.png")), expected)
    assert "-> " + str(tmp_path / "s35.png") + " 35x42" in capsys.readouterr().out
    assert main([*base, "-o", str(tmp_path / "s0.png"), "-s", "0"]) == 2
    assert "--outscale must be > 0" in capsys.readouterr().err and not (tmp_path / "s0.png").exists()


def test_tile_pad_is_the_overlap(tmp_path, weights, requests):
    src = write_png(tmp_path / "in.png", 24, 24)
    assert main(["upscale", str(src), "-o", str(tmp_path / "out.png"), "-w", str(weights), "--tile", "8", "--tile_pad", "2"]) == 0
    assert requests[-1].overlap == 2


def test_gpu_id_runs_on_that_cuda_device(tmp_path, weights, monkeypatch, capsys):
    """-g N: CUDA, with GPU N the one the process sees (no GPU is needed: the Upscaler is not built)."""
    seen = []

    def stop(request):
        seen.append((request.cuda, os.environ.get("CUDA_VISIBLE_DEVICES")))
        raise ConfigError("stopped by the test", hint="-")

    monkeypatch.setattr(files, "build_upscaler", stop)
    src = write_png(tmp_path / "in.png")
    command = ["upscale", str(src), "-o", str(tmp_path / "out.png"), "-w", str(weights)]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert main([*command, "-g", "1"]) == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert main([*command, "--gpu-id", "1"]) == 2  # an index into the GPUs already visible
    assert seen == [(True, "1"), (True, "3")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    capsys.readouterr()
    assert main([*command, "-g", "2"]) == 2 and len(seen) == 2
    assert "GPU 2 is not visible" in capsys.readouterr().err


def test_debug_after_the_command_shows_the_traceback(tmp_path):
    from mambaesr_edge.errors import MambaESRError

    args = ["upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o.png")]
    assert main(args) == 2  # a user error: one line and exit 2
    with pytest.raises(MambaESRError):
        main([*args, "--debug"])  # --debug on either side of the command: the exception itself
