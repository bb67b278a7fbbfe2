"""Export: ONNX checks and metadata, parity (and its failure), cost model, TensorRT settings/trtexec/manifest with
fakes, and the CLI end to end. Uses the `test` preset with random weights at a 16x16 tile."""

from __future__ import annotations

import dataclasses
import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mambaesr_edge.bundle import Bundle, BundleError, OnnxFile, read_bundle  # noqa: E402
from mambaesr_edge.checkpoint import load_model, save_weights, sha256_file  # noqa: E402
from mambaesr_edge.cli import main  # noqa: E402
from mambaesr_edge.engine_manifest import EngineEnvironment, bundle_engine_problems, write_engine_manifest  # noqa: E402
from mambaesr_edge.export import tensorrt as trt_support  # noqa: E402
from mambaesr_edge.export.cost import analytic_macs_per_pixel, graph_cost, roofline  # noqa: E402
from mambaesr_edge.export.onnx import FORBIDDEN_OPS, FP32_PREFIX, OnnxExportError, check_graph, export_onnx, read_metadata  # noqa: E402
from mambaesr_edge.export.parity import ParityError, ort_session  # noqa: E402
from mambaesr_edge.export.writer import ExportOptions, export_bundle  # noqa: E402
from mambaesr_edge.model import MambaSR  # noqa: E402
from mambaesr_edge.presets import get_preset  # noqa: E402
from mambaesr_edge.profiles import load_profile  # noqa: E402
from mambaesr_edge.scan import fixed_capacity, levels_for, linear_recurrence  # noqa: E402

TILE = 16


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "test.safetensors"
    save_weights(MambaSR(get_preset("test")), path)
    return path


@pytest.fixture(scope="module")
def model(weights):
    return load_model(weights, scan_impl="chunked")


@pytest.fixture(scope="module")
def bundle(weights, tmp_path_factory) -> Path:
    """One end-to-end CLI export (fp32 + fp16 graphs) shared by the read-only tests."""
    out = tmp_path_factory.mktemp("export") / "bundle"
    args = ["export", "--device", "orin-nano", "--preset", "test", "--weights", str(weights), "--out", str(out), "--tile", str(TILE)]
    assert main(args) == 0
    return out


# ---------------------------------------------------------------- bundle contents


def test_bundle_files_and_manifest(bundle, weights):
    for name in ("model.onnx", "model_fp16.onnx", "bundle.json", "parity.json", "cost.json", "build_engine.sh"):
        assert (bundle / name).is_file(), name
    manifest = read_bundle(bundle).to_dict()
    assert manifest["format"] == "mambaesr-edge-bundle/1"
    assert (manifest["profile"], manifest["tile"], manifest["batch"], manifest["scale"]) == ("orin-nano", TILE, 1, 4)
    assert manifest["input_name"] == "lr" and manifest["output_name"] == "sr" and manifest["dynamic_hw"] is False
    assert 2 * manifest["overlap"] < manifest["tile"]
    assert manifest["onnx"]["sha256"] == sha256_file(bundle / "model.onnx") and manifest["onnx"]["opset"] >= 17
    assert manifest["onnx_fp16"]["sha256"] == sha256_file(bundle / "model_fp16.onnx")
    assert manifest["weights_sha256"] == sha256_file(weights)
    assert get_preset("test").to_json() == json.dumps(manifest["config"], sort_keys=True)
    assert "TensorRT not available here" in manifest["tensorrt"]["status"]
    assert not list(bundle.parent.glob(".bundle.tmp-*")), "staging folder left behind"


def test_graphs_pass_checker_and_have_no_loops(bundle):
    for name in ("model.onnx", "model_fp16.onnx"):
        proto = onnx.load(str(bundle / name))
        onnx.checker.check_model(proto, full_check=True)
        ops = {node.op_type for node in proto.graph.node}
        assert not ops & FORBIDDEN_OPS, ops & FORBIDDEN_OPS
        assert proto.opset_import[0].version >= 17
        shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        assert shape == [1, 3, TILE, TILE]
        assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_check_graph_rejects_loop_ops(bundle):
    proto = onnx.load(str(bundle / "model.onnx"))
    proto.graph.node[0].op_type = "Loop"
    with pytest.raises(OnnxExportError, match="Loop"):
        check_graph(proto)


