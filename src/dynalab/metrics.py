"""The run's `metrics.csv`: long format, one row per (step, seed, metric)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np

HEADER = ("step", "seed", "metric", "value")


class Sink(Protocol):
    """Receives every row a MetricsWriter writes, e.g. an experiment tracker (trackers.py)."""

    def write(self, step: int, rows: list[tuple[int, str, float]]) -> None:
        """The rows just written for `step`, as (member index, metric, value)."""

    def end_step(self, step: int) -> None:
        """Every row of `step` is written."""

    def close(self) -> None:
        """The run is over (finished, stopped or failed)."""


class MetricsWriter:
    """Appends rows and flushes them, so a crash loses at most the row being written.

    `seeds` has one entry per member of the program. A program that sweeps a scalar passes
    `sweep = {field: value per member}`, and the file gains that column after `seed`.
    `sinks` receive the same rows (as numbers), and `end_step` once a step's rows are all written.
    """

    def __init__(self, path: Path, seeds: list[int], sweep: Mapping[str, list[float]] | None = None,
                 sinks: Sequence[Sink] = ()):
        self.path = path
        self.seeds = seeds
        self.sinks = list(sinks)
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
            rows += [(i, name, float(x)) for i, x in enumerate(v) if not math.isnan(x)]
        self._csv.writerows((step, *self.keys[i], name, _fmt(x)) for i, name, x in rows)
        self._file.flush()
        for sink in self.sinks:
            sink.write(step, rows)

    def end_step(self, step: int) -> None:
        """Every row of env step `step` is written (the loop calls this once per step)."""
        for sink in self.sinks:
            sink.end_step(step)

    def close(self) -> None:
        self._file.close()
        for sink in self.sinks:
            sink.close()


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
