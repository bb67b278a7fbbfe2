"""The `mambaesr-edge` command line: a thin face over the library, and the only package that imports typer or rich.

``app.py`` holds the typer app, the root options (--debug, --quiet, --threads, --version), the consoles and
``main()``/``run()`` (errors -> exit codes); each other module adds one command group to ``app`` when imported:
eval, upscale, demo, train, presets, models, export (export, build-engine), profiles, bench, data, doctor.
"""

from __future__ import annotations

from .app import app, main, run

# Each command module adds its commands to `app` when imported, in this order: the order `--help` lists them.
# isort: off
from . import eval, upscale, demo, train, presets, models, export, profiles, bench, data, doctor  # noqa: E402, F401
# isort: on

__all__ = ["app", "main", "run"]
