"""ModelConfig (a frozen dataclass) and the named presets.

A config fully describes a network; our checkpoints carry it (see checkpoint.py), so one file describes its model.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from .errors import ConfigError

# Scan orders are token permutations of the raster sequence (see model.py). "_rev" reverses any order.
BASE_ORDERS = ("raster", "column", "diagonal", "spiral")
# Selective-scan implementation names (scan.py implements them); here so the CLI can list them without torch.
SCAN_IMPLS = ("auto", "reference", "chunked", "triton", "cuda", "mamba_ssm")

SCAN_ORDER_SETS = {
    "raster": ("raster",),
    "bidirectional": ("raster", "raster_rev"),
    "4way": ("raster", "column", "raster_rev", "column_rev"),
}


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of the DVMSR-layout Mamba SR network.

    embed_dim: feature channels C; groups x blocks_per_group Mamba mixers; each mixer has d_inner = expand * C,
    d_state N, a causal depthwise conv of width d_conv, and a dt projection of rank dt_rank (None = ceil(C / 16),
    as DVMSR; the seed paper's "low rank" is dt_rank = 2). block_residual adds x to each block's output (the
    released DVMSR has none). scan_orders: token orders whose mixer outputs are summed (weights shared).
    """

    scale: int = 4
    in_channels: int = 3
    embed_dim: int = 60
    groups: int = 4
    blocks_per_group: int = 2
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int | None = None
    block_residual: bool = False
    scan_orders: tuple[str, ...] = ("raster",)
    rgb_mean: tuple[float, float, float] = (0.4488, 0.4371, 0.4040)

    def __post_init__(self) -> None:
        if self.scale not in (2, 3, 4):
            raise ConfigError(f"scale must be 2, 3 or 4, got {self.scale}", hint="pass --scale 2, 3 or 4")
        for name in ("in_channels", "embed_dim", "groups", "blocks_per_group", "d_state", "expand", "d_conv"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}", hint="fix the model config")
        if self.dt_rank is None:  # DVMSR's rule; stored resolved so equal networks have equal configs
            object.__setattr__(self, "dt_rank", math.ceil(self.embed_dim / 16))
        if not isinstance(self.dt_rank, int) or self.dt_rank < 1:
            raise ConfigError(f"dt_rank must be a positive integer or None, got {self.dt_rank!r}", hint="fix the model config")
        if not self.scan_orders:
            raise ConfigError("scan_orders is empty", hint="use at least one order, e.g. ('raster',)")
        for order in self.scan_orders:
            if order.removesuffix("_rev") not in BASE_ORDERS:
                raise ConfigError(
                    f"unknown scan order {order!r}", hint=f"use one of {', '.join(BASE_ORDERS)}, optionally with '_rev'"
                )
        if len(set(self.scan_orders)) != len(self.scan_orders):
            raise ConfigError(f"scan_orders repeats an order: {self.scan_orders}", hint="list each order once")

    @property
    def d_inner(self) -> int:
        return self.expand * self.embed_dim

    @property
    def n_mixers(self) -> int:
        return self.groups * self.blocks_per_group

    def replace(self, **changes: object) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model config is not valid JSON: {exc}", hint="re-save the checkpoint") from exc
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"model config must be a JSON object, got {type(raw).__name__}", hint="re-save the checkpoint")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown model config fields: {unknown}", hint="the file may come from a newer mambaesr-edge")
        values = dict(raw)
        try:
            for name in ("scan_orders", "rgb_mean"):
                if name in values:
                    values[name] = tuple(values[name])
            return cls(**values)
        except (TypeError, ValueError, AttributeError) as exc:  # wrong types: a list where a number goes, ...
            raise ConfigError(f"invalid model config: {exc}", hint="re-save the checkpoint") from exc


PRESETS: dict[str, ModelConfig] = {
    # The released DVMSR layout (424,428 parameters at x4).
    "dvmsr": ModelConfig(),
    # MambaLiteSR teacher: dim 60, 16 mixers (4 groups x 4), low-rank dt (rank 2).
    "teacher": ModelConfig(embed_dim=60, groups=4, blocks_per_group=4, dt_rank=2),
    # MambaLiteSR student: dim 32, 4 groups x 2 = 8 mixers, low-rank dt (rank 2).
    "student": ModelConfig(embed_dim=32, groups=4, blocks_per_group=2, dt_rank=2),
    # DVMSR cut to its first group (151,368 params): the shipped default, distilled from DVMSR after pruning
    # (tools/prune_groups.py --keep 0; MODEL_CARD.md).
    "dvmsr-g1": ModelConfig(groups=1),
    # DVMSR cut to groups 0 and 3 (242,388 params): the larger pruned student (benchmarks/train_runs/dvmsr_g03_kd).
    "dvmsr-g2": ModelConfig(groups=2),
    # Tiny network for fast tests.
    "test": ModelConfig(embed_dim=8, groups=1, blocks_per_group=2, d_state=4, dt_rank=1),
}


def get_preset(name: str, **overrides: object) -> ModelConfig:
    """A named preset, optionally with fields replaced (e.g. scale=2, scan_orders=('raster', 'raster_rev'))."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}", hint=f"choose one of {', '.join(PRESETS)}")
    config = PRESETS[name]
    return config.replace(**overrides) if overrides else config
