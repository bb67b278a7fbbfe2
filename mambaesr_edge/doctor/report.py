"""`run_doctor`: facts, environment checks, pipeline checks -> `DoctorReport`; `write_report`: doctor.json + doctor.txt.

The report's format (docs/interfaces.md, "doctor.json") is `REPORT_FORMAT`; both files are written atomically
(fileio.atomic_write), so a reader never sees half of one. The exit code is 1 when a required check failed, else 0
(a skip is not a failure); bad arguments raise before any check runs (the CLI: exit 2).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MambaESRError
from ..fileio import atomic_write
from .checks import FAIL, PASS, SKIP, Check, ProfileChoice, choose_profile, environment_checks
from .facts import Facts, System, gather_facts
from .pipeline import PipelineSettings, pipeline_checks

__all__ = ["JSON_FILE", "REPORT_FORMAT", "TEXT_FILE", "DoctorError", "DoctorOptions", "DoctorReport", "run_doctor", "summary_text", "write_report"]

REPORT_FORMAT = "mambaesr-edge-doctor/1"
JSON_FILE = "doctor.json"
TEXT_FILE = "doctor.txt"


class DoctorError(MambaESRError):
    """The doctor was asked for something it cannot do (bad --out, --bundle)."""


@dataclass(frozen=True)
class DoctorOptions:
    device: str | None = None  # a profile name or .toml; None: the bundle's, else detected
    bundle: Path | None = None
    out_dir: Path = Path("doctor_out")
    quick: bool = False
    pipeline: bool = True  # False: environment checks only (tests; the CLI always runs the pipeline)
    tile: int | None = None  # export tile override (tests); None: see pipeline.py


@dataclass(frozen=True)
class DoctorReport:
    checks: tuple[Check, ...]
    facts: Facts
    choice: ProfileChoice
    options: DoctorOptions
    root: str
    created: str
    seconds: float

    @property
    def exit_code(self) -> int:
        return 1 if any(c.blocks for c in self.checks) else 0

    def counts(self) -> dict[str, int]:
        return {status: sum(c.status == status for c in self.checks) for status in (PASS, FAIL, SKIP)}

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        from ..machine import machine_info, package_versions

        o = self.options
        return {
            "format": REPORT_FORMAT,
            "created": self.created,
            "seconds": round(self.seconds, 2),
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "options": {"device": o.device, "bundle": str(o.bundle) if o.bundle else None, "out": str(o.out_dir),
                        "quick": o.quick, "pipeline": o.pipeline},  # fmt: skip
            "profile": {"name": self.choice.profile.name, "source": self.choice.source, "detected": self.choice.detected,
                        "reason": self.choice.reason},  # fmt: skip
            "checks": [c.to_dict() for c in self.checks],
            "facts": self.facts.to_dict(),
            "root": self.root,
            "machine": machine_info(),
            "versions": package_versions(),
        }


def _check_arguments(options: DoctorOptions) -> None:
    out = options.out_dir
    if out.exists() and not out.is_dir():
        raise DoctorError(f"--out {out} is a file", hint="pass a folder (it is created when missing)")
    if options.bundle is not None:
        from ..bundle import read_bundle

        read_bundle(options.bundle)  # a BundleError (exit 2) before any check runs
    if options.tile is not None and options.tile < 8:
        raise DoctorError(f"tile {options.tile} is below 8", hint="use 16 or more")


def run_doctor(options: DoctorOptions, system: System | None = None, on_step: Callable[[str], None] | None = None) -> DoctorReport:
    """Gather the facts, run every check, return the report (nothing is written; see write_report)."""
    from ..machine import utc_now
    from ..profiles import load_profile

    start = time.perf_counter()
    created = utc_now()
    system = system or System.from_environ()
    if options.device is not None:
        load_profile(options.device)  # an unknown profile is a ConfigError (exit 2) before any work
    _check_arguments(options)
    note = on_step or (lambda _name: None)
    note("environment")
    options.out_dir.mkdir(parents=True, exist_ok=True)
    facts = gather_facts(system, options.out_dir)
    bundle_profile = None
    if options.bundle is not None:
        from ..bundle import read_bundle

        bundle_profile = read_bundle(options.bundle).profile
    choice = choose_profile(options.device, bundle_profile, facts)
    checks = environment_checks(facts, choice, needs_torch=options.bundle is None and options.pipeline)
    if options.pipeline:
        settings = PipelineSettings(choice.profile, options.out_dir, options.bundle, options.quick, options.tile)
        checks += pipeline_checks(facts, settings, system, on_step)
    return DoctorReport(tuple(checks), facts, choice, options, str(system.root), created, time.perf_counter() - start)


def summary_text(report: DoctorReport) -> str:
    """The short text summary (doctor.txt): a verdict line, then one line per check, failures first, with fixes."""
    counts = report.counts()
    verdict = "READY" if report.exit_code == 0 else "NOT READY"
    choice = report.choice
    lines = [f"mambaesr-edge doctor: {verdict} for {choice.profile.name} ({choice.source}; {choice.reason}): "
             f"{counts[FAIL]} failed, {counts[PASS]} passed, {counts[SKIP]} skipped, {report.seconds:.1f} s"]  # fmt: skip
    order = {FAIL: 0, PASS: 1, SKIP: 2}
    for c in sorted(report.checks, key=lambda c: order[c.status]):
        label = c.status.upper() if c.required or c.status != FAIL else "fail (optional)"
        lines.append(f"{label:<5} {c.name}: {c.detail}")
        if c.fix:
            lines.append(f"      fix: {c.fix}")
    return "\n".join(lines) + "\n"


def write_report(report: DoctorReport, out_dir: Path) -> dict[str, Path]:
    """doctor.json and doctor.txt in ``out_dir``, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / JSON_FILE, "text": out_dir / TEXT_FILE}
    with atomic_write(paths["json"]) as tmp:
        tmp.write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False, default=str) + "\n")
    with atomic_write(paths["text"]) as tmp:
        tmp.write_text(summary_text(report))
    return paths
