"""The DVMSR-layout Mamba super-resolution network (parameter names match DVMSR's released weights).

    x (B,3,h,w) in [0,1] - mean -> conv_first -> tokens (B, h*w, C) -> patch_embed.norm
      -> groups: [blocks: mixer(LayerNorm(x)) (+ x if block_residual)] -> conv3x3 -> + group input
      -> norm_f -> conv_after_body + conv_first output -> conv to 3*s^2 + PixelShuffle(s) -> + mean -> (B,3,s*h,s*w)

The mixer is mamba_ssm 1.1.1's `Mamba` (slow path), with the dt projection's rank as an option and scan orders as
token permutations whose outputs are summed (all orders share the mixer's weights, so the parameter names and
count do not depend on the orders).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .orders import order_permutation
from .presets import ModelConfig
from .scan import installed, resolve_impl, selective_scan
from .weights_format import LAYER_NORM_EPS


class Mixer(nn.Module):
    """Mamba selective-SSM mixer on tokens (B, L, C) laid out on an H x W grid."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dim, d_inner, n_state, rank = config.embed_dim, config.d_inner, config.d_state, config.dt_rank
        self.orders = config.scan_orders
        self.d_state, self.dt_rank = n_state, rank
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, config.d_conv, groups=d_inner, padding=config.d_conv - 1)
        self.x_proj = nn.Linear(d_inner, rank + 2 * n_state, bias=False)
        self.dt_proj = nn.Linear(rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self._init_dt(rank)

    def _init_dt(self, rank: int, dt_min: float = 1e-3, dt_max: float = 1e-1) -> None:
        """Mamba's initialisation: dt_proj bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max]."""
        nn.init.uniform_(self.dt_proj.weight, -(rank**-0.5), rank**-0.5)
        dt = torch.exp(torch.rand(self.dt_proj.bias.shape) * (torch.log(torch.tensor(dt_max / dt_min))) + torch.log(torch.tensor(dt_min)))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: torch.Tensor, height: int, width: int, scan_impl: str) -> torch.Tensor:
        batch, length, _ = x.shape
        xz = self.in_proj(x).transpose(1, 2)  # (B, 2*Di, L)
        u, z = xz.chunk(2, dim=1)  # (B, Di, L) each
        single_raster = self.orders == ("raster",)
        if single_raster and _fused_inference(x, scan_impl):  # one Triton kernel, token layout: no layout copies
            from .conv_triton import causal_conv1d_silu

            seq_tokens = causal_conv1d_silu(u.transpose(1, 2), self.conv1d.weight, self.conv1d.bias)  # (B, L, Di)
            seq = seq_tokens.transpose(1, 2)  # (B, Di, L) view: the scan reads it channel-contiguous
        else:
            if single_raster:
                seq = u  # (B, Di, L)
            else:
                perms = [order_permutation(o, height, width)[0].to(x.device) for o in self.orders]
                seq = torch.cat([u.index_select(2, p) for p in perms], dim=0)  # (K*B, Di, L)
            seq = F.silu(self.conv1d(seq)[..., :length])  # (K*B, Di, L) causal depthwise conv along the scan
            seq_tokens = seq.transpose(1, 2)  # (K*B, L, Di)
        x_dbl = self.x_proj(seq_tokens)  # (K*B, L, R + 2N)
        dt, b_in, c_out = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (K*B, Di, L) low-rank step size, bias in the scan
        A = -torch.exp(self.A_log.float())  # (Di, N)
        y = selective_scan(
            seq,
            delta,
            A,
            b_in.transpose(1, 2),  # (K*B, N, L)
            c_out.transpose(1, 2),  # (K*B, N, L)
            D=self.D.float(),
            z=z if single_raster else None,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            impl=scan_impl,
        )  # (K*B, Di, L)
        if not single_raster:
            inverses = [order_permutation(o, height, width)[1].to(x.device) for o in self.orders]
            parts = y.split(batch, dim=0)  # K x (B, Di, L)
            y = sum(part.index_select(2, inv) for part, inv in zip(parts, inverses, strict=True))  # (B, Di, L) back in raster order
            y = y * F.silu(z)  # (B, Di, L)
        return self.out_proj(y.transpose(1, 2))  # (B, L, C)


