"""The selective scan (Mamba's S6 recurrence): one pure function, several implementations.

Contract (same as mamba_ssm's `selective_scan_fn`)::

    delta' = softplus(delta + delta_bias)          (each step optional)
    h_t    = exp(delta'_t * A) * h_{t-1} + delta'_t * B_t * u_t      h_{-1} = 0
    y_t    = C_t . h_t  + D * u_t
    y_t    = y_t * silu(z_t)                         (optional)

Glossary (code name -> paper symbol, shape):

    u           x        input sequence                  (batch, dim, L)
    delta       Delta    step size per channel and token (batch, dim, L)
    A           A        diagonal state matrix, <= 0     (dim, N)
    B, C        B, C     input / output projections      (batch, N, L)
    D           D        skip connection                 (dim,)
    z           z        gate branch                     (batch, dim, L)
    decay       A-bar    exp(Delta A), in (0, 1]         (batch, dim, L, N)
    drive       B-bar x  Delta B u                       (batch, dim, L, N)
    h           h        hidden state                    (batch, dim, L, N)
    N           N        d_state

Implementations (`impl=`):

- ``"reference"``: the sequential definition, one step at a time (fp32; fp64 inputs stay fp64). The ground truth.
- ``"chunked"``: exportable pure PyTorch, what ONNX and TensorRT get. The linear recurrence h_t = a_t h_{t-1} + b_t is
  solved by a recursive chunked scan: all chunks of `CHUNK` tokens are scanned at once (CHUNK vectorised steps),
  then the same scan runs over the chunks' end states, then one fix-up. No Python loop over L: the loops run over
  the CHUNK positions of a chunk and over the recursion depth log_CHUNK(L), both fixed once L is, so tracing gives
  a static graph with no Loop/Scan op. Only non-positive numbers are ever exponentiated (exp(delta*A) with delta >= 0, A <= 0) and
  only products of decays in (0, 1] are formed, so nothing can overflow for any valid input and any L. Math in fp32
  even for fp16/bf16 inputs. What is traced, compiled or differentiated is functional (no in-place ops). CPU inference
  (no autograd, not tracing) runs the same maths in place, one block of `CPU_BLOCK` tokens after the other with the
  state carried between blocks, so a block's decays and states stay in cache (`_chunked_blocks_in_place`; about 4x
  faster than the functional form on 2 cores, benchmarks/cpu_upscale.py).
- ``"triton"``: fused Triton kernels (scan_triton.py): state in registers, one pass over L (blocks of steps
  scanned in parallel), forward and backward; without autograd the whole scan (bias, softplus, D, gate) is one kernel.
  CUDA only (or the CPU under TRITON_INTERPRET=1, for tests). The default on CUDA.
- ``"cuda"``: the native CUDA kernel of csrc/ (the one the TensorRT plugin runs), built with nvcc on first use and
  called through ctypes (scan_cuda.py); the whole scan in one kernel, forward only (inference). CUDA only.
- ``"mamba_ssm"``: the CUDA kernel from the optional `mamba-ssm` package.
- ``"auto"``: ``triton`` for CUDA tensors when Triton is installed, else ``mamba_ssm`` when that is, else ``chunked``.

Valid inputs: delta >= 0 after bias/softplus and A <= 0 (as in every Mamba model, A = -exp(A_log)).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F

from .errors import ConfigError, DependencyMissingError, MambaESRError
from .presets import SCAN_IMPLS

log = logging.getLogger(__name__)

CHUNK = 16  # tokens per chunk of the exportable scan; see benchmarks/scan_cpu.py for the measured trade-off
CPU_BLOCK = 2048  # tokens per block of the in-place CPU inference path; see benchmarks/cpu_upscale.py


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """Run the selective scan. Shapes: u, delta, z (batch, dim, L); A (dim, N); B, C (batch, N, L). Returns (batch, dim, L)."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    substitute = _SUBSTITUTE.get()
    if substitute is not None:
        return substitute(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    impl = resolve_impl(impl, u.device)
    fn = {
        "reference": _scan_reference,
        "chunked": _scan_chunked,
        "triton": _scan_triton,
        "cuda": _scan_cuda,
        "mamba_ssm": _scan_mamba_ssm,
    }[impl]
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


@functools.cache
def installed(package: str) -> bool:
    """Whether ``package`` can be imported here; asked once per process (resolve_impl runs on every scan call)."""
    return importlib.util.find_spec(package) is not None


def resolve_impl(impl: str, device: torch.device) -> str:
    """Turn "auto" into a concrete implementation name; reject unknown or unavailable ones with a clear error."""
    if impl not in SCAN_IMPLS:
        raise ConfigError(f"unknown scan implementation {impl!r}", hint=f"choose one of {', '.join(SCAN_IMPLS)}")
    has_mamba_ssm = installed("mamba_ssm")
    has_triton = installed("triton")
    if impl == "auto":
        if device.type == "cuda" and has_triton:
            return "triton"
        return "mamba_ssm" if device.type == "cuda" and has_mamba_ssm else "chunked"
    if impl == "triton":
        if not has_triton:
            raise DependencyMissingError(
                "scan impl 'triton' needs the triton package, which is not installed",
                hint="pip install triton (it comes with CUDA builds of torch); elsewhere use --scan chunked",
            )
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError("scan impl 'triton' runs on CUDA tensors only", hint="use --scan chunked on CPU")
    if impl == "cuda" and device.type != "cuda":
        raise ConfigError("scan impl 'cuda' runs on CUDA tensors only", hint="use --scan chunked on CPU")
    if impl == "mamba_ssm":
        if not has_mamba_ssm:
            raise DependencyMissingError(
                "scan impl 'mamba_ssm' needs the mamba-ssm package, which is not installed",
                hint="on a CUDA machine: pip install 'mambaesr-edge[mamba-ssm]'; elsewhere use --scan chunked",
            )
        if device.type != "cuda":
            raise ConfigError("scan impl 'mamba_ssm' runs on CUDA tensors only", hint="use --scan chunked on CPU")
    return impl


def inference_impl(impl: str, device: torch.device) -> str:
    """The scan an inference-only caller runs for `impl` (the runtime's torch backend; training keeps resolve_impl,
    the native kernel has no backward). "auto" on a CUDA device is the native kernel ("cuda") when it builds and loads
    here (nvcc present: built once per GPU architecture and cached, scan_cuda.load_library), because it is faster than
    the Triton scan: on one H100, 43.6 vs 55.1 ms per 1080p LR frame in 128-tiles (fp32; benchmarks/speed_h100_native.json)
    and, with the whole frames it allows, 64.8 vs 52.2 frames/s through Upscaler.stream at 960x540
    (benchmarks/speed_h100_stream_default.json). Where it cannot be built the reason is logged and resolve_impl's
    choice (Triton) runs. The kernel takes N up to 64 (every model here has 16); a larger N is a named error at the
    first scan, whose hint is --scan triton."""
    if impl != "auto" or device.type != "cuda":
        return resolve_impl(impl, device)
    from .scan_cuda import device_arch, load_library

    try:
        load_library(device_arch(device.index))
    except MambaESRError as exc:
        fallback = resolve_impl(impl, device)
        log.warning("the native CUDA scan is not available here (%s); the %s scan runs instead", exc, fallback)
        return fallback
    return "cuda"


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    n_state = A.shape[-1]
    expected = {
        "delta": (delta, (batch, dim, length)),
        "A": (A, (dim, n_state)),
        "B": (B, (batch, n_state, length)),
        "C": (C, (batch, n_state, length)),
        "D": (D, (dim,)),
        "z": (z, (batch, dim, length)),
        "delta_bias": (delta_bias, (dim,)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} for u of shape {tuple(u.shape)}, got {tuple(tensor.shape)}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def stable_softplus(x: torch.Tensor) -> torch.Tensor:
    """softplus(x) = max(x, 0) + log1p(exp(-|x|)): never exponentiates a positive number (safe in any precision).

    max(x, 0) is torch.maximum, whose autograd derivative at a tie is 1/2, so the whole derivative at x = 0 is
    sigmoid(0) = 0.5 (a clamp's is 1 there, doubling d(delta) wherever delta + bias == 0). Elsewhere the two terms'
    derivatives never cancel, so d/dx = sigmoid(x) to rounding. (torch.logaddexp would do too, but the TorchScript
    ONNX exporter has no symbolic for it; maximum exports as Max.)
    """
    return torch.maximum(x, x.new_zeros(())) + torch.log1p(torch.exp(-torch.abs(x)))


def _prepare_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)[:, None]  # (batch, dim, L)
    return stable_softplus(delta) if delta_softplus else delta  # (batch, dim, L)


def _finish(y, u, D, z, out_dtype):
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]  # (batch, dim, L)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))  # (batch, dim, L)
    return y.to(out_dtype)


