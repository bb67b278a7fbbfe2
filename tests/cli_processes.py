"""Helpers for tests that run the real CLI (`python3 -m mambaesr_edge ...`) in a subprocess: start it, wait for a
sign that work is in progress, signal it, and check that what it left on disk is complete."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from mambaesr_edge.fileio import is_temp_file

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
       "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}


def _child_setup(file_size_limit: int | None) -> Callable[[], None]:
    def setup() -> None:
        # A non-interactive shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored
        # across exec: Python then never raises KeyboardInterrupt. Give the child the default, as a terminal would.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if file_size_limit is not None:  # a "full disk": writes past this size fail with EFBIG (SIGXFSZ ignored)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return setup


class Cli:
    """One `mambaesr-edge` process; stdout and stderr are collected on threads (readable while it runs)."""

    def __init__(self, *args: object, cwd: Path, file_size_limit: int | None = None) -> None:
        self.args = [str(a) for a in args]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mambaesr_edge", *self.args], cwd=cwd, env=ENV, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_child_setup(file_size_limit),
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(s, lines), daemon=True)
                         for s, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in iter(stream.readline, ""):
            lines.append(line)

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
        """Poll `condition` every 10 ms while the process runs; fail if it ends or the time is up first."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"{what}: the process ended first (exit {self.proc.returncode}):\n{self.stderr}"
            assert time.monotonic() < deadline, f"{what}: not seen within {timeout} s"
            time.sleep(0.01)

    def signal(self, sig: int) -> None:
        assert self.proc.poll() is None, "the process ended before it could be signalled: the test would prove nothing"
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 180.0) -> int:
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(10)
        return code

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)


def run_cli(*args: object, cwd: Path, file_size_limit: int | None = None, timeout: float = 180.0) -> Cli:
    cli = Cli(*args, cwd=cwd, file_size_limit=file_size_limit)
    cli.wait(timeout)
    return cli


def one_line_error(cli: Cli) -> list[str]:
    """The non-empty stderr lines from the first ``error:`` or ``interrupted`` line on, after checking there is no
    traceback. (The lines before it are the run's diagnostics, also on stderr: ``[startup] ...``, bench's
    ``power: ...``, export's ``exporting ...``; --quiet drops them.)"""
    assert "Traceback" not in cli.stderr, cli.stderr
    lines = [line for line in cli.stderr.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.startswith(("error:", "interrupted"))), 0)
    return lines[start:]


def write_images(folder: Path, count: int, size: int = 32, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file below `folder`, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp-" in p.name)


def check_complete(folder: Path, scale: int = 4, sources: Path | None = None) -> list[Path]:
    """Every visible file below `folder` is complete: images decode fully (scale x the source's size when `sources` is
    given), .onnx passes onnx.checker, .json/.jsonl parse. Hidden files must be temporary files (a killed writer's).
    Returns the visible files."""
    visible = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.startswith("."):
            assert is_temp_file(path), f"unexpected hidden file {path}"
            continue
        visible.append(path)
        if path.suffix == ".png":
            with Image.open(path) as im:
                im.load()  # decodes every byte: a truncated file raises
                if sources is not None:
                    with Image.open(sources / path.relative_to(folder)) as src:
                        assert im.size == (scale * src.size[0], scale * src.size[1]), path
        elif path.suffix == ".onnx":
            import onnx

            onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                json.loads(line)
    return visible
