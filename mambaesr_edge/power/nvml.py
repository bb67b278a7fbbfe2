"""NVML sampler (nvidia-ml-py, imported as `pynvml`): GPU board power, SM clock and utilisation of one GPU.

Power source: the instantaneous field NVML_FI_DEV_POWER_INSTANT when the driver supports it, since on Ampere (except
GA100) and newer nvmlDeviceGetPowerUsage returns a trailing 1 s average, which smears short inference windows;
otherwise nvmlDeviceGetPowerUsage. Which one was used is in `describe()`. The total is the GPU's own power only.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .base import PollingSampler, PowerSamplerError, Sample, SamplerUnavailableError

log = logging.getLogger(__name__)

__all__ = ["NvmlSampler"]

_INSTALL_HINT = "pip install nvidia-ml-py (extra: mambaesr-edge[nvml]); it needs an NVIDIA driver"
_POWER_INSTANT_FIELD = 186  # NVML_FI_DEV_POWER_INSTANT, for bindings that lack the constant
# nvmlValueType_t -> the union member that holds the value
_VALUE_MEMBERS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal"}


def _import_pynvml() -> Any:
    try:
        import pynvml
    except ImportError as exc:
        raise SamplerUnavailableError(f"nvidia-ml-py (pynvml) cannot be imported: {exc}", hint=_INSTALL_HINT) from exc
    return pynvml


class NvmlSampler(PollingSampler):
    """Polls one GPU through NVML every `interval_s` (default 20 ms)."""

    name = "nvml"
    default_interval_s = 0.02

    def __init__(self, interval_s: float | None = None, device_index: int = 0) -> None:
        super().__init__(interval_s)
        self.device_index = device_index
        self._nvml: Any = None
        self._handle: Any = None
        self._instant = False
        self.gpu_name = ""

    @staticmethod
    def probe() -> tuple[bool, str]:
        try:
            pynvml = _import_pynvml()
        except SamplerUnavailableError as exc:
            return False, exc.message
        try:
            pynvml.nvmlInit()
            try:
                count = pynvml.nvmlDeviceGetCount()
            finally:
                pynvml.nvmlShutdown()
        except pynvml.NVMLError as exc:
            return False, f"NVML does not work here: {exc}"
        return (True, f"{count} GPU(s)") if count > 0 else (False, "NVML sees no GPU")

    def describe(self) -> dict[str, object]:
        source = "NVML_FI_DEV_POWER_INSTANT" if self._instant else "nvmlDeviceGetPowerUsage"
        return {**super().describe(), "gpu": self.gpu_name, "device_index": self.device_index, "power_source": source}

    def _open(self) -> None:
        pynvml = _import_pynvml()
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise PowerSamplerError(f"NVML does not initialise: {exc}", hint=_INSTALL_HINT) from exc
        try:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
            name = pynvml.nvmlDeviceGetName(self._handle)
            self.gpu_name = name.decode() if isinstance(name, bytes) else str(name)
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise PowerSamplerError(
                f"NVML has no GPU {self.device_index}: {exc}", hint="pick a GPU index that nvidia-smi lists"
            ) from exc
        self._nvml = pynvml
        self._instant = self._instant_power_mw() is not None
        log.info("NVML on %s, power from %s", self.gpu_name, self.describe()["power_source"])

    def _instant_power_mw(self) -> float | None:
        pynvml = self._nvml
        field_id = getattr(pynvml, "NVML_FI_DEV_POWER_INSTANT", _POWER_INSTANT_FIELD)
        if not hasattr(pynvml, "nvmlDeviceGetFieldValues"):
            return None
        try:
            value = pynvml.nvmlDeviceGetFieldValues(self._handle, [field_id])[0]
        except pynvml.NVMLError as exc:
            log.debug("NVML instant power field not supported: %s", exc)
            return None
        member = _VALUE_MEMBERS.get(int(value.valueType))
        if value.nvmlReturn != 0 or member is None:
            return None
        reading = float(getattr(value.value, member))
        return reading if reading > 0 else None

    def _read(self) -> Sample:
        pynvml, handle = self._nvml, self._handle
        t = time.monotonic()
        power = self._instant_power_mw() if self._instant else None
        if power is None:
            power = float(pynvml.nvmlDeviceGetPowerUsage(handle))
        clock = float(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))
        util = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        return Sample(t, power, {"gpu": power}, clock, util)

    def _close(self) -> None:
        pynvml, self._nvml = self._nvml, None
        self._handle = None
        if pynvml is not None:
            pynvml.nvmlShutdown()
