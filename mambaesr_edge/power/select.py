"""Choosing a power sampler: from the device profile and what this machine has; `--power SAMPLER` overrides.

Auto: the profile's `power_sampler` first, when present here; else the first of tegrastats, jtop, NVML that is present;
else the `none` sampler with the reason logged. A profile that names `none` (x86-cpu) is taken at its word: no probing
(an NVIDIA GPU's power says nothing about a CPU run). An explicit override that cannot work here is an error with a hint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..errors import ConfigError
from .base import PowerSampler, SamplerUnavailableError
from .jtop import JtopSampler
from .none import NullSampler
from .nvml import NvmlSampler
from .tegrastats import TegrastatsSampler

log = logging.getLogger(__name__)

__all__ = ["SAMPLERS", "SAMPLER_NAMES", "make_sampler", "probe_samplers", "select_sampler"]

SAMPLERS: dict[str, type[PowerSampler]] = {
    "tegrastats": TegrastatsSampler,
    "jtop": JtopSampler,
    "nvml": NvmlSampler,
    "none": NullSampler,
}
SAMPLER_NAMES = tuple(SAMPLERS)
NO_SAMPLER = "no sampler on this machine"
_HINTS = {
    "tegrastats": "tegrastats is absent inside containers; run on the Jetson host or use --power jtop",
    "jtop": "pip install jetson-stats and run its service (/run/jtop.sock), or use --power tegrastats on the host",
    "nvml": "pip install nvidia-ml-py on a machine with an NVIDIA driver, or use --power none",
}


def _probes() -> dict[str, Callable[[], tuple[bool, str]]]:
    return {"tegrastats": TegrastatsSampler.probe, "jtop": JtopSampler.probe, "nvml": NvmlSampler.probe}


def probe_samplers() -> dict[str, tuple[bool, str]]:
    """{sampler: (present, detail)} for every real sampler on this machine."""
    return {name: probe() for name, probe in _probes().items()}


def make_sampler(name: str, interval_s: float | None = None) -> PowerSampler:
    """Build the named sampler (no probing; start() raises when its tool is missing)."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown power sampler {name!r}", hint=f"choose one of {', '.join(SAMPLER_NAMES)}")
    return SAMPLERS[name](interval_s=interval_s)


def _preferred_from(profile_name_or_sampler: object) -> tuple[str | None, str]:
    """(sampler name or None for 'probe everything', where it came from)."""
    if profile_name_or_sampler is None or profile_name_or_sampler == "auto":
        return None, "auto"
    if isinstance(profile_name_or_sampler, str) and profile_name_or_sampler in SAMPLERS:
        return profile_name_or_sampler, "argument"
    from ..profiles import DeviceProfile, load_profile

    if isinstance(profile_name_or_sampler, str):
        profile = load_profile(profile_name_or_sampler)
    elif isinstance(profile_name_or_sampler, DeviceProfile):
        profile = profile_name_or_sampler
    else:
        raise ConfigError(f"cannot pick a power sampler from {type(profile_name_or_sampler).__name__}",
                          hint=f"pass a sampler name ({', '.join(SAMPLER_NAMES)}), a device profile name or a DeviceProfile")
    if profile.power_sampler not in SAMPLERS:
        raise ConfigError(
            f"profile {profile.name!r} names power sampler {profile.power_sampler!r}",
            hint=f"use one of {', '.join(SAMPLER_NAMES)} in the profile",
        )
    return profile.power_sampler, f"profile {profile.name}"


def select_sampler(
    profile_name_or_sampler: object = None, override: str | None = None, *, interval_s: float | None = None
) -> PowerSampler:
    """The sampler to use: `override` (a sampler name, or "auto"/None) wins over the profile (a name, a DeviceProfile,
    or a sampler name). Never raises for auto-selection: falls back to `NullSampler` with a reason."""
    if override not in (None, "auto"):
        if override == "none":
            return NullSampler("disabled with --power none")
        probe = _probes().get(override)
        if probe is None:
            raise ConfigError(f"unknown power sampler {override!r}", hint=f"choose one of {', '.join(SAMPLER_NAMES)}")
        present, detail = probe()
        if not present:
            raise SamplerUnavailableError(f"--power {override}: {detail}", hint=_HINTS[override])
        return make_sampler(override, interval_s)
    preferred, origin = _preferred_from(profile_name_or_sampler)
    if preferred == "none":
        log.info("power: %s names no sampler", origin)
        return NullSampler(NO_SAMPLER)
    order = [preferred] if preferred else []
    order += [name for name in _probes() if name != preferred]
    reasons = []
    for name in order:
        present, detail = _probes()[name]()
        if present:
            if preferred and name != preferred:
                log.warning("power: %s wants %s, which is absent here (%s); using %s", origin, preferred, reasons[0], name)
            log.info("power: using %s (%s)", name, detail)
            return make_sampler(name, interval_s)
        reasons.append(f"{name}: {detail}")
    log.info("power: unavailable (%s)", "; ".join(reasons))
    return NullSampler(NO_SAMPLER)
