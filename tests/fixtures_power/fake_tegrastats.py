"""A stand-in for `tegrastats --interval MS`: replays recorded lines, one per interval, flushed, until terminated.

Lines come from the file in $FAKE_TEGRASTATS_LINES, in the layout of ../shared/fixtures/tegrastats/samples.txt
(`#` comment lines skipped; a record that the source wrapped over several lines is joined back into one line).
$FAKE_TEGRASTATS_DIE_AFTER=N makes it exit with code 3 after N lines (a tegrastats that dies mid-run).
Tests copy nothing: they write a tiny `tegrastats` wrapper that runs this file and put its folder first on PATH.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

RECORD_START = re.compile(r"^(\d\d-\d\d-\d{4} \d\d:\d\d:\d\d |RAM )")


def read_records(path: Path) -> list[tuple[str, str]]:
    """[(sample id like "[7]", one tegrastats line)] from a fixture file; wrapped lines joined with a space."""
    records: list[tuple[str, str]] = []
    block = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        header = re.match(r"^## (\[\d+\])", line)
        if header:
            block = header.group(1)
            continue
        if not line or line.startswith("#"):
            continue
        if RECORD_START.match(line) or not records or records[-1][0] != block:
            records.append((block, line))
        else:
            records[-1] = (block, f"{records[-1][1]} {line}")
    return records


def main() -> int:
    parser = argparse.ArgumentParser(prog="tegrastats")
    parser.add_argument("--interval", type=int, default=1000, help="milliseconds between lines")
    args = parser.parse_args()
    lines = [line for _, line in read_records(Path(os.environ["FAKE_TEGRASTATS_LINES"]))]
    die_after = int(os.environ.get("FAKE_TEGRASTATS_DIE_AFTER", "0"))
    written = 0
    while True:
        for line in lines:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            written += 1
            if die_after and written >= die_after:
                sys.stderr.write("fake tegrastats: dying as asked\n")
                return 3
            time.sleep(args.interval / 1000)


if __name__ == "__main__":
    sys.exit(main())
