"""Issue 8: a corpus of hostile or broken inputs, each driven through the real CLI (``cli.main``) with the tiny
``test`` preset. The generators are in tests/hostile_corpus.py; docs/interfaces.md ("Inputs we accept and refuse")
lists the same cases.

Every refusal must: exit 2, print exactly ``error: ...`` + ``hint: ...`` on stderr (no traceback), and leave the
case's folder byte-for-byte as it was (no output, no partial or temp file, input unchanged). Every accepted
unusual input must write exactly the one expected output, of the expected size and mode, and change nothing else.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hostile_corpus as hc
import pytest
import torch
from fake_tensorrt import install_fake_orin
from PIL import Image

from mambaesr_edge import fileio
from mambaesr_edge.checkpoint import save_weights
from mambaesr_edge.cli import main
from mambaesr_edge.model import MambaSR
from mambaesr_edge.presets import get_preset

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Ctx:
    folder: Path  # the case's folder: holds in.png, the hostile input, and any output
    weights: Path  # test-preset weights, outside the folder
    src: Path | None = None  # what the case's generator made

    @property
    def image(self) -> Path:
        return self.folder / "in.png"


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Ctx], Path]  # writes the hostile input, returns its path
    argv: Callable[[Ctx], list]  # the command line
    code: int  # expected exit code
    message: str  # substring of the error line (refusals) or of stdout (accepted inputs)
    output: tuple[str, tuple[int, int], str] | None = None  # accepted: (file, (width, height), Pillow mode)
    setup: Callable[[Ctx, pytest.MonkeyPatch], None] | None = None


def folder_gen(generator: Callable[[Path], Path]) -> Callable[[Ctx], Path]:
    return lambda ctx: generator(ctx.folder)


def up(*extra: object, out: str = "out.png") -> Callable[[Ctx], list]:
    """upscale SRC -o FOLDER/out -w WEIGHTS --tile 0 (whole image: fast) + extra."""
    return lambda ctx: ["upscale", ctx.src, "-o", ctx.folder / out, "-w", ctx.weights, "--tile", 0, *extra]


def up_with_weights(*extra: object) -> Callable[[Ctx], list]:
    """upscale in.png with SRC as the weights (or model) file."""
    return lambda ctx: ["upscale", ctx.image, "-o", ctx.folder / "out.png", "-m", ctx.src, "--tile", 0, *extra]


def weights_edit(name: str, edit) -> Callable[[Ctx], Path]:
    return lambda ctx: hc.write(ctx.folder / name, hc.edited_weights(ctx.weights, name, edit).read_bytes())


def profile(name: str, **changes: object) -> Callable[[Ctx], Path]:
    return lambda ctx: hc.profile_file(ctx.folder, name, **changes)


def refuse_writes(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    """An output folder that cannot be written (root ignores chmod, so the refusal is simulated where it happens)."""

    def refuse(target: Path) -> Path:
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(fileio, "_create_temp", refuse)


def fake_orin_with_tensorrt(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT 10.3 on an Orin (neither exists here): what the engine's manifest is checked against."""
    install_fake_orin(monkeypatch, "10.3.0")


