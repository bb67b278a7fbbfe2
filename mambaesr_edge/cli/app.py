"""The typer ``app``, its root options, the consoles, and ``main()``: user errors become one line + a hint, exit 2.

User errors (MambaESRError, and OSError: the file system refusing a path) print ``error: ...`` and ``hint: ...`` on
stderr and exit 2; ``--debug`` shows the traceback instead. Results (tables, "wrote ...", the success line) go to
stdout; diagnostics (start-up decisions, notes, progress bars, per-file failures, library warnings) to stderr, and
``--quiet`` drops all of them except warnings and errors. Output that is not a terminal is never wrapped.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from dataclasses import dataclass
from typing import Optional

import click
import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ..errors import Interrupted, MambaESRError

__all__ = ["INTERRUPTED_EXIT_CODE", "GlobalOptions", "app", "console", "err_console", "global_options", "main", "run", "titled_table"]

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what shells report for a Ctrl-C
_UNWRAPPED_WIDTH = 100_000  # the width of a console that is not a terminal: no line is ever that long


class _Console(Console):
    """A rich Console that wraps at the terminal's width on a terminal, and never when writing to a pipe or a file.

    (rich alone wraps at 80 columns, or the width of whatever terminal stdin is, when stdout is piped: ``a -> b``
    became ``a ->\\nb`` in logs.) Decided at each print, so a console made at import follows redirections."""

    @property
    def size(self) -> ConsoleDimensions:
        if self.is_terminal:
            return super().size
        return ConsoleDimensions(_UNWRAPPED_WIDTH, 25)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)


def titled_table(title: str | None = None, *, caption: str | None = None, **options: object) -> Table:
    """A rich Table whose title and caption are never wrapped: rich wraps them to the table's width, which put line
    breaks inside paths in piped output. They stay one line each (a terminal may still fold a very long one)."""

    def one_line(text: str | None) -> Text | None:
        return None if text is None else Text(text, overflow="ignore")  # plain text: a path may hold "["

    table = Table(title=one_line(title), caption=one_line(caption), **options)
    for annotation in (table.title, table.caption):
        if annotation is not None:
            annotation.no_wrap = True
    return table


console = _Console()  # results
err_console = _Console(stderr=True)  # errors and diagnostics

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="mambaesr-edge: a Mamba super-resolution model from training to the Jetson camera.",
)


@dataclass(frozen=True)
class GlobalOptions:
    """What the root options (before the subcommand) ask for; ``global_options(ctx)`` gives them to a command."""

    debug: bool = False
    quiet: bool = False
    threads: Optional[int] = None

    def threads_for(self, command_threads: Optional[int]) -> Optional[int]:
        """The command's ``--threads`` (after the subcommand), else the root's; None (or 0): the backend's default."""
        return command_threads or self.threads or None

    def note(self, text: str) -> None:
        """A diagnostic line on stderr (plain text: no markup), unless --quiet."""
        if not self.quiet:
            err_console.print(text, highlight=False, markup=False, soft_wrap=True)

    def decisions(self, decisions) -> None:
        """The Upscaler's start-up decisions ("[startup] tile 256: ..."), dimmed, on stderr unless --quiet."""
        if not self.quiet:
            for decision in decisions:
                err_console.print(f"[dim]{escape(str(decision))}[/]", highlight=False, soft_wrap=True)

    def progress(self, *, transient: bool = False) -> Progress:
        """A progress bar on stderr, drawn only on a terminal and without --quiet (a log gets no bars); its
        ``console.print`` prints in any case."""
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        return Progress(*columns, console=err_console, transient=transient, disable=self.quiet or not err_console.is_terminal)


def global_options(ctx: typer.Context) -> GlobalOptions:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, GlobalOptions) else GlobalOptions()


def set_torch_threads(threads: Optional[int], *, only_if_loaded: bool = False) -> None:
    """torch's CPU threads (``--threads``). ``only_if_loaded``: leave torch unimported when nothing imported it yet
    (the numpy backend's ``upscale`` never needs it)."""
    if not threads or (only_if_loaded and "torch" not in sys.modules):
        return
    import torch

    torch.set_num_threads(threads)


class _OneLineFormatter(logging.Formatter):
    """``warning: message``: a library warning as one line the user can read (``--debug``: level and logger too)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            message = f"{message}: {record.exc_info[1]}"
        return f"{record.levelname.lower()}: {message}"


class _CliLogHandler(logging.StreamHandler):
    """The CLI's one handler on the root logger (replaced at each ``main()``: tests call it many times)."""


