"""Fused selective scan in Triton (CUDA): the state lives in registers, one pass over the sequence.

Forward: one program per (batch, block of BLOCK_D channels) walks the sequence in blocks of BLOCK_L steps, keeping
the state h (BLOCK_D, N) in registers between blocks; within a block the recurrence
    h_t = exp(delta_t A) * h_{t-1} + delta_t u_t B_t ;  y_t = h_t . C_t
is an associative scan over (decay, drive) pairs, so BLOCK_L steps take log2(BLOCK_L) dependent rounds instead of
BLOCK_L. It reads u, delta, B, C once and writes y once (plus h for every step when a gradient is needed).
Backward: the adjoint recurrence walks t = L-1..0 with g = dL/dh_t in registers:
    g += dy_t C_t ;  grads of u_t, delta_t, B_t, A from g and h_{t-1} ;  g *= exp(delta_t A)
Inputs may have any strides: the model's tensors are (batch, L, dim) in memory, so the per-step loads of a channel
block are contiguous. Math in fp32. Without autograd (inference) the forward kernel also applies the delta bias and
softplus on load and + D u, * silu(z) on store, so the whole selective scan is one kernel; for training those stay
PyTorch ops around the kernel (autograd covers them); see scan.py. Run with TRITON_INTERPRET=1 to execute on the CPU (tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _combine(a_left, h_left, a_right, h_right):
    """Two recurrence steps h -> a h + b, left (earlier) then right, as one: (a_r a_l, a_r h_l + h_r)."""
    return a_right * a_left, a_right * h_left + h_right


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, y_ptr, h_ptr, bias_ptr, d_ptr, z_ptr,
    length, n_blocks, dim, n_state,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sa_d, sa_n, sb_b, sb_n, sb_l, sc_b, sc_n, sc_l,
    sy_b, sy_d, sy_l, sh_b, sh_l, sh_d, sz_b, sz_d, sz_l,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, STORE_H: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
):
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BD,)
    offs_n = tl.arange(0, BLOCK_N)  # (BN,)
    offs_l = tl.arange(0, BLOCK_L)  # (BL,)
    mask_d, mask_n = offs_d < dim, offs_n < n_state
    mask_dn = mask_d[:, None] & mask_n[None, :]  # (BD, BN)
    a = tl.load(a_ptr + offs_d[:, None] * sa_d + offs_n[None, :] * sa_n, mask=mask_dn, other=0.0)  # (BD, BN)
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # state after the previous block, (BD, BN)
    for block in range(n_blocks):
        t = block * BLOCK_L + offs_l  # (BL,)
        mask_ld = (t < length)[:, None] & mask_d[None, :]  # (BL, BD)
        mask_ln = (t < length)[:, None] & mask_n[None, :]  # (BL, BN)
        # past the end delta = u = 0: the step is the identity (decay 1, input 0), so the last row is h_{L-1}
        u_blk = tl.load(u_ptr + pid_b * su_b + t[:, None] * su_l + offs_d[None, :] * su_d, mask=mask_ld, other=0.0).to(tl.float32)  # (BL, BD)
        dt_blk = tl.load(dt_ptr + pid_b * sdt_b + t[:, None] * sdt_l + offs_d[None, :] * sdt_d, mask=mask_ld, other=0.0).to(tl.float32)  # (BL, BD)
        if HAS_BIAS:  # the inference prologue: delta = softplus(delta + bias), as scan._prepare_delta
            dt_blk += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)[None, :]  # (BL, BD)
        if SOFTPLUS:  # max(x, 0) + log1p(exp(-|x|)), as scan.stable_softplus
            dt_blk = tl.maximum(dt_blk, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(dt_blk)))  # (BL, BD)
        dt_blk = tl.where(mask_ld, dt_blk, 0.0)  # (BL, BD)
        b_blk = tl.load(b_ptr + pid_b * sb_b + t[:, None] * sb_l + offs_n[None, :] * sb_n, mask=mask_ln, other=0.0).to(tl.float32)  # (BL, BN)
        c_blk = tl.load(c_ptr + pid_b * sc_b + t[:, None] * sc_l + offs_n[None, :] * sc_n, mask=mask_ln, other=0.0).to(tl.float32)  # (BL, BN)
        decay = tl.exp(dt_blk[:, :, None] * a[None, :, :])  # exp(delta_t A), (BL, BD, BN)
        drive = (dt_blk * u_blk)[:, :, None] * b_blk[:, None, :]  # delta_t u_t B_t, (BL, BD, BN)
        # within the block, in parallel: decay_cum_t = prod_{s<=t} decay_s, h_local_t = h_t for a zero start state
        decay_cum, h_local = tl.associative_scan((decay, drive), 0, _combine)  # (BL, BD, BN) each
        h_blk = decay_cum * h[None, :, :] + h_local  # h_t, (BL, BD, BN)
        y_blk = tl.sum(h_blk * c_blk[:, None, :], axis=2)  # (BL, BD)
        if HAS_D:  # the inference epilogue: y = (y + D u) * silu(z), as scan._finish
            y_blk += tl.load(d_ptr + offs_d, mask=mask_d, other=0.0)[None, :] * u_blk  # (BL, BD)
        if HAS_Z:
            z_blk = tl.load(z_ptr + pid_b * sz_b + t[:, None] * sz_l + offs_d[None, :] * sz_d, mask=mask_ld, other=0.0).to(tl.float32)  # (BL, BD)
            y_blk *= z_blk * tl.sigmoid(z_blk)  # (BL, BD)
        y_out = y_blk.to(y_ptr.dtype.element_ty)  # rounded once here (fp16/bf16 y under autocast); math stays fp32
        tl.store(y_ptr + pid_b * sy_b + t[:, None] * sy_l + offs_d[None, :] * sy_d, y_out, mask=mask_ld)
        if STORE_H:
            h_offs = t[:, None, None] * sh_l + offs_d[None, :, None] * sh_d + offs_n[None, None, :]  # (BL, BD, BN)
            tl.store(h_ptr + pid_b * sh_b + h_offs, h_blk, mask=mask_ld[:, :, None] & mask_n[None, None, :])
        h = tl.sum(tl.where((offs_l == BLOCK_L - 1)[:, None, None], h_blk, 0.0), axis=0)  # last row, (BD, BN)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, dy_ptr, h_ptr,
    du_ptr, ddt_ptr, da_ptr, db_ptr, dc_ptr,
    length, dim, n_state,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sa_d, sa_n, sb_b, sb_n, sb_l, sc_b, sc_n, sc_l,
    sdy_b, sdy_d, sdy_l, sh_b, sh_l, sh_d,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b, pid_d = tl.program_id(0), tl.program_id(1)
    n_blocks = tl.num_programs(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # (BD,)
    offs_n = tl.arange(0, BLOCK_N)  # (BN,)
    mask_d, mask_n = offs_d < dim, offs_n < n_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    a = tl.load(a_ptr + offs_d[:, None] * sa_d + offs_n[None, :] * sa_n, mask=mask_dn, other=0.0)  # (BD, BN)
    g = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # dL/dh_t, (BD, BN)
    da = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # dL/dA for this batch row, (BD, BN): a sum over all L
    da_err = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # Kahan compensation of that sum
    # outputs du, ddt: (batch, L, dim) contiguous; db, dc partials: (batch, n_blocks, L, N) contiguous
    part = (pid_b * n_blocks + pid_d) * length * n_state
    for i in range(length):
        t = length - 1 - i
        u_t = tl.load(u_ptr + pid_b * su_b + offs_d * su_d + t * su_l, mask=mask_d, other=0.0)  # (BD,)
        dt_t = tl.load(dt_ptr + pid_b * sdt_b + offs_d * sdt_d + t * sdt_l, mask=mask_d, other=0.0)  # (BD,)
        b_t = tl.load(b_ptr + pid_b * sb_b + offs_n * sb_n + t * sb_l, mask=mask_n, other=0.0)  # (BN,)
        c_t = tl.load(c_ptr + pid_b * sc_b + offs_n * sc_n + t * sc_l, mask=mask_n, other=0.0)  # (BN,)
        dy_t = tl.load(dy_ptr + pid_b * sdy_b + offs_d * sdy_d + t * sdy_l, mask=mask_d, other=0.0)  # (BD,)
        h_t = tl.load(h_ptr + pid_b * sh_b + t * sh_l + offs_d[:, None] * sh_d + offs_n[None, :], mask=mask_dn, other=0.0)
        h_prev = tl.load(
            h_ptr + pid_b * sh_b + (t - 1) * sh_l + offs_d[:, None] * sh_d + offs_n[None, :],
            mask=mask_dn & ((offs_n * 0 + t) > 0)[None, :],
            other=0.0,
        )  # (BD, BN)
        tl.store(dc_ptr + part + t * n_state + offs_n, tl.sum(h_t * dy_t[:, None], axis=0), mask=mask_n)  # (BN,)
        g = g + dy_t[:, None] * c_t[None, :]  # (BD, BN)
        decay = tl.exp(dt_t[:, None] * a)  # (BD, BN)
        g_decay_h = g * decay * h_prev  # (BD, BN)
        du_t = tl.sum(g * b_t[None, :], axis=1) * dt_t  # (BD,)
        ddt_t = tl.sum(g * b_t[None, :], axis=1) * u_t + tl.sum(g_decay_h * a, axis=1)  # (BD,)
        tl.store(du_ptr + (pid_b * length + t) * dim + offs_d, du_t, mask=mask_d)
        tl.store(ddt_ptr + (pid_b * length + t) * dim + offs_d, ddt_t, mask=mask_d)
        tl.store(db_ptr + part + t * n_state + offs_n, tl.sum(g * (dt_t * u_t)[:, None], axis=0), mask=mask_n)
        term = g_decay_h * dt_t[:, None] - da_err  # (BD, BN) Kahan-compensated accumulation of dL/dA
        da_next = da + term
        da_err = (da_next - da) - term
        da = da_next
        g = g * decay  # (BD, BN) -> dL/dh_{t-1} from this step
    tl.store(da_ptr + pid_b * dim * n_state + offs_d[:, None] * n_state + offs_n[None, :], da, mask=mask_dn)


def _launch_shape(batch: int, dim: int, n_state: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_N, num_warps) of the backward: each program walks all L steps, so many small programs (>= 4 per SM)."""
    block_n = triton.next_power_of_2(n_state)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    block_d = min(16, triton.next_power_of_2(dim))
    while block_d > 2 and batch * triton.cdiv(dim, block_d) < 4 * sms:
        block_d //= 2
    return block_d, block_n, 1 if block_d * block_n <= 128 else 2


