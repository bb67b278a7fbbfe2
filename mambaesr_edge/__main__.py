"""`python -m mambaesr_edge ...` is the same as the `mambaesr-edge` command."""

import sys

from .cli import main

sys.exit(main())
