"""What Jetson tools and files say, as pure parsers, and the release tables that turn it into versions and a profile.

Formats (JetPack 5/6; NOT RUN IN THIS WORKPLACE on a real Jetson, the layouts are the documented / commonly posted ones):

    /etc/nv_tegra_release     # R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: ...
    device-tree model         NVIDIA Jetson Orin Nano Developer Kit   (NUL-terminated; /sys/firmware/devicetree/base/model)
    nvpmodel -q               NV Power Mode: 15W \\n 0                 (NVPM WARN/ERROR lines may come first)
    jetson_clocks --show      GPU MinFreq=306000000 MaxFreq=624750000 CurrentFreq=306000000   (root only)
    dpkg-query -W -f='${Version}' nvidia-jetpack    6.2+b77

Sources for the tables: NVIDIA's JetPack / Jetson Linux release notes (L4T -> JetPack), and ../shared/REFERENCE.md
sections 5 and 7 (JetPack -> TensorRT: 5.1.x -> 8.5.2, 6.0 -> 8.6.2, 6.1/6.2 -> 10.3, 7.2 -> 10.16).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "BOARD_PROFILES",
    "BOARD_SM",
    "JETPACK_TENSORRT",
    "L4T_JETPACK",
    "ClockState",
    "PowerMode",
    "jetpack_for_l4t",
    "jetpacks_with_tensorrt",
    "parse_dpkg_version",
    "parse_jetson_clocks",
    "parse_l4t_release",
    "parse_nvpmodel",
    "profile_for_board",
    "sm_for_board",
    "tensorrt_for_jetpack",
]

# L4T (Jetson Linux) release -> JetPack, longest prefix wins ("36.4.3" before "36.4")
L4T_JETPACK: dict[str, str] = {
    "32.7": "4.6",
    "35.1": "5.0.2",
    "35.2": "5.1",
    "35.3": "5.1.1",
    "35.4": "5.1.2",
    "35.5": "5.1.3",
    "35.6": "5.1.4",
    "36.2": "6.0 DP",
    "36.3": "6.0",
    "36.4": "6.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
    "39.2": "7.2",
}
# JetPack -> the TensorRT it ships (major.minor[.patch]), longest prefix wins
JETPACK_TENSORRT: dict[str, str] = {
    "4.6": "8.2",
    "5.0": "8.4",
    "5.1": "8.5.2",
    "6.0": "8.6.2",
    "6.1": "10.3",
    "6.2": "10.3",
    "7.2": "10.16",
}
# words of the device-tree model -> shipped profile (first match wins: "AGX Orin" before "Orin")
BOARD_PROFILES: tuple[tuple[str, str], ...] = (
    ("AGX Orin", "agx-orin"),
    ("Orin NX", "orin-nx"),
    ("Orin Nano", "orin-nano"),
    ("Xavier NX", "xavier-nx"),
)
# words of the device-tree model -> the GPU's compute capability (when no CUDA binding can ask the GPU itself)
BOARD_SM: tuple[tuple[str, str], ...] = (("Orin", "8.7"), ("Xavier", "7.2"), ("Thor", "11.0"))

_L4T = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")
_POWER_MODE = re.compile(r"NV Power Mode:\s*(\S+)")
_GPU_FREQ = re.compile(r"^GPU MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)", re.MULTILINE)
_VERSION = re.compile(r"^\s*(?:\d+:)?(\d+(?:\.\d+)*)")


@dataclass(frozen=True)
class PowerMode:
    name: str  # "15W", "MAXN_SUPER"
    mode_id: int | None  # nvpmodel's number (-m N), when printed


@dataclass(frozen=True)
class ClockState:
    locked: bool  # jetson_clocks ran: the GPU's minimum clock is pinned to its maximum
    gpu_min_mhz: float
    gpu_max_mhz: float
    gpu_current_mhz: float


def _longest_prefix(table: dict[str, str], version: str) -> str | None:
    """The value of the longest key that is ``version`` or a dotted prefix of it."""
    matches = [key for key in table if version == key or version.startswith(key + ".") or version.startswith(key + " ")]
    return table[max(matches, key=len)] if matches else None


def parse_l4t_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.3, ...' -> '36.4.3'; None when the text is not an nv_tegra_release line."""
    match = _L4T.search(text)
    return f"{match.group(1)}.{match.group(2).rstrip('.')}" if match else None


def jetpack_for_l4t(l4t: str) -> str | None:
    return _longest_prefix(L4T_JETPACK, l4t)


def tensorrt_for_jetpack(jetpack: str) -> str | None:
    return _longest_prefix(JETPACK_TENSORRT, jetpack)


def jetpacks_with_tensorrt(major_minor: str) -> list[str]:
    """JetPack releases that ship TensorRT ``major_minor`` ('10.3' -> ['6.1', '6.2']), oldest first."""
    found = [jp for jp, trt in JETPACK_TENSORRT.items() if trt == major_minor or trt.startswith(major_minor + ".")]
    return sorted(found, key=lambda v: tuple(int(p) for p in v.split(".")))


def parse_nvpmodel(text: str) -> PowerMode | None:
    """`nvpmodel -q` output -> PowerMode; None when it names no mode."""
    match = _POWER_MODE.search(text)
    if not match:
        return None
    after = text[match.end():].split()
    mode_id = int(after[0]) if after and after[0].isdigit() else None
    return PowerMode(match.group(1), mode_id)


def parse_jetson_clocks(text: str) -> ClockState | None:
    """`jetson_clocks --show` output -> ClockState from its GPU line (Hz); None when there is none."""
    match = _GPU_FREQ.search(text)
    if not match:
        return None
    lo, hi, cur = (int(v) / 1e6 for v in match.groups())
    return ClockState(locked=lo == hi, gpu_min_mhz=lo, gpu_max_mhz=hi, gpu_current_mhz=cur)


def parse_dpkg_version(text: str) -> str | None:
    """'6.2+b77' -> '6.2'; '10.3.0.30-1+cuda12.5' -> '10.3.0.30'; '' -> None."""
    match = _VERSION.match(text)
    return match.group(1) if match else None


def profile_for_board(model: str) -> str | None:
    """The shipped profile for a device-tree model ('NVIDIA Jetson Orin Nano Developer Kit' -> 'orin-nano')."""
    return next((profile for words, profile in BOARD_PROFILES if words.lower() in model.lower()), None)


def sm_for_board(model: str) -> str | None:
    return next((sm for words, sm in BOARD_SM if words.lower() in model.lower()), None)
