"""Benchmark report: `summarize` (latency percentiles, throughput, idle/inference/dynamic power, energy per inference,
GPU clock/load), and its outputs: JSON, CSVs of raw power samples and latencies, a PNG, and the summary table's rows.

Every file is written atomically (`fileio.atomic_write`), the set of four all or nothing. The PNG shows total power
over time with the warm-up, idle and inference windows shaded and sampling gaps hatched (as in the seed paper's
Figure 3b), above latency over time; when power is unavailable it shows latency over time only and says so in its
title.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .bench import BenchError, BenchResult, tiles_per_frame
from .fileio import atomic_write, disk_full_error
from .power import window_power

log = logging.getLogger(__name__)

__all__ = ["REPORT_FORMAT", "build_report", "check_output_dir", "summarize", "summary_rows", "write_reports"]

REPORT_FORMAT = "mambaesr-edge-bench/1"


def _ms_stats(latencies_s: Sequence[float]) -> dict[str, float] | None:
    if not latencies_s:
        return None
    ms = np.asarray(latencies_s) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"mean": float(ms.mean()), "std": float(ms.std()), "min": float(ms.min()), "p50": float(p50),
            "p90": float(p90), "p99": float(p99), "max": float(ms.max())}


def _mean_of(values: list[float]) -> dict[str, float] | None:
    return {"mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values))} if values else None


def _window_dict(result: BenchResult, window: tuple[float, float]) -> dict[str, Any]:
    wp = window_power(result.power_samples, *window, max_gap_s=result.max_gap_s)
    return {"start_s": window[0] - result.origin, "end_s": window[1] - result.origin, "mean_mw": wp.mean_mw,
            "peak_mw": wp.peak_mw, "energy_mj": wp.energy_mj, "samples": wp.samples, "coverage": round(wp.coverage, 4),
            "gaps_s": [[a - result.origin, b - result.origin] for a, b in wp.gaps]}


def _power_summary(result: BenchResult) -> dict[str, Any]:
    n = result.completed
    measured = [s for s in result.power_samples if s.total_mw is not None]
    if not result.power_available or not measured:
        reason = result.power_reason or f"the {result.sampler.get('name')} sampler returned no readings"
        if result.sampler_error:
            reason += f" ({result.sampler_error})"
        return {"available": False, "reason": reason, "sampler": result.sampler}
    idle = _window_dict(result, result.idle_window)
    infer = _window_dict(result, result.inference_window)
    in_window = [s for s in measured if result.inference_window[0] <= s.t <= result.inference_window[1]]
    dynamic = infer["mean_mw"] - idle["mean_mw"] if None not in (infer["mean_mw"], idle["mean_mw"]) else None
    duration = result.inference_window[1] - result.inference_window[0]
    per_inf = infer["energy_mj"] / n if n and infer["energy_mj"] is not None else None
    return {
        "available": True,
        "sampler": result.sampler,
        "sampler_error": result.sampler_error,
        "idle": idle,
        "inference": infer,
        "dynamic_mw": dynamic,
        "energy_per_inference_mj": per_inf,
        "energy_per_tile_mj": per_inf / result.batch if per_inf is not None else None,
        "dynamic_energy_per_inference_mj": dynamic * duration / n if n and dynamic is not None else None,
        "gpu_clock_mhz": _mean_of([s.gpu_clock_mhz for s in in_window if s.gpu_clock_mhz is not None]),
        "gpu_util_pct": _mean_of([s.gpu_util_pct for s in in_window if s.gpu_util_pct is not None]),
        "gaps_marked": bool(idle["gaps_s"] or infer["gaps_s"] or result.sampler_error),
    }


def summarize(result: BenchResult) -> dict[str, Any]:
    """The report: settings, latency (ms), throughput, power (mW, mJ) and the windows (seconds from the start)."""
    n = result.completed
    busy = float(sum(result.latencies_s))
    th, tw = result.tile_hw
    per_frame = tiles_per_frame(result.frame_hw, result.tile_hw, result.overlap)
    tiles_s = n * result.batch / busy if busy > 0 else None
    return {
        "format": REPORT_FORMAT,
        "partial": result.partial,
        "partial_reason": result.partial_reason,
        "settings": {
            "backend": result.backend, "scale": result.scale, "tile": [th, tw], "batch": result.batch,
            "warmup": result.warmup, "samples_requested": result.samples_requested, "samples_completed": n,
            "idle_seconds": result.idle_window[1] - result.idle_window[0],
        },
        "latency_ms": _ms_stats(result.latencies_s),
        "throughput": {
            "inferences_per_s": n / busy if busy > 0 else None,
            "tiles_per_s": tiles_s,
            "lr_megapixels_per_s": tiles_s * th * tw / 1e6 if tiles_s else None,
            "sr_megapixels_per_s": tiles_s * th * tw * result.scale**2 / 1e6 if tiles_s else None,
            "frame": {"width": result.frame_hw[1], "height": result.frame_hw[0], "overlap": result.overlap,
                      "tiles_per_frame": per_frame},
            "frames_per_s": tiles_s / per_frame if tiles_s else None,
        },
        "power": _power_summary(result),
        "windows_s": {
            name: [w[0] - result.origin, w[1] - result.origin]
            for name, w in (("warmup", result.warmup_window), ("idle", result.idle_window),
                            ("inference", result.inference_window))
        },
    }


def check_output_dir(out_dir: Path) -> None:
    """Create `out_dir` and prove it writable before minutes of measuring; BenchError with a hint otherwise."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise BenchError(f"cannot write to the output folder {out_dir}: {exc.strerror or exc}",
                         hint="choose another --out folder you can write to") from exc


