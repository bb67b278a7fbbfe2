"""`mambaesr-edge data ...`: prepare (download / unpack / verify) and list the usual super-resolution sets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app, console, global_options, titled_table

data_app = typer.Typer(no_args_is_help=True, help="Download, unpack and verify datasets (DIV2K, Set5, Set14, BSD100, Urban100).")
app.add_typer(data_app, name="data")

@data_app.command("prepare")
def prepare_command(
    ctx: typer.Context,
    names: Optional[list[str]] = typer.Argument(
        None, help="Sets to prepare (default: Set5 Set14 BSD100 Urban100). Aliases: B100, DIV2K, benchmark."),
    root: Path = typer.Option(..., "--root", help="Folder that receives ROOT/NAME/HR (+ LR_bicubic/X4)."),
    source: Optional[Path] = typer.Option(
        None, "--from", help="Prepare from this local folder or archive instead of downloading."),
    base_url: Optional[str] = typer.Option(
        None, "--base-url", help="Fetch every archive as BASE_URL/<archive file name> (a mirror)."),
    force: bool = typer.Option(False, "--force", help="Replace sets that are already there."),
    keep_archives: bool = typer.Option(False, "--keep-archives", help="Keep the downloads in ROOT/.downloads."),
    timeout: float = typer.Option(60.0, "--timeout", help="Network timeout in seconds."),
) -> None:
    """Download (or take --from a local folder/archive), check and unpack sets into the benchmark layout."""
    from ..data_prepare import DATASETS, prepare_datasets

    notes = global_options(ctx)
    last: dict[str, int] = {}

    def progress(name: str, done: int, total: int | None) -> None:
        step = 1 << 26  # a line every 64 MiB
        if done // step != last.get(name, -1) or done == total:
            last[name] = done // step
            of = f" of {total / 2**20:,.0f}" if total else ""
            notes.note(f"  {name}: {done / 2**20:,.0f}{of} MiB")

    results = prepare_datasets(names or [], root, source=source, base_url=base_url, force=force,
                               keep_archives=keep_archives, timeout=timeout, progress=progress)
    table = titled_table(title=f"datasets in {root}")
    for column in ("set", "HR", "LR x4", "status", "licence"):
        table.add_column(column)
    for r in results:
        licence = DATASETS[r.name].licence if r.name in DATASETS else "as the source's"
        table.add_row(r.name, str(r.hr_images), str(r.lr_images), r.status, licence)
    console.print(table)

@data_app.command("list")
def list_command() -> None:
    """The sets `data prepare` knows, their image counts, archives and licences."""
    from ..data_prepare import catalog_rows

    table = titled_table(title="datasets")
    for column in ("set", "images", "archives", "licence"):
        table.add_column(column)
    for row in catalog_rows():
        table.add_row(*row)
    console.print(table)
