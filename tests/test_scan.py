"""Selective scan: the exportable `chunked` impl against the sequential `reference`, on hostile inputs."""

from __future__ import annotations

import math

import pytest
import torch

from mambaesr_edge.errors import ConfigError, DependencyMissingError
from mambaesr_edge.scan import (
    CHUNK,
    CPU_BLOCK,
    _chunked_blocks_in_place,
    linear_recurrence,
    selective_scan,
)


def _log_uniform(shape, low, high, generator):
    return torch.exp(torch.empty(shape, dtype=torch.float64).uniform_(math.log(low), math.log(high), generator=generator))


def make_inputs(batch, dim, length, n_state, *, seed, delta_range=(1e-4, 20.0), a_range=(1e-3, 100.0), options=()):
    """Random scan inputs (fp64) with delta and -A log-uniform over the given ranges."""
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "u": torch.randn(batch, dim, length, dtype=torch.float64, generator=g),
        "delta": _log_uniform((batch, dim, length), *delta_range, g),
        "A": -_log_uniform((dim, n_state), *a_range, g),
        "B": torch.randn(batch, n_state, length, dtype=torch.float64, generator=g),
        "C": torch.randn(batch, n_state, length, dtype=torch.float64, generator=g),
    }
    if "D" in options:
        inputs["D"] = torch.randn(dim, dtype=torch.float64, generator=g)
    if "z" in options:
        inputs["z"] = torch.randn(batch, dim, length, dtype=torch.float64, generator=g)
    if "bias" in options:
        inputs["delta_bias"] = torch.randn(dim, dtype=torch.float64, generator=g)
    if "softplus" in options:
        # softplus(x) spans the same range when x = log(expm1(delta)); keep raw values finite for tiny delta.
        inputs["delta"] = torch.log(torch.expm1(inputs["delta"]))
        inputs["delta_softplus"] = True
    return inputs


def _cast(inputs, dtype):
    return {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def rel_error(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300)).item()


LENGTHS = [1, 2, 15, 17, 255, 1000, 4097, 20000]  # none a multiple of the chunk beyond 1 chunk
OPTION_SETS = [(), ("D",), ("z",), ("bias", "softplus"), ("D", "z", "bias", "softplus")]


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "+".join(o) or "plain")
def test_chunked_matches_reference_fp32(length, options):
    inputs = make_inputs(2, 6, length, 5, seed=length * 7 + len(options), options=options)
    truth = selective_scan(**inputs, impl="reference")  # fp64 sequential definition
    ref32 = selective_scan(**_cast(inputs, torch.float32), impl="reference")
    out = selective_scan(**_cast(inputs, torch.float32), impl="chunked")
    assert out.dtype == torch.float32 and out.shape == (2, 6, length)
    assert torch.isfinite(out).all()
    assert rel_error(out, truth) <= 1e-5
    assert rel_error(out, ref32) <= 1e-5


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("options", [(), ("D", "z", "bias", "softplus")], ids=["plain", "all"])
def test_chunked_in_place_inference_matches_reference(length, options):
    """Without autograd on the CPU the chunked scan works in place, block by block: same results."""
    inputs = make_inputs(2, 6, length, 5, seed=length * 5 + len(options), options=options)
    truth = selective_scan(**inputs, impl="reference")
    with torch.inference_mode():
        out = selective_scan(**_cast(inputs, torch.float32), impl="chunked")
    with torch.no_grad():
        out_no_grad = selective_scan(**_cast(inputs, torch.float32), impl="chunked")
    functional = selective_scan(**_cast(inputs, torch.float32), impl="chunked")
    assert out.dtype == torch.float32 and out.shape == (2, 6, length) and torch.isfinite(out).all()
    assert rel_error(out, truth) <= 1e-5
    assert torch.equal(out, out_no_grad)
    assert rel_error(out, functional) <= 1e-5


@pytest.mark.parametrize("chunk,block", [(16, 16), (16, 48), (4, 8), (8, 256), (16, CPU_BLOCK)])
@pytest.mark.parametrize("length", [1, 7, 16, 47, 48, 49, 1000])
def test_blocks_in_place_at_block_boundaries(chunk, block, length):
    """Every block size and chunk against the sequential definition, lengths around the block boundaries."""
    inputs = make_inputs(1, 3, length, 4, seed=length + block, options=("bias", "softplus"), delta_range=(1e-3, 5.0))
    truth = selective_scan(**inputs, impl="reference")  # no D, z: y = C . h
    delta = torch.nn.functional.softplus(inputs["delta"] + inputs["delta_bias"][:, None])
    with torch.inference_mode():
        out = _chunked_blocks_in_place(inputs["u"], delta, inputs["A"], inputs["B"], inputs["C"], chunk=chunk, block=block)
    assert out.shape == (1, 3, length)
    assert rel_error(out, truth) <= 1e-10  # fp64 throughout