def forward_launch_shape(batch: int, dim: int, length: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_L, BLOCK_D, num_warps) of the forward: blocks of BLOCK_L steps scanned in parallel; BLOCK_D channels
    per program, fewer when that leaves the SMs idle (measured on an H100: benchmarks/scan_triton_kernels.py)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    block_l = min(64, max(16, triton.next_power_of_2(length)))
    block_d = min(8, triton.next_power_of_2(dim))
    while block_d > 2 and batch * triton.cdiv(dim, block_d) < sms // 2:
        block_d //= 2
    return block_l, block_d, 4


def scan_forward(u, delta, A, B, C, *, store_h: bool, launch: tuple[int, int, int] | None = None,
                 delta_bias=None, delta_softplus: bool = False, D=None, z=None, out_dtype: torch.dtype = torch.float32):
    """y (B, D, L) in ``out_dtype`` (fp32 unless asked: the state and all maths stay fp32, only the store rounds) and,
    with store_h, every state h (B, L, D, N) fp32 for the backward; float inputs of any strides.

    delta_bias/delta_softplus/D/z, when given, are applied inside the kernel (inference: no gradient flows
    through them here); without them y is the bare recurrence output C . h.
    """
    batch, dim, length = u.shape
    n_state = A.shape[1]
    block_l, block_d, warps = launch or forward_launch_shape(batch, dim, length, u.device)
    y = torch.empty(batch, length, dim, device=u.device, dtype=out_dtype).transpose(1, 2)  # (B, D, L) view
    h = torch.empty(batch, length, dim, n_state, device=u.device, dtype=torch.float32) if store_h else y
    z_strides = _strides3(z) if z is not None else (0, 0, 0)
    _scan_fwd_kernel[(batch, triton.cdiv(dim, block_d))](
        u, delta, A, B, C, y, h,
        delta_bias if delta_bias is not None else A, D if D is not None else A, z if z is not None else u,
        length, triton.cdiv(length, block_l), dim, n_state,
        *_strides3(u), *_strides3(delta), A.stride(0), A.stride(1), *_strides3(B), *_strides3(C), *_strides3(y),
        h.stride(0), h.stride(1), h.stride(2) if store_h else 0, *z_strides,
        BLOCK_L=block_l, BLOCK_D=block_d, BLOCK_N=triton.next_power_of_2(n_state), STORE_H=store_h,
        HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, HAS_D=D is not None, HAS_Z=z is not None, num_warps=warps,
    )
    return y, (h if store_h else None)