def _fused_inference(x: torch.Tensor, scan_impl: str) -> bool:
    """The fused Triton kernels (conv_triton.py, norm_triton.py) run where a fused scan does, for inference only: a
    CUDA tensor, the scan resolving to "triton" or "cuda" (the native kernel reads the same token layout), Triton
    importable, no autograd, nothing tracing or compiling. Elsewhere the PyTorch ops."""
    if x.device.type != "cuda" or torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return resolve_impl(scan_impl, x.device) in ("triton", "cuda") and installed("triton")


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor, scan_impl: str) -> torch.Tensor:
    """``norm(x)`` on tokens (B, L, C): through the Triton kernel (norm_triton.py) with the module's own parameters
    where _fused_inference holds, else the module. Under autocast LayerNorm gives fp32, and so does the kernel."""
    if not _fused_inference(x, scan_impl):
        return norm(x)
    from .norm_triton import layer_norm_tokens

    out_dtype = torch.float32 if torch.is_autocast_enabled(x.device.type) else None
    return layer_norm_tokens(x, norm.weight, norm.bias, norm.eps, out_dtype)  # (B, L, C)


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.embed_dim, eps=LAYER_NORM_EPS)
        self.mixer = Mixer(config)
        self.residual = config.block_residual

    def forward(self, x: torch.Tensor, height: int, width: int, scan_impl: str) -> torch.Tensor:
        out = self.mixer(_layer_norm(self.norm, x, scan_impl), height, width, scan_impl)  # (B, L, C)
        return x + out if self.residual else out


class _BlockStack(nn.Module):
    """Holds `blocks` so parameter names read `layers.i.residual_group.blocks.j` as in DVMSR."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.blocks_per_group))


class ResidualGroup(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.residual_group = _BlockStack(config)
        self.conv = nn.Conv2d(config.embed_dim, config.embed_dim, 3, padding=1)

    def forward(self, x: torch.Tensor, height: int, width: int, scan_impl: str) -> torch.Tensor:
        out = x
        for block in self.residual_group.blocks:
            out = block(out, height, width, scan_impl)  # (B, L, C)
        nhwc = _channels_last(x, scan_impl)
        out = _tokens_to_image(out, height, width, nhwc)  # (B, C, H, W)
        return _image_to_tokens(self.conv(out), nhwc) + x  # (B, L, C)


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)


def _channels_last(x: torch.Tensor, scan_impl: str) -> bool:
    """Whether the network keeps its images channels-last (NHWC memory, NCHW shape): where the fused kernels run
    (_fused_inference). Tokens (B, L, C) and images are then views of one another: no transpose copies between the
    Mamba blocks and the 3x3 convs, residual adds on contiguous operands, and cuDNN gets the NHWC layout its tensor-core
    kernels use. Elsewhere (CPU, training, export) the plain NCHW layout; the values are the same either way."""
    return _fused_inference(x, scan_impl)


def _image_to_tokens(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    if channels_last:
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])  # (B, H*W, C): a view of NHWC memory
    return x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)


def _tokens_to_image(x: torch.Tensor, height: int, width: int, channels_last: bool = False) -> torch.Tensor:
    if channels_last:
        return x.reshape(x.shape[0], height, width, x.shape[2]).permute(0, 3, 1, 2)  # (B, C, H, W) in NHWC memory: a view
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)  # (B, L, C) -> (B, C, H, W)


class MambaSR(nn.Module):
    """The network. Input (B, 3, h, w) in [0, 1]; output (B, 3, scale*h, scale*w), not clamped.

    Describes itself: `config`, `scale`; any input size >= 1x1 works (no size multiple).
    """

    size_multiple = 1

    def __init__(self, config: ModelConfig, scan_impl: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.scan_impl = scan_impl
        dim, ch = config.embed_dim, config.in_channels
        self.register_buffer("mean", torch.tensor(config.rgb_mean).view(1, 3, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(ch, dim, 3, padding=1)
        self.patch_embed = _PatchEmbed(dim)
        self.layers = nn.ModuleList(ResidualGroup(config) for _ in range(config.groups))
        self.norm_f = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, padding=1)
        self.upsample = nn.Sequential(nn.Conv2d(dim, ch * config.scale**2, 3, padding=1), nn.PixelShuffle(config.scale))

    @property
    def scale(self) -> int:
        return self.config.scale

    def forward(self, x: torch.Tensor, scan_impl: str | None = None) -> torch.Tensor:
        impl = scan_impl or self.scan_impl
        height, width = x.shape[-2:]
        nhwc = _channels_last(x, impl)
        x = x - self.mean  # (B, 3, H, W)
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)  # the convs keep the input's memory format
        feat = self.conv_first(x)  # (B, C, H, W)
        tokens = _layer_norm(self.patch_embed.norm, _image_to_tokens(feat, nhwc), impl)  # (B, L, C)
        for group in self.layers:
            tokens = group(tokens, height, width, impl)  # (B, L, C)
        body = _tokens_to_image(_layer_norm(self.norm_f, tokens, impl), height, width, nhwc)  # (B, C, H, W)
        body = self.conv_after_body(body) + feat  # (B, C, H, W)
        return (self.upsample(body) + self.mean).contiguous()  # (B, 3, sH, sW), NCHW memory for every caller


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
