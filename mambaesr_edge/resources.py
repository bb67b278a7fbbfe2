"""Files shipped inside the package (package data under mambaesr_edge/assets)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from .errors import WeightsError

DEFAULT_WEIGHTS = "default_x4.safetensors"
SAMPLE_IMAGE = "sample_hr.png"


def asset_path(name: str) -> Path:
    return Path(str(importlib.resources.files("mambaesr_edge") / "assets" / name))


def default_weights_path() -> Path:
    """The shipped default model."""
    path = asset_path(DEFAULT_WEIGHTS)
    if not path.is_file():
        raise WeightsError(f"the shipped default weights are missing ({path})", hint="reinstall mambaesr-edge")
    return path


def sample_image_path() -> Path:
    """A synthetic 256x256 test scene made by tools/make_sample_image.py (no third-party image)."""
    return asset_path(SAMPLE_IMAGE)
