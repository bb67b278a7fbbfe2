"""The network's LayerNorm over the channels of tokens (batch, L, channels) as one Triton kernel.

``nn.LayerNorm`` over C = 60 channels reaches about 315 GB/s on an H100 (19% of the network's time, issue 16): each
row is too short for PyTorch's one-row-per-block kernel, and a strided input (patch_embed's tokens are a transposed
view of conv_first's image) is first copied to a contiguous one. Here one program normalises a tile of BLOCK_L tokens
x all channels: x is read once where it is (any strides), y written once, contiguous (B, L, C).

    y[b, t, c] = (x[b, t, c] - mean[b, t]) / sqrt(var[b, t] + eps) * weight[c] + bias[c]      (biased var, over c)

the same parameters as ``nn.LayerNorm(C)`` (``weight``, ``bias`` (C,)), statistics and maths in fp32 for any input
dtype, rounded once to the output dtype (x's, or fp32 as autocast gives LayerNorm). Inference only (no backward):
the model uses it on CUDA where it uses the fused conv (model._fused_inference); tests compare it with
``F.layer_norm`` (tests/test_norm_triton.py: on the GPU, and in Triton's CPU interpreter).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .weights_format import LAYER_NORM_EPS

__all__ = ["layer_norm_tokens"]

TILE_ELEMENTS = 8192  # BLOCK_L x BLOCK_C per program: 128 tokens of C <= 64
MAX_BLOCK_C = 1024  # one program holds whole rows; wider rows stay with nn.LayerNorm


@triton.jit
def _layer_norm_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, length, dim, eps,
    sx_b, sx_l, sx_c, sy_b, sy_l,
    HAS_BIAS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr,
):
    offs_l = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)  # (BL,) tokens
    pid_b = tl.program_id(1)
    offs_c = tl.arange(0, BLOCK_C)  # (BC,) all channels, padded to a power of two
    mask_c = offs_c < dim
    mask = (offs_l < length)[:, None] & mask_c[None, :]  # (BL, BC)
    x = tl.load(x_ptr + pid_b * sx_b + offs_l[:, None] * sx_l + offs_c[None, :] * sx_c, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / dim  # (BL,) padding loads 0: sums over the real channels
    centred = tl.where(mask, x - mean[:, None], 0.0)  # (BL, BC)
    var = tl.sum(centred * centred, axis=1) / dim  # (BL,) biased, as nn.LayerNorm
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)  # (BC,)
    y = centred * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        y += tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    y_offs = pid_b * sy_b + offs_l[:, None] * sy_l + offs_c[None, :]
    tl.store(y_ptr + y_offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def layer_norm_tokens(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float = LAYER_NORM_EPS,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """x (B, L, C) of any strides -> LayerNorm over C as a contiguous (B, L, C) tensor in ``out_dtype`` (default x's).
    ``weight`` and ``bias`` (C,): ``nn.LayerNorm(C)``'s. Statistics in fp32 whatever x's dtype."""
    if x.dim() != 3:
        raise ValueError(f"tokens of shape (B, L, C) expected, got {tuple(x.shape)}")
    batch, length, dim = x.shape
    if weight.shape != (dim,) or (bias is not None and bias.shape != (dim,)):
        raise ValueError(f"weight and bias of shape ({dim},) expected, got {tuple(weight.shape)}"
                         f" and {None if bias is None else tuple(bias.shape)}")
    block_c = triton.next_power_of_2(dim)
    if block_c > MAX_BLOCK_C:
        raise ValueError(f"{dim} channels are more than one program holds ({MAX_BLOCK_C}); use nn.LayerNorm")
    y = torch.empty(batch, length, dim, device=x.device, dtype=out_dtype or x.dtype)  # (B, L, C)
    if y.numel() == 0:
        return y
    block_l = max(1, TILE_ELEMENTS // block_c)
    grid = (triton.cdiv(length, block_l), batch)
    _layer_norm_kernel[grid](
        x, weight, bias if bias is not None else weight, y, length, dim, eps,
        x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1),
        HAS_BIAS=bias is not None, BLOCK_L=block_l, BLOCK_C=block_c, num_warps=4,
    )
    return y
