"""Export with the scan plugin (issue 14): model_trt graphs (one custom node per mixer), their checks, the plugin's
sources and build scripts, the TensorRT builder with the plugin (fakes: no TensorRT here), the cost of both graphs,
and the no-plugin bundles (--no-plugin, Xavier). Uses the `test` preset with random weights at a 16x16 tile."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mambaesr_edge import native_build  # noqa: E402
from mambaesr_edge.bundle import read_bundle, write_bundle  # noqa: E402
from mambaesr_edge.checkpoint import sha256_file  # noqa: E402
from mambaesr_edge.engine_manifest import EngineEnvironment, bundle_engine_problems, write_engine_manifest  # noqa: E402
from mambaesr_edge.errors import ConfigError, DependencyMissingError  # noqa: E402
from mambaesr_edge.export import tensorrt as trt_support  # noqa: E402
from mambaesr_edge.export.cost import SCAN_FLOPS_PER_STATE, graph_cost, roofline  # noqa: E402
from mambaesr_edge.export.onnx import export_onnx  # noqa: E402
from mambaesr_edge.export.parity import image_batch  # noqa: E402
from mambaesr_edge.export.plugin_files import plugin_build_script  # noqa: E402
from mambaesr_edge.export.plugin_graph import check_plugin_nodes, plugin_nodes, plugin_parity  # noqa: E402
from mambaesr_edge.export.writer import ExportOptions, export_bundle  # noqa: E402
from mambaesr_edge.model import MambaSR  # noqa: E402
from mambaesr_edge.presets import get_preset  # noqa: E402
from mambaesr_edge.profiles import load_profile, profile_from_dict  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_export import _fake_trt  # noqa: E402

TILE = 16
ORIN = EngineEnvironment("Orin", "8.7", "10.3.0.30")


def _model(**overrides) -> MambaSR:
    torch.manual_seed(0)
    return MambaSR(get_preset("test", **overrides)).eval()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """An orin-nano export (plugin on by default: fp32 + fp16 plugin graphs)."""
    out = tmp_path_factory.mktemp("plugin") / "bundle"
    export_bundle(_model(), "0" * 64, out, ExportOptions(profile=load_profile("orin-nano"), tile=TILE))
    return out


def _fields(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


# ---------------------------------------------------------------- the plugin graph


def test_plugin_graphs_hold_one_custom_node_per_mixer(bundle):
    config = get_preset("test")
    for name in ("model_trt.onnx", "model_trt_fp16.onnx"):
        proto = onnx.load(str(bundle / name))
        onnx.checker.check_model(proto, full_check=True)
        assert ("mambaesr_edge", 1) in {(o.domain, o.version) for o in proto.opset_import}
        nodes = plugin_nodes(proto)
        assert len(nodes) == config.n_mixers == 2
        for node in nodes:
            assert (node.op_type, node.domain) == ("MambaESRSelectiveScan", "mambaesr_edge")
            fields = _fields(node)
            assert fields.pop("plugin_version") == b"1" and fields.pop("plugin_namespace") == b"mambaesr_edge"
            assert fields == {"delta_softplus": 1, "has_D": 1, "has_z": 1, "has_delta_bias": 1, "token_major": [0, 1, 0, 1, 1, 1]}
            assert len(node.input) == 8
        activations = {n.op_type for n in proto.graph.node if n.op_type in ("Exp", "Einsum", "Log", "Softplus")}
        assert activations <= {"Exp"}  # the only Exp left computes A = -exp(A_log) from a parameter
        assert check_plugin_nodes(proto, config.n_mixers) == []
        # no transpose around the node: u comes from the conv path, delta/B/C without a Transpose, y feeds out_proj
        producer = {o: n.op_type for n in proto.graph.node for o in n.output}
        for node in nodes:
            assert producer[node.input[1]] != "Transpose" and producer[node.input[3]] != "Transpose"
            readers = [n.op_type for n in proto.graph.node if node.output[0] in n.input]
            assert readers == ["MatMul"]


def test_plugin_graph_of_a_multi_order_model(tmp_path):
    """Multi-order mixers: one node per mixer over the K*B stacked orders, no z (the gate follows the inverses)."""
    model = _model(scan_orders=("raster", "column_rev"))
    out = export_onnx(model, tmp_path / "trt.onnx", input_shape=(1, 3, TILE, TILE), plugin=True, simplify=False)
    nodes = plugin_nodes(onnx.load(str(out.path)))
    assert len(nodes) == model.config.n_mixers
    assert all(_fields(n)["has_z"] == 0 and len(n.input) == 7 for n in nodes)
    lr, _ = image_batch((1, 3, TILE, TILE), 4)
    assert plugin_parity(model, out.path, lr, "fp32", fp32_max_abs=1e-4, fp16_min_psnr_db=40).passed


def test_plugin_parity_recorded_and_tight(bundle):
    checked = {c["graph"]: c for c in json.loads((bundle / "parity.json").read_text())["plugin_graphs"]}
    assert set(checked) == {"model_trt.onnx", "model_trt_fp16.onnx"}
    assert all(c["passed"] and c["nodes"] == 2 for c in checked.values())
    assert checked["model_trt.onnx"]["max_input_rel_err"] < 1e-5 and checked["model_trt.onnx"]["output_max_abs"] < 1e-5
    assert checked["model_trt_fp16.onnx"]["max_input_rel_err"] < 3e-2


def test_plugin_parity_catches_a_miswired_node(bundle, tmp_path):
    """A node fed the wrong tensor (delta wired to u) fails the check; so does a wrong layout flag."""
    lr, _ = image_batch((1, 3, TILE, TILE), 4)
    for sabotage in ("wire", "layout"):
        proto = onnx.load(str(bundle / "model_trt.onnx"))
        node = plugin_nodes(proto)[1]
        if sabotage == "wire":
            node.input[1] = node.input[0]
        else:
            major = next(a for a in node.attribute if a.name == "token_major")
            major.ints[1] = 0  # delta claimed (batch, Di, L): the numbers then sit in the wrong places
        path = tmp_path / f"{sabotage}.onnx"
        onnx.save(proto, str(path))
        result = plugin_parity(_model(), path, lr, "fp32", fp32_max_abs=1e-4, fp16_min_psnr_db=40)
        assert not result.passed and "node 1 delta" in result.reason, (sabotage, result)


# ---------------------------------------------------------------- bundle contract, sources, scripts


def test_bundle_records_the_plugin_graphs_and_sources(bundle, tmp_path):
    contents = read_bundle(bundle)
    assert contents.onnx_trt.file == "model_trt.onnx" and contents.onnx_trt.sha256 == sha256_file(bundle / "model_trt.onnx")
    assert contents.onnx_trt_fp16.sha256 == sha256_file(bundle / "model_trt_fp16.onnx")
    assert contents.trt_entry("fp16") == contents.onnx_trt_fp16 and contents.trt_entry("fp32") == contents.onnx_trt
    plugin = contents.plugin
    assert (plugin.name, plugin.version, plugin.namespace, plugin.library) == (
        "MambaESRSelectiveScan", "1", "mambaesr_edge", "libmambaesr_scan_plugin.so")
    assert set(plugin.sources) == {"scan_plugin.cu", "selective_scan.cuh"}
    for name, digest in plugin.sources.items():
        assert digest == sha256_file(bundle / "plugin" / name) == sha256_file(native_build.CSRC_DIR / name)
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    write_bundle(dataclasses.replace(read_bundle(copy), root=copy))
    again = read_bundle(copy)
    assert (again.onnx_trt, again.onnx_trt_fp16, again.plugin) == (contents.onnx_trt, contents.onnx_trt_fp16, contents.plugin)
    raw = json.loads((copy / "bundle.json").read_text())
    for key in ("onnx_trt", "onnx_trt_fp16", "plugin"):
        del raw[key]
    (copy / "bundle.json").write_text(json.dumps(raw))
    old = read_bundle(copy)  # a bundle from before the plugin reads as a pure-op one
    assert old.onnx_trt is None and old.plugin is None and old.trt_entry("fp16") is None
    assert trt_support.engine_settings(load_profile("orin-nano"), old).onnx_file == "model_fp16.onnx"


def test_build_plugin_script_is_the_native_build_command(bundle):
    text = (bundle / "build_plugin.sh").read_text()
    assert text.startswith("#!/usr/bin/env bash") and os.access(bundle / "build_plugin.sh", os.X_OK)
    argv = native_build.plugin_command("@O@", ["8.7"], "@I@", nvcc="@N@", source="plugin/scan_plugin.cu")
    line = " ".join(argv).replace("@N@", '"$NVCC"').replace("@I@", '"$TENSORRT_INCLUDE"').replace("@O@", '"$TMP"')
    assert line in text  # one command, one place (native_build)
    assert "-gencode=arch=compute_87,code=sm_87" in text and 'TENSORRT_INCLUDE="${TENSORRT_INCLUDE:-/usr/include/aarch64-linux-gnu}"' in text
    assert "/usr/local/cuda/bin/nvcc" in text and "mv \"$TMP\" libmambaesr_scan_plugin.so" in text
    desktop = plugin_build_script(load_profile("desktop-gpu"))
    assert all(f"code=sm_{a.replace('.', '')}" in desktop for a in native_build.DESKTOP_ARCHS)
    assert "/usr/include/x86_64-linux-gnu" in desktop


def test_build_engine_script_builds_the_plugin_then_the_engine(bundle):
    text = (bundle / "build_engine.sh").read_text()
    plugin, trtexec, manifest = (text.index(s) for s in ("bash build_plugin.sh", '"$TRTEXEC"', "build-engine . --manifest-only"))
    assert plugin < trtexec < manifest
    for flag in ("--onnx=model_trt_fp16.onnx", "--dynamicPlugins=./libmambaesr_scan_plugin.so", "--fp16"):
        assert flag in text, flag
    assert "TensorRT 10.3" in text and "--staticPlugins" in text and "plugin library's sha256" in text


def test_trtexec_for_tensorrt_11_is_strongly_typed(bundle):
    settings = trt_support.engine_settings(load_profile("orin-nano"), read_bundle(bundle))
    argv = trt_support.trtexec_command(settings, "11.1.0")
    assert "--onnx=model_trt_fp16.onnx" in argv and "--dynamicPlugins=./libmambaesr_scan_plugin.so" in argv
    assert not [a for a in argv if a.startswith(("--fp16", "--precisionConstraints", "--layerPrecisions"))]
    with pytest.raises(ConfigError, match="TensorRT >= 10"):
        trt_support.trtexec_command(settings, "8.5.2")


@pytest.mark.data
def test_build_plugin_script_compiles(bundle, shared_dir, tmp_path):
    """The bundle's own script builds a loadable library (nvcc here, TensorRT 10.3's headers from shared/)."""
    try:
        nvcc = native_build.find_nvcc()
    except DependencyMissingError as exc:
        pytest.skip(exc.message)
    include = shared_dir / "third_party" / "tensorrt-10.3.0" / "include"
    if not (include / "NvInferRuntime.h").is_file():
        pytest.skip(f"TensorRT headers not found at {include}")
    work = tmp_path / "bundle"
    shutil.copytree(bundle, work)
    env = {**os.environ, "NVCC": nvcc, "TENSORRT_INCLUDE": str(include)}
    done = subprocess.run(["bash", str(work / "build_plugin.sh")], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    library = work / "libmambaesr_scan_plugin.so"
    assert hasattr(ctypes.CDLL(str(library)), "getCreators")  # loads without libnvinfer
    assert not list(work.glob("*.tmp-*"))
    bad = subprocess.run(["bash", str(work / "build_plugin.sh")], capture_output=True, text=True,
                         env={**env, "TENSORRT_INCLUDE": str(tmp_path)}, check=False)  # fmt: skip
    assert bad.returncode == 2 and "NvInferRuntime.h" in bad.stderr


# ---------------------------------------------------------------- the Python builder with the plugin (fakes)


def test_fake_builder_loads_the_plugin_before_parsing(bundle, tmp_path):
    work = tmp_path / "bundle"
    shutil.copytree(bundle, work)
    contents = read_bundle(work)
    settings = trt_support.engine_settings(load_profile("orin-nano"), contents)
    assert settings.onnx_file == "model_trt_fp16.onnx" and settings.plugin_file == "libmambaesr_scan_plugin.so"
    with pytest.raises(trt_support.EngineBuildError, match="not built") as info:
        trt_support.build_engine(work, settings, trt=_fake_trt("10.3.0.30", {}))
    assert "build_plugin.sh" in info.value.hint
    (work / "libmambaesr_scan_plugin.so").write_bytes(b"a plugin")
    calls: dict = {}
    assert trt_support.build_engine(work, settings, trt=_fake_trt("10.3.0.30", calls)) == b"ENGINE"
    assert calls["order"] == ["load_library", "parse"] and calls["plugin_library"] == str(work / "libmambaesr_scan_plugin.so")
    assert calls["flags"] == {"FP16", "OBEY"}
    manifest = trt_support.engine_manifest(contents, settings, trt_version="10.3.0.30", gpu_name="Orin", compute_capability="8.7")
    assert manifest.plugin_file == "libmambaesr_scan_plugin.so" and manifest.plugin_sha256 == sha256_file(work / "libmambaesr_scan_plugin.so")
    assert manifest.onnx_file == "model_trt_fp16.onnx"
    write_engine_manifest(work / "model.engine.json", manifest)
    assert bundle_engine_problems(contents, ORIN) == []
    (work / "libmambaesr_scan_plugin.so").write_bytes(b"another plugin")
    assert "plugin library libmambaesr_scan_plugin.so changed" in bundle_engine_problems(contents, ORIN)[0]
    with pytest.raises(trt_support.EngineBuildError, match="TensorRT >= 10"):
        trt_support.build_engine(work, settings, trt=_fake_trt("8.5.2.2", {}))


def test_fake_builder_tensorrt_11_sets_no_fp16_flag(bundle, tmp_path):
    work = tmp_path / "bundle"
    shutil.copytree(bundle, work)
    (work / "libmambaesr_scan_plugin.so").write_bytes(b"a plugin")
    calls: dict = {}
    fake = _fake_trt("11.1.0.5", calls)  # its BuilderFlag has no FP16 / OBEY_PRECISION_CONSTRAINTS at all
    settings = trt_support.engine_settings(load_profile("orin-nano"), read_bundle(work))
    assert settings.fp16 and trt_support.build_engine(work, settings, trt=fake) == b"ENGINE"
    assert "flags" not in calls and calls["network_flags"] == 0 and calls["order"] == ["load_library", "parse"]
    assert all(layer.precision is None for layer in fake.layers)  # strongly typed: no per-layer precision
    pure = trt_support.engine_settings(load_profile("orin-nano"), read_bundle(work), plugin=False)
    assert pure.onnx_file == "model_fp16.onnx" and trt_support.build_engine(work, pure, trt=_fake_trt("11.1.0.5", {})) == b"ENGINE"


# ---------------------------------------------------------------- cost of both graphs


def test_cost_of_the_plugin_graph(bundle):
    config = get_preset("test")
    plugin, pure = graph_cost(bundle / "model_trt.onnx"), graph_cost(bundle / "model.onnx")
    assert plugin.unknown_shape_nodes == 0
    scan = next(op for op in plugin.by_op if op.op_type == "MambaESRSelectiveScan")
    tokens = TILE * TILE
    per_token = 1 + 1 + 4 + 2 + 3  # delta*u, bias, softplus, D, gate
    assert scan.count == config.n_mixers
    assert scan.flops == config.n_mixers * tokens * config.d_inner * (SCAN_FLOPS_PER_STATE * config.d_state + per_token)
    assert scan.bytes_written == config.n_mixers * tokens * config.d_inner * 4  # y only: the state never leaves the chip
    assert plugin.intermediate_bytes < pure.intermediate_bytes / 3  # (d_state 4 here; 30x less for the default model)
    convs = lambda c: sum(op.flops for op in c.by_op if op.op_type in ("Conv", "MatMul"))  # noqa: E731
    assert convs(plugin) == pytest.approx(convs(pure))
    nano = load_profile("orin-nano")
    assert roofline(plugin, nano).per_tile_ms < roofline(pure, nano).per_tile_ms
    modelled = read_bundle(bundle).extra["modelled_ms_per_tile"]
    assert modelled["graph_precision"] == "fp16"
    assert set(modelled["profiles"]) >= {"orin-nano", "xavier-nx", "x86-cpu", "desktop-gpu"}
    nano_ms = modelled["profiles"]["orin-nano"]
    assert 0 < nano_ms["plugin"] < nano_ms["pure_op"] and nano_ms["plugin_on_device"]
    assert not modelled["profiles"]["xavier-nx"]["plugin_on_device"]
    saved = json.loads((bundle / "cost.json").read_text())
    assert saved["plugin_graph"]["graph"] == "model_trt_fp16.onnx"
    assert saved["plugin_graph"]["roofline"]["orin-nano"]["per_tile_ms"] == pytest.approx(nano_ms["plugin"])
    assert saved["modelled_ms_per_tile"] == modelled["profiles"]


# ---------------------------------------------------------------- bundles without the plugin


@pytest.mark.parametrize("case", ["no-plugin option", "xavier-nx"])
def test_pure_op_bundles_are_as_before(tmp_path, case):
    profile = load_profile("xavier-nx" if case == "xavier-nx" else "orin-nano")
    out = tmp_path / "bundle"
    export_bundle(_model(), "0" * 64, out, ExportOptions(profile=profile, tile=TILE, plugin=case != "no-plugin option"))
    files = {p.name for p in out.iterdir()}
    assert files == {"model.onnx", "model_fp16.onnx", "bundle.json", "parity.json", "cost.json", "build_engine.sh"}
    raw = json.loads((out / "bundle.json").read_text())
    assert not {"onnx_trt", "onnx_trt_fp16", "plugin"} & set(raw)
    text = (out / "build_engine.sh").read_text()
    assert "--onnx=model_fp16.onnx" in text and "dynamicPlugins" not in text and "build_plugin" not in text
    assert json.loads((out / "parity.json").read_text())["plugin_graphs"] == []
    cost = json.loads((out / "cost.json").read_text())
    assert cost["plugin_graph"]["graph"] is None  # modelled from a plugin graph traced aside, not shipped
    assert 0 < raw["modelled_ms_per_tile"]["profiles"]["orin-nano"]["plugin"] < raw["modelled_ms_per_tile"]["profiles"]["orin-nano"]["pure_op"]


def test_profile_scan_plugin_is_validated():
    good = load_profile("orin-nano").to_dict()
    assert load_profile("xavier-nx").scan_plugin is False and load_profile("x86-cpu").scan_plugin is False
    assert all(load_profile(n).scan_plugin for n in ("orin-nano", "orin-nx", "agx-orin", "desktop-gpu"))
    with pytest.raises(ConfigError, match="scan_plugin = true needs TensorRT >= 10"):
        profile_from_dict(load_profile("xavier-nx").to_dict() | {"scan_plugin": True}, source="test")
    with pytest.raises(ConfigError, match="needs backend = 'tensorrt'"):
        profile_from_dict(good | {"backend": "onnxruntime-cuda"}, source="test")
    with pytest.raises(ConfigError, match="compute capability >= 7.5"):
        profile_from_dict(good | {"compute_capability": "7.2"}, source="test")
    with pytest.raises(ConfigError, match="scan_plugin must be true or false"):
        profile_from_dict(good | {"scan_plugin": "yes"}, source="test")


def test_dynamic_plugin_bundle_checks_another_size(tmp_path):
    out = tmp_path / "bundle"
    export_bundle(_model(), "0" * 64, out, ExportOptions(profile=load_profile("agx-orin"), tile=TILE, batch=2, dynamic_hw=True))
    checked = json.loads((out / "parity.json").read_text())["plugin_graphs"]
    assert {(c["graph"], tuple(c["shape"])) for c in checked} == {
        (g, s) for g in ("model_trt.onnx", "model_trt_fp16.onnx") for s in ((2, 3, TILE, TILE), (3, 3, TILE // 2 + 3, TILE + 5))}
    assert all(c["passed"] for c in checked)
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(out / "model_trt.onnx")).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    settings = trt_support.engine_settings(load_profile("agx-orin"), read_bundle(out))
    assert settings.onnx_file == "model_trt_fp16.onnx" and settings.max_shape[0] == 2
