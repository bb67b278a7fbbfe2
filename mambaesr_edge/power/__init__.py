"""Power measurement behind one interface: tegrastats, jtop, NVML, or none.

    sampler = select_sampler("orin-nano", override=None)   # or make_sampler("tegrastats")
    with sampler:
        ...work...
    samples = sampler.samples                              # list[Sample], time.monotonic() stamps, mW

Heavy or optional libraries (jtop, pynvml) are imported only when their sampler starts.
"""

from .base import (
    PollingSampler,
    PowerSampler,
    PowerSamplerError,
    Sample,
    SamplerUnavailableError,
)
from .energy import WindowPower, window_power
from .jtop import JtopSampler
from .none import NullSampler
from .nvml import NvmlSampler
from .select import SAMPLER_NAMES, make_sampler, probe_samplers, select_sampler
from .tegrastats import ParsedLine, TegrastatsSampler, parse_tegrastats_line

__all__ = [
    "SAMPLER_NAMES",
    "JtopSampler",
    "NullSampler",
    "NvmlSampler",
    "ParsedLine",
    "PollingSampler",
    "PowerSampler",
    "PowerSamplerError",
    "Sample",
    "SamplerUnavailableError",
    "TegrastatsSampler",
    "WindowPower",
    "make_sampler",
    "parse_tegrastats_line",
    "probe_samplers",
    "select_sampler",
    "window_power",
]
