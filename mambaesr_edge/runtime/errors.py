"""Named runtime errors (all ``MambaESRError``s: the CLI prints one line + hint)."""

from __future__ import annotations

from ..errors import ConfigError, MambaESRError

__all__ = [
    "BackendError",
    "BackendOutOfMemoryError",
    "BundleError",
    "EngineMismatchError",
    "NumericalError",
    "RuntimeConfigError",
]


class BackendError(MambaESRError):
    """A backend cannot be opened or failed to run (missing provider, bad model file, wrong input shape)."""


class BackendOutOfMemoryError(BackendError):
    """The backend ran out of memory, even after shrinking batch and tile (see runtime/adapt.py)."""


class BundleError(MambaESRError):
    """An export bundle is missing files, has an invalid bundle.json, or its files do not match their checksums."""


class EngineMismatchError(BundleError):
    """A TensorRT engine was built for another GPU, TensorRT version or other weights than the ones here."""


class NumericalError(MambaESRError):
    """The backend produced NaN/Inf or an all-black output (typically FP16 overflow) and no fp32 fallback exists."""


class RuntimeConfigError(ConfigError):
    """Invalid runtime settings (tile, overlap, batch, precision, channel order, blend)."""
