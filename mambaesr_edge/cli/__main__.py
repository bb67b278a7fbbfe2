"""`python -m mambaesr_edge.cli ...` is the same as the `mambaesr-edge` command."""

from . import run

run()
