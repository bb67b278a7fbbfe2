"""`mambaesr-edge doctor`: is this machine ready? Environment, profile match, then the pipeline on the shipped model
(the checks: mambaesr_edge/doctor/). Prints the table, writes doctor.json and doctor.txt; exit 0 when every required
check passed (skips are not failures), 1 when one failed, 2 for bad arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from .app import app, console, global_options

_STYLE = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "skip": "[yellow]skip[/]"}


@app.command("doctor")
def doctor_command(
    ctx: typer.Context,
    device: Optional[str] = typer.Option(
        None, "--device", "-d", help="Device profile to check against (default: the bundle's, else detected from the board)."
    ),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Check this export bundle instead of exporting the shipped model."),
    out_dir: Path = typer.Option(Path("doctor_out"), "--out", "-o", help="Folder for doctor.json, doctor.txt and the bundle it exports."),
    quick: bool = typer.Option(False, "--quick", help="A shorter bench (20 tiles instead of 100, 1 s idle window)."),
) -> None:
    """Check this machine end to end (environment, profile, export, plugin, engine, parity, bench) and write a report."""
    from ..doctor import DoctorOptions, run_doctor, write_report

    notes = global_options(ctx)
    report = run_doctor(DoctorOptions(device=device, bundle=bundle, out_dir=out_dir, quick=quick),
                        on_step=lambda name: notes.note(f"doctor: {name} ..."))  # fmt: skip
    paths = write_report(report, out_dir)
    choice = report.choice
    table = Table(title=f"mambaesr-edge doctor: profile {choice.profile.name} ({choice.source}; {choice.reason})", box=box.SIMPLE_HEAD)
    for column in ("check", "status", "detail"):
        table.add_column(column, no_wrap=column != "detail")
    for check in report.checks:
        status = _STYLE[check.status] if check.required or check.status != "fail" else "[red]fail[/] (optional)"
        text = escape(check.detail) + (f"\n[bold]fix:[/] {escape(check.fix)}" if check.fix else "")
        table.add_row(check.name, status, text)
    console.print(table)
    counts = report.counts()
    verdict = "[bold green]ready[/]" if report.exit_code == 0 else "[bold red]not ready[/]"
    console.print(f"{verdict}: {counts['fail']} failed, {counts['pass']} passed, {counts['skip']} skipped in {report.seconds:.1f} s",
                  highlight=False)  # fmt: skip
    console.print(f"wrote {paths['json']}, {paths['text']}", highlight=False, markup=False)
    if report.exit_code:
        raise typer.Exit(report.exit_code)
