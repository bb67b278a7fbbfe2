"""Named runtime errors (all ``MambaESRError``s: the CLI prints one line + hint)."""

from __future__ import annotations

from ..errors import BackendError, BundleError, ConfigError, EngineMismatchError, MambaESRError

__all__ = [
    "BackendError",
    "BackendOutOfMemoryError",
    "BundleError",
    "EngineMismatchError",
    "NumericalError",
    "RuntimeConfigError",
]


class BackendOutOfMemoryError(BackendError):
    """The backend ran out of memory, even after shrinking batch and tile (see runtime/adapt.py)."""


class NumericalError(MambaESRError):
    """The backend produced NaN/Inf or an all-black output (typically FP16 overflow) and no fp32 fallback exists."""


class RuntimeConfigError(ConfigError):
    """Invalid runtime settings (tile, overlap, batch, precision, channel order, blend)."""
