"""Backends and their selection: torch, onnxruntime (on an ONNX exported here + a hand-written bundle), tensorrt's
manifest check (TensorRT itself exists nowhere here: real-engine tests are marked ``tensorrt`` and skip)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mambaesr_edge.bundle import read_bundle
from mambaesr_edge.checkpoint import save_weights, sha256_file
from mambaesr_edge.engine_manifest import EngineEnvironment
from mambaesr_edge.engine_manifest import engine_problems as engine_manifest_problems
from mambaesr_edge.model import MambaSR
from mambaesr_edge.presets import get_preset
from mambaesr_edge.runtime import Backend, Upscaler, open_backend
from mambaesr_edge.runtime.backends import resolve_backend_name
from mambaesr_edge.runtime.backends.torch import TorchBackend
from mambaesr_edge.runtime.errors import BackendError, BundleError

TILE = 16
GB = 2**30


@pytest.fixture(scope="module")
def model() -> MambaSR:
    torch.manual_seed(1)
    return MambaSR(get_preset("test"), scan_impl="chunked").eval()


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory) -> Path:
    return save_weights(model, tmp_path_factory.mktemp("w") / "test.safetensors")


def export_onnx(model: MambaSR, path: Path, *, dynamic: bool) -> Path:
    x = torch.rand(1, 3, TILE, TILE)
    axes = {"lr": {0: "n", 2: "h", 3: "w"}, "sr": {0: "n", 2: "sh", 3: "sw"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, opset_version=17, input_names=["lr"], output_names=["sr"], dynamic_axes=axes
        )
    return path


@pytest.fixture(scope="module")
def static_onnx(model, tmp_path_factory) -> Path:
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "static.onnx", dynamic=False)


@pytest.fixture(scope="module")
def bundle(model, static_onnx, weights, tmp_path_factory) -> Path:
    """A bundle as docs/interfaces.md describes it (written by hand until the export module writes them)."""
    root = tmp_path_factory.mktemp("bundle") / "b"
    root.mkdir()
    shutil.copy(static_onnx, root / "model.onnx")
    manifest = {
        "format": "mambaesr-edge-bundle/1",
        "config": json.loads(model.config.to_json()),
        "scale": 4,
        "profile": "x86-cpu",
        "precision": "fp32",
        "tile": TILE,
        "overlap": 4,
        "batch": 2,
        "dynamic_hw": False,
        "input_name": "lr",
        "output_name": "sr",
        "onnx": {"file": "model.onnx", "sha256": sha256_file(root / "model.onnx"), "opset": 17},
        "onnx_fp16": None,
        "weights_sha256": sha256_file(weights),
        "versions": {"mambaesr_edge": "0.1.0", "torch": torch.__version__, "onnx": "1"},
        "created": "2025-01-01T00:00:00Z",
    }
    (root / "bundle.json").write_text(json.dumps(manifest))
    (root / "parity.json").write_text("{}")
    return root


def test_backend_names_follow_the_path(tmp_path, bundle):
    assert resolve_backend_name(None) == "torch"
    assert resolve_backend_name("w.safetensors") == "torch" == resolve_backend_name("w.pth")
    assert resolve_backend_name("m.onnx") == "onnxruntime"
    assert resolve_backend_name("m.engine") == "tensorrt"
    assert resolve_backend_name(bundle) == "onnxruntime"  # no model.engine (and no tensorrt) here
    assert resolve_backend_name("m.onnx", "ORT") == "onnxruntime"
    with pytest.raises(BackendError, match="cannot tell"):
        resolve_backend_name("model.bin")
    with pytest.raises(BackendError, match="unknown backend"):
        resolve_backend_name("m.onnx", "tflite")
    with pytest.raises(BackendError, match="without bundle.json"):
        resolve_backend_name(tmp_path)


def test_torch_backend_from_weights(weights, model):
    backend = open_backend(weights, "torch")  # without a backend, the CPU default for these weights is numpy
    assert isinstance(backend, Backend) and backend.info.name == "torch" and backend.info.scale == 4
    x = np.random.default_rng(0).random((2, 3, 8, 9), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(backend.run(x), expected, atol=1e-6)
    with pytest.raises(Exception, match="fp16"):
        open_backend(weights, precision="fp16")  # CPU: refused, with a hint


def test_onnxruntime_static_graph_reads_its_shape_and_splits_batches(static_onnx, model):
    backend = open_backend(static_onnx)
    assert isinstance(backend, Backend)
    assert backend.info.name == "onnxruntime" and backend.info.input_hw == (TILE, TILE) and backend.info.max_batch == 1
    assert backend.info.scale == 4  # probed: the graph has no metadata
    x = np.random.default_rng(1).random((3, 3, TILE, TILE), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(backend.run(x), expected, atol=1e-4)
    with pytest.raises(BackendError, match="takes 16x16"):
        backend.run(np.zeros((1, 3, 8, 8), np.float32))


def test_onnxruntime_dynamic_graph_reads_symbolic_dims(model, tmp_path):
    """Symbolic N/H/W -> any size. (A traced chunked scan fixes the token count L = h*w, so this graph only runs at
    h*w = 256; real dynamic H/W is the exporter's business - the backend just has to read the shape right.)"""
    backend = open_backend(export_onnx(model, tmp_path / "dyn.onnx", dynamic=True))
    assert backend.info.input_hw is None and backend.info.max_batch is None
    x = np.random.default_rng(2).random((2, 3, 8, 32), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(backend.run(x), expected, atol=1e-4)


def test_upscaler_on_a_bundle_uses_its_tile_and_matches_torch(bundle, weights):
    up = Upscaler.from_path(bundle, free_bytes=GB)
    assert up.backend.info.name == "onnxruntime"
    assert up.settings.tile == (TILE, TILE) and up.settings.overlap == 4 and up.settings.batch == 2
    reference = Upscaler.from_path(weights, tile=TILE, overlap=4, free_bytes=GB)
    image = np.random.default_rng(3).integers(0, 256, (21, 30, 3)).astype(np.uint8)
    diff = np.abs(up(image).astype(int) - reference(image).astype(int))
    assert diff.max() <= 1  # ONNX Runtime vs PyTorch rounding


def test_bundle_with_a_stale_onnx_is_refused(bundle, tmp_path):
    copy = tmp_path / "stale"
    shutil.copytree(bundle, copy)
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="sha256"):
        open_backend(copy)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m.update(format="other/2"), "format"),
        (lambda m: m.pop("tile"), "missing field 'tile'"),
        (lambda m: m.update(tile="64"), "wrong type"),
        (lambda m: m.update(onnx={"file": "../x.onnx", "sha256": "0", "opset": 17}), "plain file name"),
        (lambda m: m.update(scale=2), "disagrees"),
    ],
)
def test_invalid_bundle_json_is_a_bundle_error(bundle, tmp_path, edit, match):
    copy = tmp_path / "bad"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "bundle.json").read_text())
    edit(manifest)
    (copy / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=match):
        read_bundle(copy)


