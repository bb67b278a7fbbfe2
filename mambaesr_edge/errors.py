"""Named exceptions. Each carries a message naming the problem and a hint naming the fix.

The CLI turns any `MambaESRError` into one line on stderr plus the hint, and exit code 2 (`Interrupted`: exit 130).
"""

from __future__ import annotations


class MambaESRError(Exception):
    """Base class for errors caused by the user's input or environment (not by a bug)."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class WeightsError(MambaESRError):
    """A weights file is missing, unreadable, corrupt or unsafe to load."""


class ArchitectureMismatchError(WeightsError):
    """A state dict does not fit the model config (missing/unexpected keys, wrong shapes)."""


class ConfigError(MambaESRError):
    """A model config or preset name is invalid."""


class DatasetError(MambaESRError):
    """A dataset folder is not laid out as NAME/HR/*.png (+ optional NAME/LR_bicubic/X<scale>)."""


class ImageError(MambaESRError):
    """An image cannot be read, is too small, or cannot be written."""


class BackendError(MambaESRError):
    """A backend cannot be opened or failed to run (missing provider, bad model file, wrong input shape, CUDA error)."""


class BundleError(MambaESRError):
    """An export bundle or engine manifest is missing files, invalid, stale, or cannot be written (bundle.py, engine_manifest.py)."""


class EngineMismatchError(BundleError):
    """A TensorRT engine was built for another GPU, TensorRT release, weights, graph or plugin than the ones here."""


class DependencyMissingError(MambaESRError):
    """An optional dependency (an extra) is needed for the requested feature but is not installed."""


class DiskFullError(MambaESRError):
    """A write ran out of room (no space left, quota used up, file-size limit); the file's previous version is intact."""


class Interrupted(MambaESRError):
    """Ctrl-C stopped a command after it cleaned up; the message says what was kept and how to go on.

    Raised in place of a KeyboardInterrupt by the code behind CLI commands (the library itself lets KeyboardInterrupt
    through, after removing its temporary files). The CLI prints "interrupted: MESSAGE" and exits with code 130.
    """


class NativeCodeError(MambaESRError):
    """The native CUDA code (mambaesr_edge/csrc) failed to build or to run."""
