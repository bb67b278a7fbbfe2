"""tegrastats: a pure line parser and a sampler that runs `tegrastats --interval MS`.

Formats handled (see ../shared/fixtures/tegrastats/samples.txt):
  JetPack 4     `POM_5V_IN 4531/3285`               cur/avg, no unit (mW)
  JetPack 5/6   `VDD_IN 12479mW/12479mW`            cur/avg
  JetPack 7     `VDD_GPU_SOC 5139mW/5139mW/5139mW`  cur/avg/max
Only the current (first) value is kept: avg is a running average since tegrastats started.
Total power: the module input rail VDD_IN (Orin Nano/NX, Xavier NX, TX2) or POM_5V_IN (Nano) when present, never added
to the other rails; otherwise (AGX Orin, AGX Xavier) the sum of all rails except the unconnected `NC` ones.
GPU: `GR3D_FREQ 63%@[621]`, `12%@[1300,1300]` (per-GPC clocks: the highest is kept), `86%@921`, or `0%` (no clock
without root).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO

from .base import PowerSampler, PowerSamplerError, Sample, SamplerUnavailableError

log = logging.getLogger(__name__)

__all__ = ["TOTAL_RAILS", "ParsedLine", "TegrastatsSampler", "parse_tegrastats_line"]

TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")  # module input rails: the total by themselves
SKIPPED_RAILS = ("NC",)  # not connected (AGX Orin)

# NAME cur[mW]/avg[mW][/max[mW]] followed by a space or the end: rejects `RAM 1504/3956MB`, `IRAM 0/252kB(lfb ...`.
_RAIL = re.compile(r"(?<!\S)([A-Za-z][A-Za-z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?:/(\d+)(?:mW)?)?(?=\s|$)")
_GR3D = re.compile(r"(?<!\S)GR3D_FREQ (\d+)%(?:@\[?([\d,]+)\]?)?")
_TIMESTAMP = re.compile(r"^\s*(\d\d-\d\d-\d{4} \d\d:\d\d:\d\d)\s")


@dataclass(frozen=True)
class ParsedLine:
    """What one tegrastats line says about power and the GPU. Power in mW (current values)."""

    rails: dict[str, float] = field(default_factory=dict)  # every rail in line order, NC included
    total_mw: float | None = None  # None when the line carries no power rail
    total_source: str = ""  # "VDD_IN", "POM_5V_IN", "sum" or "" (no rails)
    gpu_util_pct: float | None = None
    gpu_clock_mhz: float | None = None
    timestamp: str | None = None  # "MM-DD-YYYY HH:MM:SS" (JetPack 5+), to the second


def parse_tegrastats_line(line: str) -> ParsedLine:
    """Parse one line of tegrastats output. Never raises: a line without rails gives total_mw None."""
    found = [(m.group(1), float(m.group(2))) for m in _RAIL.finditer(line)]
    rails: dict[str, float] = {}
    for name, value in found:  # a repeated name (AGX Orin prints `NC` twice) gets a suffix: NC, NC#2
        key, n = name, 1
        while key in rails:
            n += 1
            key = f"{name}#{n}"
        rails[key] = value
    total_source = next((name for name in TOTAL_RAILS if name in rails), "")
    if total_source:
        total: float | None = rails[total_source]
    elif found:
        total_source = "sum"
        total = sum(value for name, value in found if name not in SKIPPED_RAILS)
    else:
        total = None
    util = clock = None
    gr3d = _GR3D.search(line)
    if gr3d:
        util = float(gr3d.group(1))
        if gr3d.group(2):
            clocks = [float(c) for c in gr3d.group(2).split(",") if c]
            clock = max(clocks) if clocks else None
    stamp = _TIMESTAMP.match(line)
    return ParsedLine(rails, total, total_source, util, clock, stamp.group(1) if stamp else None)


class TegrastatsSampler(PowerSampler):
    """Runs `tegrastats --interval MS` and parses each line as it arrives (timestamped on arrival)."""

    name = "tegrastats"
    default_interval_s = 0.1

    def __init__(self, interval_s: float | None = None, executable: str = "tegrastats") -> None:
        super().__init__(interval_s)
        self.executable = executable
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[bytes] | None = None
        self._proc_lock = threading.Lock()
        self.total_source = ""

    @staticmethod
    def probe(executable: str = "tegrastats") -> tuple[bool, str]:
        found = shutil.which(executable)
        return (True, f"{found}") if found else (False, f"{executable} is not on PATH")

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "executable": self.executable, "total": self.total_source or "unknown"}

    def _open(self) -> None:
        path = shutil.which(self.executable)
        if path is None:
            raise SamplerUnavailableError(
                f"{self.executable} not found on PATH",
                hint="tegrastats is absent inside containers; run on the Jetson host or use --power jtop",
            )
        interval_ms = max(1, round(self.interval_s * 1000))
        self._stderr = tempfile.TemporaryFile()
        try:
            proc = subprocess.Popen(  # fixed argv, no shell
                [path, "--interval", str(interval_ms)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                text=True,
                bufsize=1,
                start_new_session=True,  # Ctrl-C reaches the bench, which stops tegrastats itself (no false "died")
            )
        except OSError as exc:
            self._stderr.close()
            self._stderr = None
            raise PowerSamplerError(f"could not run {path}: {exc}", hint="check that it is executable") from exc
        with self._proc_lock:
            self._proc = proc
        self.total_source = ""
        log.info("started %s --interval %d (pid %d)", path, interval_ms, proc.pid)

    def _loop(self, stop: threading.Event) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            now = time.monotonic()
            if stop.is_set():
                break
            parsed = parse_tegrastats_line(line)
            if parsed.total_mw is None:
                log.debug("tegrastats line without power rails: %r", line[:120])
                continue
            self.total_source = parsed.total_source
            self._emit(Sample(now, parsed.total_mw, dict(parsed.rails), parsed.gpu_clock_mhz, parsed.gpu_util_pct))
        if not stop.is_set():
            code = proc.wait()
            self._fail(f"tegrastats exited with code {code} mid-run: {self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read()[-400:].decode("utf-8", "replace").strip()
        return text or "(no stderr)"

    def _interrupt(self) -> None:
        with self._proc_lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            log.warning("tegrastats (pid %d) ignored SIGTERM; killing it", proc.pid)
            proc.kill()
            proc.wait(timeout=2.0)

    def _close(self) -> None:
        with self._proc_lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:  # thread ended on its own but the process lingers
                proc.kill()
                proc.wait(timeout=2.0)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
