"""`python -m mambaesr_edge ...` is the same as the `mambaesr-edge` command."""

from .cli import run

run()