def test_torch_backend_cannot_open_a_bundle(bundle):
    with pytest.raises(BackendError, match="no PyTorch weights"):
        open_backend(bundle, "torch")


@pytest.mark.gpu
def test_torch_backend_on_cuda_fp16_with_fp32_twin(model):
    fp32 = TorchBackend(model, device="cuda")
    fp16 = TorchBackend(model, device="cuda", precision="fp16")
    up = Upscaler(fp16, tile=16, overlap=4, fallback=fp32, free_bytes=GB)
    image = np.random.default_rng(5).integers(0, 256, (40, 33, 3)).astype(np.uint8)
    reference = Upscaler(fp32, tile=16, overlap=4, free_bytes=GB)(image)
    decisions = []
    out = up(image, decisions=decisions)
    assert out.shape == reference.shape and np.abs(out.astype(int) - reference.astype(int)).mean() < 1.0
    fp32.synchronize()


ENV = EngineEnvironment(gpu_name="Orin", compute_capability="8.7", tensorrt_version="10.3.0.30")
GOOD = {"tensorrt": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7", "weights_sha256": "w" * 64, "onnx_sha256": "o" * 64}


def test_matching_engine_manifest_has_no_problems():
    assert engine_manifest_problems(GOOD, ENV, weights_sha256="w" * 64, onnx_sha256="o" * 64) == []
    alias = {**GOOD, "tensorrt_version": GOOD["tensorrt"], "gpu": "Orin"}
    del alias["tensorrt"], alias["gpu_name"]
    assert engine_manifest_problems(alias, ENV) == []


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"tensorrt": "8.5.2"}, "TensorRT 8.5.2"),
        ({"compute_capability": "7.2"}, "compute capability 7.2"),
        ({"gpu_name": "NVIDIA GeForce RTX 4090"}, "RTX 4090"),
        ({"weights_sha256": "x" * 64}, "weights_sha256"),
        ({"onnx_sha256": "y" * 64}, "onnx_sha256"),
        ({"tensorrt": ""}, "no TensorRT version"),
    ],
)
def test_engine_manifest_mismatches_are_named(change, expected):
    problems = engine_manifest_problems({**GOOD, **change}, ENV, weights_sha256="w" * 64, onnx_sha256="o" * 64)
    assert len(problems) == 1 and expected in problems[0]


@pytest.mark.tensorrt
def test_tensorrt_engine_in_a_bundle_runs(tmp_path):  # pragma: no cover - needs TensorRT and a built engine
    engine_bundle = Path(__import__("os").environ.get("MAMBAESR_ENGINE_BUNDLE", tmp_path / "missing"))
    if not (engine_bundle / "model.engine").is_file():
        pytest.skip("set MAMBAESR_ENGINE_BUNDLE to a bundle with a model.engine built on this device")
    backend = open_backend(engine_bundle, "tensorrt", device="cuda")
    x = np.random.default_rng(0).random((1, 3, *backend.info.input_hw), dtype=np.float32)
    reference = open_backend(engine_bundle, "onnxruntime")
    assert np.abs(backend.run(x) - reference.run(x)).max() < 0.05