def _setup_logging(debug: bool) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _CliLogHandler)]:
        root.removeHandler(handler)
    handler = _CliLogHandler(sys.stderr)
    if debug:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_OneLineFormatter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        console.print(f"mambaesr-edge {__version__}", highlight=False, markup=False)
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="CPU threads for inference (torch, onnxruntime, numpy); also after upscale, eval, bench, demo."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars, notes or start-up decisions (warnings and errors still)."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, expose_value=False, help="Print the version and exit."
    ),
) -> None:
    _setup_logging(debug)
    ctx.obj = GlobalOptions(debug=debug, quiet=quiet, threads=threads)


ROOT_FLAGS = ("--quiet", "-q", "--debug")  # root options that may also follow the command name


def root_flags_first(args: list[str]) -> list[str]:
    """``upscale IMG -o OUT --quiet`` means ``--quiet upscale IMG -o OUT``: the root's flags (ROOT_FLAGS) move in front
    of the command, so they work on either side of it as --threads does; nothing after a ``--`` is touched."""
    end = args.index("--") if "--" in args else len(args)
    head = args[:end]
    return [a for a in head if a in ROOT_FLAGS] + [a for a in head if a not in ROOT_FLAGS] + args[end:]


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; turn user errors into one line + hint and exit code 2, Ctrl-C into exit code 130.

    Ctrl-C: commands that know what they kept raise `Interrupted` ("interrupted: 7 of 20 images written ...");
    anywhere else typer turns the KeyboardInterrupt into exit code 130 (older typer/click: Abort) and we say
    "interrupted". Either way every file written is complete (atomic writes) and no traceback is shown.
    """
    args = root_flags_first(sys.argv[1:] if argv is None else list(argv))
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="mambaesr-edge", standalone_mode=False)
        if result == INTERRUPTED_EXIT_CODE:  # typer's answer to a KeyboardInterrupt (no command exits 130 itself)
            err_console.print("interrupted", highlight=False)
        if isinstance(result, int):  # a command's typer.Exit(code) comes back as the return value here
            return result
    except Interrupted as exc:
        if debug:
            raise
        err_console.print(f"interrupted: {exc.message}", highlight=False, markup=False, soft_wrap=True)
        return INTERRUPTED_EXIT_CODE
    except MambaESRError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
        if exc.hint:
            err_console.print(f"hint: {exc.hint}", highlight=False, markup=False, soft_wrap=True)
        return 2
    except OSError as exc:  # the file system refused (a path that is a file, a full disk, ...): the user's to fix
        if debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        err_console.print(f"[bold red]error:[/] {escape(f'{exc.strerror or exc}{where}')}", highlight=False, soft_wrap=True)
        err_console.print("hint: check the paths and their permissions; --debug shows where it happened", highlight=False)
        return 2
    except _EXIT_ERRORS as exc:
        return exc.exit_code
    except _USAGE_ERRORS as exc:  # bad or missing options: click's one-line usage message
        if hasattr(exc, "show"):
            exc.show()
        else:
            err_console.print(f"error: {exc}", highlight=False, markup=False)
        return 2
    except (*_ABORT_ERRORS, KeyboardInterrupt):
        err_console.print("interrupted", highlight=False)
        return INTERRUPTED_EXIT_CODE
    return 0


def run() -> None:
    """Process entry point (console script, ``python -m mambaesr_edge``): ``main()``, then exit with its code.

    OMP_WAIT_POLICY defaults to PASSIVE (set before any command imports torch, whose OpenMP runtime reads it once):
    with the default spinning policy, torch's idle OpenMP threads spin for cores that other processes need; on 2
    shared cores that made a 1 s upscale take 14-18 s (benchmarks/cpu_upscale.py, torch vs torch[PASSIVE]).
    Objects are frozen before exiting: the interpreter's collections at exit would walk every object torch created
    (about 0.2 s) only to free memory the OS takes back anyway."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    code = main()
    gc.freeze()
    sys.exit(code)


# Recent typer ships its own copy of click, older typer uses click itself: accept the exceptions of both.
_EXIT_ERRORS = tuple({click.exceptions.Exit, typer.Exit})
_USAGE_ERRORS = tuple({click.ClickException, getattr(typer, "TyperException", click.ClickException)})
_ABORT_ERRORS = tuple({click.exceptions.Abort, typer.Abort})
