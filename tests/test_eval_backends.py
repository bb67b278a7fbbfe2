"""`mambaesr-edge eval` through the runtime backends: an exported bundle in ONNX Runtime gives the torch path's PSNR;
tile/overlap/precision are reported; a static-shape graph forces its tile; one evaluation loop serves every path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mambaesr_edge.checkpoint import load_model, save_weights  # noqa: E402
from mambaesr_edge.cli import main  # noqa: E402
from mambaesr_edge.evaluate import evaluate_dataset, evaluate_upscaler, super_resolve  # noqa: E402
from mambaesr_edge.export.onnx import export_onnx  # noqa: E402
from mambaesr_edge.model import MambaSR  # noqa: E402
from mambaesr_edge.presets import get_preset  # noqa: E402
from mambaesr_edge.runtime import Upscaler  # noqa: E402
from mambaesr_edge.runtime.backends.torch import TorchBackend  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    return save_weights(MambaSR(get_preset("test")), tmp_path_factory.mktemp("w") / "test.safetensors")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Two smooth-ish HR images (LR 12x10 and 10x14 after the x4 bicubic downscale)."""
    root = tmp_path_factory.mktemp("data") / "Tiny"
    (root / "HR").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (h, w) in (("a", (48, 40)), ("b", (40, 56))):
        base = rng.integers(0, 256, (h // 4, w // 4, 3)).astype(np.uint8)
        Image.fromarray(base).resize((w, h), Image.BICUBIC).save(root / "HR" / f"{name}.png")
    return root


@pytest.fixture(scope="module")
def bundle(weights, tmp_path_factory) -> Path:
    """Dynamic-H/W bundle (fp32 + fp16 graphs) written by the export command, as users make one."""
    out = tmp_path_factory.mktemp("export") / "bundle"
    args = ["export", "--device", "x86-cpu", "--weights", weights, "--out", out, "--tile", 16, "--dynamic", "--max-size", 16,
            "--fp16", "--no-simplify"]
    assert main([str(a) for a in args]) == 0
    return out


def run_eval(tmp_path: Path, name: str, *args: object) -> dict:
    out = tmp_path / f"{name}.json"
    assert main(["eval", *(str(a) for a in args), "--json", str(out)]) == 0
    return json.loads(out.read_text())


def psnr_of(report: dict) -> float:
    return next(iter(report["datasets"].values()))["psnr"]


def test_onnxruntime_bundle_matches_torch_whole_image(tmp_path, weights, dataset, bundle):
    ref = run_eval(tmp_path, "torch", "-w", weights, "--dataset", dataset)
    ort = run_eval(tmp_path, "ort", "--model", bundle, "--backend", "onnxruntime", "--dataset", dataset)
    assert ref["backend"] == "torch" and ort["backend"] == "onnxruntime"
    assert (ref["tile"], ref["overlap"]) == (0, 0)
    # the graph takes at most 256 tokens (--max-size 16): whole images are capped at 16x16 tiles, and these
    # images (12x10, 10x14 LR) are smaller than that, so they still run whole
    assert ort["tile"] == 16 and any("at most 256 tokens" in d for d in ort["decisions"])
    assert ref["precision"] == ort["precision"] == "fp32"
    assert psnr_of(ort) == pytest.approx(psnr_of(ref), abs=0.01)
    for key in ("params", "weights_sha256", "config", "scale"):
        assert ort[key] == ref[key], key
    # the backend follows from the path, and the plain .onnx file inside the bundle works too
    assert psnr_of(run_eval(tmp_path, "file", "-m", bundle / "model.onnx", "--dataset", dataset)) == pytest.approx(psnr_of(ort), abs=1e-6)


def test_tiled_eval_matches_between_backends_and_fp16_is_reported(tmp_path, weights, dataset, bundle):
    ref = run_eval(tmp_path, "torch", "-m", weights, "--dataset", dataset, "--tile", 8, "--overlap", 2)
    ort = run_eval(tmp_path, "ort", "-m", bundle, "--dataset", dataset, "--tile", 8, "--overlap", 2)
    assert (ref["tile"], ref["overlap"]) == (ort["tile"], ort["overlap"]) == (8, 2)
    assert psnr_of(ort) == pytest.approx(psnr_of(ref), abs=0.01)
    half = run_eval(tmp_path, "fp16", "-m", bundle, "--dataset", dataset, "--fp16")
    assert half["precision"] == "fp16" and half["backend"] == "onnxruntime"
    assert psnr_of(half) == pytest.approx(psnr_of(ort), abs=0.1)


def test_static_graph_forces_its_tile(tmp_path, weights, dataset):
    model, _ = load_model(weights, scan_impl="chunked")
    static = export_onnx(model, tmp_path / "static8.onnx", input_shape=(1, 3, 8, 8), simplify=False).path
    forced = run_eval(tmp_path, "static", "-m", static, "--dataset", dataset, "--tile", 0, "--overlap", 2)
    assert forced["tile"] == 8 and forced["overlap"] == 2 and forced["backend"] == "onnxruntime"
    assert any("fixed input shape" in d for d in forced["decisions"]) is False  # tile 0 asked: no conflict to report
    ref = run_eval(tmp_path, "torch", "-w", weights, "--dataset", dataset, "--tile", 8, "--overlap", 2)
    assert psnr_of(forced) == pytest.approx(psnr_of(ref), abs=0.01)


def test_one_evaluation_loop_for_model_and_upscaler(weights, dataset):
    model, _ = load_model(weights, scan_impl="chunked")
    up = Upscaler(TorchBackend(model), tile=0)
    outputs = []

    def upscale(lr: np.ndarray) -> np.ndarray:
        outputs.append((super_resolve(model, lr), up(lr)))
        return outputs[-1][1]

    direct = evaluate_dataset(model, dataset, scale=4)
    through_runtime = evaluate_upscaler(upscale, dataset, scale=4, model_scale=4)
    assert len(outputs) == 2 and all(np.array_equal(a, b) for a, b in outputs)  # bit-identical images
    for name, metrics in direct.per_image.items():  # (SSIM may differ in the last bit: memory layout of the arrays)
        assert through_runtime.per_image[name] == pytest.approx(metrics, rel=1e-12)
    with pytest.raises(Exception, match="upscales x4"):
        evaluate_upscaler(upscale, dataset, scale=2, model_scale=4)


def test_eval_user_errors(tmp_path, weights, dataset, bundle, capsys):
    assert main(["eval", str(dataset), "-w", str(weights), "-m", str(bundle)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["eval", str(dataset), "-m", str(bundle), "--backend", "torch"]) == 2
    assert "no PyTorch weights" in capsys.readouterr().err
    assert main(["eval", str(dataset), "-m", str(bundle), "--backend", "nope"]) == 2
    assert "unknown backend" in capsys.readouterr().err
    assert main(["eval", str(dataset), "-m", str(tmp_path / "missing.onnx")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["eval", str(dataset), "-w", str(weights), "--tile", "-1"]) == 2
    assert "must be >= 0" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["eval", str(dataset), "-w", str(weights), "--fp16"]) == 2
        assert "needs CUDA" in capsys.readouterr().err
