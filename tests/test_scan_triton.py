"""The fused Triton scan against the sequential reference: on CUDA (marked gpu), and on the CPU via Triton's interpreter."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mambaesr_edge.scan import selective_scan

sys.path.insert(0, str(Path(__file__).parent))
from test_scan import _cast, make_inputs, rel_error  # noqa: E402

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def _check(device: str, lengths, dim: int, dtype=torch.float32, tol=1e-5, grad_tol=1e-5) -> None:
    """Forward and gradients vs the fp64 reference; on CUDA also no worse than the chunked impl on the same device.

    dL/dA is a sum over all L steps of products of states and adjoints that each carry the fp32 recurrence's
    error (~5e-6 at L = 4097 on an H100, for the chunked PyTorch scan too): it gets 3x grad_tol, and the relative
    check against `chunked` keeps the kernel honest there.
    """
    for length in lengths:
        for options in ((), ("D", "z", "bias", "softplus")):
            inputs = make_inputs(2, dim, length, 16, seed=length + len(options), options=options, delta_range=(1e-3, 5.0))
            inputs = _cast(_cast(inputs, dtype), torch.float64)  # the reference sees the same rounded inputs
            truth = selective_scan(**inputs, impl="reference")
            names = [k for k, v in inputs.items() if isinstance(v, torch.Tensor)]
            leaves = {k: v.to(device, dtype).requires_grad_(True) if k in names else v for k, v in inputs.items()}
            # the model's layout: (batch, L, dim) in memory, seen as (batch, dim, L)
            for key in ("u", "delta", "z"):
                if key in leaves:
                    leaves[key] = leaves[key].detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True)
            out = selective_scan(**leaves, impl="triton")
            assert out.dtype == dtype and torch.isfinite(out).all()
            assert rel_error(out.cpu(), truth) <= tol, (length, options)
            with torch.no_grad():  # inference: bias, softplus, D and the gate run inside the kernel
                fused = selective_scan(**leaves, impl="triton")
            assert fused.dtype == dtype and rel_error(fused.cpu(), truth) <= tol, (length, options, "no grad")
            weight = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)
            (out * weight.to(device, dtype)).sum().backward()
            ref_leaves = {k: v.detach().clone().requires_grad_(True) if k in names else v for k, v in inputs.items()}
            ref = selective_scan(**ref_leaves, impl="reference")
            (ref * weight).sum().backward()
            peer = {}
            if device == "cuda" and dtype == torch.float32:  # the chunked PyTorch scan on the same device
                peer_leaves = {k: leaves[k].detach().clone().requires_grad_(True) if k in names else v for k, v in leaves.items()}
                (selective_scan(**peer_leaves, impl="chunked") * weight.to(device, dtype)).sum().backward()
                peer = {k: peer_leaves[k].grad for k in names}
            for name in names:
                ours = leaves[name].grad
                ours = torch.zeros_like(leaves[name]) if ours is None else ours
                expected = ref_leaves[name].grad
                if expected.abs().max() == 0:
                    assert ours.abs().max() == 0, name
                    continue
                error = rel_error(ours.cpu(), expected)
                assert error <= (3 * grad_tol if name == "A" else grad_tol), (length, options, name, error)
                if peer.get(name) is not None:
                    assert error <= 1.5 * rel_error(peer[name].cpu(), expected) + 1e-7, (length, options, name, "vs chunked")


def _interpreter_numpy_fix() -> None:
    """Triton 3.6's interpreter turns a scalar into an int with int(ndarray of shape (1,)), which numpy >= 2.4
    refuses; loops over a runtime length then fail in the interpreter only. Read the one element instead."""
    import triton.runtime.interpreter as interpreter

    patch = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: the gpu tests run the real kernels")
def test_triton_scan_in_the_cpu_interpreter():
    """Triton's interpreter runs the same kernels on the CPU: forward and gradients match the reference."""
    code = (
        "import sys; sys.path.insert(0, 'tests'); from test_scan_triton import _check, _interpreter_numpy_fix; "
        "_interpreter_numpy_fix(); _check('cpu', lengths=[1, 7, 40, 130], dim=20)"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.gpu
def test_triton_scan_on_cuda_fp32():
    _check("cuda", lengths=[1, 17, 1000, 4097], dim=70)


@pytest.mark.gpu
def test_triton_scan_on_cuda_bf16():
    _check("cuda", lengths=[33, 2000], dim=64, dtype=torch.bfloat16, tol=2e-3, grad_tol=2e-2)


@pytest.mark.gpu
def test_model_with_triton_matches_chunked_on_cuda(monkeypatch):
    from mambaesr_edge.model import MambaSR
    from mambaesr_edge.presets import get_preset

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # TF32 would amplify the scans' 1e-6 differences
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    model = MambaSR(get_preset("student", scan_orders=("raster", "column_rev"))).cuda()
    x = torch.rand(2, 3, 24, 20, device="cuda")
    with torch.no_grad():
        assert torch.allclose(model(x, scan_impl="triton"), model(x, scan_impl="chunked"), atol=1e-4)
