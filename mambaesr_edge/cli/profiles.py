"""`mambaesr-edge profiles` (list the device profiles) and `mambaesr-edge profiles show NAME` (print one)."""

from __future__ import annotations

import typer
from rich import box

from ..profiles import list_profiles, load_profile
from .app import app, console, titled_table

profiles_app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
    help="Device profiles: list them, or `show NAME` (a name or a .toml path).",
)


@profiles_app.callback()
def _list(ctx: typer.Context) -> None:
    """List the shipped device profiles (run `profiles show NAME` for one)."""
    if ctx.invoked_subcommand is not None:
        return
    table = titled_table(
        title="device profiles (details: mambaesr-edge profiles show NAME)", box=box.SIMPLE_HEAD, pad_edge=False,
        collapse_padding=True, padding=(0, 1, 0, 1),
    )  # fmt: skip
    for column in ("name", "backend", "prec", "tile", "TRT", "GB/s", "TFLOP/s", "power"):
        table.add_column(column, justify="left" if column in ("name", "backend", "power") else "right", no_wrap=True)
    for name in list_profiles():
        p = load_profile(name)
        table.add_row(
            p.name,
            p.backend,
            p.precision,
            str(p.tile),
            p.tensorrt or "-",
            f"{p.peak_bandwidth_gbs:g}",
            f"{p.peak_tflops_fp16:g}",
            p.power_sampler,
        )
    console.print(table)


@profiles_app.command("show")
def show_command(name: str = typer.Argument(..., help="Profile name (e.g. orin-nano) or a .toml file.")) -> None:
    """Print every field of one profile."""
    profile = load_profile(name)
    table = titled_table(title=f"device profile {profile.name}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    for key, value in profile.to_dict().items():
        shown = ", ".join(value) if isinstance(value, list) else str(value).lower() if isinstance(value, bool) else str(value)
        table.add_row(key, shown if shown != "" else '""')
    console.print(table)


app.add_typer(profiles_app, name="profiles")