def test_metadata_round_trips(bundle, weights):
    meta = read_metadata(bundle / "model.onnx")
    assert meta["config"] == get_preset("test")
    assert meta["scale"] == 4 and meta["tile"] == TILE and meta["batch"] == 1 and meta["dynamic_hw"] is False
    assert meta["profile"] == "orin-nano" and meta["precision"] == "fp32"
    assert meta["weights_sha256"] == sha256_file(weights)
    assert "torch" in meta["versions"] and "onnx" in meta["versions"]
    assert read_metadata(bundle / "model_fp16.onnx")["precision"] == "fp16"


def test_fp16_graph_keeps_the_scan_in_fp32(bundle):
    proto = onnx.load(str(bundle / "model_fp16.onnx"))
    inferred = onnx.shape_inference.infer_shapes(proto)
    types_ = {vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    exps = [n for n in proto.graph.node if n.op_type == "Exp"]
    assert exps and all(n.name.startswith(FP32_PREFIX) for n in exps), "the scan's exp must compute in fp32"
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs and all(types_[n.output[0]] == onnx.TensorProto.FLOAT16 for n in convs)
    for node in proto.graph.node:
        if any(types_.get(o) == onnx.TensorProto.FLOAT for o in node.output):
            assert node.name.startswith(FP32_PREFIX), node.name


def test_parity_report(bundle):
    report = json.loads((bundle / "parity.json").read_text())
    assert report["passed"] and not report["failures"]
    by = {(c["variant"], c["name"]): c for c in report["cases"]}
    assert set(by) == {("fp32", "random"), ("fp32", "image"), ("fp16", "random"), ("fp16", "image")}
    for key in (("fp32", "random"), ("fp32", "image")):
        assert by[key]["max_abs"] <= 1e-4 and (by[key]["psnr_db"] is None or by[key]["psnr_db"] >= 60)
    assert by[("fp16", "image")]["psnr_db"] >= 40
    assert abs(report["fp16_psnr_drop_vs_hr_db"]) < 0.5


def test_onnx_matches_torch_on_real_image(bundle, model):
    net, _ = model
    from mambaesr_edge.export.parity import image_batch

    lr, hr = image_batch((2, 3, TILE, TILE), 4)
    assert hr.shape == (2, TILE * 4, TILE * 4, 3)
    assert np.array_equal(lr[1], lr[0][:, :, ::-1]), "batch item 1 is the left-right flip of item 0"
    session = ort_session(bundle / "model.onnx")
    out = session.run(None, {"lr": lr[:1]})[0]
    with torch.no_grad():
        ref = net(torch.from_numpy(lr[:1]), scan_impl="reference").numpy()
    assert np.abs(out - ref).max() < 1e-4  # also against the sequential scan definition


def test_build_script_for_the_profile(bundle):
    text = (bundle / "build_engine.sh").read_text()
    assert text.startswith("#!/usr/bin/env bash") and "--onnx=model_trt_fp16.onnx" in text  # the plugin graph (issue 14)
    assert "--builderOptimizationLevel=3" in text and "--memPoolSize=workspace:1024M" in text
    assert "--minShapes=lr:1x3x16x16" in text and "--fp16" in text and "fp32/*:fp32" in text
    assert (bundle / "build_engine.sh").stat().st_mode & 0o111


# ---------------------------------------------------------------- cost model


def test_cost_model_matches_analytic_macs(bundle):
    cost = graph_cost(bundle / "model.onnx")
    assert cost.unknown_shape_nodes == 0 and cost.node_count > 0 and cost.flops > 0
    pixels = TILE * TILE
    graph_macs = sum(op.flops for op in cost.by_op if op.op_type in ("Conv", "MatMul")) / 2 / pixels
    analytic = analytic_macs_per_pixel(get_preset("test"))["convs_and_linears"]
    assert graph_macs == pytest.approx(analytic, rel=0.01)
    est = roofline(cost, load_profile("orin-nano"))
    assert est.latency_ms == pytest.approx(max(est.compute_ms, est.memory_ms))
    assert cost.largest_tensor[3] > 0 and cost.intermediate_bytes > cost.largest_tensor[3]
    saved = json.loads((bundle / "cost.json").read_text())
    assert saved["graph"] == "model_fp16.onnx" and set(saved["roofline"]) >= {"orin-nano", "xavier-nx", "x86-cpu"}


def test_fp16_graph_moves_fewer_bytes(bundle):
    fp32, fp16 = graph_cost(bundle / "model.onnx"), graph_cost(bundle / "model_fp16.onnx")
    assert fp16.weight_bytes < 0.6 * fp32.weight_bytes
    assert fp16.matmul_flops_fp16 > 0 and fp32.matmul_flops_fp16 == 0


def test_cost_model_sizes_every_node_of_the_fp16_graph(bundle, caplog):
    """The fp16 graph's mixer (chunk -> Slice with bounds from Shape arithmetic, then conv1d, x_proj, ...) used to be
    left unsized: `export` warned of 27 uncounted nodes and the fp16 cost missed half the FLOPs (issue 13)."""
    with caplog.at_level("INFO", logger="mambaesr_edge.export.cost"):
        fp32, fp16 = graph_cost(bundle / "model.onnx"), graph_cost(bundle / "model_fp16.onnx")
    assert fp16.unknown_shape_nodes == 0 and fp32.unknown_shape_nodes == 0
    assert [r.getMessage() for r in caplog.records] == []
    assert fp16.matmul_flops_fp16 + fp16.matmul_flops_fp32 == pytest.approx(fp32.matmul_flops_fp32, rel=1e-9)
    assert fp16.flops == pytest.approx(fp32.flops, rel=1e-3)  # the fp16 graph's extra nodes are Casts (no FLOPs)
    assert json.loads((bundle / "cost.json").read_text())["cost"]["unknown_shape_nodes"] == 0


# ---------------------------------------------------------------- dynamic H/W


def test_fixed_depth_recurrence_equals_the_scan():
    torch.manual_seed(1)
    for length in (1, 7, 16, 17, 256, 300):
        a, b = torch.rand(2, 3, length, 4), torch.randn(2, 3, length, 4)
        assert torch.allclose(linear_recurrence(a, b, levels=levels_for(300)), linear_recurrence(a, b), atol=1e-6)
    with pytest.raises(RuntimeError):  # above the capacity it fails loudly, never silently
        linear_recurrence(torch.rand(1, 1, 17, 2), torch.rand(1, 1, 17, 2), levels=0)
    a, b = torch.rand(1, 1, 20, 2), torch.rand(1, 1, 20, 2)
    with fixed_capacity(1000) as capacity:
        assert capacity == 4096
        inside = linear_recurrence(a, b)
    assert torch.allclose(inside, linear_recurrence(a, b), atol=1e-6)


def test_dynamic_export_is_right_at_other_sizes(model, tmp_path):
    net, _ = model
    result = export_onnx(net, tmp_path / "dyn.onnx", input_shape=(1, 3, TILE, TILE), dynamic_hw=True, max_tokens=32 * 32, simplify=False)
    assert result.max_tokens == 4096
    session = ort_session(result.path)
    for shape in ((1, 3, TILE, TILE), (2, 3, 11, 29), (1, 3, 40, 40), (3, 3, 1, 1)):
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        out = session.run(None, {"lr": x})[0]
        with torch.no_grad():
            ref = net(torch.from_numpy(x), scan_impl="reference").numpy()
        assert out.shape == ref.shape and np.abs(out - ref).max() < 1e-4, shape
    with pytest.raises(Exception, match="Reshape"):  # 65 x 64 > capacity 4096: a loud error
        session.run(None, {"lr": np.zeros((1, 3, 65, 64), np.float32)})


def test_dynamic_bundle_checks_another_size(model, tmp_path):
    net, loaded = model
    options = ExportOptions(profile=load_profile("x86-cpu"), tile=TILE, batch=2, dynamic_hw=True, max_size=32, simplify=False)
    result = export_bundle(net, loaded.sha256, tmp_path / "dyn", options)
    assert result.manifest["dynamic_hw"] is True and result.manifest["max_tokens"] == 4096
    assert result.bundle.root == tmp_path / "dyn" and read_bundle(tmp_path / "dyn") == result.bundle  # not the staging folder
    other = [c for c in result.parity.cases if c.name == "random-other-size"]
    assert other and other[0].passed and other[0].shape != (2, 3, TILE, TILE)
    assert result.cost.unknown_shape_nodes == 0 and result.cost.input_shape == (2, 3, TILE, TILE)
    meta = read_metadata(tmp_path / "dyn" / "model.onnx")
    assert meta["dynamic_hw"] is True


def test_dynamic_refused_for_multi_order_models(tmp_path):
    from mambaesr_edge.errors import ConfigError

    net = MambaSR(get_preset("test", scan_orders=("raster", "raster_rev")))
    with pytest.raises(ConfigError, match="single raster"):
        export_onnx(net, tmp_path / "x.onnx", input_shape=(1, 3, 8, 8), dynamic_hw=True)


# ---------------------------------------------------------------- failures leave nothing behind


def test_sabotaged_graph_fails_parity_and_leaves_no_bundle(model, tmp_path, monkeypatch):
    """Perturb one weight in the exported ONNX (what a broken exporter would do): parity must refuse it."""
    net, loaded = model
    import mambaesr_edge.export.writer as bundle_module

    real_export = bundle_module.export_onnx

    def sabotaged(*args, **kwargs):
        result = real_export(*args, **kwargs)
        proto = onnx.load(str(result.path))
        init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        array = onnx.numpy_helper.to_array(init).copy()
        array.flat[0] += 0.5
        init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
        onnx.save(proto, str(result.path))
        return result

    monkeypatch.setattr(bundle_module, "export_onnx", sabotaged)
    out = tmp_path / "bundle"
    options = ExportOptions(profile=load_profile("x86-cpu"), tile=TILE, simplify=False)
    with pytest.raises(ParityError) as info:
        export_bundle(net, loaded.sha256, out, options)
    assert "parity check failed" in info.value.message and info.value.report is not None and not info.value.report.passed
    assert not out.exists() and not list(tmp_path.iterdir()), "no bundle and no staging folder may remain"


def test_cli_parity_failure_exits_1(weights, tmp_path, monkeypatch, capsys):
    import mambaesr_edge.export.onnx as onnx_module

    real_forward = onnx_module._ExportWrapper.forward
    monkeypatch.setattr(onnx_module._ExportWrapper, "forward", lambda self, lr: real_forward(self, lr) + 0.01)
    out = tmp_path / "bundle"
    args = ["export", "--device", "x86-cpu", "--preset", "test", "--weights", str(weights), "--out", str(out), "--tile", str(TILE)]
    assert main([*args, "--no-simplify"]) == 1
    err = capsys.readouterr().err
    assert "parity failed" in err and "max abs error" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_user_errors_exit_2(weights, bundle, tmp_path, capsys):
    base = ["export", "--preset", "test", "--weights", str(weights), "--tile", str(TILE)]
    assert main([*base, "--device", "orin-nanoo", "--out", str(tmp_path / "a")]) == 2
    assert "known devices" in capsys.readouterr().err
    assert main([*base, "--device", "orin-nano", "--out", str(bundle)]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([*base, "--device", "orin-nano", "--out", str(blocker / "bundle")]) == 2  # parent is a file
    assert main(["export", "--device", "orin-nano", "--preset", "dvmsr", "--weights", str(weights), "--out", str(tmp_path / "b")]) == 2
    assert "do not fit" in capsys.readouterr().err
    assert main([*base, "--device", "orin-nano", "--tile", "4", "--out", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_cli_force_replaces_and_cpu_profile_has_no_engine_script(weights, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    args = ["export", "--device", "x86-cpu", "--preset", "test", "--weights", str(weights), "--out", str(out), "--tile", str(TILE)]
    assert main([*args, "--no-simplify", "--force"]) == 0
    assert not (out / "stale.txt").exists() and not (out / "build_engine.sh").exists() and not (out / "model_fp16.onnx").exists()
    manifest = read_bundle(out).to_dict()
    assert manifest["precision"] == "fp32" and manifest["onnx_fp16"] is None
    assert "onnxruntime-cpu" in manifest["tensorrt"]["status"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_bundle_error_is_a_user_error(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("")
    with pytest.raises(BundleError):
        export_bundle(MambaSR(get_preset("test")), "0" * 64, tmp_path / "b", ExportOptions(profile=load_profile("x86-cpu"), tile=TILE))


# ---------------------------------------------------------------- TensorRT (no TensorRT here: fakes)


def _manifest(**changes) -> Bundle:
    base = Bundle(root=Path("."), config=get_preset("test"), profile="orin-nano", precision="fp16", tile=64, overlap=8,
                  batch=1, dynamic_hw=False, input_name="lr", output_name="sr", onnx=OnnxFile("model.onnx", "0" * 64, 17),
                  onnx_fp16=OnnxFile("model_fp16.onnx", "1" * 64, 17), weights_sha256="2" * 64)  # fmt: skip
    return dataclasses.replace(base, **changes)


def test_profile_to_builder_settings():
    s = trt_support.engine_settings(load_profile("orin-nano"), _manifest())
    assert s.onnx_file == "model_fp16.onnx" and s.fp16 and s.fp32_layer_prefix == FP32_PREFIX
    assert s.min_shape == s.opt_shape == s.max_shape == (1, 3, 64, 64)
    assert (s.workspace_mib, s.builder_optimization_level) == (1024, 3)
    no_fp16 = trt_support.engine_settings(load_profile("orin-nano"), _manifest(onnx_fp16=None))
    assert no_fp16.onnx_file == "model.onnx" and no_fp16.fp16 and no_fp16.fp32_layer_prefix is None
    dyn = trt_support.engine_settings(load_profile("agx-orin"), _manifest(batch=4, tile=128, dynamic_hw=True, max_tokens=65536))
    assert dyn.min_shape == (1, 3, 8, 8) and dyn.opt_shape == (4, 3, 128, 128) and dyn.max_shape == (4, 3, 256, 256)


def test_trtexec_command_orin_nano_and_xavier_nx():
    nano = load_profile("orin-nano")
    argv = trt_support.trtexec_command(trt_support.engine_settings(nano, _manifest()), nano.tensorrt)
    assert argv[0] == "trtexec"
    for flag in ("--onnx=model_fp16.onnx", "--saveEngine=model.engine", "--fp16", "--minShapes=lr:1x3x64x64",
                 "--optShapes=lr:1x3x64x64", "--maxShapes=lr:1x3x64x64", "--memPoolSize=workspace:1024M",
                 "--timingCacheFile=timing.cache", "--builderOptimizationLevel=3", "--precisionConstraints=obey",
                 "--layerPrecisions=fp32/*:fp32"):  # fmt: skip
        assert flag in argv, flag
    xavier = load_profile("xavier-nx")
    argv = trt_support.trtexec_command(trt_support.engine_settings(xavier, _manifest()), xavier.tensorrt)
    assert not any(a.startswith("--builderOptimizationLevel") for a in argv), "TensorRT 8.5 has no optimization level"
    assert "--memPoolSize=workspace:1024" in argv and "--fp16" in argv
    assert trt_support.has_optimization_level("8.6.1") and not trt_support.has_optimization_level("8.5.2.2")


class _FakeTensor:
    def __init__(self, dtype):
        self.dtype = dtype


class _FakeLayer:
    def __init__(self, name, dtype):
        self.name, self.precision, self.num_outputs = name, None, 1
        self._out, self.output_types = _FakeTensor(dtype), {}

    def get_output(self, j):
        return self._out

    def set_output_type(self, j, dtype):
        self.output_types[j] = dtype


def _fake_trt(version: str, calls: dict) -> types.SimpleNamespace:
    """Enough of the tensorrt module for build_engine, recording what it is asked to do."""
    float32, float16, int64 = "float32", "float16", "int64"
    layers = [_FakeLayer("fp32/scan/Exp", float32), _FakeLayer("conv/Conv", float16), _FakeLayer("fp32/Shape", int64)]

    class Network:
        num_layers = len(layers)

        def get_layer(self, i):
            return layers[i]

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse(self, data):
            calls.setdefault("order", []).append("parse")
            calls["parsed_bytes"] = len(data)
            return True

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return b"cache:" + self.data

    class Config:
        def __init__(self):
            self.flags, self.cache = set(), None

        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = (pool, size)

        def set_flag(self, flag):
            self.flags.add(flag)
            calls.setdefault("flags", set()).add(flag)

        def add_optimization_profile(self, profile):
            calls["profile"] = profile.shapes

        def create_timing_cache(self, data):
            calls["cache_in"] = data
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    if trt_support.has_optimization_level(version):
        Config.builder_optimization_level = None

    class Profile:
        def set_shape(self, name, mn, opt, mx):
            self.shapes = (name, mn, opt, mx)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            calls["config"] = Config()
            return calls["config"]

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"ENGINE"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            calls["log_level"] = level

    class Registry:
        def load_library(self, path):
            calls.setdefault("order", []).append("load_library")
            calls["plugin_library"] = path

    flags = {} if trt_support.strongly_typed(version) else {"FP16": "FP16", "OBEY_PRECISION_CONSTRAINTS": "OBEY"}
    return types.SimpleNamespace(
        __version__=version, Logger=Logger, Builder=Builder, OnnxParser=Parser, float32=float32,
        NetworkDefinitionCreationFlag=types.SimpleNamespace(EXPLICIT_BATCH=0),
        BuilderFlag=types.SimpleNamespace(**flags),  # TensorRT 11 has no FP16 / OBEY_PRECISION_CONSTRAINTS
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"), layers=layers,
        get_plugin_registry=Registry,
    )  # fmt: skip


@pytest.mark.parametrize("version", ["10.3.0.30", "8.5.2.2"])
def test_build_engine_with_fake_tensorrt(bundle, tmp_path, version):
    work = tmp_path / "bundle"
    shutil.copytree(bundle, work)
    (work / "timing.cache").write_bytes(b"old")
    calls: dict = {}
    fake = _fake_trt(version, calls)
    settings = trt_support.engine_settings(load_profile("orin-nano"), read_bundle(work), plugin=False)  # the pure-op graph
    assert trt_support.build_engine(work, settings, trt=fake) == b"ENGINE"
    assert (work / "model.engine").read_bytes() == b"ENGINE"
    assert calls["cache_in"] == b"old" and (work / "timing.cache").read_bytes() == b"cache:old"
    assert calls["workspace"] == ("WORKSPACE", 1024 << 20)
    assert calls["flags"] == {"FP16", "OBEY"}
    assert calls["profile"] == ("lr", (1, 3, TILE, TILE), (1, 3, TILE, TILE), (1, 3, TILE, TILE))
    assert calls["network_flags"] == (0 if version.startswith("10") else 1)
    has_level = version.startswith("10")
    assert (getattr(calls["config"], "builder_optimization_level", "absent") == 3) == has_level
    exp, conv, shape = fake.layers
    assert exp.precision == "float32" and exp.output_types == {0: "float32"}
    assert conv.precision is None and shape.precision is None


def check_engine(work, trt_version, gpu_name, capability):
    """The one staleness rule (mambaesr_edge.bundle), as build-engine asks it."""
    return bundle_engine_problems(read_bundle(work), EngineEnvironment(gpu_name, capability, trt_version))


def test_engine_staleness(bundle, tmp_path):
    work = tmp_path / "bundle"
    shutil.copytree(bundle, work)
    assert check_engine(work, "10.3.0", "Orin", "8.7") == ["no engine: model.engine is missing"]
    fake = _fake_trt("10.3.0", {})
    contents = read_bundle(work)
    manifest = contents.to_dict()
    settings = trt_support.engine_settings(load_profile("orin-nano"), contents, plugin=False)  # plugin engines: test_export_plugin.py
    trt_support.build_engine(work, settings, trt=fake)
    assert "no manifest" in check_engine(work, "10.3.0", "Orin", "8.7")[0]
    write_engine_manifest(
        work / "model.engine.json",
        trt_support.engine_manifest(contents, settings, trt_version="10.3.0", gpu_name="Orin", compute_capability="8.7"),
    )
    saved = json.loads((work / "model.engine.json").read_text())
    assert saved["onnx_sha256"] == sha256_file(work / "model_fp16.onnx") and saved["precision"] == "fp16"
    assert saved["shapes"]["opt"] == [1, 3, TILE, TILE] and saved["weights_sha256"] == manifest["weights_sha256"]
    assert check_engine(work, "10.3.0", "Orin", "8.7") == []

    def reasons(*args):
        return " | ".join(check_engine(work, *args))

    assert "GPU changed" in reasons("10.3.0", "NVIDIA GeForce RTX 3060", "8.7")
    assert "compute capability changed" in reasons("10.3.0", "Orin", "7.2")
    assert "TensorRT version changed" in reasons("10.7.0", "Orin", "8.7")
    onnx_file = work / "model_fp16.onnx"
    original = onnx_file.read_bytes()
    onnx_file.write_bytes(original + b"\0")
    assert "ONNX graph changed" in reasons("10.3.0", "Orin", "8.7")
    onnx_file.write_bytes(original)
    bundle_json = work / "bundle.json"
    data = json.loads(bundle_json.read_text())
    bundle_json.write_text(json.dumps({**data, "weights_sha256": "f" * 64}))
    assert "weights changed" in reasons("10.3.0", "Orin", "8.7")
    bundle_json.write_text(json.dumps(data))
    (work / "model.engine").write_bytes(b"OTHER")
    assert "replaced or corrupted" in reasons("10.3.0", "Orin", "8.7")


def test_build_engine_cli_without_tensorrt(bundle, capsys, monkeypatch):
    monkeypatch.setattr(trt_support, "import_tensorrt", lambda: None)
    assert main(["build-engine", str(bundle)]) == 2
    assert "tensorrt Python package is not installed" in capsys.readouterr().err


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_tensorrt_build(bundle, tmp_path):
    trt = trt_support.require_tensorrt()
    work = tmp_path / "bundle"
    shutil.copytree(bundle, work)
    gpu, capability = trt_support.detect_gpu()
    settings = trt_support.engine_settings(load_profile("orin-nano"), read_bundle(work), plugin=False)
    assert trt_support.build_engine(work, settings, trt=trt)
    write_engine_manifest(
        work / "model.engine.json",
        trt_support.engine_manifest(read_bundle(work), settings, trt_version=trt.__version__, gpu_name=gpu, compute_capability=capability),
    )
    assert check_engine(work, trt.__version__, gpu, capability) == []


def test_missing_onnx_names_the_extra(monkeypatch):
    import sys

    from mambaesr_edge.errors import DependencyMissingError
    from mambaesr_edge.export.onnx import require_onnx
    from mambaesr_edge.export.parity import ort_session as session

    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(DependencyMissingError, match="onnx") as info:
        require_onnx()
    assert "mambaesr-edge[export]" in info.value.hint
    with pytest.raises(DependencyMissingError, match="onnxruntime"):
        session("model.onnx")
