"""The network's forward pass in numpy: CPU inference without importing torch (the `numpy` runtime backend).

Why: on a 2-core CPU `import torch` alone takes 0.6-1 s, more than the whole `upscale` of a 128x128 image may
(issue 7: <= 1 s end to end); numpy imports in 0.1 s and this forward is as fast as torch's on 2 cores
(benchmarks/cpu_upscale.py). Same maths as model.py (`MambaSR.forward`, the chunked scan done in place block by
block as in `scan._chunked_blocks_in_place`), fp32, for configs with the single raster scan order (the shipped
default); `supports(config)` says which. tests/test_model_numpy.py holds it to the torch model (max abs
difference < 1e-4 on outputs in [0, 1]).

Layout: features are kept as tokens (L, C) per image (L = h*w, raster order), as the mixers use them; the 3x3
convolutions gather their 9 shifted windows into one (L, 9*C_in) matrix and do one matrix product.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import nullcontext
from itertools import pairwise
from pathlib import Path

import numpy as np

from .errors import ArchitectureMismatchError, WeightsError
from .presets import ModelConfig
from .weights_format import LAYER_NORM_EPS, MIXER, block_prefix, check_shapes, check_values, config_from_metadata, expected_shapes, group_prefix

__all__ = ["NumpyMambaSR", "check_weights", "expected_shapes", "read_numpy_weights", "selective_scan_tokens", "supports"]

CHUNK = 16  # tokens per chunk (scan.CHUNK is the torch scan's own choice; the result does not depend on either)
BLOCK = 256  # tokens per block: a block's two (T, chunks, N, D) buffers stay in L2 (1 MiB each for the default
# model's D*N = 1024); on 2 cores the baby forward took 0.49-0.52 s with blocks of 64-256 tokens, 0.58 s with 512,
# 0.65 s with 2048 (torch: 0.47-0.49 s in the same runs)
NUMPY_FLOAT_DTYPES = {"F16", "F32", "F64"}  # safetensors dtype names numpy reads as floats


def _any(value: object) -> bool:
    return True


# Every ModelConfig field with the values this forward implements. supports() fails closed: a field added to
# ModelConfig and not listed here makes every config unsupported (torch runs it) until this forward implements it
# (tests/test_model_numpy.py breaks on such a field).
IMPLEMENTED_FIELDS: dict[str, Callable[[object], bool]] = {
    "scale": _any,  # PixelShuffle by any factor
    "in_channels": lambda value: value == 3,  # RGB: the mean and the PixelShuffle are 3-channel
    "embed_dim": _any,
    "groups": _any,
    "blocks_per_group": _any,
    "d_state": _any,
    "expand": _any,
    "d_conv": _any,
    "dt_rank": _any,
    "block_residual": _any,  # both
    "scan_orders": lambda value: tuple(value) == ("raster",),  # the single raster order; the others are torch-only
    "rgb_mean": _any,
}


def unsupported(config: ModelConfig) -> list[str]:
    """The fields of `config` this forward does not implement, as "name=value" (empty: `supports(config)`)."""
    fields = [f.name for f in dataclasses.fields(config)]
    return [f"{name}={getattr(config, name)!r}" for name in fields if not IMPLEMENTED_FIELDS.get(name, lambda _: False)(getattr(config, name))]


def supports(config: ModelConfig) -> bool:
    """Whether this forward covers `config` (every field listed in IMPLEMENTED_FIELDS, with a value it implements)."""
    return not unsupported(config)


def read_numpy_weights(path: str | Path, *, header_only: bool = False) -> tuple[dict[str, np.ndarray], ModelConfig | None]:
    """(float32 arrays by parameter name, the config from the file's metadata or None) of a .safetensors file.

    ``header_only``: the metadata only (the arrays dict is empty)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = dict(handle.metadata() or {})
            odd = sorted({handle.get_slice(key).get_dtype() for key in handle.keys()} - NUMPY_FLOAT_DTYPES)
            if odd:  # bfloat16 (numpy has no such type) or not floats at all: torch's loader reads or refuses them
                raise WeightsError(f"{Path(path).name} holds {', '.join(odd)} tensors, which the numpy backend does not read",
                                   hint="use --backend torch")
            arrays = {} if header_only else {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"corrupt or unreadable safetensors file {path}: {exc}", hint="re-download or re-export it") from exc
    config = config_from_metadata(metadata, str(path))
    if arrays and config is not None:
        check_weights(arrays, config, Path(path).name)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}, config


