"""The weights file contract, torch-free: metadata keys, parameter names and shapes, and the checks on loaded tensors.

One definition for the two loaders: ``checkpoint`` (torch) and ``model_numpy`` (numpy, which must never import
torch). The parameter names are DVMSR's (model.py builds modules with these names; tests/test_model_numpy.py holds
``expected_shapes`` to ``MambaSR(config).state_dict()``). The checks take plain facts (shapes, dtype names, flags)
so both loaders raise the same errors with the same messages.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .errors import ArchitectureMismatchError, ConfigError, WeightsError
from .presets import ModelConfig

# safetensors metadata of our format: the model config as JSON and the format version
CONFIG_KEY = "mambaesr_edge.config"
FORMAT_KEY = "mambaesr_edge.format"
FORMAT = "1"
STEP_KEY = "mambaesr_edge.step"  # the training step a run's weights were saved at
PROVENANCE_KEY = "mambaesr_edge.provenance"  # shipped models: where the weights come from, as JSON (tools/ship_model.py)

LAYER_NORM_EPS = 1e-5  # every LayerNorm of the network (torch.nn.LayerNorm's default)

# parameter names (DVMSR's layout); a block's keys start with block_prefix(g, b)
GROUP_KEY = re.compile(r"layers\.(\d+)\.")
BLOCK_KEY = re.compile(r"layers\.(\d+)\.residual_group\.blocks\.(\d+)\.")
MIXER = "mixer."


def group_prefix(group: int) -> str:
    return f"layers.{group}."


def block_prefix(group: int, block: int) -> str:
    return f"layers.{group}.residual_group.blocks.{block}."


def config_from_metadata(metadata: Mapping[str, str], name: str) -> ModelConfig | None:
    """The config stored in a weights file's metadata (None: the file has none, e.g. an outside checkpoint)."""
    if CONFIG_KEY not in metadata:
        return None
    try:
        return ModelConfig.from_json(metadata[CONFIG_KEY])
    except ConfigError as exc:
        raise WeightsError(f"{name} carries an invalid model config ({exc.message})", hint="re-save the weights with mambaesr-edge") from exc


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of `MambaSR(config)` with its shape."""
    c, di = config.embed_dim, config.d_inner
    shapes = {"conv_first.weight": (c, config.in_channels, 3, 3), "conv_first.bias": (c,),
              "patch_embed.norm.weight": (c,), "patch_embed.norm.bias": (c,)}  # fmt: skip
    for g in range(config.groups):
        for b in range(config.blocks_per_group):
            p, m = block_prefix(g, b), block_prefix(g, b) + MIXER
            shapes.update({
                p + "norm.weight": (c,), p + "norm.bias": (c,), m + "A_log": (di, config.d_state), m + "D": (di,),
                m + "in_proj.weight": (2 * di, c), m + "conv1d.weight": (di, 1, config.d_conv), m + "conv1d.bias": (di,),
                m + "x_proj.weight": (config.dt_rank + 2 * config.d_state, di), m + "dt_proj.weight": (di, config.dt_rank),
                m + "dt_proj.bias": (di,), m + "out_proj.weight": (c, di),
            })  # fmt: skip
        shapes.update({group_prefix(g) + "conv.weight": (c, c, 3, 3), group_prefix(g) + "conv.bias": (c,)})
    out = config.in_channels * config.scale**2
    shapes.update({"norm_f.weight": (c,), "norm_f.bias": (c,), "conv_after_body.weight": (c, c, 3, 3), "conv_after_body.bias": (c,),
                   "upsample.0.weight": (out, c, 3, 3), "upsample.0.bias": (out,)})  # fmt: skip
    return shapes


def check_shapes(actual: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], name: str, *, hint: str) -> None:
    """Strict key and shape check; the error lists missing, unexpected and mis-shaped keys (6 of each at most)."""
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    common = sorted(set(expected) & set(actual))
    mis_shaped = [f"{k} {tuple(actual[k])} != {tuple(expected[k])}" for k in common if tuple(actual[k]) != tuple(expected[k])]
    if missing or unexpected or mis_shaped:
        parts = [f"{len(items)} {label}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)) if items]  # fmt: skip
        raise ArchitectureMismatchError(f"weights {name} do not fit the model: " + "; ".join(parts), hint=hint)


def check_values(name: str, not_float: Iterable[str], not_finite: Iterable[str]) -> None:
    """Float parameters need float tensors (any float width is cast to float32) holding finite numbers.

    ``not_float``: "key (dtype)" of each non-float tensor given for a float parameter; ``not_finite``: the keys of
    tensors holding NaN or infinity (each loader finds them with its own array library)."""
    not_float = list(not_float)
    if not_float:
        raise WeightsError(
            f"weights {name} hold non-float tensors for float parameters: {', '.join(not_float[:4])}",
            hint="the file is damaged or was converted wrongly; re-export it (float16/bfloat16/float32/float64 load)",
        )
    not_finite = list(not_finite)  # after the dtype check: finiteness is only asked of float tensors
    if not_finite:
        raise WeightsError(
            f"weights {name} contain NaN or infinite values in {', '.join(not_finite[:4])}",
            hint="the training run diverged or the file is damaged; use an earlier checkpoint",
        )
