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
import struct

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


def _packed_format(fields: list) -> str:
    """A struct-module format of ctypes `fields` in order, from their own type codes (native sizes and alignment, as
    the C compiler lays the struct out): c_int32 'i', c_void_p 'P', c_int64 * 3 '3q' (or '3l', as ctypes maps it)."""
    def code(kind) -> str:
        if issubclass(kind, ctypes.Array):
            return f"{kind._length_}{kind._type_._type_}"
        return kind._type_

    return "@" + "".join(code(kind) for _, kind in fields)


# _ScanParams as bytes in one C call: at batch 1 the host is the bottleneck, and filling a ctypes Structure with
# seven stride arrays costs more than the kernel (tests/test_csrc.py checks the bytes match the Structure's).
PACKED_PARAMS = struct.Struct(_packed_format(_ScanParams._fields_))


@functools.cache
def load_library(arch: str) -> ctypes.CDLL:
    """The scan library for `arch` ('sm_90', ...), built on first use, loaded once per process."""
    lib = ctypes.CDLL(str(cached_scan_library(arch)))
    lib.mambaesr_scan_abi_version.restype = ctypes.c_int32
    lib.mambaesr_selective_scan_fwd.restype = ctypes.c_int32
    # params go in as PACKED_PARAMS bytes (c_void_p passes a bytes object's buffer; the C side only reads it)
    lib.mambaesr_selective_scan_fwd.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_uint64]
    lib.mambaesr_scan_workspace_bytes.restype = ctypes.c_int32
    lib.mambaesr_scan_workspace_bytes.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_uint64)]
    lib.mambaesr_cuda_error_string.restype = ctypes.c_char_p
    lib.mambaesr_cuda_error_string.argtypes = [ctypes.c_int32]
    if lib.mambaesr_scan_abi_version() != _ABI_VERSION:
        raise NativeCodeError("the cached scan library does not match this mambaesr-edge", hint="delete the cache folder")
    lib.mambaesr_scan_max_states.restype = ctypes.c_int32
    lib.max_states = lib.mambaesr_scan_max_states()  # the largest N the launcher takes (csrc kMaxStates)
    return lib


@functools.cache
def device_arch(device_index: int | None) -> str:
    """'sm_XY' of a CUDA device (None: the current one), asked once per device (cuda_scan runs per scan call; at small
    batches the host is the bottleneck)."""
    major, minor = torch.cuda.get_device_capability(device_index)
    return f"sm_{major}{minor}"


def _launch_error(lib: ctypes.CDLL, code: int, batch: int, dim: int, length: int, n_state: int) -> NativeCodeError:
    return NativeCodeError(
        f"the native scan failed to launch: {lib.mambaesr_cuda_error_string(code).decode()} "
        f"(batch {batch}, dim {dim}, L {length}, N {n_state})",
        hint="the kernel's shared-memory tiles not fitting this GPU (sm_75: N > 32) is the usual cause; use --scan triton",
    )


@functools.lru_cache(maxsize=1024)
def _workspace_bytes(lib: ctypes.CDLL, device_index: int, dtype_code: int, batch: int, dim: int, length: int, n_state: int,
                     segments: int) -> int:
    """Bytes of split workspace the launcher needs for these shapes on the current device (`device_index`), asked
    once per shape: the policy is a pure function of the shapes and the device's SM count and occupancy."""
    shapes_only = PACKED_PARAMS.pack(batch, dim, length, n_state, dtype_code, 0, *[0] * 9, *[0] * 20)
    nbytes = ctypes.c_uint64(0)
    code = lib.mambaesr_scan_workspace_bytes(shapes_only, segments, ctypes.byref(nbytes))
    if code != 0:
        raise _launch_error(lib, code, batch, dim, length, n_state)
    return nbytes.value


def cuda_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus: bool = False, *,
              segments: int = 0) -> torch.Tensor:
    """The whole selective scan in the native kernel (forward only). Shapes as scan.selective_scan; any strides.

    u, delta, B, C, z of one dtype, fp32 or fp16, are read as they are; any other mix (bf16 among them) is
    converted to fp32 first. Returns u's dtype, (batch, dim, L) as a view of a (batch, L, dim) buffer, the layout the
    model's out_proj reads. `segments`: 0 = the launcher's policy (what `selective_scan(impl="cuda")` uses); > 0
    forces L into that many segments (tests of the split path). The split's workspace, when the library asks for one,
    is a tensor of this call on u's device (torch's caching allocator keeps it stream-ordered).

    Lean per call (at batch 1 a 64x64 tile's scan takes ~25 us on the GPU, less than its host work): the parameters
    go over as one packed struct, the workspace size is asked once per shape, one C call launches.
    """
    if u.device.type != "cuda":
        raise ConfigError("scan impl 'cuda' runs on CUDA tensors only", hint="use --scan chunked on CPU")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias)):
        raise ConfigError("scan impl 'cuda' is inference only (no backward)", hint="train with --scan triton or chunked")
    dtype = u.dtype
    if dtype not in _DTYPES or any(t.dtype != dtype for t in (delta, B, C, z) if t is not None):
        dtype = torch.float32
        u, delta, B, C = (t.float() for t in (u, delta, B, C))
        z = z.float() if z is not None else None
    A, D, delta_bias = (t.float().contiguous() if t is not None else None for t in (A, D, delta_bias))
    batch, dim, length = u.shape
    n_state = A.shape[1]
    device = u.device.index
    lib = load_library(device_arch(device))
    if n_state > lib.max_states:
        raise ConfigError(f"scan impl 'cuda' takes state sizes N up to {lib.max_states}, not {n_state}",
                          hint="use --scan triton for this model")
    y = torch.empty(batch, length, dim, device=u.device, dtype=dtype).transpose(1, 2)  # (batch, dim, L)
    params = PACKED_PARAMS.pack(
        batch, dim, length, n_state, _DTYPES[dtype], int(delta_softplus),
        u.data_ptr(), delta.data_ptr(), A.data_ptr(), B.data_ptr(), C.data_ptr(), D.data_ptr() if D is not None else 0,
        z.data_ptr() if z is not None else 0, delta_bias.data_ptr() if delta_bias is not None else 0, y.data_ptr(),
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *(z.stride() if z is not None else (0, 0, 0)),
        *y.stride(),
    )
    on_device = torch.cuda.device(device) if device != torch.cuda.current_device() else contextlib.nullcontext()
    with on_device:
        nbytes = _workspace_bytes(lib, device, _DTYPES[dtype], batch, dim, length, n_state, segments)
        workspace = torch.empty(nbytes, device=u.device, dtype=torch.uint8) if nbytes else None
        stream = torch._C._cuda_getCurrentRawStream(device)  # torch.cuda.current_stream() builds a Stream object: ~7 us
        code = lib.mambaesr_selective_scan_fwd(params, stream, segments,
                                               workspace.data_ptr() if workspace is not None else None, nbytes)
    if code != 0:
        raise _launch_error(lib, code, batch, dim, length, n_state)
    return y
