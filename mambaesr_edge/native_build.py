"""How the native CUDA code in `csrc/` is compiled: the one place that knows the nvcc command lines.

Two libraries come from the same kernel (csrc/selective_scan.cuh):

- the scan library (csrc/scan_capi.cu): a C entry point, `mambaesr_selective_scan_fwd`, that scan_cuda.py calls
  through ctypes (the `impl="cuda"` torch op) and test programs call directly; needs only the CUDA toolkit;
- the TensorRT plugin library (csrc/scan_plugin.cu): IPluginV3 + creator, with TensorRT 10's `getCreators` /
  `setLoggerFinder` entry points; needs TensorRT's C++ headers but not libnvinfer (nothing is linked against it).

`*_command` functions return argv lists (for subprocess, or `shlex.join` for a build script); `build` runs one.
No torch import here: the exporter and the tests use these without a GPU.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .errors import DependencyMissingError, NativeCodeError

logger = logging.getLogger(__name__)

CSRC_DIR = Path(__file__).resolve().parent / "csrc"
KERNEL_HEADER = CSRC_DIR / "selective_scan.cuh"
SCAN_LIBRARY_SOURCE = CSRC_DIR / "scan_capi.cu"
PLUGIN_SOURCE = CSRC_DIR / "scan_plugin.cu"
SOURCES = (KERNEL_HEADER, SCAN_LIBRARY_SOURCE, PLUGIN_SOURCE)  # everything a build reads from csrc/
PLUGIN_SOURCES = (KERNEL_HEADER, PLUGIN_SOURCE)  # what the plugin build reads (export copies these into bundles)

# The plugin's identity, as scan_plugin.cu defines it (an ONNX node with op_type PLUGIN_NAME, attributes
# plugin_version and plugin_namespace, maps to it); test_csrc.py holds the two in step.
PLUGIN_NAME = "MambaESRSelectiveScan"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "mambaesr_edge"
PLUGIN_FIELDS = ("delta_softplus", "has_D", "has_z", "has_delta_bias", "token_major")
TOKEN_MAJOR_ORDER = ("u", "delta", "z", "B", "C", "y")  # the entries of the token_major field, in order


def plugin_output_shape(u_shape: Sequence, token_major: Sequence[int]) -> list:
    """The plugin's output y: u's batch, channels and length, laid out as token_major[y] says (u as token_major[u])."""
    u_major, y_major = token_major[TOKEN_MAJOR_ORDER.index("u")], token_major[TOKEN_MAJOR_ORDER.index("y")]
    batch, *rest = u_shape
    return [batch, *(rest if u_major == y_major else rest[::-1])]

JETPACK_TENSORRT_INCLUDE = "/usr/include/aarch64-linux-gnu"  # NvInfer*.h on JetPack 6/7 (Debian packages)
DESKTOP_TENSORRT_INCLUDE = "/usr/include/x86_64-linux-gnu"  # the same packages on x86-64 Linux
DESKTOP_ARCHS = ("7.5", "8.0", "8.6", "8.9", "9.0")  # a profile without a compute capability: every desktop GPU from Turing

OLDEST_SM = 75  # CUDA 13 builds nothing older; TensorRT's IPluginV3 targets start there too (Xavier, 7.2, is out)

_DEFAULT_NVCC = Path("/usr/local/cuda/bin/nvcc")
_COMMON_FLAGS = ("-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-Xcompiler", "-Wno-deprecated-declarations")


def sm_arch(compute_capability: str | int) -> str:
    """'8.7', '87', 87 or 'sm_87' -> 'sm_87'; a ValueError names anything older than sm_75 or malformed."""
    text = str(compute_capability).strip().lower().removeprefix("sm_").replace(".", "")
    if not text.isdigit() or int(text) < OLDEST_SM:
        raise ValueError(f"compute capability {compute_capability!r}: need 7.5 or newer, e.g. '8.7' (Orin) or '9.0'")
    return f"sm_{text}"


def _gencode(archs: Sequence[str]) -> list[str]:
    """Machine code for every arch, plus PTX of the newest so newer GPUs can still run it."""
    flags = []
    for arch in archs:
        number = sm_arch(arch).removeprefix("sm_")
        flags.append(f"-gencode=arch=compute_{number},code=sm_{number}")
    newest = max(sm_arch(a).removeprefix("sm_") for a in archs)
    flags.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")
    return flags


def scan_library_command(
    output: Path | str, archs: Sequence[str], *, nvcc: str = "nvcc", source: Path | str = SCAN_LIBRARY_SOURCE
) -> list[str]:
    """nvcc argv building the ctypes scan library (libmambaesr_scan.so) for `archs` (e.g. ['8.7']). `source`: another
    C entry point over the same kernel header (tools/scan_variants.cu, the variant measurement library)."""
    return [nvcc, *_COMMON_FLAGS, *_gencode(archs), str(source), "-o", str(output)]


def plugin_command(
    output: Path | str, archs: Sequence[str], tensorrt_include: Path | str, *, nvcc: str = "nvcc", source: Path | str = PLUGIN_SOURCE
) -> list[str]:
    """nvcc argv building the TensorRT plugin library for `archs` against TensorRT's headers (not linking libnvinfer).

    On a Jetson with JetPack 6: tensorrt_include=JETPACK_TENSORRT_INCLUDE, archs=['8.7']. `source`: scan_plugin.cu
    (a bundle's copy for its build_plugin.sh; selective_scan.cuh must sit beside it).
    """
    return [nvcc, *_COMMON_FLAGS, *_gencode(archs), f"-I{tensorrt_include}", str(source), "-o", str(output)]


def find_nvcc() -> str:
    """Path of nvcc: $CUDA_HOME/bin, then PATH, then /usr/local/cuda/bin; DependencyMissingError when none."""
    candidates = [Path(os.environ[v]) / "bin" / "nvcc" for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    on_path = shutil.which("nvcc")
    candidates += [Path(on_path)] if on_path else []
    candidates.append(_DEFAULT_NVCC)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise DependencyMissingError(
        "the native CUDA scan needs nvcc (the CUDA toolkit's compiler), which was not found",
        hint="install the CUDA toolkit (on Jetson it comes with JetPack: /usr/local/cuda/bin) or set CUDA_HOME; "
        "or use --scan triton / chunked",
    )


def nvcc_version(nvcc: str) -> str:
    done = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else "unknown"


def sources_digest(*extra: str) -> str:
    """sha256 over the csrc sources and `extra` strings (nvcc version, archs): names a cached build."""
    digest = hashlib.sha256()
    for path in SOURCES:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for item in extra:
        digest.update(item.encode() + b"\0")
    return digest.hexdigest()


def build(command: Sequence[str], output: Path, *, timeout_s: float = 600.0) -> Path:
    """Run an nvcc command whose output is `output`; the file appears only when the build succeeded (temp, rename)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    temp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    argv = [str(temp) if str(a) == str(output) else str(a) for a in command]
    logger.info("building %s", output.name)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise NativeCodeError(
                f"nvcc failed building {output.name} (exit {done.returncode}): {done.stderr.strip()[-2000:]}",
                hint="check the CUDA toolkit and header paths; the full command: " + " ".join(argv),
            )
        os.replace(temp, output)
    finally:
        temp.unlink(missing_ok=True)
    return output


def cache_dir() -> Path:
    """Where built libraries are kept: $MAMBAESR_CACHE_DIR, else $XDG_CACHE_HOME/mambaesr-edge, else ~/.cache/mambaesr-edge."""
    if os.environ.get("MAMBAESR_CACHE_DIR"):
        return Path(os.environ["MAMBAESR_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mambaesr-edge"


def cached_scan_library(arch: str) -> Path:
    """The scan library for `arch`, built on first use into cache_dir()/native/<digest>/ and reused after."""
    nvcc = find_nvcc()
    arch = sm_arch(arch)
    key = sources_digest(nvcc_version(nvcc), arch)[:16]
    path = cache_dir() / "native" / key / f"libmambaesr_scan_{arch}.so"
    if not path.is_file():
        build(scan_library_command(path, [arch], nvcc=nvcc), path)
    return path


def load_plugin_library(trt, library: Path) -> None:
    """Register the scan plugin library with TensorRT (IPluginV3 creators, TensorRT >= 10): before parsing the
    plugin graph (the ONNX parser maps its custom nodes to the creator) and before deserialising its engine. One
    place for the engine builder and the TensorRT backend."""
    from .bundle import BUILD_PLUGIN_SCRIPT_FILE

    if not library.is_file():
        raise NativeCodeError(f"the plugin graph needs {library.name}, which is not built",
                              hint=f"run bash {library.parent / BUILD_PLUGIN_SCRIPT_FILE} on this device first")  # fmt: skip
    try:
        trt.get_plugin_registry().load_library(str(library))
    except (AttributeError, RuntimeError, OSError) as exc:
        raise NativeCodeError(f"TensorRT cannot load the plugin library {library}: {exc}",
                              hint=f"rebuild it on this device: bash {library.parent / BUILD_PLUGIN_SCRIPT_FILE}") from exc
