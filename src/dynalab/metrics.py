"""The run's `metrics.csv`: long format, one row per (step, seed, metric)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Mapping

import numpy as np

HEADER = ("step", "seed", "metric", "value")


class MetricsWriter:
    """Appends rows and flushes them, so a crash loses at most the row being written.

    `seeds` has one entry per member of the program. A program that sweeps a scalar passes
    `sweep = {field: value per member}`, and the file gains that column after `seed`.
    """

    def __init__(self, path: Path, seeds: list[int], sweep: Mapping[str, list[float]] | None = None):
        self.path = path
        self.seeds = seeds
        self.keys = [(s,) for s in seeds]
        header = HEADER
        if sweep:
            (name, values), = sweep.items()
            self.keys = [(s, repr(float(v))) for s, v in zip(seeds, values)]
            header = (*HEADER[:2], name, *HEADER[2:])
        new = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(header)
            self._file.flush()

    def write(self, step: int, values: Mapping[str, np.ndarray | float]) -> None:
        """`values[name]` is one number per member (or one number shared by all)."""
        rows = []
        for name in sorted(values):
            v = np.broadcast_to(np.asarray(values[name], dtype=np.float64), (len(self.seeds),))
            rows += [(step, *key, name, _fmt(x)) for key, x in zip(self.keys, v) if not math.isnan(x)]
        self._csv.writerows(rows)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _fmt(x: float) -> str:
    return repr(float(x))


def read(path: Path) -> list[tuple]:
    """Rows of a metrics.csv as typed tuples (step, seed, metric, value), for tests and small
    analyses; a swept program's rows carry the swept value after the seed."""
    with path.open() as f:
        r = csv.reader(f)
        swept = len(next(r)) == 5
        if swept:
            return [(int(s), int(k), float(x), m, float(v)) for s, k, x, m, v in r]
        return [(int(s), int(k), m, float(v)) for s, k, m, v in r]