def build_report(result: BenchResult, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """summarize(result) plus caller metadata (machine, date, command, model ...) under "meta"."""
    return {**summarize(result), "meta": dict(meta or {})}


def _window_of(result: BenchResult, t: float) -> str:
    for name, (a, b) in (("inference", result.inference_window), ("idle", result.idle_window),
                         ("warmup", result.warmup_window)):
        if a <= t <= b and b > a:
            return name
    return "other"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _write_power_csv(result: BenchResult, path: Path) -> None:
    rails = sorted({name for s in result.power_samples for name in s.rails})
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t_s", "window", "total_mw", "gpu_clock_mhz", "gpu_util_pct", *(f"{r}_mw" for r in rails)])
        for s in result.power_samples:
            writer.writerow([f"{s.t - result.origin:.4f}", _window_of(result, s.t), _fmt(s.total_mw),
                             _fmt(s.gpu_clock_mhz), _fmt(s.gpu_util_pct), *(_fmt(s.rails.get(r)) for r in rails)])


def _write_latency_csv(result: BenchResult, path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "start_s", "latency_ms"])
        for i, (t, lat) in enumerate(zip(result.starts, result.latencies_s, strict=True)):
            writer.writerow([i, f"{t - result.origin:.6f}", f"{lat * 1000:.4f}"])


