"""Aggregate statistics for reports: IQM and stratified-bootstrap confidence intervals (rliable).

IQM (interquartile mean) is the 25% trimmed mean: sort the scores, drop the lowest and the highest
quarter (`int(0.25 * n)` scores each), average the rest. For a (runs, tasks) matrix the scores are
flattened first, as in rliable's `metrics.aggregate_iqm` (`scipy.stats.trim_mean(..., axis=None)`).
`iqm` computes exactly that number without scipy's per-call overhead (about 0.7 ms, which dominates
thousands of bootstrap replications); the tests check that the two agree.

Aggregates over tasks weigh every task the same, whatever its number of runs (rliable's runs x tasks
convention). With equal counts the scores form rliable's (runs, tasks) matrix. With unequal counts
`task_weighted_iqm` gives each of a task's n_t runs the weight 1/n_t within its task: it is rliable's
`aggregate_iqm` of the (L, tasks) matrix in which each run of task t appears L/n_t times, L being the
least common multiple of the counts. No run is dropped, and adding runs to one task that follow
its existing scores (the same distribution) leaves the aggregate where it was; pooling all scores
into one trimmed mean would instead let the task with more runs dominate.

Confidence intervals are rliable's percentile stratified bootstrap (`rly.get_interval_estimates`):
each replication resamples the runs with replacement within every task, and the interval is the
2.5th and 97.5th percentile of the replicated statistic. rliable 1.2 draws the resampling indices
from NumPy's global RNG (its `random_state` argument does not reach them), so every estimate here
seeds the global RNG with `seed` and restores the caller's RNG state afterwards: the same data give
the same interval whatever was computed before.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import numpy as np
from rliable import library as rly

TRIM = 0.25
"""Fraction trimmed from each end for the IQM."""

BOOTSTRAP_SEED = 0
"""Seed of NumPy's global RNG for every bootstrap (restored afterwards)."""


def iqm(scores: np.ndarray | Sequence[float]) -> float:
    """IQM of all scores (any shape, flattened), equal to rliable's `metrics.aggregate_iqm`."""
    x = np.asarray(scores, dtype=np.float64).ravel()
    return float(iqm_columns(x[:, None])[0])