def existing_output(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    (ctx.folder / "out.png").write_bytes(b"an earlier result")


OUT = (40, 48)  # 10 x 12 in, x4

CASES = [
    # -- images that cannot be decoded, or must not be
    Case("png-bomb-900mpx", folder_gen(hc.make_png_bomb), up(), 2, "too large to open safely"),
    Case("png-bomb-100mpx", folder_gen(hc.make_png_bomb_warning_zone), up(), 2, "too large to open safely"),
    Case("bmp-bomb-400mpx", folder_gen(hc.make_bmp_bomb), up(), 2, "too large to open safely"),
    Case("png-zero-size", folder_gen(hc.make_png_zero_size), up(), 2, "not a readable image"),
    Case("png-truncated", folder_gen(hc.make_truncated("PNG", ".png")), up(), 2, "cannot decode image"),
    Case("jpeg-truncated", folder_gen(hc.make_truncated("JPEG", ".jpg")), up(), 2, "cannot decode image"),
    Case("bmp-truncated", folder_gen(hc.make_truncated("BMP", ".bmp")), up(), 2, "cannot decode image"),
    Case("png-bad-crc", folder_gen(hc.make_png_bad_crc), up(), 2, "damaged header"),
    Case("png-garbage-stream", folder_gen(hc.make_png_garbage_stream), up(), 2, "cannot decode image"),
    Case("empty-file", folder_gen(hc.make_empty_png), up(), 2, "not a readable image"),
    Case("text-named-png", folder_gen(hc.make_text_png), up(), 2, "not a readable image"),
    Case("folder-named-png", folder_gen(hc.make_folder_png), up(), 2, "no images found"),
    Case("tiff-float32", folder_gen(hc.make_float_tiff), up(), 2, "floating-point images are not supported"),
    # -- unusual but valid images: converted, oriented, kept at their depth
    Case("jpeg-named-png", folder_gen(hc.make_jpeg_named_png), up(), 0, "-> ", ("out.png", OUT, "RGB")),
    Case("jpeg-cmyk", folder_gen(hc.make_cmyk_jpeg), up(), 0, "-> ", ("out.png", OUT, "RGB")),
    Case("png-palette-transparency", folder_gen(hc.make_palette_png), up(), 0, "-> ", ("out.png", OUT, "RGBA")),
    Case("png-gray-alpha", folder_gen(hc.make_la_png), up(), 0, "-> ", ("out.png", OUT, "RGBA")),
    Case("png-rgba", folder_gen(hc.make_rgba_png), up(), 0, "-> ", ("out.png", OUT, "RGBA")),
    Case("png-gray16", folder_gen(hc.make_gray16_png), up(), 0, "-> ", ("out.png", OUT, "I;16")),
    Case("png-rgb16", folder_gen(hc.make_rgb16_png), up(), 0, "-> ", ("out.png", OUT, "RGB")),
    Case("tiff-gray16", folder_gen(hc.make_gray16_tiff), up(out="out.tif"), 0, "-> ", ("out.tif", OUT, "I;16")),
    Case("jpeg-exif-rotated", folder_gen(hc.make_exif_rotated_jpeg), up(), 0, "-> ", ("out.png", (16, 40), "RGB")),
    Case("png-1x1", folder_gen(hc.make_one_pixel_png), up(), 0, "-> ", ("out.png", (4, 4), "RGB")),
    # -- output paths
    Case("output-is-input", lambda ctx: ctx.image, up(out="in.png"), 2, "output path is the input path"),
    Case("output-folder-holds-input", lambda ctx: ctx.image, up(out="."), 2, "output path is the input path"),
    Case("output-exists", lambda ctx: ctx.image, up(), 2, "output exists", setup=existing_output),
    Case("output-folder-missing", lambda ctx: ctx.image, up(out="missing/out.png"), 2, "output folder does not exist"),
    Case("output-folder-is-a-file", lambda ctx: ctx.image, up(out="in.png/out.png"), 2, "output folder is a file"),
    Case("output-not-writable", lambda ctx: ctx.image, up(), 2, "cannot write image", setup=refuse_writes),
    Case("output-unknown-format", lambda ctx: ctx.image, up(out="out.xyz"), 2, "unknown image format"),
    Case("output-jpeg-for-alpha", folder_gen(hc.make_rgba_png), up(out="out.jpg"), 2, "cannot write image"),
    Case("input-missing", lambda ctx: ctx.folder / "missing.png", up(), 2, "input not found"),
    Case("eval-json-in-missing-folder", folder_gen(hc.make_dataset),
         lambda ctx: ["eval", ctx.src, "-w", ctx.weights, "--json", ctx.folder / "missing" / "r.json"], 2,
         "is in a folder that does not exist"),
    Case("option-negative-tile", lambda ctx: ctx.image, up("--tile", -8), 2, "--tile must be >= 0"),
    # -- checkpoints
    Case("pickle-builtins-exec", folder_gen(hc.make_pickle_exec), up_with_weights(), 2, "imports builtins.exec"),
    Case("pickle-os-system", folder_gen(hc.make_pickle_os_system), up_with_weights(), 2, "imports posix.system"),
    Case("torch-zip-with-code", folder_gen(hc.make_torch_zip_with_code), up_with_weights(), 2, "imports __builtin__.print"),
    Case("safetensors-wrong-shape", weights_edit("shape.safetensors", hc.replace_tensor("conv_first.weight", lambda t: t[:4])),
         up_with_weights(), 2, "wrong shape: conv_first.weight"),
    Case("safetensors-int8", weights_edit("int8.safetensors", hc.replace_tensor("conv_first.weight", lambda t: t.to(torch.int8))),
         up_with_weights(), 2, "non-float tensors"),
    Case("safetensors-nan", weights_edit("nan.safetensors", hc.replace_tensor("conv_first.weight", lambda t: t * float("nan"))),
         up_with_weights(), 2, "NaN or infinite"),
    Case("safetensors-float64", weights_edit("f64.safetensors", lambda ts: {k: v.double() for k, v in ts.items()}),
         up_with_weights(), 0, "-> ", ("out.png", OUT, "RGB")),
    Case("safetensors-truncated-header", lambda ctx: hc.safetensors_truncated_header(ctx.weights, ctx.folder),
         up_with_weights(), 2, "corrupt or unreadable safetensors"),
    Case("safetensors-bad-json", lambda ctx: hc.safetensors_bad_json(ctx.weights, ctx.folder), up_with_weights(), 2, "invalid JSON"),
    Case("safetensors-huge-header", folder_gen(hc.safetensors_huge_header), up_with_weights(), 2, "header too large"),
    Case("safetensors-bad-config", lambda ctx: hc.safetensors_bad_config(ctx.weights, ctx.folder),
         up_with_weights(), 2, "invalid model config"),
    Case("weights-missing", lambda ctx: ctx.folder / "missing.safetensors", up_with_weights(), 2, "weights file not found"),
    # -- ONNX, bundles, engines
    Case("onnx-missing-external-data", folder_gen(hc.make_onnx_missing_external_data), up_with_weights(), 2,
         "external data file(s) that are not there: external.onnx.data"),
    Case("onnx-garbage", folder_gen(hc.make_onnx_garbage), up_with_weights(), 2, "onnxruntime cannot load"),
    Case("bundle-stale-onnx", folder_gen(hc.make_bundle_with_stale_onnx), up_with_weights(), 2, "does not match the sha256"),
    Case("engine-for-another-gpu", folder_gen(hc.make_engine_for_another_gpu), up_with_weights(), 2,
         "built with TensorRT 8.5.2, this is TensorRT 10.3.0", setup=fake_orin_with_tensorrt),
    Case("engine-manifest-unreadable", folder_gen(hc.make_engine_with_unreadable_manifest), up_with_weights(), 2,
         "cannot read engine manifest", setup=fake_orin_with_tensorrt),
    # -- device profiles
    Case("profile-negative-tile", profile("neg.toml", tile=-64), lambda ctx: ["profiles", "show", ctx.src], 2, "tile -64 is below"),
    Case("profile-overlap-not-below-tile", profile("ov.toml", tile=16, overlap=16),
         lambda ctx: ["upscale", ctx.image, "-o", ctx.folder / "out.png", "-w", ctx.weights, "--device", ctx.src], 2,
         "overlap 16 must be less than half the tile"),
    Case("profile-unknown-key", profile("unknown.toml", turbo=True),
         lambda ctx: ["export", "--device", ctx.src, "-w", ctx.weights, "-o", ctx.folder / "bundle"], 2, "unknown field(s) turbo"),
    Case("profile-wrong-type", profile("types.toml", tile="64"),
         lambda ctx: ["bench", "--device", ctx.src, "--model", ctx.weights, "-o", ctx.folder / "bench"], 2, "tile must be an integer"),
    Case("profile-impossible-peaks", profile("peaks.toml", peak_bandwidth_gbs=-5.0, memory_budget_mib=0),
         lambda ctx: ["profiles", "show", ctx.src], 2, "peak_bandwidth_gbs -5.0 must be a positive finite number"),
    Case("profile-not-toml", folder_gen(hc.make_profile_not_toml), lambda ctx: ["profiles", "show", ctx.src], 2, "not valid TOML"),
    Case("device-unknown", lambda ctx: ctx.image, up("--device", "jetson-tx9"), 2, "unknown device 'jetson-tx9'"),
    # -- video
    Case("video-broken-stream", folder_gen(hc.make_video_broken_stream), up(out="out.avi"), 2, "ends after 3 of its 8 frames"),
    Case("video-garbage", folder_gen(hc.make_video_garbage), up(out="out.mp4"), 2, "cannot open video"),
    Case("video-to-image-output", folder_gen(hc.make_video), up(), 2, "the input is a video"),
]


def snapshot(folder: Path) -> dict[str, str]:
    """Every path below ``folder`` -> sha256 of its bytes ("dir" for folders)."""
    return {
        str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(8)
    return save_weights(MambaSR(get_preset("test")), tmp_path_factory.mktemp("weights") / "test.safetensors")


def test_the_corpus_is_large_and_its_ids_unique():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    assert sum(c.code == 2 for c in CASES) >= 30


def test_every_case_is_in_the_interface_doc():
    doc = (REPO / "docs" / "interfaces.md").read_text()
    table = doc[doc.index("## Inputs we accept and refuse") :]
    assert [c.id for c in CASES if c.id not in table] == []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, tmp_path, weights, capsys, monkeypatch):
    ctx = Ctx(tmp_path, weights)
    hc.make_png(tmp_path)
    ctx.src = case.make(ctx)
    if case.setup is not None:
        case.setup(ctx, monkeypatch)
    before = snapshot(tmp_path)
    with warnings.catch_warnings(record=True) as leaked:  # a Python warning is a stray stderr line in a real run
        warnings.simplefilter("always")
        code = main([str(a) for a in case.argv(ctx)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert not leaked, [f"{w.category.__name__}: {w.message}" for w in leaked]
    assert code == case.code, captured.err
    after = snapshot(tmp_path)
    if case.code != 0:
        lines = captured.err.strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), captured.err
        assert case.message in lines[0], lines[0]
        assert after == before  # no output, no partial or temp file, the input unchanged
        return
    assert case.message in captured.out
    name, size, mode = case.output
    assert {k: v for k, v in after.items() if k != name} == before and name not in before  # only the output is new
    with Image.open(tmp_path / name) as result:
        assert (result.size, result.mode) == (size, mode)


def test_exif_orientation_is_applied_not_just_the_size(tmp_path, weights):
    """The rotated JPEG's top-left stored pixel row ends up as the right-hand column (orientation 6)."""
    import numpy as np

    from mambaesr_edge.images import load_image

    src = hc.make_exif_rotated_jpeg(tmp_path)
    shown = load_image(src)
    stored = np.asarray(Image.open(src).convert("RGB"))
    assert shown.shape == (10, 4, 3) and stored.shape == (4, 10, 3)
    np.testing.assert_array_equal(shown, np.rot90(stored, k=-1))


# ----------------------------------------------------------------------------- every subcommand, and --debug

USER_ERRORS = {
    "upscale": lambda t, w: ["upscale", t / "missing.png", "-o", t / "out.png", "-w", w],
    "eval": lambda t, w: ["eval", t / "no-such-set", "-w", w],
    "export": lambda t, w: ["export", "--device", "jetson-tx9", "-w", w, "-o", t / "bundle"],
    "build-engine": lambda t, w: ["build-engine", t],
    "bench": lambda t, w: ["bench", "--samples", "0", "--model", w, "-o", t / "bench"],
    "train": lambda t, w: ["train", "--preset", "test", "--train-dir", t / "no-such-folder", "--out", t / "runs"],
    "profiles show": lambda t, w: ["profiles", "show", "jetson-tx9"],
    "data prepare": lambda t, w: ["data", "prepare", "NoSuchSet", "--root", t / "data"],
    "demo": lambda t, w: ["demo", "--out", w],  # a file where the output folder should go: an OSError, caught
}


@pytest.mark.parametrize("command", sorted(USER_ERRORS))
def test_user_errors_in_every_subcommand_are_one_line_and_a_hint(command, tmp_path, weights, capsys):
    before = snapshot(tmp_path)
    code = main([str(a) for a in USER_ERRORS[command](tmp_path, weights)])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err + captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), captured.err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", sorted(USER_ERRORS))
def test_debug_lets_the_exception_through(command, tmp_path, weights):
    """With --debug, main() re-raises instead of printing one line: the interpreter then prints the traceback."""
    with pytest.raises(Exception) as info:
        main(["--debug", *(str(a) for a in USER_ERRORS[command](tmp_path, weights))])
    assert not isinstance(info.value, SystemExit)


def test_the_real_process_shows_a_traceback_only_with_debug(tmp_path, weights):
    """Through a real interpreter (stderr at the file-descriptor level: FFmpeg's own messages would show here)."""
    src = hc.make_video_broken_stream(tmp_path)
    command = [sys.executable, "-m", "mambaesr_edge", "upscale", str(src), "-o", str(tmp_path / "o.avi"), "-w", str(weights)]

    def run(*args: str) -> subprocess.CompletedProcess:
        env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
        return subprocess.run([*command[:3], *args, *command[3:]], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)

    refusal = [
        f"error: video {src} ends after 3 of its 8 frames: the stream is truncated or broken",
        "hint: re-encode or re-download it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4); no output was written",
    ]
    quiet = run("--quiet")
    assert quiet.returncode == 2 and quiet.stderr.splitlines() == refusal
    plain = run()  # the start-up decisions are diagnostics on stderr too; nothing else is there
    lines = plain.stderr.splitlines()
    assert plain.returncode == 2 and lines[-2:] == refusal and all(line.startswith("[startup] ") for line in lines[:-2]), lines
    debug = run("--debug")
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "mambaesr_edge.errors.ImageError: video" in debug.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken-stream.avi"]