def _scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> torch.Tensor:
    """Sequential definition: one recurrence step per token."""
    out_dtype = u.dtype
    dtype = _compute_dtype(u.dtype)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    delta = _prepare_delta(delta, delta_bias, delta_softplus)  # (batch, dim, L)
    batch, dim, length = u.shape
    h = u.new_zeros(batch, dim, A.shape[-1])  # (batch, dim, N)
    ys = []
    block = 1024  # decays and drives are precomputed a block of tokens at a time to bound memory
    for start in range(0, length, block):
        d_blk = delta[:, :, start : start + block]  # (batch, dim, T)
        decay = torch.exp(d_blk.unsqueeze(-1) * A[:, None, :])  # (batch, dim, T, N)
        drive = (d_blk * u[:, :, start : start + block]).unsqueeze(-1) * B[:, None, :, start : start + block].transpose(
            -1, -2
        )  # (batch, dim, T, N)
        c_blk = C[:, :, start : start + block]  # (batch, N, T)
        for t in range(d_blk.shape[-1]):
            h = decay[:, :, t] * h + drive[:, :, t]  # (batch, dim, N)
            ys.append(torch.bmm(h, c_blk[:, :, t : t + 1]))  # (batch, dim, 1)
    y = torch.cat(ys, dim=-1)  # (batch, dim, L)
    return _finish(y, u, D, z, out_dtype)


