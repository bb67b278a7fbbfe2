"""The artifact contract (mambaesr_edge/bundle.py) from the writer's and the reader's side, and the one resolver
(runtime/source.py): the drifts issue 13 found, each pinned by a test that fails on the old code.

TensorRT and a GPU exist nowhere here: a fake ``tensorrt`` module (version only, plus a runtime that cannot
deserialise) and a fake CUDA device stand in, as in tests/test_hostile_corpus.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from fake_tensorrt import install_fake_orin

from mambaesr_edge.bundle import BUILD_SCRIPT_FILE, Bundle, OnnxFile, read_bundle, write_bundle
from mambaesr_edge.engine_manifest import bundle_engine_problems, write_engine_manifest
from mambaesr_edge.errors import BackendError, DependencyMissingError, EngineMismatchError
from mambaesr_edge.export import tensorrt as trt_support
from mambaesr_edge.fileio import sha256_file
from mambaesr_edge.presets import get_preset
from mambaesr_edge.profiles import load_profile
from mambaesr_edge.runtime import Upscaler, open_backend
from mambaesr_edge.runtime.source import SUFFIXES, SourceKind, classify, plan_backend

BUILT_WITH = "10.3.0.26"


def make_bundle(root: Path) -> Bundle:
    """A bundle as export writes it (graph bytes stand in for ONNX: nothing here parses them)."""
    root.mkdir(parents=True)
    (root / "model.onnx").write_bytes(b"fp32 graph")
    (root / "model_fp16.onnx").write_bytes(b"fp16 graph")
    (root / BUILD_SCRIPT_FILE).write_text("#!/bin/sh\n")
    bundle = Bundle(
        root=root, config=get_preset("test"), profile="orin-nano", precision="fp16", tile=16, overlap=4, batch=1,
        dynamic_hw=False, input_name="lr", output_name="sr",
        onnx=OnnxFile("model.onnx", sha256_file(root / "model.onnx"), 17, nodes=3),
        onnx_fp16=OnnxFile("model_fp16.onnx", sha256_file(root / "model_fp16.onnx"), 17),
        weights_sha256="a" * 64, extra={"versions": {"mambaesr_edge": "0"}, "files": ["model.onnx"]},
    )  # fmt: skip
    write_bundle(bundle)
    return bundle


def build_engine(bundle: Bundle, trt_version: str = BUILT_WITH, gpu: str = "Orin", capability: str = "8.7") -> None:
    """What build-engine writes: the engine file and its manifest (export/tensorrt.engine_manifest)."""
    settings = trt_support.engine_settings(load_profile("orin-nano"), bundle)
    (bundle.root / settings.engine_file).write_bytes(b"serialized engine")
    manifest = trt_support.engine_manifest(bundle, settings, trt_version=trt_version, gpu_name=gpu, compute_capability=capability)
    write_engine_manifest(bundle.engine_manifest_path, manifest)


@pytest.fixture
def fake_orin(monkeypatch):
    """TensorRT 10.3.0.30 on an Orin: the runtime's check runs for real, deserialising cannot (no engine exists)."""
    return install_fake_orin(monkeypatch, "10.3.0.30")


# ------------------------------------------------------------------------------------------------ bundle.json
def test_bundle_round_trips_through_the_one_reader_and_writer(tmp_path):
    written = make_bundle(tmp_path / "b")
    read = read_bundle(tmp_path / "b")
    assert read == written and read.extra == written.extra
    assert read.to_dict() == json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert read.onnx_path("fp16").name == "model_fp16.onnx" and read.scale == 4


# ------------------------------------------------------------------------------------------- engine staleness
def test_a_build_number_change_keeps_the_engine_in_build_engine_and_the_runtime(tmp_path, fake_orin):
    """Old code: build-engine compared the full version (stale), the runtime major.minor.patch (runs it)."""
    bundle = make_bundle(tmp_path / "b")
    build_engine(bundle, trt_version=BUILT_WITH)
    assert bundle_engine_problems(read_bundle(bundle.root), fake_orin) == []  # build-engine's verdict
    with pytest.raises(BackendError, match="could not deserialize"):  # the runtime passed the check too
        open_backend(bundle.root, "tensorrt")


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"trt_version": "10.4.0.1"}, "TensorRT version changed"),
        ({"gpu": "NVIDIA Jetson AGX Orin"}, "GPU changed"),
        ({"capability": "7.2"}, "compute capability changed"),
    ],
)
def test_build_engine_and_the_runtime_refuse_the_same_engines(tmp_path, fake_orin, change, expected):
    bundle = make_bundle(tmp_path / "b")
    build_engine(bundle, **change)
    assert any(expected in p for p in bundle_engine_problems(read_bundle(bundle.root), fake_orin))
    with pytest.raises(EngineMismatchError, match=expected):
        open_backend(bundle.root, "tensorrt")


