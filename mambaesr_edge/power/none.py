"""The sampler for machines that cannot measure power: it takes no samples and says why."""

from __future__ import annotations

import threading

from .base import PowerSampler

__all__ = ["NullSampler"]


class NullSampler(PowerSampler):
    """Measures nothing. `reason` says why power is unavailable (shown as "power: unavailable (<reason>)")."""

    name = "none"
    available = False

    def __init__(self, reason: str = "no sampler on this machine", interval_s: float | None = None) -> None:
        super().__init__(interval_s)
        self.reason = reason

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "reason": self.reason}

    def _loop(self, stop: threading.Event) -> None:
        stop.wait()
