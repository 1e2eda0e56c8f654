"""Optimized collection (pure): send a sample only when it moved beyond the tolerance or too many were held back.

Operations Manager's rule: compare each sample with the last one *sent*; within the tolerance it is suppressed,
unless `maximum_sample_separation` samples have passed since the last one sent. When a sample is sent after a
suppressed one, that suppressed (previous) sample is sent first, so a chart steps where the value really changed
instead of drawing a slope across the suppressed stretch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from opsmgr.api.management_pack import OptimizedCollection, ToleranceType


@dataclass(frozen=True, slots=True)
class Sample:
    at: datetime
    value: float


def beyond_tolerance(settings: OptimizedCollection, last_sent: float, value: float) -> bool:
    """Whether `value` moved strictly beyond the tolerance from `last_sent`."""
    moved = abs(value - last_sent)
    if settings.tolerance_type is ToleranceType.ABSOLUTE:
        return moved > settings.tolerance
    if last_sent == 0:
        return moved > 0  # any move away from zero is an unbounded percentage
    return moved > abs(last_sent) * settings.tolerance / 100.0


class OptimizedCollector:
    """One series (one rule, one instance): `offer` each sample in order and send what it returns, in order."""

    def __init__(self, settings: OptimizedCollection | None) -> None:
        self.settings = settings
        self._last_sent: Sample | None = None
        self._held: Sample | None = None  # the most recent suppressed sample, sent ahead of the next change
        self._suppressed = 0

    def offer(self, sample: Sample) -> list[Sample]:
        if self.settings is None or self._last_sent is None:
            return self._send([sample])
        if beyond_tolerance(self.settings, self._last_sent.value, sample.value):
            return self._send([self._held, sample] if self._held is not None else [sample])
        self._suppressed += 1
        if self._suppressed >= self.settings.maximum_sample_separation:
            return self._send([sample])
        self._held = sample
        return []

    def _send(self, samples: list[Sample]) -> list[Sample]:
        self._last_sent = samples[-1]
        self._held = None
        self._suppressed = 0
        return samples
