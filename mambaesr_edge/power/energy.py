"""Power statistics over a time window from timestamped current-power samples (pure functions).

Power between two samples is taken as the straight line between them (trapezoid rule); at the window edges it is
interpolated. A gap (two consecutive samples further apart than `max_gap_s`, or the window reaching past the first or
last sample) is not bridged: it is left out of the integral and of `covered_s`, and listed in `gaps`.
Energy over the whole window is then `mean_mw * duration` (mean over the covered part), equal to the plain trapezoid
integral when nothing is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from .base import Sample

__all__ = ["WindowPower", "window_power"]


@dataclass(frozen=True)
class WindowPower:
    """Power over [start, end] (monotonic seconds). mW and mJ; None when no sample covers any of the window."""

    start: float
    end: float
    mean_mw: float | None
    peak_mw: float | None
    energy_mj: float | None  # over the whole window (extrapolated over gaps at mean_mw; see coverage)
    covered_s: float
    samples: int  # samples inside the window
    gaps: tuple[tuple[float, float], ...]  # uncovered spans inside the window

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def coverage(self) -> float:
        return self.covered_s / self.duration if self.duration > 0 else (1.0 if self.samples else 0.0)


def _interp(t: float, t0: float, p0: float, t1: float, p1: float) -> float:
    return p0 if t1 == t0 else p0 + (p1 - p0) * (t - t0) / (t1 - t0)


def window_power(samples: Sequence[Sample], start: float, end: float, max_gap_s: float) -> WindowPower:
    """Mean, peak and energy of total power over [start, end]; `max_gap_s` is the longest span bridged linearly."""
    if end < start:
        raise ValueError(f"window ends before it starts: {start} > {end}")
    points = sorted((s.t, s.total_mw) for s in samples if s.total_mw is not None)
    inside = [p for t, p in points if start <= t <= end]
    integral = 0.0
    covered = 0.0
    peak = max(inside) if inside else None
    gaps: list[tuple[float, float]] = []
    cursor = start  # everything before `cursor` is accounted for (covered or a gap)
    for (t0, p0), (t1, p1) in pairwise(points):
        lo, hi = max(t0, start), min(t1, end)
        if hi <= lo:
            continue
        if lo > cursor:
            gaps.append((cursor, lo))
        cursor = hi
        if t1 - t0 > max_gap_s:
            gaps.append((lo, hi))
            continue
        q0, q1 = _interp(lo, t0, p0, t1, p1), _interp(hi, t0, p0, t1, p1)
        integral += 0.5 * (q0 + q1) * (hi - lo)  # mW * s = mJ
        covered += hi - lo
        if not inside:  # window between two samples: the interpolated edges are all we know
            peak = max(q0, q1) if peak is None else max(peak, q0, q1)
    if end > cursor:
        gaps.append((cursor, end))
    gaps = _merge(gaps)
    duration = end - start
    if covered > 0:
        mean = integral / covered
        energy = mean * duration
    elif duration == 0 and inside:
        mean, energy = sum(inside) / len(inside), 0.0
    else:
        mean = energy = None
    return WindowPower(start, end, mean, peak, energy, covered, len(inside), tuple(gaps))


def _merge(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged
