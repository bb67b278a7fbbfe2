"""`mambaesr-edge doctor`: is this machine (a Jetson, or any other) ready to run the model, and if not, what is the fix?

    report = run_doctor(DoctorOptions(device=None, out_dir=Path("doctor_out"), quick=True))
    write_report(report, Path("doctor_out"))     # doctor.json + doctor.txt, atomically
    report.exit_code                             # 1 when a required check failed, else 0

Modules: ``facts`` (what the machine is and has, from injectable sources: files under ``$MAMBAESR_DOCTOR_ROOT``,
tools on PATH), ``jetson`` (parsers for nv_tegra_release, nvpmodel, jetson_clocks, dpkg; the L4T -> JetPack ->
TensorRT and board -> profile tables), ``checks`` (the `Check` type and the environment checks), ``pipeline``
(export, plugin, engine, parity, bench), ``report`` (run_doctor, doctor.json, the text summary). No typer or rich here:
the command is mambaesr_edge/cli/doctor.py.
"""

from .checks import FAIL, PASS, SKIP, Check, ProfileChoice
from .facts import DOCTOR_ROOT_ENV, Facts, System
from .report import REPORT_FORMAT, DoctorError, DoctorOptions, DoctorReport, run_doctor, summary_text, write_report

__all__ = [
    "DOCTOR_ROOT_ENV",
    "FAIL",
    "PASS",
    "REPORT_FORMAT",
    "SKIP",
    "Check",
    "DoctorError",
    "DoctorOptions",
    "DoctorReport",
    "Facts",
    "ProfileChoice",
    "System",
    "run_doctor",
    "summary_text",
    "write_report",
]