def test_in_place_leaves_inputs_alone():
    inputs = _cast(make_inputs(1, 4, 300, 8, seed=2, options=("D", "z", "bias", "softplus")), torch.float32)
    copies = {k: v.clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    with torch.inference_mode():
        selective_scan(**inputs, impl="chunked")
    for name, original in copies.items():
        assert torch.equal(inputs[name], original), name


@pytest.mark.parametrize(
    "delta_range,a_range",
    [((20.0, 20.0), (100.0, 100.0)), ((1e-4, 1e-4), (1e-3, 1e-3)), ((1e-4, 20.0), (1e-3, 100.0)), ((5.0, 20.0), (50.0, 100.0))],
    ids=["fastest-decay", "slowest-decay", "full-range", "strong-decay"],
)
def test_extreme_delta_and_A_never_overflow(delta_range, a_range):
    """The naive cumsum form exp(S_t) * cumsum(exp(-S_s) ...) is inf/NaN here within 64 steps; ours must not be."""
    inputs = make_inputs(1, 4, 20000, 16, seed=3, delta_range=delta_range, a_range=a_range, options=("D",))
    naive_exponent = (inputs["delta"][..., :64].sum(-1).max() * -inputs["A"].min()).item()
    assert naive_exponent > 88.7 or delta_range[0] < 1  # exp(88.7) overflows fp32: the naive form would break
    out = selective_scan(**_cast(inputs, torch.float32), impl="chunked")
    assert torch.isfinite(out).all()
    truth = selective_scan(**inputs, impl="reference")
    assert rel_error(out, truth) <= 1e-5
    with torch.inference_mode():
        in_place = selective_scan(**_cast(inputs, torch.float32), impl="chunked")
    assert torch.isfinite(in_place).all()
    assert rel_error(in_place, truth) <= 1e-5


@pytest.mark.parametrize("length", [1, 33, 300])
@pytest.mark.parametrize("options", [(), ("D", "z", "bias", "softplus")], ids=["plain", "all"])
def test_gradients_match_reference(length, options):
    inputs = make_inputs(2, 3, length, 4, seed=11 + length, options=options, delta_range=(1e-3, 5.0))
    names = [k for k, v in inputs.items() if isinstance(v, torch.Tensor)]

    def grads(impl, dtype):
        leaves = {k: v.detach().to(dtype).clone().requires_grad_(True) if k in names else v for k, v in inputs.items()}
        out = selective_scan(**leaves, impl=impl)
        weight = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out).to(dtype)
        (out * weight).sum().backward()
        # A gets no gradient path at all when L == 1 (the decay never multiplies a state): that is a zero gradient.
        return {k: leaves[k].grad if leaves[k].grad is not None else torch.zeros_like(leaves[k]) for k in names}

    truth = grads("reference", torch.float64)
    ours = grads("chunked", torch.float32)
    for name in names:
        assert torch.isfinite(ours[name]).all(), name
        if truth[name].abs().max() == 0:
            assert ours[name].abs().max() == 0, name
        else:
            assert rel_error(ours[name], truth[name]) <= 1e-5, name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_fp32(dtype):
    inputs = make_inputs(1, 8, 777, 16, seed=5, options=("D", "z", "bias", "softplus"), delta_range=(1e-3, 10.0))
    half = _cast(inputs, dtype)
    out = selective_scan(**half, impl="chunked")
    assert out.dtype == dtype
    truth = selective_scan(**_cast(half, torch.float64), impl="reference")  # same rounded inputs, exact math
    assert rel_error(out, truth) <= (1e-3 if dtype == torch.float16 else 8e-3)  # one rounding of the output


def test_linear_recurrence_pads_correctly_at_chunk_boundaries():
    for length in (CHUNK - 1, CHUNK, CHUNK + 1, CHUNK * CHUNK - 1, CHUNK * CHUNK + 1):
        a = torch.rand(3, length, 2, dtype=torch.float64)
        b = torch.randn(3, length, 2, dtype=torch.float64)
        h, expected = torch.zeros(3, 2, dtype=torch.float64), []
        for t in range(length):
            h = a[:, t] * h + b[:, t]
            expected.append(h)
        assert torch.allclose(linear_recurrence(a, b), torch.stack(expected, 1), rtol=1e-12, atol=1e-12)


def test_unknown_impl_and_missing_mamba_ssm_are_clear_errors():
    inputs = make_inputs(1, 2, 4, 2, seed=0)
    with pytest.raises(ConfigError, match="unknown scan implementation"):
        selective_scan(**inputs, impl="fast")
    try:
        import mamba_ssm  # noqa: F401
    except ImportError:
        with pytest.raises(DependencyMissingError, match="mamba-ssm"):
            selective_scan(**inputs, impl="mamba_ssm")


