"""`mambaesr-edge presets`: the model presets, their measured parameter counts, and which one the default model is."""

from __future__ import annotations

import logging
from typing import Optional

from .app import app, console, titled_table


@app.command("presets")
def presets_command() -> None:
    """List the model presets with their measured parameter counts; * marks the shipped default model's."""
    from ..model import MambaSR, count_parameters
    from ..presets import PRESETS

    default = _default_preset()
    caption = f"* {default}: the shipped default model (used when no --weights/--model is given)" if default else None
    table = titled_table(title="presets", caption=caption)
    for column in ("name", "dim", "groups x blocks", "d_state", "dt rank", "scan orders", "params (x4)"):
        table.add_column(column)
    for name, cfg in PRESETS.items():
        table.add_row(
            f"{name} *" if name == default else name,
            str(cfg.embed_dim),
            f"{cfg.groups} x {cfg.blocks_per_group}",
            str(cfg.d_state),
            str(cfg.dt_rank),
            ",".join(cfg.scan_orders),
            f"{count_parameters(MambaSR(cfg)):,}",
        )
    console.print(table)


def _default_preset() -> Optional[str]:
    """The preset whose config the shipped default weights store (None: missing weights, or a config of no preset)."""
    from ..checkpoint import read_weights
    from ..errors import MambaESRError
    from ..presets import PRESETS
    from ..resources import default_weights_path

    try:
        config = read_weights(default_weights_path()).config
    except MambaESRError as exc:  # the table is still right; only the mark is missing
        logging.getLogger(__name__).warning("%s: the default preset is not marked", exc.message)
        return None
    return next((name for name, cfg in PRESETS.items() if cfg == config), None)