def _scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> torch.Tensor:
    """Exportable scan: decays and drives for all tokens, then a log-depth linear recurrence, then y = C . h."""
    out_dtype = u.dtype
    dtype = _compute_dtype(u.dtype)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    delta = _prepare_delta(delta, delta_bias, delta_softplus)  # (batch, dim, L)
    if _cpu_inference(u):
        y = _chunked_blocks_in_place(u, delta, A, B, C)  # (batch, dim, L)
        return _finish(y, u, D, z, out_dtype)
    decay = torch.exp(delta.unsqueeze(-1) * A.unsqueeze(1))  # (batch, dim, L, N)   exp of a number <= 0
    drive = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)  # (batch, dim, L, N)
    h = linear_recurrence(decay, drive)  # (batch, dim, L, N)
    y = torch.einsum("bdln,bnl->bdl", h, C)  # (batch, dim, L)
    return _finish(y, u, D, z, out_dtype)


def _cpu_inference(x: torch.Tensor) -> bool:
    """True when the scan may work in place: a CPU tensor, no autograd, and nothing tracing, exporting or compiling."""
    return (
        x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
    )


def _chunked_blocks_in_place(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk: int = CHUNK, block: int = CPU_BLOCK
) -> torch.Tensor:
    """y = C . h for the recurrence of `_scan_chunked`, in place, for inference (nothing may need the intermediates).

    The same maths as the functional form: the tokens go through in blocks of `block` (a multiple of `chunk`), one
    after the other, the state carried from block to block. Inside a block, every chunk is scanned from a zero
    state (in place, `chunk` steps), `linear_recurrence` runs over the chunks' end states (the carried state
    folded into the first), then the fix-up h = h_local + a_cum * h_in. Layout (batch, T, chunks, dim, N), so every
    step is one contiguous slice; a block's two (T, chunks, dim, N) buffers (4 MiB for dim 64, N 16, block 2048)
    stay in cache and are reused by every block (no large allocations, no page faults).
    u, delta (batch, dim, L) in the compute dtype, delta already through bias/softplus; A (dim, N); B, C (batch, N, L).
    """
    batch, dim, length = u.shape
    n_state = A.shape[-1]
    block = min(block, -(-length // chunk) * chunk)  # never longer than L rounded up to whole chunks
    pad = (-length) % block  # identity steps at the end (delta 0: decay 1, drive 0) change no earlier output
    n_blocks, n_chunks = (length + pad) // block, block // chunk

    def by_step(x: torch.Tensor) -> torch.Tensor:  # (batch, K, L) -> (batch, blocks, T, chunks, K), contiguous
        x = F.pad(x, (0, pad)).reshape(batch, x.shape[1], n_blocks, n_chunks, chunk)
        return x.permute(0, 2, 4, 3, 1).contiguous()

    step_delta, step_drive, step_b, step_c = by_step(delta), by_step(delta * u), by_step(B), by_step(C)
    decay = u.new_empty(batch, chunk, n_chunks, dim, n_state)  # a_t, then the decay since the chunk start
    state = torch.empty_like(decay)  # drive b_t, then the state from a zero chunk start, then the state h_t
    levels = levels_for(n_chunks, chunk)
    carry = None  # (batch, dim, N) state at the end of the previous block
    ys = []
    for k in range(n_blocks):
        torch.mul(step_delta[:, k].unsqueeze(-1), A, out=decay).exp_()  # exp of numbers <= 0
        torch.mul(step_drive[:, k].unsqueeze(-1), step_b[:, k].unsqueeze(-2), out=state)
        for t in range(1, chunk):
            state[:, t].addcmul_(decay[:, t], state[:, t - 1])  # h_t = a_t * h_{t-1} + b_t
            decay[:, t].mul_(decay[:, t - 1])  # decay since the chunk start
        a_end = decay[:, -1].transpose(1, 2)  # (batch, dim, chunks, N)
        h_end = state[:, -1].transpose(1, 2).clone()  # (batch, dim, chunks, N) chunk-end states from zero
        if carry is not None:
            h_end[:, :, 0].addcmul_(a_end[:, :, 0], carry)  # the first chunk starts from the carried state
        h_end = linear_recurrence(a_end, h_end, chunk, levels)  # (batch, dim, chunks, N) true chunk-end states
        first = carry.unsqueeze(2) if carry is not None else h_end.new_zeros(batch, dim, 1, n_state)
        h_in = torch.cat([first, h_end[:, :, :-1]], dim=2)  # (batch, dim, chunks, N) state entering each chunk
        carry = h_end[:, :, -1]
        state.addcmul_(decay, h_in.transpose(1, 2).unsqueeze(1))  # h = h_local + a_cum * h_in
        ys.append(torch.matmul(state, step_c[:, k].unsqueeze(-1)).squeeze(-1))  # (batch, T, chunks, dim)
    y = torch.stack(ys, dim=1)  # (batch, blocks, T, chunks, dim)
    return y.permute(0, 4, 1, 3, 2).reshape(batch, dim, -1)[..., :length]  # (batch, dim, L)


def levels_for(max_tokens: int, chunk: int = CHUNK) -> int:
    """Fewest chunking levels of the recurrence whose capacity chunk ** (levels + 1) holds max_tokens."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    levels = 0
    while chunk ** (levels + 1) < max_tokens:
        levels += 1
    return levels


# Levels used while tracing a dynamic-shape export (see `fixed_capacity`); None: derived from L. A ContextVar, so
# it is local to the exporting thread and never leaks past the `with` block.
_TRACE_LEVELS: ContextVar[int | None] = ContextVar("mambaesr_scan_trace_levels", default=None)


@contextmanager
def fixed_capacity(max_tokens: int) -> Iterator[int]:
    """Inside the block, the chunked scan's structure is fixed by max_tokens instead of by L; yields the capacity.

    For dynamic-H/W ONNX export: every pad and reshape is computed from the input's shape, so the traced graph is
    right for any 1 <= L <= capacity = CHUNK ** (levels + 1), and fails loudly (a reshape error) above it.
    """
    levels = levels_for(max_tokens)
    token = _TRACE_LEVELS.set(levels)
    try:
        yield CHUNK ** (levels + 1)
    finally:
        _TRACE_LEVELS.reset(token)


# A function that stands in for every selective_scan call inside `substituted` (the exporter's custom-node scan);
# a ContextVar like _TRACE_LEVELS: local to the exporting thread, reset when the block ends.
_SUBSTITUTE: ContextVar[Callable[..., torch.Tensor] | None] = ContextVar("mambaesr_scan_substitute", default=None)


@contextmanager
def substituted(scan: Callable[..., torch.Tensor] | None) -> Iterator[None]:
    """Inside the block, ``selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)`` calls ``scan`` with
    those arguments (shapes already checked) whatever ``impl`` says. For export: the same model code traces to one
    custom node per scan (export/plugin_graph.py), or records the scan's inputs and outputs for a check. None: no
    substitute (``impl`` decides again), e.g. for the substitute's own call of the scan."""
    token = _SUBSTITUTE.set(scan)
    try:
        yield
    finally:
        _SUBSTITUTE.reset(token)


def linear_recurrence(a: torch.Tensor, b: torch.Tensor, chunk: int = CHUNK, levels: int | None = None) -> torch.Tensor:
    """Solve h_t = a_t * h_{t-1} + b_t (h_{-1} = 0) along dim -2 for a in [0, 1]; shapes (..., L, N) -> (..., L, N).

    Recursive chunked scan: every chunk of `chunk` tokens is scanned from a zero state (all chunks at once), the same
    function runs over the chunks' end states (L / chunk of them), and a fix-up adds each chunk's incoming state
    times its cumulative decay. `levels` recursion levels (default: the fewest for L, or the export's capacity);
    the last level pads to exactly one chunk, so L > chunk ** (levels + 1) fails loudly. Vectorised over chunks.
    """
    length = a.shape[-2]
    if levels is None:
        levels = _TRACE_LEVELS.get()
    if levels is None:
        levels = levels_for(int(length), chunk)
    lead, n_state = a.shape[:-2], a.shape[-1]
    pad = (-length) % chunk
    a = F.pad(a, (0, 0, 0, pad), value=1.0)  # (..., Lp, N)   identity steps at the end change no earlier output
    b = F.pad(b, (0, 0, 0, pad))  # (..., Lp, N)
    if levels == 0:  # one chunk left (a reshape error if there are more: beyond the capacity)
        a = a.reshape(*lead, chunk, n_state)  # (..., T, N)
        b = b.reshape(*lead, chunk, n_state)  # (..., T, N)
        return _within_chunk_scan(a, b)[1][..., :length, :]  # (..., L, N)
    a = a.reshape(*lead, -1, chunk, n_state)  # (..., nc, T, N)
    b = b.reshape(*lead, -1, chunk, n_state)  # (..., nc, T, N)
    a_cum, h_local = _within_chunk_scan(a, b)  # (..., nc, T, N) decay since chunk start; state from a zero start
    h_end = linear_recurrence(a_cum[..., -1, :], h_local[..., -1, :], chunk, levels - 1)  # (..., nc, N) chunk-end states
    h_in = F.pad(h_end[..., :-1, :], (0, 0, 1, 0))  # (..., nc, N) state entering each chunk (zero for the first)
    h = h_local + a_cum * h_in.unsqueeze(-2)  # (..., nc, T, N)
    return h.reshape(*lead, -1, n_state)[..., :length, :]  # (..., L, N)


def _within_chunk_scan(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scan along dim -2 of a chunk of T tokens, all chunks at once: T steps on (..., N) slices (T is a constant).

    Returns (cumulative decay from the chunk start, state from a zero start), both (..., T, N).
    """
    a_cum, h = [a[..., 0, :]], [b[..., 0, :]]  # (..., N) each
    for t in range(1, a.shape[-2]):
        h.append(a[..., t, :] * h[-1] + b[..., t, :])  # (..., N)
        a_cum.append(a[..., t, :] * a_cum[-1])  # (..., N)
    return torch.stack(a_cum, dim=-2), torch.stack(h, dim=-2)  # (..., T, N) each


def _scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> torch.Tensor:
    """Fused recurrence in Triton. Without autograd (inference) delta bias/softplus, D and the gate run inside the
    kernel too; for training they are PyTorch elementwise ops around it, so autograd covers them."""
    from .scan_triton import triton_scan_core, triton_scan_inference

    out_dtype = u.dtype
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        return triton_scan_inference(u, delta, A, B, C, D, z, delta_bias, delta_softplus).to(out_dtype)
    u = u.float()  # keeps the memory layout: (batch, L, dim) in the model, so channel loads are contiguous
    delta = _prepare_delta(delta.float(), delta_bias, delta_softplus)  # (batch, dim, L)
    y = triton_scan_core(u, delta, A, B, C)  # (batch, dim, L)
    return _finish(y, u, D, z, out_dtype)


def _scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> torch.Tensor:
    """The native kernel (csrc/), built on first use; a DependencyMissingError names nvcc when it is absent."""
    from .scan_cuda import cuda_scan

    return cuda_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def _scan_mamba_ssm(u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> torch.Tensor:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, return_last_state=False
    )