def _strides3(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


class _TritonScan(torch.autograd.Function):
    """y = C . h with h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t; all inputs fp32 (any strides)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        store_h = any(ctx.needs_input_grad)
        y, h = scan_forward(u, delta, A, B, C, store_h=store_h)
        if store_h:
            ctx.save_for_backward(u, delta, A, B, C, h)
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, h = ctx.saved_tensors
        batch, dim, length = u.shape
        n_state = A.shape[1]
        block_d, block_n, warps = _launch_shape(batch, dim, n_state, u.device)
        n_blocks = triton.cdiv(dim, block_d)
        du = torch.empty(batch, length, dim, device=u.device, dtype=torch.float32)
        ddelta = torch.empty_like(du)
        da = torch.empty(batch, dim, n_state, device=u.device, dtype=torch.float32)
        db = torch.empty(batch, n_blocks, length, n_state, device=u.device, dtype=torch.float32)
        dc = torch.empty_like(db)
        _scan_bwd_kernel[(batch, n_blocks)](
            u, delta, A, B, C, dy, h, du, ddelta, da, db, dc, length, dim, n_state,
            *_strides3(u), *_strides3(delta), A.stride(0), A.stride(1), *_strides3(B), *_strides3(C), *_strides3(dy),
            h.stride(0), h.stride(1), h.stride(2),
            BLOCK_D=block_d, BLOCK_N=block_n, num_warps=warps,
        )
        return (
            du.transpose(1, 2),  # (B, D, L)
            ddelta.transpose(1, 2),  # (B, D, L)
            da.sum(0),  # (D, N)
            db.sum(1).transpose(1, 2),  # (B, N, L)
            dc.sum(1).transpose(1, 2),  # (B, N, L)
        )


def triton_scan_inference(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool) -> torch.Tensor:
    """The whole selective scan in one kernel, no gradient: softplus(delta + bias), the recurrence, + D u, * silu(z).

    u, delta, B, C, z in any float dtype and strides (read as they are, math and state in fp32); returns (B, D, L) in
    u's dtype, rounded once at the store (fp16/bf16 under autocast: no separate fp32 -> fp16 pass over y).
    """
    def f32(t):
        return None if t is None else t.float()

    return scan_forward(u, delta, A.float(), B, C, store_h=False, delta_bias=f32(delta_bias),
                        delta_softplus=delta_softplus, D=f32(D), z=z, out_dtype=u.dtype)[0]


def triton_scan_core(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """The recurrence and y = C . h, fp32, on CUDA (or on the CPU under TRITON_INTERPRET=1). Shapes as selective_scan."""
    return _TritonScan.apply(u.float(), delta.float(), A.float(), B.float(), C.float())
