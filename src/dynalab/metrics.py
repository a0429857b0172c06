"""The run's `metrics.csv`: long format, one row per (step, seed, metric)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Mapping

import numpy as np

HEADER = ("step", "seed", "metric", "value")


class MetricsWriter:
    """Appends rows and flushes them, so a crash loses at most the row being written."""

    def __init__(self, path: Path, seeds: list[int]):
        self.path = path
        self.seeds = seeds
        new = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(HEADER)
            self._file.flush()

    def write(self, step: int, values: Mapping[str, np.ndarray | float]) -> None:
        """`values[name]` is one number per seed (or one number shared by all seeds)."""
        rows = []
        for name in sorted(values):
            v = np.broadcast_to(np.asarray(values[name], dtype=np.float64), (len(self.seeds),))
            rows += [(step, s, name, _fmt(x)) for s, x in zip(self.seeds, v) if not math.isnan(x)]
        self._csv.writerows(rows)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _fmt(x: float) -> str:
    return repr(float(x))


def read(path: Path) -> list[tuple[int, int, str, float]]:
    """Rows of a metrics.csv as typed tuples (for tests and small analyses)."""
    with path.open() as f:
        r = csv.reader(f)
        next(r)
        return [(int(s), int(k), m, float(v)) for s, k, m, v in r]
