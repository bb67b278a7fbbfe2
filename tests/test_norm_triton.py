"""The fused LayerNorm kernel (norm_triton.py) against F.layer_norm, which it replaces in the model on CUDA inference:
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

ROWS = [1, 63, 4097]  # one token, a partial tile, many tiles and a partial last one
# (channels, layout): the model's 60 (tokens contiguous per channel as patch_embed's transposed view, or contiguous),
# a small preset's 8, and more channels than 64
SHAPES = [(60, "contiguous"), (60, "channels_strided"), (8, "contiguous"), (70, "channels_strided")]
TOLERANCES = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def tokens(batch: int, rows: int, dim: int, layout: str, dtype: torch.dtype, device: str, gen: torch.Generator) -> torch.Tensor:
    """(batch, rows, dim) with an offset and scale per token, as activations have; contiguous or a transposed view."""
    x = torch.randn(batch, rows, dim, generator=gen) * 3 + torch.randn(batch, rows, 1, generator=gen) * 5
    if layout == "channels_strided":
        return x.transpose(1, 2).contiguous().to(device, dtype).transpose(1, 2)  # strides (dim*rows, 1, rows)
    return x.to(device, dtype)


def check(device: str, dtypes: tuple[torch.dtype, ...] = tuple(TOLERANCES)) -> None:
    """layer_norm_tokens against F.layer_norm in fp32 on the same (rounded) input, for each row count, shape, dtype."""
    from mambaesr_edge.norm_triton import layer_norm_tokens
    from mambaesr_edge.weights_format import LAYER_NORM_EPS

    for rows in ROWS:
        for dim, layout in SHAPES:
            for dtype in dtypes:
                gen = torch.Generator().manual_seed(rows * 100 + dim)
                batch = 1 if rows > 1000 else 2
                x = tokens(batch, rows, dim, layout, dtype, device, gen)
                weight = (1 + 0.5 * torch.randn(dim, generator=gen)).to(device)
                bias = torch.randn(dim, generator=gen).to(device)
                expected = F.layer_norm(x.float(), (dim,), weight, bias, LAYER_NORM_EPS)
                for out_dtype, tol in [(None, TOLERANCES[dtype]), (torch.float32, 1e-5)]:  # fp32 out: autocast's
                    out = layer_norm_tokens(x, weight, bias, LAYER_NORM_EPS, out_dtype)
                    assert out.dtype == (out_dtype or dtype) and out.shape == x.shape and out.is_contiguous()
                    error = (out.float() - expected).abs().max().item() / max(1.0, expected.abs().max().item())
                    assert error <= tol, (rows, dim, layout, dtype, out_dtype, error)
    no_bias = layer_norm_tokens(x.float(), weight, None)
    assert (no_bias - F.layer_norm(x.float(), (dim,), weight, None, LAYER_NORM_EPS)).abs().max().item() <= 1e-5


def test_layer_norm_tokens_refuses_what_it_does_not_handle():
    pytest.importorskip("triton")
    from mambaesr_edge.norm_triton import layer_norm_tokens

    with pytest.raises(ValueError, match=r"\(B, L, C\)"):
        layer_norm_tokens(torch.zeros(4, 60), torch.ones(60), None)
    with pytest.raises(ValueError, match=r"\(60,\)"):
        layer_norm_tokens(torch.zeros(1, 4, 60), torch.ones(64), None)
    with pytest.raises(ValueError, match="nn.LayerNorm"):
        layer_norm_tokens(torch.zeros(1, 4, 2000), torch.ones(2000), None)


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: the gpu tests run the real kernel")
def test_fused_layer_norm_in_the_cpu_interpreter():
    code = "import sys; sys.path.insert(0, 'tests'); from test_norm_triton import check; check('cpu')"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.gpu
def test_fused_layer_norm_on_cuda():
    check("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [None, torch.float16, torch.bfloat16])
def test_layer_norm_helper_gives_what_the_module_gives(amp):
    """model._layer_norm: the kernel where _fused_inference holds, with the module's dtype (fp32 under autocast)."""
    from mambaesr_edge import model as model_module

    norm = torch.nn.LayerNorm(60).cuda()
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 300, 60, device="cuda", dtype=amp or torch.float32)
    with torch.inference_mode(), torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
        assert model_module._fused_inference(x, "auto")
        fused = model_module._layer_norm(norm, x, "auto")
        plain = norm(x)
    assert fused.dtype == plain.dtype and fused.shape == plain.shape
    assert (fused.float() - plain.float()).abs().max().item() <= (1e-5 if plain.dtype == torch.float32 else 2e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [None, torch.float16, torch.bfloat16])
def test_model_with_the_fused_layer_norm_matches_the_pytorch_ops(monkeypatch, amp):
    """The whole network, all fused kernels on, against the same with nn.LayerNorm's forward (the fused conv on in
    both, so the difference is the norms'), and against all PyTorch ops."""
    from mambaesr_edge import model as model_module
    from mambaesr_edge.model import MambaSR
    from mambaesr_edge.presets import get_preset

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    net = MambaSR(get_preset("dvmsr-g1")).cuda().eval()
    for norm in (m for m in net.modules() if isinstance(m, torch.nn.LayerNorm)):  # not the identity init's 1 and 0
        torch.nn.init.normal_(norm.weight, 1.0, 0.2)
        torch.nn.init.normal_(norm.bias, 0.0, 0.2)
    x = torch.rand(3, 3, 40, 52, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
        assert model_module._fused_inference(x, "auto")
        fused = net(x, scan_impl="triton").float()
        monkeypatch.setattr(model_module, "_layer_norm", lambda norm, tokens, _: norm(tokens))
        plain_norms = net(x, scan_impl="triton").float()
        monkeypatch.setattr(model_module, "_fused_inference", lambda *_: False)
        plain = net(x, scan_impl="triton").float()
    tol = 1e-4 if amp is None else 2e-2
    for other in (plain_norms, plain):
        assert (fused - other).abs().max().item() <= tol, (amp, (fused - other).abs().max().item())
