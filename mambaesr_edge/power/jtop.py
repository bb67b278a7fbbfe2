"""jtop (jetson-stats) sampler: `with jtop(interval=...) as j: j.power` -> {'rail': {name: {...}}, 'tot': {...}}.

Needs the jetson-stats package (`pip install jetson-stats`, extra `jetson-stats`) and its service (socket
/run/jtop.sock); the client and service versions must match. Works inside containers that mount the socket, where
tegrastats is absent. Powers are in mW; the total is jtop's 'tot' (VDD_IN / POM_5V_IN, or the sum of rails).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from pathlib import Path
from typing import Any

from .base import PowerSampler, PowerSamplerError, Sample, SamplerUnavailableError

log = logging.getLogger(__name__)

__all__ = ["JTOP_SOCKET", "JtopSampler"]

JTOP_SOCKET = Path("/run/jtop.sock")
_INSTALL_HINT = "pip install jetson-stats (then `sudo systemctl restart jtop`); on the host, or mount /run/jtop.sock"


def _gpu_status(gpu: Any) -> tuple[float | None, float | None]:
    """(clock MHz, load %) of the first GPU in jtop's `j.gpu` ({'ga10b': {'status': {'load'}, 'freq': {'cur' kHz}}})."""
    if not isinstance(gpu, dict) or not gpu:
        return None, None
    first = next(iter(gpu.values()))
    if not isinstance(first, dict):
        return None, None
    load = first.get("status", {}).get("load")
    cur_khz = first.get("freq", {}).get("cur")
    clock = float(cur_khz) / 1000.0 if isinstance(cur_khz, (int, float)) and cur_khz > 0 else None
    util = float(load) if isinstance(load, (int, float)) and load >= 0 else None
    return clock, util


def sample_from_jtop(power: dict, gpu: Any, t: float) -> Sample:
    """Turn jtop's `power` and `gpu` dicts into a Sample (pure; used by the sampler and its tests)."""
    try:
        total = float(power["tot"]["power"])
        rails = {name: float(r["power"]) for name, r in power.get("rail", {}).items() if r.get("online", True)}
    except (KeyError, TypeError, ValueError) as exc:
        raise PowerSamplerError(
            f"jtop power data has an unexpected layout ({exc!r}): {str(power)[:200]}",
            hint="update jetson-stats on the host and in this environment to the same version",
        ) from exc
    total_name = power["tot"].get("name")
    if total_name and total_name not in rails:
        rails = {total_name: total, **rails}
    clock, util = _gpu_status(gpu)
    return Sample(t, total, rails, clock, util)


class JtopSampler(PowerSampler):
    """Reads jtop's power and GPU status each time jtop publishes new data (every `interval_s`)."""

    name = "jtop"
    default_interval_s = 0.1

    def __init__(self, interval_s: float | None = None) -> None:
        super().__init__(interval_s)
        self._jetson: Any = None

    @staticmethod
    def probe() -> tuple[bool, str]:
        if importlib.util.find_spec("jtop") is None:
            return False, "jetson-stats (jtop) is not installed"
        if not JTOP_SOCKET.exists():
            return False, f"the jtop service socket {JTOP_SOCKET} is absent"
        return True, str(JTOP_SOCKET)

    def _open(self) -> None:
        try:
            from jtop import JtopException, jtop
        except ImportError as exc:
            raise SamplerUnavailableError(f"jetson-stats (jtop) cannot be imported: {exc}", hint=_INSTALL_HINT) from exc
        jetson = jtop(interval=self.interval_s)
        try:
            jetson.start()
        except JtopException as exc:
            raise PowerSamplerError(f"jtop could not connect to its service: {exc}", hint=_INSTALL_HINT) from exc
        self._jetson = jetson

    def _loop(self, stop: threading.Event) -> None:
        jetson = self._jetson
        while not stop.is_set():
            if not jetson.ok():  # blocks until new data; False when the service went away
                self._fail("the jtop service stopped sending data")
                return
            if stop.is_set():
                return
            self._emit(sample_from_jtop(jetson.power, jetson.gpu, time.monotonic()))

    def _close(self) -> None:
        jetson, self._jetson = self._jetson, None
        if jetson is not None:
            jetson.close()
