"""The mixer's causal depthwise conv1d + SiLU as one Triton kernel, in the token layout (batch, L, channels).

PyTorch's path (model.Mixer) copies the strided u half of in_proj's (B, L, 2*Di) output to (B, Di, L) for
``nn.Conv1d``, convolves with both-sided padding, slices off the last d_conv - 1 outputs, applies SiLU, and copies
again to (B, L, Di) for x_proj: four passes over the activations (12% layout copies + 8% conv1d of an H100 profile,
issue 16). Here one kernel reads u where it is and writes silu(conv) once, contiguous (B, L, Di): x_proj takes it
without a copy and the scan reads it channel-contiguous.

    y[b, t, d] = silu(bias[d] + sum_k weight[d, 0, k] * u[b, t - (K-1) + k, d])      (u = 0 before t = 0)

the same weights (``conv1d.weight`` (Di, 1, K), ``conv1d.bias`` (Di,)), maths in fp32, stored in u's dtype.
Inference only (no backward): the model uses it on CUDA with the Triton scan when no gradient is needed; tests
compare it with the PyTorch ops (tests/test_conv_triton.py: on the GPU, and in Triton's CPU interpreter).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["causal_conv1d_silu"]

BLOCK_L = 64  # tokens per program
MAX_BLOCK_D = 64  # channels per program


@triton.jit
def _causal_conv_silu_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, length, dim,
    sx_b, sx_l, sx_d, sy_b, sy_l, sy_d, sw_d, sw_k,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    offs_l = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)  # (BL,) output tokens
    pid_b = tl.program_id(1)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BD,) channels
    mask_d = offs_d < dim
    acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)  # (BL, BD)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(K):
        src = offs_l - (K - 1) + k  # (BL,) input token of tap k; < 0 is the causal zero padding
        mask = ((src >= 0) & (src < length))[:, None] & mask_d[None, :]  # (BL, BD)
        x = tl.load(x_ptr + pid_b * sx_b + src[:, None] * sx_l + offs_d[None, :] * sx_d, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + offs_d * sw_d + k * sw_k, mask=mask_d, other=0.0).to(tl.float32)  # (BD,)
        acc += x * w[None, :]
    y = acc * tl.sigmoid(acc)  # silu
    out_mask = (offs_l < length)[:, None] & mask_d[None, :]
    y_offs = pid_b * sy_b + offs_l[:, None] * sy_l + offs_d[None, :] * sy_d
    tl.store(y_ptr + y_offs, y.to(y_ptr.dtype.element_ty), mask=out_mask)


def causal_conv1d_silu(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """u (B, L, D) of any strides (e.g. a half of in_proj's output) -> silu(causal depthwise conv1d) as a contiguous
    (B, L, D) tensor in u's dtype. ``weight`` (D, 1, K) and ``bias`` (D,): ``nn.Conv1d(D, D, K, groups=D)``'s."""
    batch, length, dim = u.shape
    if weight.shape[0] != dim or weight.shape[1] != 1 or weight.dim() != 3:
        raise ValueError(f"depthwise weight of shape (D, 1, K) expected for {dim} channels, got {tuple(weight.shape)}")
    y = torch.empty(batch, length, dim, device=u.device, dtype=u.dtype)  # (B, L, D)
    if y.numel() == 0:
        return y
    block_d = min(MAX_BLOCK_D, triton.next_power_of_2(dim))
    grid = (triton.cdiv(length, BLOCK_L), batch, triton.cdiv(dim, block_d))
    _causal_conv_silu_kernel[grid](
        u, weight, bias if bias is not None else weight, y, length, dim,
        u.stride(0), u.stride(1), u.stride(2), y.stride(0), y.stride(1), y.stride(2), weight.stride(0), weight.stride(2),
        K=weight.shape[2], HAS_BIAS=bias is not None, BLOCK_L=BLOCK_L, BLOCK_D=block_d, num_warps=4,
    )
    return y
