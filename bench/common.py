"""Shared helpers for benchmarks: run a measurement several times and report the median and spread.

This machine is shared and noisy, so every figure is a median of several runs, and speed is quoted as a ratio
against a baseline measured in the same run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    name: str
    unit: str
    runs: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def line(self) -> str:
        spread = f"min {min(self.runs):.4g}, max {max(self.runs):.4g}" if len(self.runs) > 1 else "one run"
        return f"{self.name}: median {self.median:.4g} {self.unit} over {len(self.runs)} runs ({spread})"


def measure_seconds(name: str, action: Callable[[], object], runs: int = 5) -> Figure:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        timings.append(time.perf_counter() - start)
    return Figure(name, "s", tuple(timings))
