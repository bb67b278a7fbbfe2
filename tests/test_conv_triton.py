"""The fused causal conv1d + SiLU kernel (conv_triton.py) against the PyTorch ops it replaces in model.Mixer:
on CUDA (marked gpu), and on the CPU through Triton's interpreter (when triton is installed and no GPU is)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

# (batch, L, channels, kernel, bias): one token, fewer tokens than taps, a partial last block, channels over one block
CASES = [(1, 1, 7, 4, True), (2, 3, 5, 4, False), (2, 130, 70, 4, True), (3, 64, 120, 3, True), (1, 200, 16, 1, True)]


def reference(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """model.Mixer's PyTorch ops: (B, L, D) -> silu(conv1d(padding K-1)[..., :L]) as (B, L, D)."""
    length, k = u.shape[1], weight.shape[2]
    return F.silu(F.conv1d(u.transpose(1, 2), weight, bias, padding=k - 1, groups=u.shape[2])[..., :length]).transpose(1, 2)


def check(device: str, dtype: torch.dtype = torch.float32, tol: float = 1e-5) -> None:
    from mambaesr_edge.conv_triton import causal_conv1d_silu

    for batch, length, dim, k, has_bias in CASES:
        gen = torch.Generator().manual_seed(length * 1000 + dim)
        xz = torch.randn(batch, length, 2 * dim, generator=gen).to(device, dtype)  # in_proj's output
        u = xz[..., :dim]  # (B, L, D) strided, as in the model
        weight = torch.randn(dim, 1, k, generator=gen).to(device)
        bias = torch.randn(dim, generator=gen).to(device) if has_bias else None
        out = causal_conv1d_silu(u, weight, bias)
        assert out.dtype == dtype and out.shape == (batch, length, dim) and out.is_contiguous()
        expected = reference(u.float(), weight, bias)
        error = (out.float() - expected).abs().max().item() / max(1.0, expected.abs().max().item())
        assert error <= tol, (batch, length, dim, k, has_bias, error)


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: the gpu tests run the real kernel")
def test_fused_conv_in_the_cpu_interpreter():
    code = "import sys; sys.path.insert(0, 'tests'); from test_conv_triton import check; check('cpu')"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_fused_conv_on_cuda(dtype, tol):
    check("cuda", dtype, tol)


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [None, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scan", ["triton", "cuda"])
def test_model_with_the_fused_conv_matches_the_pytorch_ops(monkeypatch, amp, scan):
    """Both fused scans (the native kernel reads the fused conv's token layout as the Triton scan does)."""
    from mambaesr_edge import model as model_module
    from mambaesr_edge.model import MambaSR
    from mambaesr_edge.presets import get_preset

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    net = MambaSR(get_preset("dvmsr-g1")).cuda().eval()
    x = torch.rand(3, 3, 40, 52, device="cuda")
    monkeypatch.setattr(model_module, "_layer_norm", lambda norm, tokens, _: norm(tokens))  # the conv alone differs
    with torch.inference_mode(), torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
        assert model_module._fused_inference(x, scan)
        fused = net(x, scan_impl=scan).float()
        monkeypatch.setattr(model_module, "_fused_inference", lambda *_: False)
        plain = net(x, scan_impl=scan).float()
    tol = 1e-4 if amp is None else 2e-2
    assert (fused - plain).abs().max().item() <= tol, (amp, (fused - plain).abs().max().item())