def test_the_runtime_also_checks_the_engine_file_and_the_profile(tmp_path, fake_orin):
    """Old code: the runtime compared neither the engine's sha256 nor the profile."""
    bundle = make_bundle(tmp_path / "b")
    build_engine(bundle)
    (bundle.root / "model.engine").write_bytes(b"another engine")
    with pytest.raises(EngineMismatchError, match="replaced or corrupted"):
        open_backend(bundle.root)
    build_engine(bundle)
    write_bundle(Bundle(**{**bundle.__dict__, "profile": "agx-orin"}))
    with pytest.raises(EngineMismatchError, match="profile changed"):
        open_backend(bundle.root)


def test_a_stale_engine_is_refused_with_and_without_a_profile(tmp_path, fake_orin):
    """Old code: without --device a stale engine fell back to ONNX Runtime, with one it raised."""
    bundle = make_bundle(tmp_path / "b")
    build_engine(bundle, trt_version="8.6.2")
    for opened in (lambda: Upscaler.from_path(bundle.root), lambda: Upscaler.from_profile("orin-nano", bundle.root)):
        with pytest.raises(EngineMismatchError) as caught:
            opened()
        assert BUILD_SCRIPT_FILE in caught.value.hint and "--backend onnxruntime" in caught.value.hint


def test_a_missing_plugin_library_is_refused(tmp_path, fake_orin):
    bundle = make_bundle(tmp_path / "b")
    build_engine(bundle)
    raw = json.loads(bundle.engine_manifest_path.read_text())
    bundle.engine_manifest_path.write_text(json.dumps({**raw, "plugin_file": "libscan.so", "plugin_sha256": "b" * 64}))
    assert bundle_engine_problems(bundle, fake_orin) == ["the engine needs the plugin library libscan.so, which is missing"]
    (bundle.root / "libscan.so").write_bytes(b"another build")
    assert "plugin library libscan.so changed" in bundle_engine_problems(bundle, fake_orin)[0]


# ------------------------------------------------------------------------------------------------ the resolver
@pytest.mark.parametrize("suffix", [".engine", ".plan", ".trt"])
def test_every_engine_suffix_routes_to_tensorrt_with_and_without_a_profile(tmp_path, suffix):
    """Old code: `--device orin-nano --model x.trt` went to ONNX Runtime; here (no TensorRT) the error names TensorRT."""
    engine = tmp_path / f"x{suffix}"
    engine.write_bytes(b"engine")
    assert SUFFIXES[suffix] == SourceKind.ENGINE and classify(engine).kind == SourceKind.ENGINE
    for opened in (lambda: Upscaler.from_path(engine), lambda: Upscaler.from_profile("orin-nano", engine)):
        with pytest.raises(DependencyMissingError, match="TensorRT is not installed"):
            opened()


def test_a_profile_whose_backend_is_unavailable_says_so_in_one_line(caplog):
    caplog.set_level(logging.WARNING)
    up = Upscaler.from_profile("orin-nano")
    assert up.backend.info.name in ("numpy", "torch")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "profile orin-nano deploys tensorrt" in lines[0] and "export --device orin-nano" in lines[0]


def test_a_tensorrt_bundle_without_tensorrt_runs_its_graph_and_says_so(tmp_path):
    bundle = make_bundle(tmp_path / "b")  # targets TensorRT: it holds build_engine.sh
    profile = load_profile("orin-nano")
    plan = plan_backend(classify(bundle.root), profile=profile)
    assert (plan.backend, plan.device, plan.precision) == ("onnxruntime", "cpu", "fp32")
    assert plan.note == "profile orin-nano runs TensorRT, which is not installed here: running its ONNX graph in ONNX Runtime on the CPU"
    (bundle.root / BUILD_SCRIPT_FILE).unlink()  # an ONNX Runtime bundle: nothing is missing, nothing to say
    assert plan_backend(classify(bundle.root), profile=load_profile("x86-cpu")).note == ""


def test_bench_defaults_to_the_backend_upscale_picks(tmp_path):
    """Old code: the default CPU bench measured ONNX Runtime while upscale ran numpy."""
    from mambaesr_edge.bench import open_bench_backend

    opened, description = open_bench_backend(
        None, model=None, bundle=None, preset=None, scan="auto", tile_hw=(8, 8), batch=1, run_on=None, precision=None,
        threads=None, workdir=tmp_path, profile=load_profile("x86-cpu"),
    )  # fmt: skip
    assert opened.info.name == open_backend(None).info.name == "numpy"
    assert description["weights_sha256"] == opened.info.weights_sha256 and description["params"] > 0
    with pytest.raises(BackendError, match="unknown backend"):
        open_bench_backend("foo", model=None, bundle=None, preset=None, scan="auto", tile_hw=(8, 8), batch=1, run_on=None,
                           precision=None, threads=None, workdir=tmp_path)  # fmt: skip


def test_backends_describe_themselves():
    opened = open_backend(None)
    info = opened.info
    assert info.config is not None and info.weights_sha256 and info.device == "cpu" and info.precision == "fp32"
    y = opened.run(np.zeros((1, 3, 8, 8), np.float32))
    assert y.shape == (1, 3, 8 * info.scale, 8 * info.scale)
    assert json.dumps(info.to_dict())  # reports can store it as it is