def test_shape_mismatch_names_the_tensor():
    inputs = make_inputs(1, 2, 4, 2, seed=0)
    inputs["B"] = inputs["B"][..., :3]
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan(**inputs, impl="chunked")


def test_chunked_exports_to_onnx_without_loops(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    class Scan(torch.nn.Module):
        def forward(self, u, delta, A, B, C, D, z, bias):
            return selective_scan(u, delta, A, B, C, D, z, bias, True, impl="chunked")

    inputs = _cast(make_inputs(1, 4, 300, 8, seed=9, options=("D", "z", "bias", "softplus")), torch.float32)
    args = tuple(inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"))
    path = tmp_path / "scan.onnx"
    torch.onnx.export(Scan(), args, str(path), opset_version=17, dynamo=False)
    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert not ops & {"Loop", "Scan", "If"}, ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args, strict=True)}
    (out,) = session.run(None, feeds)
    assert rel_error(torch.from_numpy(out), selective_scan(**inputs, impl="reference")) <= 1e-5


def test_stable_softplus_gradient_is_sigmoid_also_at_zero():
    """d softplus / dx = sigmoid(x): 0.5 at exactly 0 (a clamp-based max(x, 0) gave 1 there, doubling d(delta))."""
    from mambaesr_edge.scan import stable_softplus

    x = torch.tensor([-30.0, -1.0, -1e-8, 0.0, 1e-8, 1.0, 30.0], dtype=torch.float64, requires_grad=True)
    y = stable_softplus(x)
    y.sum().backward()
    assert torch.allclose(y.detach(), torch.nn.functional.softplus(x.detach(), threshold=1000.0), rtol=1e-15, atol=0)
    assert torch.allclose(x.grad, torch.sigmoid(x.detach()), rtol=1e-12, atol=0)
    assert x.grad[3].item() == 0.5


def test_scan_gradient_where_delta_plus_bias_is_zero():
    """The scan's d(delta) and d(delta_bias) match autograd through torch's softplus when delta + bias == 0 exactly."""
    inputs = make_inputs(1, 3, 9, 2, seed=4, options=("bias", "softplus"))
    inputs["delta"] = -inputs["delta_bias"][None, :, None].expand(1, 3, 9).clone()  # delta + bias == 0 everywhere
    grads = []
    for softplus in (None, torch.nn.functional.softplus):
        leaves = {k: v.clone().requires_grad_(True) if k in ("delta", "delta_bias") else v for k, v in inputs.items()}
        if softplus is None:
            out = selective_scan(**leaves, impl="reference")
        else:  # the same scan with torch's own softplus applied outside
            delta = softplus(leaves["delta"] + leaves["delta_bias"][:, None])
            rest = {k: v for k, v in leaves.items() if k not in ("delta", "delta_bias", "delta_softplus")}
            out = selective_scan(delta=delta, **rest, impl="reference")
        out.sum().backward()
        grads.append((leaves["delta"].grad, leaves["delta_bias"].grad))
    assert torch.allclose(grads[0][0], grads[1][0], rtol=1e-12) and torch.allclose(grads[0][1], grads[1][1], rtol=1e-12)


def test_inference_impl_prefers_the_native_kernel_on_cuda_and_says_why_not(monkeypatch, caplog, request):
    """The torch backend's "auto": the native kernel on CUDA when its library loads, else resolve_impl's choice with
    the reason logged; elsewhere, and for any named impl, resolve_impl."""
    from mambaesr_edge import scan_cuda
    from mambaesr_edge.errors import DependencyMissingError
    from mambaesr_edge.scan import inference_impl, resolve_impl

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    scan_cuda.device_arch.cache_clear()  # asked once per device: neither this fake nor a real answer carries over
    request.addfinalizer(scan_cuda.device_arch.cache_clear)
    loaded = []
    monkeypatch.setattr(scan_cuda, "load_library", lambda arch: loaded.append(arch))
    assert inference_impl("auto", cuda) == "cuda" and loaded == ["sm_90"]
    assert inference_impl("auto", torch.device("cpu")) == "chunked"
    assert inference_impl("chunked", cuda) == "chunked"

    def missing(arch):
        raise DependencyMissingError("the native CUDA scan needs nvcc", hint="install the CUDA toolkit")

    monkeypatch.setattr(scan_cuda, "load_library", missing)
    with caplog.at_level("WARNING", logger="mambaesr_edge.scan"):
        assert inference_impl("auto", cuda) == resolve_impl("auto", cuda)
    assert "needs nvcc" in caplog.text