def iqm_columns(values: np.ndarray) -> np.ndarray:
    """IQM of each column of a (runs, columns) matrix: shape (columns,).

    Equal to `scipy.stats.trim_mean(values, 0.25, axis=0)`.
    """
    x = np.asarray(values, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        raise ValueError("the IQM of no scores is undefined.")
    lo = int(TRIM * n)
    hi = n - lo
    part = np.partition(x, (lo, hi - 1), axis=0)
    return part[lo:hi].mean(axis=0)


def task_weighted_iqm(per_task: Sequence[np.ndarray | Sequence[float]]) -> float:
    """IQM over tasks in which every task weighs the same, whatever its number of runs.

    `per_task` holds one 1-D array of run scores per task (n_t runs for task t, T tasks). The value is
    rliable's `aggregate_iqm` (a 25% trimmed mean of the flattened matrix) of the (L, T) matrix whose
    column t holds each of task t's runs L/n_t times, L = lcm(n_1, ..., n_T): cut int(L*T/4) of the
    L*T entries from each end, average the rest. It is computed from the runs with integer
    multiplicities, without building that matrix. With equal counts it is `iqm` of the runs.
    """
    tasks = [np.asarray(s, dtype=np.float64).ravel() for s in per_task]
    if not tasks or any(len(t) == 0 for t in tasks):
        raise ValueError("every task needs at least one score.")
    counts = [len(t) for t in tasks]
    if len(set(counts)) == 1:
        return iqm(np.concatenate(tasks))
    lcm = math.lcm(*counts)
    total = lcm * len(tasks)
    cut = int(TRIM * total)  # == total // 4, exact for any size
    values = np.concatenate(tasks)
    if total < 2**52:  # integer multiplicities, exact in float64
        weights = np.concatenate([np.full(n, float(lcm // n)) for n in counts])
        lo, hi = float(cut), float(total - cut)
    else:  # astronomically many tasks x distinct counts: the same weights, normalised
        weights = np.concatenate([np.full(n, 1.0 / (len(tasks) * n)) for n in counts])
        lo, hi = cut / total, (total - cut) / total
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    upper = np.cumsum(w)
    kept = np.clip(np.minimum(upper, hi) - np.maximum(upper - w, lo), 0.0, None)
    return float(kept @ v / kept.sum())


@contextlib.contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """Seed NumPy's global RNG (used by rliable's bootstrap) and restore its state on exit."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _check_scores(scores: np.ndarray | Sequence[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """A (runs, tasks) matrix, or a list of (runs_t, 1) columns when tasks have different run counts."""
    if isinstance(scores, np.ndarray):
        per_task = [scores[:, t] for t in range(scores.shape[1])] if scores.ndim == 2 else None
        if per_task is None:
            raise ValueError(f"scores must be a (runs, tasks) matrix, got shape {scores.shape}.")
    else:
        per_task = [np.asarray(s, dtype=np.float64).ravel() for s in scores]
    if not per_task or any(len(s) == 0 for s in per_task):
        raise ValueError("every task needs at least one score.")
    if any(not np.all(np.isfinite(s)) for s in per_task):
        raise ValueError("scores must be finite.")
    if len({len(s) for s in per_task}) == 1:
        return np.stack(per_task, axis=1).astype(np.float64)
    return [s.astype(np.float64)[:, None] for s in per_task]


def iqm_with_ci(
    scores: np.ndarray | Sequence[np.ndarray],
    reps: int = 2000,
    seed: int = BOOTSTRAP_SEED,
    size: float = 0.95,
) -> tuple[float, float, float]:
    """(IQM, CI low, CI high) of final scores with a percentile stratified-bootstrap CI.

    `scores` is a (runs, tasks) matrix, or a list with one 1-D array of run scores per task.
    With equal run counts the IQM is rliable's `aggregate_iqm` of the matrix; with unequal counts
    it is `task_weighted_iqm` (every task weighs the same). Either way rliable resamples each
    task's runs within that task, keeping its count (stratified bootstrap).
    """
    data = _check_scores(scores)
    if isinstance(data, np.ndarray):
        func = lambda x: np.array([iqm(x)])  # noqa: E731
        point = iqm(data)
    else:
        func = lambda *xs: np.array([task_weighted_iqm(xs)])  # noqa: E731
        point = task_weighted_iqm(data)
    with seeded_global_rng(seed):
        _, ci = rly.get_interval_estimates({"x": data}, func, reps=reps, confidence_interval_size=size)
    lo, hi = np.asarray(ci["x"], dtype=np.float64).reshape(2)
    return point, float(lo), float(hi)


def iqm_curve_with_ci(
    values: np.ndarray,
    reps: int = 2000,
    seed: int = BOOTSTRAP_SEED,
    size: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column IQM across runs with bootstrap CIs, for a (runs, steps) matrix (NaN = missing).

    Each column uses the runs that have a value there. Columns sharing the same set of runs are
    bootstrapped together by resampling whole runs (one replication = a set of whole curves); the
    bands are pointwise, and each column's interval is distributed exactly as if that column were
    bootstrapped alone. A column with one run has a zero-width interval; a column with none is NaN.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"values must be a (runs, steps) matrix, got shape {x.shape}.")
    point, lo, hi = (np.full(x.shape[1], np.nan) for _ in range(3))
    present = np.isfinite(x)
    masks: dict[bytes, list[int]] = {}
    for j in range(x.shape[1]):
        if present[:, j].any():
            masks.setdefault(present[:, j].tobytes(), []).append(j)
    for key, cols in masks.items():
        rows = np.frombuffer(key, dtype=bool)
        sub = x[np.ix_(rows, cols)]
        p = iqm_columns(sub)
        point[cols] = p
        if sub.shape[0] == 1:
            lo[cols], hi[cols] = p, p
            continue
        # rliable resamples a (runs, 1 task) column of run indices; the statistic looks the curves up, so
        # each replication is a set of whole runs (n draws per replication rather than n x steps).
        ids = np.arange(sub.shape[0], dtype=np.float64)[:, None]
        func = lambda idx, sub=sub: iqm_columns(sub[idx[:, 0].astype(np.intp)])  # noqa: E731
        with seeded_global_rng(seed):
            _, ci = rly.get_interval_estimates({"x": ids}, func, reps=reps, confidence_interval_size=size)
        band = np.asarray(ci["x"], dtype=np.float64).reshape(2, -1)
        lo[cols], hi[cols] = band[0], band[1]
    return point, lo, hi


def normalise_to_reference(scores: np.ndarray | Sequence[float], reference: float) -> np.ndarray:
    """Scores as a fraction of a positive reference score (e.g. SAC's final-return IQM on the task).

    1.0 means "equal to the reference". A reference that is not positive has no meaningful ratio
    (the sign flips or it divides by zero), so it raises ValueError.
    """
    if not np.isfinite(reference) or reference <= 0:
        raise ValueError(f"the reference score must be positive to normalise by it, got {reference}.")
    return np.asarray(scores, dtype=np.float64) / reference
