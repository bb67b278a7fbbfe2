"""The native scan (mambaesr_edge/csrc): compile checks (CPU, every run), the plugin's interface through a harness
program (CPU), and on a GPU the kernel through the TensorRT plugin's enqueue and through `impl="cuda"`."""

from __future__ import annotations

import ctypes
import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mambaesr_edge import native_build
from mambaesr_edge.errors import ConfigError, DependencyMissingError
from mambaesr_edge.scan import selective_scan
from mambaesr_edge.scan_cuda import _ABI_VERSION

sys.path.insert(0, str(Path(__file__).parent))
from test_scan import _cast, make_inputs, rel_error

HARNESS_SOURCE = Path(__file__).parent / "csrc" / "plugin_harness.cu"
HEADER_SETS = ("tensorrt-10.3.0", "tensorrt-11.1")
CI_ARCHS = ("7.5", "8.7", "9.0")  # Turing (the oldest, least shared memory), Orin and Hopper: one nvcc call builds all


def _nvcc_or_skip() -> str:
    try:
        return native_build.find_nvcc()
    except DependencyMissingError as exc:
        pytest.skip(f"nvcc not found: {exc.message}")


def _headers_or_skip(shared_dir: Path, name: str) -> Path:
    include = shared_dir / "third_party" / name / "include"
    if not (include / "NvInferRuntime.h").is_file():
        pytest.skip(f"TensorRT headers not found at {include}")
    return include


def _build_plugin(folder: Path, include: Path, nvcc: str, defines: tuple[str, ...] = ()) -> Path:
    """The plugin library for this machine's GPU or for CI_ARCHS; `defines`: -D flags of a test build."""
    archs = [_gpu_arch()] if torch.cuda.is_available() else list(CI_ARCHS)
    command = native_build.plugin_command(folder / "libscan_plugin.so", archs, include, nvcc=nvcc)
    return native_build.build([command[0], *defines, *command[1:]], folder / "libscan_plugin.so")


