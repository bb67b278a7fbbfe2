"""The native CUDA selective scan (csrc/selective_scan.cuh) as a torch function: `selective_scan(..., impl="cuda")`.

The kernel is the one the TensorRT plugin runs. It is compiled with nvcc on first use for the GPU's own SM
(native_build.cached_scan_library: a plain shared library, cached by a digest of the sources, nvcc version and
arch) and called through ctypes with the tensors' data pointers and strides on torch's current CUDA stream.

Why ctypes rather than torch.utils.cpp_extension: the library has a C entry point and no torch dependency, so it
builds in seconds with nvcc alone (no ninja, no torch headers, no rebuild per torch version; Jetson torch wheels
often lack a matching toolchain setup), and the plugin and the test programs share the very same binary
interface. The price: it is not a registered torch op (torch.compile breaks the graph around it) and it is
forward only, so autograd callers get a clear error (use triton or chunked to train).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

import torch

from .errors import ConfigError, NativeCodeError
from .native_build import cached_scan_library

_ABI_VERSION = 3
_DTYPES = {torch.float32: 0, torch.float16: 1}


class _ScanParams(ctypes.Structure):
    """Mirror of mambaesr::ScanParams (csrc/selective_scan.cuh)."""

    _fields_ = [
        ("batch", ctypes.c_int32), ("dim", ctypes.c_int32), ("length", ctypes.c_int32), ("n_state", ctypes.c_int32),
        ("dtype", ctypes.c_int32), ("delta_softplus", ctypes.c_int32),
        ("u", ctypes.c_void_p), ("delta", ctypes.c_void_p), ("A", ctypes.c_void_p), ("B", ctypes.c_void_p),
        ("C", ctypes.c_void_p), ("D", ctypes.c_void_p), ("z", ctypes.c_void_p), ("delta_bias", ctypes.c_void_p),
        ("y", ctypes.c_void_p),
        ("u_stride", ctypes.c_int64 * 3), ("delta_stride", ctypes.c_int64 * 3), ("A_stride", ctypes.c_int64 * 2),
        ("B_stride", ctypes.c_int64 * 3), ("C_stride", ctypes.c_int64 * 3), ("z_stride", ctypes.c_int64 * 3),
        ("y_stride", ctypes.c_int64 * 3),
    ]


@functools.cache
def load_library(arch: str) -> ctypes.CDLL:
    """The scan library for `arch` ('sm_90', ...), built on first use, loaded once per process."""
    lib = ctypes.CDLL(str(cached_scan_library(arch)))
    lib.mambaesr_scan_abi_version.restype = ctypes.c_int32
    lib.mambaesr_selective_scan_fwd.restype = ctypes.c_int32
    lib.mambaesr_selective_scan_fwd.argtypes = [ctypes.POINTER(_ScanParams), ctypes.c_void_p, ctypes.c_int32,
                                                ctypes.c_void_p, ctypes.c_uint64]
    lib.mambaesr_scan_workspace_bytes.restype = ctypes.c_int32
    lib.mambaesr_scan_workspace_bytes.argtypes = [ctypes.POINTER(_ScanParams), ctypes.c_int32, ctypes.POINTER(ctypes.c_uint64)]
    lib.mambaesr_cuda_error_string.restype = ctypes.c_char_p
    lib.mambaesr_cuda_error_string.argtypes = [ctypes.c_int32]
    if lib.mambaesr_scan_abi_version() != _ABI_VERSION:
        raise NativeCodeError("the cached scan library does not match this mambaesr-edge", hint="delete the cache folder")
    lib.mambaesr_scan_max_states.restype = ctypes.c_int32
    lib.max_states = lib.mambaesr_scan_max_states()  # the largest N the launcher takes (csrc kMaxStates)
    return lib


@functools.cache
def _arch(device_index: int) -> str:
    """'sm_XY' of a CUDA device, asked once (cuda_scan runs per scan call; at small batches the host is the bottleneck)."""
    major, minor = torch.cuda.get_device_capability(device_index)
    return f"sm_{major}{minor}"


def cuda_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus: bool = False, *,
              segments: int = 0) -> torch.Tensor:
    """The whole selective scan in the native kernel (forward only). Shapes as scan.selective_scan; any strides.

    u, delta, B, C, z of one dtype, fp32 or fp16, are read as they are; any other mix (bf16 among them) is
    converted to fp32 first. Returns u's dtype, (batch, dim, L) as a view of a (batch, L, dim) buffer, the layout the
    model's out_proj reads. `segments`: 0 = the launcher's policy (what `selective_scan(impl="cuda")` uses); > 0
    forces L into that many segments (tests of the split path). The split's workspace, when the library asks for one,
    is a tensor of this call on u's device (torch's caching allocator keeps it stream-ordered).
    """
    if u.device.type != "cuda":
        raise ConfigError("scan impl 'cuda' runs on CUDA tensors only", hint="use --scan chunked on CPU")
    activations = [t for t in (u, delta, B, C, z) if t is not None]
    if any(t.requires_grad for t in (*activations, A, D, delta_bias) if t is not None) and torch.is_grad_enabled():
        raise ConfigError("scan impl 'cuda' is inference only (no backward)", hint="train with --scan triton or chunked")
    dtype = u.dtype if u.dtype in _DTYPES and all(t.dtype == u.dtype for t in activations) else torch.float32
    u, delta, B, C = (t.to(dtype) for t in (u, delta, B, C))
    z = z.to(dtype) if z is not None else None
    A, D, delta_bias = (t.float().contiguous() if t is not None else None for t in (A, D, delta_bias))
    batch, dim, length = u.shape
    y = torch.empty(batch, length, dim, device=u.device, dtype=dtype).transpose(1, 2)  # (batch, dim, L)
    params = _ScanParams(
        batch=batch, dim=dim, length=length, n_state=A.shape[1], dtype=_DTYPES[dtype], delta_softplus=int(delta_softplus),
        u=u.data_ptr(), delta=delta.data_ptr(), A=A.data_ptr(), B=B.data_ptr(), C=C.data_ptr(),
        D=D.data_ptr() if D is not None else None, z=z.data_ptr() if z is not None else None,
        delta_bias=delta_bias.data_ptr() if delta_bias is not None else None, y=y.data_ptr(),
        u_stride=(ctypes.c_int64 * 3)(*u.stride()), delta_stride=(ctypes.c_int64 * 3)(*delta.stride()),
        A_stride=(ctypes.c_int64 * 2)(*A.stride()), B_stride=(ctypes.c_int64 * 3)(*B.stride()),
        C_stride=(ctypes.c_int64 * 3)(*C.stride()), z_stride=(ctypes.c_int64 * 3)(*(z.stride() if z is not None else (0, 0, 0))),
        y_stride=(ctypes.c_int64 * 3)(*y.stride()),
    )
    lib = load_library(_arch(u.device.index))
    if A.shape[1] > lib.max_states:
        raise ConfigError(f"scan impl 'cuda' takes state sizes N up to {lib.max_states}, not {A.shape[1]}",
                          hint="use --scan triton for this model")
    on_device = torch.cuda.device(u.device) if u.device.index != torch.cuda.current_device() else contextlib.nullcontext()
    with on_device:
        nbytes = ctypes.c_uint64(0)
        code = lib.mambaesr_scan_workspace_bytes(ctypes.byref(params), segments, ctypes.byref(nbytes))
        workspace = torch.empty(nbytes.value, device=u.device, dtype=torch.uint8) if code == 0 and nbytes.value else None
        if code == 0:
            code = lib.mambaesr_selective_scan_fwd(
                ctypes.byref(params), ctypes.c_void_p(torch.cuda.current_stream().cuda_stream), segments,
                ctypes.c_void_p(workspace.data_ptr() if workspace is not None else None), nbytes.value)
    if code != 0:
        raise NativeCodeError(
            f"the native scan failed to launch: {lib.mambaesr_cuda_error_string(code).decode()} "
            f"(batch {batch}, dim {dim}, L {length}, N {A.shape[1]})",
            hint="the kernel's shared-memory tiles not fitting this GPU (sm_75: N > 32) is the usual cause; use --scan triton",
        )
    return y
