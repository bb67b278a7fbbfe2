"""Files shipped inside the package (package data under mambaesr_edge/assets): the named models' weights, the
frontier table of them, the sample image. Which file a model name means is the registry's (models.py)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from .errors import WeightsError
from .models import DEFAULT_MODEL, MODELS, shipped_model

DEFAULT_WEIGHTS = MODELS[DEFAULT_MODEL].weights_file
SAMPLE_IMAGE = "sample_hr.png"
FRONTIER = "models_frontier.json"  # benchmarks/models.py writes it; `mambaesr-edge models` reads it


def asset_path(name: str) -> Path:
    return Path(str(importlib.resources.files("mambaesr_edge") / "assets" / name))


def model_weights_path(name: str) -> Path:
    """The weights file of the shipped model ``name`` (models.py); UnknownModelError for an unknown or planned name."""
    model = shipped_model(name)
    path = asset_path(model.weights_file)
    if not path.is_file():
        what = "the shipped default weights" if name == DEFAULT_MODEL else f"the weights of model {name!r}"
        raise WeightsError(f"{what} are missing ({path})", hint="reinstall mambaesr-edge")
    return path


def default_weights_path() -> Path:
    """The shipped default model (models.DEFAULT_MODEL)."""
    return model_weights_path(DEFAULT_MODEL)


def frontier_path() -> Path:
    return asset_path(FRONTIER)


def sample_image_path() -> Path:
    """A synthetic 256x256 test scene made by tools/make_sample_image.py (no third-party image)."""
    return asset_path(SAMPLE_IMAGE)