def check_weights(arrays: dict[str, np.ndarray], config: ModelConfig, name: str) -> None:
    """checkpoint's checks, shared through weights_format (same messages): keys and shapes fit `config`, float
    dtypes, finite values."""
    check_shapes({k: v.shape for k, v in arrays.items()}, expected_shapes(config), name,
                 hint="the file's stored config does not match its tensors: re-save it")  # fmt: skip
    check_values(
        name,
        not_float=[f"{k} ({v.dtype})" for k, v in arrays.items() if not np.issubdtype(v.dtype, np.floating)],
        not_finite=(k for k, v in arrays.items() if not np.isfinite(v).all()),
    )


def _silu(x: np.ndarray) -> np.ndarray:
    return x * (0.5 + 0.5 * np.tanh(0.5 * x))  # x * sigmoid(x), no overflow for any x


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))  # as scan.stable_softplus (np.logaddexp: 10x slower)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    return centred / np.sqrt(var + LAYER_NORM_EPS) * weight + bias


def _conv3x3(image: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """3x3 convolution, zero padding 1: image (h, w, C_in) -> (h*w, C_out); weight (C_out, C_in, 3, 3)."""
    h, w, c_in = image.shape
    padded = np.zeros((h + 2, w + 2, c_in), dtype=np.float32)
    padded[1:-1, 1:-1] = image
    cols = np.empty((h, w, 3, 3, c_in), dtype=np.float32)
    for ky in range(3):
        for kx in range(3):
            cols[:, :, ky, kx] = padded[ky : ky + h, kx : kx + w]
    kernel = weight.transpose(2, 3, 1, 0).reshape(9 * c_in, -1)  # (ky, kx, C_in) x C_out
    return cols.reshape(h * w, 9 * c_in) @ kernel + bias


def selective_scan_tokens(u: np.ndarray, delta: np.ndarray, A: np.ndarray, B: np.ndarray, C: np.ndarray) -> np.ndarray:
    """y_t = C_t . h_t with h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, h_{-1} = 0, for one sequence.

    u, delta (L, D) (delta after bias and softplus); A (D, N) <= 0; B, C (L, N). Returns y (L, D) (no D skip, no gate).
    The scan of `scan._chunked_blocks_in_place`: blocks of BLOCK tokens in turn, the state carried; in a block,
    chunks of CHUNK tokens scanned in place, then the chunk-end states one after the other (a short loop), then
    h = h_local + a_cum * h_in. Layout (T, chunks, N, D): every step is one contiguous slab, and the broadcasts
    that make the decays and drives run over D innermost (numpy's fast inner loops). Only exponentiates numbers <= 0.
    """
    length, dim = u.shape
    n_state = A.shape[1]
    block = min(BLOCK, -(-length // CHUNK) * CHUNK)
    pad = (-length) % block
    n_blocks, n_chunks = (length + pad) // block, block // CHUNK

    def by_step(x: np.ndarray) -> np.ndarray:  # (L, K) -> (blocks, T, chunks, K), contiguous
        x = np.pad(x, ((0, pad), (0, 0))) if pad else x  # delta 0 at the end: identity steps
        return np.ascontiguousarray(x.reshape(n_blocks, n_chunks, CHUNK, x.shape[1]).transpose(0, 2, 1, 3))

    steps, drives, b_in, c_out = by_step(delta), by_step(delta * u), by_step(B), by_step(C)
    a_nd = np.ascontiguousarray(A.T)  # (N, D)
    decay = np.empty((CHUNK, n_chunks, n_state, dim), dtype=np.float32)  # a_t, then the decay since the chunk start
    state = np.empty_like(decay)  # b_t, then the state from a zero chunk start, then h_t
    scratch = np.empty((n_chunks, n_state, dim), dtype=np.float32)
    h_in = np.empty_like(scratch)
    y = np.empty((n_blocks, CHUNK, n_chunks, dim), dtype=np.float32)
    carry = np.zeros((n_state, dim), dtype=np.float32)
    for k in range(n_blocks):
        np.multiply(steps[k][:, :, None, :], a_nd, out=decay)
        np.exp(decay, out=decay)
        np.multiply(drives[k][:, :, None, :], b_in[k][..., None], out=state)
        for t in range(1, CHUNK):
            np.multiply(decay[t], state[t - 1], out=scratch)
            state[t] += scratch  # h_t = a_t h_{t-1} + b_t from a zero chunk start
            decay[t] *= decay[t - 1]  # decay since the chunk start
        for c in range(n_chunks):  # state entering each chunk, and the carry into the next block
            h_in[c] = carry
            carry = decay[-1, c] * carry + state[-1, c]
        decay *= h_in
        state += decay  # h = h_local + a_cum * h_in
        np.matmul(c_out[k][:, :, None, :], state, out=y[k][:, :, None, :])  # (T, chunks, 1, D)
    return y.transpose(0, 2, 1, 3).reshape(-1, dim)[:length]


class NumpyMambaSR:
    """`MambaSR.forward` for raster-order configs: (N, 3, h, w) float32 in [0, 1] -> (N, 3, s*h, s*w), unclamped."""

    def __init__(self, config: ModelConfig, weights: dict[str, np.ndarray], *, threads: int = 1) -> None:
        """``threads`` > 1: the scan's channels are split over that many threads (numpy releases the GIL). With
        L2-sized blocks one thread was as fast or faster on 2 cores (benchmarks/cpu_upscale.py --levers numpy)."""
        missing = unsupported(config)
        if missing:
            raise ArchitectureMismatchError(f"the numpy forward does not implement this model's {', '.join(missing)}", hint="use --backend torch")
        self.config = config
        self.scale = config.scale
        self.w = weights
        self.mean = np.asarray(config.rgb_mean, dtype=np.float32)
        self.threads = max(1, int(threads))


    def _mixer(self, x: np.ndarray, p: str, pool: Executor | None) -> np.ndarray:
        """Mamba mixer on tokens x (L, C) (mamba_ssm's slow path, raster order)."""
        w, c = self.w, self.config
        length = x.shape[0]
        xz = x @ w[p + "in_proj.weight"].T  # (L, 2 Di)
        u, z = xz[:, : c.d_inner], xz[:, c.d_inner :]
        kernel = w[p + "conv1d.weight"][:, 0, :]  # (Di, K) causal depthwise conv along the tokens
        taps = kernel.shape[1]
        padded = np.concatenate([np.zeros((taps - 1, c.d_inner), dtype=np.float32), u])
        seq = np.broadcast_to(w[p + "conv1d.bias"], u.shape).copy()
        for k in range(taps):
            seq += padded[k : k + length] * kernel[:, k]
        seq = _silu(seq)  # (L, Di)
        x_dbl = seq @ w[p + "x_proj.weight"].T  # (L, R + 2N)
        rank, n_state = c.dt_rank, c.d_state
        dt, b_in, c_out = x_dbl[:, :rank], x_dbl[:, rank : rank + n_state], x_dbl[:, rank + n_state :]
        delta = _softplus(dt @ w[p + "dt_proj.weight"].T + w[p + "dt_proj.bias"])  # (L, Di)
        A = -np.exp(w[p + "A_log"])  # (Di, N)
        b_in, c_out = np.ascontiguousarray(b_in), np.ascontiguousarray(c_out)
        if pool is None:
            y = selective_scan_tokens(seq, delta, A, b_in, c_out)  # (L, Di)
        else:  # channels are independent in the scan
            edges = np.linspace(0, c.d_inner, self.threads + 1).astype(int)
            parts = [pool.submit(selective_scan_tokens, seq[:, a:b], delta[:, a:b], A[a:b], b_in, c_out) for a, b in pairwise(edges)]
            y = np.concatenate([part.result() for part in parts], axis=1)  # (L, Di)
        y = (y + seq * w[p + "D"]) * _silu(z)  # (L, Di)
        return y @ w[p + "out_proj.weight"].T  # (L, C)

    def _one(self, image: np.ndarray, pool: Executor | None) -> np.ndarray:
        """(3, h, w) -> (3, s*h, s*w)."""
        w, c = self.w, self.config
        _, h, wd = image.shape
        x = image.transpose(1, 2, 0) - self.mean  # (h, w, 3)
        feat = _conv3x3(x, w["conv_first.weight"], w["conv_first.bias"])  # (L, C)
        tokens = _layer_norm(feat, w["patch_embed.norm.weight"], w["patch_embed.norm.bias"])
        for g in range(c.groups):
            out = tokens
            for b in range(c.blocks_per_group):
                p = block_prefix(g, b)
                mixed = self._mixer(_layer_norm(out, w[p + "norm.weight"], w[p + "norm.bias"]), p + MIXER, pool)
                out = out + mixed if c.block_residual else mixed
            p = group_prefix(g)
            tokens = _conv3x3(out.reshape(h, wd, -1), w[p + "conv.weight"], w[p + "conv.bias"]) + tokens
        body = _layer_norm(tokens, w["norm_f.weight"], w["norm_f.bias"])
        body = _conv3x3(body.reshape(h, wd, -1), w["conv_after_body.weight"], w["conv_after_body.bias"]) + feat
        up = _conv3x3(body.reshape(h, wd, -1), w["upsample.0.weight"], w["upsample.0.bias"])  # (L, 3 s^2)
        s = self.scale
        out = up.reshape(h, wd, 3, s, s).transpose(2, 0, 3, 1, 4).reshape(3, h * s, wd * s)  # PixelShuffle
        return out + self.mean[:, None, None]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        with ThreadPoolExecutor(self.threads) if self.threads > 1 else nullcontext() as pool:
            return np.stack([self._one(image, pool) for image in batch])
