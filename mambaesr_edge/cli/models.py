"""`mambaesr-edge models`: the models by name (models.py) with what the committed frontier measured for them.

Measurements come from the frontier JSON (``assets/models_frontier.json``, written by ``benchmarks/models.py``;
``--frontier FILE`` reads another); a model the frontier has no row for shows "-" (planned ones: "not trained yet").
DVMSR and bicubic are reference rows from the frontier. Nothing here imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from .app import app, console, titled_table

DATASETS = ("Set5", "Set14", "BSD100")


@app.command("models")
def models_command(
    frontier: Optional[Path] = typer.Option(None, "--frontier", help="Frontier JSON to read (default: the shipped one)."),
) -> None:
    """The models by name (--model NAME / -n NAME) and the reference rows, with their measured quality and speed."""
    from ..models import DEFAULT_MODEL, MODELS
    from ..resources import frontier_path

    report = _read_frontier(frontier or frontier_path(), explicit=frontier is not None)
    rows = {row["name"]: row for row in report.get("rows", [])}
    caption = (f"measured: {report.get('date', '?')} on {report.get('device', '?')} ({report.get('command', '?')}); "
               f"* = default (used without --model); PSNR/SSIM: x4 Y channel, MATLAB conventions; Orin Nano ms: "
               f"modelled (roofline, fp16 graph, 64x64 tile), not measured; GPU ms: {_gpu(report)}") if report else "no frontier measurements found"
    table = titled_table(title="models (mambaesr-edge upscale IN -o OUT --model NAME)", caption=caption)
    columns = ("name", "status", "params", *(f"{d} PSNR/SSIM" for d in DATASETS), "fp16 drop dB", "Orin Nano ms pure-op",
               "Orin Nano ms plugin", "GPU ms tile b16", "GPU ms 960x540", "CPU s 128x128", "Set5 target")
    for column in columns:
        table.add_column(column, justify="left" if column in ("name", "status") else "right")
    for name, model in MODELS.items():
        status = "shipped" if model.shipped else "not trained yet"
        mark = " *" if name == DEFAULT_MODEL else ""
        measured = rows.get(name) if model.shipped else None
        target = f"{model.set5_target:.2f}" if model.set5_target is not None else "-"
        table.add_row(f"{name}{mark}", status, f"{model.params:,}", *_measured(measured), target)
    for row in report.get("rows", []):
        if row.get("kind") == "reference":
            params = f"{row['params']:,}" if row.get("params") else "-"
            table.add_row(row["name"], "reference", params, *_measured(row), "-")
    console.print(table)
    for name, model in MODELS.items():
        if not model.shipped:
            console.print(f"{name}: {model.summary}; recipe: {model.recipe}", highlight=False, markup=False, soft_wrap=True)


def _gpu(report: dict[str, Any]) -> str:
    """Which GPU the GPU columns were measured on, or why they are empty."""
    devices = sorted({row["gpu_device"] for row in report.get("rows", []) if row.get("gpu_device")})
    return ", ".join(devices) if devices else "not measured (no CUDA GPU where the frontier ran)"


def _read_frontier(path: Path, *, explicit: bool) -> dict[str, Any]:
    from ..errors import ConfigError

    if not path.is_file():
        if explicit:
            raise ConfigError(f"frontier file not found: {path}", hint="run benchmarks/models.py --json FILE first")
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc})", hint="rewrite it with benchmarks/models.py") from exc


def _measured(row: Optional[dict[str, Any]]) -> list[str]:
    """The measured cells of one frontier row ("-" where it has no value)."""
    if row is None:
        return ["-"] * (len(DATASETS) + 6)
    cells = []
    for name in DATASETS:
        result = row.get("datasets", {}).get(name)
        cells.append(f"{result['psnr']:.2f} / {result['ssim']:.4f}" if result else "-")
    orin = row.get("orin_nano_ms_per_tile") or {}
    for value, fmt in ((row.get("fp16_onnx_drop_db"), "{:.4f}"), (orin.get("pure_op"), "{:.2f}"), (orin.get("plugin"), "{:.3f}"),
                       (row.get("gpu_ms_per_tile_batch16"), "{:.2f}"), (row.get("gpu_ms_per_frame_960x540"), "{:.1f}"),
                       (row.get("cpu_seconds_128"), "{:.2f}")):
        cells.append(fmt.format(value) if value is not None else "-")
    return cells