def _plot(result: BenchResult, report: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    power = report["power"]
    with_power = bool(power.get("available"))
    fig = Figure(figsize=(10, 6.5 if with_power else 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 if with_power else 1, 1, sharex=True, squeeze=False)[:, 0]
    settings = report["settings"]
    title = (f"{settings['backend']}  tile {settings['tile'][0]}x{settings['tile'][1]}  batch {settings['batch']}  "
             f"{settings['samples_completed']} inferences" + ("  (PARTIAL)" if result.partial else ""))
    if with_power:
        fig.suptitle(title)
        ax = axes[0]
        ts = [s.t - result.origin for s in result.power_samples if s.total_mw is not None]
        ws = [s.total_mw / 1000 for s in result.power_samples if s.total_mw is not None]
        ax.plot(ts, ws, lw=1.0, color="tab:blue", label=f"total power ({power['sampler'].get('name')})")
        for window, colour in (("idle", "tab:gray"), ("inference", "tab:orange")):
            mean = power[window]["mean_mw"]
            if mean is not None:
                ax.axhline(mean / 1000, ls="--", lw=0.9, color=colour, label=f"{window} mean {mean / 1000:.2f} W")
        for lo, hi in power["idle"]["gaps_s"] + power["inference"]["gaps_s"]:
            ax.axvspan(lo, hi, facecolor="none", edgecolor="tab:red", hatch="//", lw=0, label="no samples (gap)")
        ax.set_ylabel("power (W)")
        ax.set_ylim(bottom=0)
    else:
        fig.suptitle(f"{title}\npower unavailable ({power['reason']}): latency over time instead")
    lat_ax = axes[-1]
    lat_ax.plot([t - result.origin for t in result.starts], [lat * 1000 for lat in result.latencies_s],
                ".", ms=2.5, color="tab:green", label="latency per inference")
    if report["latency_ms"]:
        lat_ax.axhline(report["latency_ms"]["p50"], ls="--", lw=0.9, color="black",
                       label=f"p50 {report['latency_ms']['p50']:.2f} ms")
    lat_ax.set_ylabel("latency (ms)")
    lat_ax.set_xlabel("time since start (s)")
    for ax in axes:
        for name, colour in (("warmup", "tab:blue"), ("idle", "tab:gray"), ("inference", "tab:orange")):
            lo, hi = report["windows_s"][name]
            if hi > lo:
                ax.axvspan(lo, hi, color=colour, alpha=0.12, lw=0, label=f"{name} window")
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax.legend(unique.values(), unique.keys(), loc="upper left", fontsize=8, ncols=2)
        ax.grid(alpha=0.3)
    fig.savefig(path, format="png", dpi=110)


def write_reports(result: BenchResult, out_dir: Path, name: str = "bench", meta: dict[str, Any] | None = None
                  ) -> dict[str, Path]:
    """Write NAME.json, NAME_power.csv, NAME_latency.csv and NAME.png into `out_dir`; return {kind: path}.

    All or nothing: the four files are written to temporary files first and renamed into place only when all four
    are complete, so a failure (a full disk: `DiskFullError`) or Ctrl-C leaves the previous report set as it was.
    """
    check_output_dir(out_dir)
    report = build_report(result, meta)
    paths = {"json": out_dir / f"{name}.json", "power_csv": out_dir / f"{name}_power.csv",
             "latency_csv": out_dir / f"{name}_latency.csv", "png": out_dir / f"{name}.png"}
    report["files"] = {kind: os.path.basename(p) for kind, p in paths.items()}
    try:
        with contextlib.ExitStack() as stack:  # on leaving it, every temp file is renamed onto its target
            tmp = {kind: stack.enter_context(atomic_write(path)) for kind, path in paths.items()}
            tmp["json"].write_text(json.dumps(report, indent=2) + "\n")
            _write_power_csv(result, tmp["power_csv"])
            _write_latency_csv(result, tmp["latency_csv"])
            _plot(result, report, tmp["png"])
    except OSError as exc:
        full = disk_full_error(exc, f"the bench report in {out_dir}", "the previous report files there are intact",
                               "pass --out on another disk, then run again")
        if full is None:
            raise
        raise full from exc
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


def _num(value: float | None, fmt: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{fmt}}{unit}"


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, value) rows for the CLI's table."""
    s, lat, thr, pw = report["settings"], report["latency_ms"], report["throughput"], report["power"]
    rows = [("backend", f"{s['backend']}  x{s['scale']}  tile {s['tile'][0]}x{s['tile'][1]}  batch {s['batch']}"),
            ("inferences", f"{s['samples_completed']} of {s['samples_requested']} (+{s['warmup']} warm-up)")]
    if report["partial"]:
        rows.append(("PARTIAL", report["partial_reason"]))
    if lat:
        rows.append(("latency mean / p50", f"{lat['mean']:.3f} / {lat['p50']:.3f} ms"))
        rows.append(("latency p90 / p99 / max", f"{lat['p90']:.3f} / {lat['p99']:.3f} / {lat['max']:.3f} ms"))
    frame = thr["frame"]
    rows += [("throughput", f"{_num(thr['tiles_per_s'], '.1f')} tiles/s, {_num(thr['lr_megapixels_per_s'], '.3f')} LR MP/s"),
             (f"frames/s ({frame['width']}x{frame['height']} LR)",
              f"{_num(thr['frames_per_s'], '.4g')} ({frame['tiles_per_frame']} tiles/frame, overlap {frame['overlap']})")]
    if not pw["available"]:
        rows.append(("power", f"unavailable ({pw['reason']})"))
        return rows
    idle, inf = pw["idle"], pw["inference"]
    rows += [("power sampler", str(pw["sampler"].get("name"))),
             ("idle power", _num(idle["mean_mw"], ".0f", " mW")),
             ("inference power mean / peak", f"{_num(inf['mean_mw'], '.0f')} / {_num(inf['peak_mw'], '.0f')} mW"),
             ("dynamic power (minus idle)", _num(pw["dynamic_mw"], ".0f", " mW")),
             ("energy per inference", _num(pw["energy_per_inference_mj"], ".3f", " mJ")),
             ("GPU clock / load", _num((pw["gpu_clock_mhz"] or {}).get("mean"), ".0f", " MHz") + " / "
              + _num((pw["gpu_util_pct"] or {}).get("mean"), ".0f", " %"))]
    if pw["gaps_marked"]:
        rows.append(("power gaps", f"coverage idle {idle['coverage']:.0%}, inference {inf['coverage']:.0%}"
                                   + (f"; sampler: {pw['sampler_error']}" if pw["sampler_error"] else "")))
    return rows