@pytest.fixture(scope="module")
def plugin_kit(shared_dir, tmp_path_factory):
    """(plugin library, harness program) built with the TensorRT 10.3 headers for this machine's GPU or for CI_ARCHS."""
    nvcc = _nvcc_or_skip()
    include = _headers_or_skip(shared_dir, "tensorrt-10.3.0")
    folder = tmp_path_factory.mktemp("plugin")
    library = _build_plugin(folder, include, nvcc)
    harness = folder / "plugin_harness"
    done = subprocess.run([nvcc, "-std=c++17", "-Xcompiler", "-Wno-deprecated-declarations", f"-I{include}",
                           str(HARNESS_SOURCE), "-o", str(harness), "-ldl"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return library, harness


def _gpu_arch() -> str:
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


# ---------------------------------------------------------------- CPU: compile checks and the plugin's interface


@pytest.mark.data
@pytest.mark.parametrize("headers", HEADER_SETS)
def test_plugin_compiles_for_orin_and_hopper(headers, shared_dir, tmp_path):
    """The plugin library builds for sm_87 and sm_90 against each header set and links no libnvinfer."""
    nvcc = _nvcc_or_skip()
    include = _headers_or_skip(shared_dir, headers)
    library = tmp_path / "libscan_plugin.so"
    native_build.build(native_build.plugin_command(library, CI_ARCHS, include, nvcc=nvcc), library)
    loaded = ctypes.CDLL(str(library))  # loads where no TensorRT is installed: nothing links libnvinfer
    assert loaded.getCreators and loaded.setLoggerFinder
    needed = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=False).stdout if shutil.which("readelf") else ""
    assert "nvinfer" not in needed


@pytest.fixture(scope="module")
def scan_library(tmp_path_factory) -> ctypes.CDLL:
    """The ctypes scan library (scan_capi.cu) built for CI_ARCHS; its host-only entry points run without a GPU."""
    nvcc = _nvcc_or_skip()
    library = tmp_path_factory.mktemp("scan") / "libmambaesr_scan.so"
    native_build.build(native_build.scan_library_command(library, CI_ARCHS, nvcc=nvcc), library)
    loaded = ctypes.CDLL(str(library))
    loaded.mambaesr_scan_abi_version.restype = ctypes.c_int32
    loaded.mambaesr_scan_policy_workspace_bytes.restype = ctypes.c_int64
    loaded.mambaesr_scan_policy_workspace_bytes.argtypes = [ctypes.c_int32] * 6
    loaded.mambaesr_scan_split_workspace_bytes.restype = ctypes.c_int64
    loaded.mambaesr_scan_split_workspace_bytes.argtypes = [ctypes.c_int32] * 5
    return loaded


def test_scan_library_compiles_for_orin_and_hopper(scan_library):
    assert scan_library.mambaesr_scan_abi_version() == _ABI_VERSION  # what scan_cuda.py checks before its first call
    assert scan_library.mambaesr_scan_max_states() == 64  # N up to 64: 1, 2 or 4 states a lane (csrc/README)


# batch, dim, N, L, SMs (Orin Nano 8, Orin AGX 16, H100 132), resident blocks per SM
POLICY_GRID = ((1, 2, 3, 8, 32), (1, 8, 17, 120, 240), (1, 16, 64), (1, 128, 129, 4096, 20000), (8, 16, 132), (1, 2, 8))


def policy_segments(batch, dim, sms, per_sm) -> int:
    """The launcher's split rule as csrc/README states it: fill the GPU when that gives at least 4 segments."""
    fill = sms * max(per_sm, 1) // (batch * -(-dim // 16))
    return fill if fill >= 4 else 1


def test_shipped_launcher_splits_small_batches_only(scan_library):
    """The launcher's split policy (selective_scan_segments) on a grid of shapes and GPUs: the workspace is what
    policy_segments' count needs, and the need never falls as L grows (the plugin sizes its workspace at the
    profile's longest L). The default model's shapes on an H100 (132 SMs, 4 blocks each) split at batch 1 and 8, not 32."""
    policy = scan_library.mambaesr_scan_policy_workspace_bytes
    for batch, dim, n_state, length, sms, per_sm in itertools.product(*POLICY_GRID):
        expected = split_bytes(batch, dim, n_state, length, policy_segments(batch, dim, sms, per_sm))
        assert policy(batch, dim, n_state, length, sms, per_sm) == expected, (batch, dim, n_state, length, sms, per_sm)
    for batch, dim, n_state, sms, per_sm in itertools.product(*POLICY_GRID[:3], *POLICY_GRID[4:]):
        needs = [policy(batch, dim, n_state, length, sms, per_sm) for length in POLICY_GRID[3]]
        assert needs == sorted(needs), (batch, dim, n_state, sms, per_sm)
    assert [policy_segments(batch, 120, 132, 4) for batch in (1, 8, 16, 32)] == [66, 8, 4, 1]
    assert policy(1, 120, 16, 4096, 132, 4) == split_bytes(1, 120, 16, 4096, 64) > 0  # capped at one per 64-token chunk
    assert policy(32, 120, 16, 4096, 132, 4) == 0


def split_bytes(batch, dim, n_state, length, segments) -> int:
    """The split's workspace as csrc/README describes it: per batch row and segment, dim x (N end states + 1 sum of
    delta') floats; at most one segment per 64-token chunk; none when that leaves one segment."""
    segments = min(segments, -(-length // 64))
    return 4 * batch * segments * dim * (n_state + 1) if segments > 1 else 0


def test_split_workspace_size(scan_library):
    split = scan_library.mambaesr_scan_split_workspace_bytes
    assert split(2, 120, 16, 4096, 4) == 4 * 2 * 4 * 120 * 17
    for batch, dim, n_state, length, segments in itertools.product((1, 3), (1, 20), (1, 16), (1, 128, 129, 300, 20000), (1, 2, 7, 1000)):
        assert split(batch, dim, n_state, length, segments) == split_bytes(batch, dim, n_state, length, segments)


VARIANTS_SOURCE = Path(__file__).parent.parent / "tools" / "scan_variants.cu"


@pytest.mark.slow
def test_variant_library_compiles_for_ampere(tmp_path):
    """tools/scan_variants.cu (the shipped kernel's template at other shapes, the token-parallel kernel it replaced with
    its split passes, cp.async and two-channel variants, diagnostics) builds for sm_80, the oldest arch with cp.async,
    and lists its variants, the committed launcher first."""
    nvcc = _nvcc_or_skip()
    library = tmp_path / "libscan_variants.so"
    native_build.build(native_build.scan_library_command(library, ["8.0"], nvcc=nvcc, source=VARIANTS_SOURCE), library)
    loaded = ctypes.CDLL(str(library))
    loaded.mambaesr_scan_variant_name.restype = ctypes.c_char_p
    loaded.mambaesr_scan_variant_name.argtypes = [ctypes.c_int32]
    count = loaded.mambaesr_scan_variant_count()
    names = [loaded.mambaesr_scan_variant_name(i).decode() for i in range(count)]
    assert names[0] == "launcher" and len(set(names)) == count
    assert {name.split()[0] for name in names[1:]} == {"whole", "split", "async", "pair", "diag", "lanes"}
    assert loaded.mambaesr_scan_variant_name(count) is None


@pytest.mark.data
def test_plugin_interface_through_the_harness(plugin_kit):
    """Creator identity and fields as documented; serialisation round trip, output shapes (stub IExprBuilder), format
    combinations and bad fields, all through the plugin's own interface (no GPU needed)."""
    library, harness = plugin_kit
    info = subprocess.run([str(harness), str(library), "info"], capture_output=True, text=True, check=False)
    assert info.returncode == 0, info.stdout + info.stderr
    lines = info.stdout.splitlines()
    name, version, namespace = native_build.PLUGIN_NAME, native_build.PLUGIN_VERSION, native_build.PLUGIN_NAMESPACE
    assert lines[0] == f"creator {name} {version} {namespace}"
    assert [line.split()[1] for line in lines[1:]] == list(native_build.PLUGIN_FIELDS)
    check = subprocess.run([str(harness), str(library), "check"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.split("\n")[:-1] == ["ok round_trip fields", "ok output_shapes 2 300 6", "ok formats", "ok bad_fields"]


def test_sm_arch_accepts_profile_forms_and_refuses_xavier():
    assert native_build.sm_arch("8.7") == native_build.sm_arch(87) == native_build.sm_arch("sm_87") == "sm_87"
    with pytest.raises(ValueError, match="7.5 or newer"):
        native_build.sm_arch("7.2")


def test_missing_nvcc_is_a_named_error(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(native_build, "_DEFAULT_NVCC", tmp_path / "nvcc")
    with pytest.raises(DependencyMissingError, match="nvcc") as info:
        native_build.find_nvcc()
    assert "CUDA_HOME" in info.value.hint


def test_packed_scan_params_are_the_structure_bytes():
    """cuda_scan sends ScanParams as PACKED_PARAMS bytes (one struct.pack, not a ctypes Structure per call): with a
    distinct value in every field they equal the ctypes mirror's bytes, the layout the C compiler gives ScanParams."""
    from mambaesr_edge.scan_cuda import PACKED_PARAMS, _ScanParams

    values = list(range(1, 7)) + [0x1000 * k for k in range(1, 10)] + [-(k + 1) * 3 for k in range(20)]
    fields, strides = {}, iter(values[15:])
    for (name, kind), value in zip(_ScanParams._fields_, values, strict=False):
        fields[name] = value if not issubclass(kind, ctypes.Array) else kind(*(next(strides) for _ in range(kind._length_)))
    assert PACKED_PARAMS.size == ctypes.sizeof(_ScanParams) == 256
    assert PACKED_PARAMS.pack(*values) == bytes(_ScanParams(**fields))


def test_cuda_impl_refuses_cpu_tensors():
    inputs = _cast(make_inputs(1, 4, 10, 3, seed=0), torch.float32)
    with pytest.raises(ConfigError, match="CUDA tensors only"):
        selective_scan(**inputs, impl="cuda")


# ---------------------------------------------------------------- GPU: the kernel through the plugin and the torch op

LENGTHS = [1, 2, 255, 257, 1000, 4097, 20000]  # 64-token chunks (and the old 128 and 256): none a multiple
OPTION_SETS = [(), ("D",), ("z",), ("bias", "softplus"), ("D", "z", "bias", "softplus")]
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3}


def _model_layout(inputs: dict) -> dict:
    """The mixer's memory layouts: delta and z (batch, L, dim), B and C (batch, L, N) with a row stride, u (batch, dim, L)."""
    out = dict(inputs)
    for key in ("delta", "z"):
        if key in out:
            out[key] = out[key].transpose(1, 2).contiguous().transpose(1, 2)
    joint = torch.cat([inputs["B"], inputs["C"]], dim=1).transpose(1, 2).contiguous()  # (batch, L, 2N) like x_proj's
    n_state = inputs["B"].shape[1]
    out["B"], out["C"] = joint[..., :n_state].transpose(1, 2), joint[..., n_state:].transpose(1, 2)
    return out


PARAMETERS = ("A", "D", "delta_bias")  # fp32 in the model and in the plugin, whatever the activations' dtype


def _rounded(inputs: dict, dtype: torch.dtype) -> dict:
    """Activations rounded to dtype, parameters to fp32 (as the kernel and plugin take them)."""
    return {k: v.to(torch.float32 if k in PARAMETERS else dtype) if isinstance(v, torch.Tensor) else v
            for k, v in inputs.items()}


def _truth_and_ref(inputs: dict, dtype: torch.dtype, device: str):
    """fp64 truth of the inputs as rounded to dtype, and the fp32/fp16 `reference` impl on the device."""
    rounded = _cast(_rounded(inputs, dtype), torch.float64)
    truth = selective_scan(**rounded, impl="reference")
    on_device = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in _rounded(inputs, dtype).items()}
    ref = selective_scan(**on_device, impl="reference")
    return truth, ref, on_device


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_cuda_impl_matches_reference_and_triton(dtype):
    for length in LENGTHS:
        for options in OPTION_SETS if length <= 4097 else [(), OPTION_SETS[-1]]:
            inputs = make_inputs(2, 20, length, 16, seed=length * 3 + len(options), options=options)
            truth, ref, on_device = _truth_and_ref(inputs, dtype, "cuda")
            for layout in (on_device, _model_layout(on_device)):
                out = selective_scan(**layout, impl="cuda")
                assert out.dtype == dtype and out.shape == (2, 20, length) and torch.isfinite(out).all()
                label = f"L={length} {options} {dtype}"
                assert rel_error(out, ref) <= TOLERANCE[dtype], label
                assert rel_error(out.cpu(), truth) <= TOLERANCE[dtype], label
            triton_out = selective_scan(**_model_layout(on_device), impl="triton")
            assert rel_error(out, triton_out) <= TOLERANCE[dtype], label


def _write_spec(folder: Path, inputs: dict, dtype: torch.dtype, token_major: list[int], softplus: bool) -> tuple[Path, tuple]:
    """Input files in the plugin's order and layouts, and the spec the harness reads; returns (spec, y's shape)."""
    np_dtype = np.float16 if dtype == torch.float16 else np.float32
    order = ["u", "delta", "A", "B", "C"] + [k for k in ("D", "z", "delta_bias") if k in inputs]
    layouts = dict(zip(native_build.TOKEN_MAJOR_ORDER, token_major, strict=True))
    lines = ["fields {} {} {} {} {}".format(int(softplus), int("D" in inputs), int("z" in inputs),
                                            int("delta_bias" in inputs), " ".join(map(str, token_major))),
             f"dtype {int(dtype == torch.float16)}"]
    for key in order:
        tensor = inputs[key]
        if tensor.dim() == 3 and layouts[key]:
            tensor = tensor.transpose(1, 2)  # the graph holds it as (batch, L, K)
        array = tensor.contiguous().numpy().astype(np.float32 if key in PARAMETERS else np_dtype)
        path = folder / f"{key}.bin"
        array.tofile(path)
        lines.append(f"input {array.ndim} {' '.join(map(str, array.shape))} {path}")
    batch, dim, length = inputs["u"].shape
    y_shape = (batch, length, dim) if layouts["y"] else (batch, dim, length)
    lines.append(f"output {' '.join(map(str, y_shape))} {folder / 'y.bin'}")
    spec = folder / "spec.txt"
    spec.write_text("\n".join(lines) + "\n")
    return spec, y_shape


def _check_plugin_enqueue(library: Path, harness: Path, dtype: torch.dtype, folder: Path, batch: int, segments: int | None) -> None:
    """The harness runs getWorkspaceSize and enqueue over LENGTHS x OPTION_SETS with random layouts; y matches
    `reference` and the fp64 truth, and the workspace is what `segments` needs (None: the policy's count on this GPU,
    whatever it is, so the size is not checked)."""
    rng = np.random.default_rng(7)
    for length in LENGTHS:
        for options in OPTION_SETS if length <= 4097 else [OPTION_SETS[-1]]:
            inputs = make_inputs(batch, 12, length, 16, seed=length * 11 + len(options), options=options)
            softplus = bool(inputs.pop("delta_softplus", False))
            truth, ref, _ = _truth_and_ref({**inputs, "delta_softplus": softplus}, dtype, "cuda")
            rounded = _rounded(inputs, dtype)
            token_major = [int(b) for b in rng.integers(0, 2, size=6)]
            spec, y_shape = _write_spec(folder, rounded, dtype, token_major, softplus)
            done = subprocess.run([str(harness), str(library), "run", str(spec)], capture_output=True, text=True, timeout=300, check=False)
            label = f"L={length} {options} {dtype} token_major={token_major} segments={segments}"
            assert done.returncode == 0, label + done.stdout + done.stderr
            if segments is not None:
                assert f"ok workspace {split_bytes(batch, 12, 16, length, segments)}" in done.stdout.splitlines(), label + done.stdout
            y = torch.from_numpy(np.fromfile(folder / "y.bin", dtype=np.float16 if dtype == torch.float16 else np.float32))
            y = y.reshape(y_shape)
            y = y.transpose(1, 2) if token_major[5] else y
            assert torch.isfinite(y).all(), label  # the harness poisons y with NaN first: every element was written
            assert rel_error(y, ref.cpu()) <= TOLERANCE[dtype], label
            assert rel_error(y, truth) <= TOLERANCE[dtype], label


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_cuda_impl_takes_every_state_size_up_to_its_limit(dtype):
    """N below one lane per state (padded states stay zero), and 2 and 4 states a lane (N 17..64), one pass and split;
    N past the library's limit is a named error."""
    from mambaesr_edge.errors import ConfigError
    from mambaesr_edge.scan_cuda import cuda_scan

    for n_state, length, segments in itertools.product((1, 5, 16, 17, 32, 48, 64), (1, 300, 4097), (0, 3)):
        inputs = make_inputs(2, 20, length, n_state, seed=n_state * 7 + length + segments, options=OPTION_SETS[-1])
        truth, ref, on_device = _truth_and_ref(inputs, dtype, "cuda")
        out = cuda_scan(**_model_layout(on_device), segments=segments)
        label = f"N={n_state} L={length} segments={segments} {dtype}"
        assert torch.isfinite(out).all(), label
        assert rel_error(out, ref) <= TOLERANCE[dtype], label
        assert rel_error(out.cpu(), truth) <= TOLERANCE[dtype], label
    inputs = make_inputs(1, 4, 10, 65, seed=0)
    with pytest.raises(ConfigError, match="up to 64"):
        cuda_scan(**{k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})


@pytest.mark.gpu
@pytest.mark.data
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_plugin_enqueue_matches_reference(dtype, plugin_kit, tmp_path):
    library, harness = plugin_kit
    _check_plugin_enqueue(library, harness, dtype, tmp_path, batch=2, segments=None)


FORCED_SEGMENTS = 5


@pytest.mark.gpu
@pytest.mark.data
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_plugin_enqueue_with_the_split_matches_reference(dtype, plugin_kit, shared_dir, tmp_path):
    """A test build whose policy always gives FORCED_SEGMENTS (-DMAMBAESR_TEST_SEGMENTS): getWorkspaceSize declares
    the split's workspace, enqueue runs both passes in the workspace given (poisoned with NaN first)."""
    _, harness = plugin_kit
    library = _build_plugin(tmp_path, _headers_or_skip(shared_dir, "tensorrt-10.3.0"), _nvcc_or_skip(),
                            defines=(f"-DMAMBAESR_TEST_SEGMENTS={FORCED_SEGMENTS}",))
    _check_plugin_enqueue(library, harness, dtype, tmp_path, batch=3, segments=FORCED_SEGMENTS)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_cuda_impl_with_a_forced_split_matches_reference(dtype):
    """The torch op's split path (segments forced through the C entry point, workspace allocated by scan_cuda.py)."""
    from mambaesr_edge.scan_cuda import cuda_scan

    for length, segments in itertools.product(LENGTHS, (2, 7, 64)):
        for options in ((), OPTION_SETS[-1]):
            inputs = make_inputs(3, 20, length, 16, seed=length * 5 + segments + len(options), options=options)
            truth, ref, on_device = _truth_and_ref(inputs, dtype, "cuda")
            for layout in (on_device, _model_layout(on_device)):
                out = cuda_scan(**layout, segments=segments)
                label = f"L={length} segments={segments} {options} {dtype}"
                assert out.dtype == dtype and out.shape == (3, 20, length) and torch.isfinite(out).all(), label
                assert rel_error(out, ref) <= TOLERANCE[dtype], label
                assert rel_error(out.cpu(), truth) <= TOLERANCE[dtype], label


@pytest.mark.gpu
@pytest.mark.data
def test_default_model_keeps_set5_psnr_with_the_cuda_scan(benchmark_dir, monkeypatch):
    from mambaesr_edge.checkpoint import load_model
    from mambaesr_edge.evaluate import evaluate_dataset

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model, _ = load_model(scan_impl="chunked")
    model = model.cuda().eval()
    chunked = evaluate_dataset(model, benchmark_dir / "Set5", scale=model.scale, scan_impl="chunked")
    native = evaluate_dataset(model, benchmark_dir / "Set5", scale=model.scale, scan_impl="cuda")
    assert abs(native.psnr - chunked.psnr) <= 0.001, (native.psnr, chunked.psnr)
