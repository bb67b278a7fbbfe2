"""The models by name (issue 15): the one registry of what ``--model NAME`` / ``-n NAME`` can mean. Torch-free.

Each entry says what the name is: its weights file under ``mambaesr_edge/assets/`` (None while it is only
planned), its parameter count, where it comes from (provenance) and how it is (to be) made (recipe), and the
Set5 x4 Y-PSNR target the issue sets for it. Measurements do not live here: the committed frontier JSON
(``assets/models_frontier.json``, written by ``benchmarks/models.py``) holds them, and ``mambaesr-edge models``
shows both. ``resources.model_weights_path(name)`` finds a shipped model's file; ``runtime/source.classify``
turns a name given where a model path is expected into that file.

Names are plain words (no path separator, no suffix), so a name never shadows a file: an existing path wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import WeightsError

__all__ = ["DEFAULT_MODEL", "MODELS", "PARAM_BUDGET", "NamedModel", "UnknownModelError", "get_model", "looks_like_name", "shipped_model",
           "shipped_names"]

SHIPPED = "shipped"
PLANNED = "planned"  # described (target, recipe) but not trained yet: no weights file, not loadable

# The budget, "no shipped model above 424K parameters", is the full DVMSR network's count (424,428, which
# the issue rounds to 424K and names as a candidate for `quality`).
PARAM_BUDGET = 424_428


class UnknownModelError(WeightsError):
    """A model name that is not in the registry, or one that is registered but has no weights yet."""


@dataclass(frozen=True)
class NamedModel:
    name: str
    status: str  # SHIPPED (weights_file in assets/) or PLANNED
    summary: str  # one line for the table
    network: str  # what network it is (preset, or the DVMSR groups kept)
    params: int  # count_parameters of the network (tests hold it to the shipped file)
    weights_file: str | None  # under mambaesr_edge/assets/; None while planned
    set5_target: float | None  # issue 15's Set5 x4 Y-PSNR target (MATLAB conventions), None: no target set
    provenance: str  # source weights, prune, data, run folder
    recipe: str  # the command(s) that make it
    notes: str = ""

    @property
    def shipped(self) -> bool:
        return self.status == SHIPPED


_DVMSR = "DVMSR released weights (team07_DVMSR.pth, NTIRE 2024, MIT licence)"
_DATA = "291 images (T91 + BSD200), validation split carved from them (train --val-from-train 20)"

def _named_run(groups: str, run: str, steps: int) -> str:
    """Provenance of weights shipped from a named-model run (tools/gpu_train_named.sh, then tools/ship_model.py)."""
    return (f"{_DVMSR}, pruned to groups {groups}, distilled from the full DVMSR (alpha 0.8) on {_DATA}; "
            f"model_best of benchmarks/train_runs/{run}, a {steps:,}-step cosine run to its end, selected on the split's PSNR "
            "(Set5 scored for the record only)")


MODELS: dict[str, NamedModel] = {
    model.name: model
    for model in (
        NamedModel(
            name="dvmsr-g1",
            status=SHIPPED,
            summary="today's default: DVMSR cut to its first residual group, distilled from the full DVMSR",
            network="dvmsr-g1 preset: DVMSR groups kept 0 (1 group x 2 Mamba blocks, dim 60)",
            params=151_368,
            weights_file="default_x4.safetensors",
            set5_target=None,
            provenance=f"{_DVMSR}, groups 1-3 removed (tools/prune_groups.py --keep 0), then distilled from the full DVMSR "
            "(alpha 0.8) on the 291 images for 6,500 steps; EMA weights of benchmarks/train_runs/dvmsr_g0_kd at step 6,500 "
            "(that run validated on Set5, before the validation split existed)",
            recipe="tools/gpu_distill_pruned.sh 5.4 \"0:6500:2e-4\" (MODEL_CARD.md)",
            notes="meets the CPU goal (128x128 -> 512x512 in <= 1.0 s on 2 cores: benchmarks/cpu_upscale.json)",
        ),
        NamedModel(
            name="fast",
            status=SHIPPED,
            summary="DVMSR groups 0+3, distilled from the full DVMSR (1,600-step cosine, selected on the validation split)",
            network="DVMSR groups kept 0 3 (2 groups x 2 Mamba blocks, dim 60; the dvmsr-g2 network)",
            params=242_388,
            weights_file="fast_x4.safetensors",
            set5_target=31.25,
            provenance=_named_run("0 and 3", "named_fast", 1_600),
            recipe="tools/gpu_train_named.sh MINUTES fast (the full recipe; these weights: tools/ship_model.py fast --run ...)",
            notes="validation-split PSNR 28.076, 28.092, 28.100, 28.101 at steps 400-1,600: the best is the last",
        ),
        NamedModel(
            name="balanced",
            status=SHIPPED,
            summary="DVMSR groups 0+1+3, distilled from the full DVMSR (1,200-step cosine, selected on the validation split)",
            network="DVMSR groups kept 0 1 3 (3 groups x 2 Mamba blocks, dim 60)",
            params=333_408,
            weights_file="balanced_x4.safetensors",
            set5_target=31.85,
            provenance=_named_run("0, 1 and 3", "named_balanced", 1_200),
            recipe="tools/gpu_train_named.sh MINUTES balanced (the full recipe; these weights: tools/ship_model.py balanced --run ...)",
            notes="validation-split PSNR 28.320, 28.321, 28.322 at steps 400-1,200: flat (this network starts close to DVMSR)",
        ),
        NamedModel(
            name="quality",
            status=SHIPPED,
            summary="DVMSR's released weights, unchanged (the best network within the budget)",
            network="DVMSR (4 groups x 2 Mamba blocks, dim 60): the full network",
            params=424_428,
            weights_file="quality_x4.safetensors",
            set5_target=32.15,
            provenance=f"{_DVMSR}, unchanged, re-saved in our format (tools/ship_model.py quality --weights); "
            "MIT notice: mambaesr_edge/assets/LICENSE.DVMSR",
            recipe="python tools/ship_model.py quality --weights team07_DVMSR.pth --provenance ...",
            notes="the other candidate, groups 0 1 3 on a schedule twice as long, was not trained: the session's device time "
            "went to fast and balanced, and DVMSR's own weights already meet the target",
        ),
    )
}

DEFAULT_MODEL = "dvmsr-g1"  # what commands use when no --model / --weights is given


def looks_like_name(text: str) -> bool:
    """Whether ``text`` could be a model name (one word: no path separator, no suffix) rather than a path."""
    return bool(text) and "/" not in text and "\\" not in text and "." not in text


def shipped_names() -> list[str]:
    return [name for name, model in MODELS.items() if model.shipped]


def get_model(name: str) -> NamedModel:
    """The registered model ``name``; UnknownModelError (listing the names) when there is none."""
    model = MODELS.get(name)
    if model is None:
        planned = [n for n, m in MODELS.items() if not m.shipped]
        raise UnknownModelError(
            f"unknown model {name!r}: not a file here, and not a model name",
            hint=f"model names: {', '.join(shipped_names())} (not trained yet: {', '.join(planned)}); or pass a weights "
            "file (.safetensors/.pth), an .onnx, an .engine or a bundle folder; `mambaesr-edge models` lists them",
        )
    return model


def shipped_model(name: str) -> NamedModel:
    """The registered model ``name`` with its weights file; UnknownModelError when unknown or not trained yet."""
    model = get_model(name)
    if not model.shipped:
        raise UnknownModelError(
            f"model {name!r} is not trained yet: no weights ship for it ({model.network}; Set5 target {model.set5_target} dB)",
            hint=f"use one of {', '.join(shipped_names())}; its recipe: {model.recipe}",
        )
    return model
