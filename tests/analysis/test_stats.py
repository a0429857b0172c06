"""IQM and stratified-bootstrap CIs against hand-computed values and an independent bootstrap."""

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from rliable import metrics

from dynalab.analysis import report, stats


def test_iqm_of_one_to_eight_is_the_mean_of_the_middle_four():
    assert stats.iqm(np.arange(1, 9)) == 4.5  # mean(3, 4, 5, 6)
    assert metrics.aggregate_iqm(np.arange(1, 9)) == 4.5


def test_iqm_trims_int_quarter_from_each_end():
    assert stats.iqm([1, 2, 3, 4, 100]) == 3.0  # int(1.25) = 1 cut each side: mean(2, 3, 4)
    assert stats.iqm([7, 1, 4]) == 4.0  # int(0.75) = 0: plain mean
    assert stats.iqm([5.0]) == 5.0


def test_iqm_of_a_runs_by_tasks_matrix_trims_the_flattened_scores():
    scores = np.array([[1, 10], [2, 20], [3, 30], [100, 40]], dtype=float)  # 4 runs x 2 tasks
    # Flattened and sorted: 1 2 3 10 20 30 40 100; drop 2 each side -> mean(3, 10, 20, 30) = 15.75.
    assert stats.iqm(scores) == 15.75
    assert metrics.aggregate_iqm(scores) == 15.75
    # Not the mean of per-task IQMs (mean(2.5, 25) = 13.75).
    assert np.mean([stats.iqm(scores[:, 0]), stats.iqm(scores[:, 1])]) == 13.75


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (5, 1), (7, 4), (10, 15), (33, 2)])
def test_fast_iqm_equals_rliable_and_scipy(shape):
    x = np.random.default_rng(sum(shape)).normal(size=shape) * 10
    assert stats.iqm(x) == pytest.approx(metrics.aggregate_iqm(x), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(stats.iqm_columns(x), scipy.stats.trim_mean(x, 0.25, axis=0), rtol=1e-12, atol=1e-12)


def test_ci_collapses_when_all_scores_are_equal():
    assert stats.iqm_with_ci(np.full((6, 3), 2.5), reps=300) == (2.5, 2.5, 2.5)
    assert stats.iqm_with_ci([np.full(2, 7.0), np.full(5, 7.0)], reps=300) == (7.0, 7.0, 7.0)
    assert stats.iqm_with_ci(np.array([[3.0]]), reps=300) == (3.0, 3.0, 3.0)  # one run: nothing to resample


def stratified_bootstrap_reference(per_task, reps, rng, stratified=True):
    """Percentile 95% CI of the IQM over tasks; resample runs within each task (or, if not stratified, all cells).

    Every task weighs the same: each resampled task is repeated to L = lcm of the run counts columns
    (rliable's runs x tasks matrix when the counts are equal, L = the count). Plain NumPy, vectorised
    over replications: sort each resample, drop int(n/4) from each end, average.
    """
    flat = np.concatenate(per_task)
    if stratified:
        lcm = int(np.lcm.reduce([len(t) for t in per_task]))
        samples = np.concatenate([np.repeat(t[rng.integers(0, len(t), (reps, len(t)))], lcm // len(t), axis=1)
                                  for t in per_task], axis=1)
    else:
        samples = flat[rng.integers(0, len(flat), (reps, len(flat)))]
    n = samples.shape[1]
    cut = n // 4
    values = np.sort(samples, axis=1)[:, cut:n - cut].mean(axis=1)
    return np.percentile(values, [2.5, 97.5]), values.std()


@pytest.mark.parametrize("ragged", [False, True])
def test_ci_matches_an_independent_stratified_bootstrap(ragged):
    rng = np.random.default_rng(0)
    # Two tasks on very different scales: resampling must keep each task's run count (stratified),
    # otherwise the pooled IQM swings with how many runs of each task a resample happens to draw.
    sizes = (8, 5) if ragged else (8, 8)
    per_task = [rng.normal(0, 1, sizes[0]), rng.normal(20, 3, sizes[1])]
    scores = per_task if ragged else np.stack(per_task, axis=1)
    point, lo, hi = stats.iqm_with_ci(scores, reps=4000)
    # Each task weighs the same: with 8 and 5 runs, rliable's IQM of the 40 x 2 matrix in which task 0's runs
    # appear 5 times each and task 1's 8 times each (with 8 and 8, the 8 x 2 matrix itself).
    lcm = int(np.lcm.reduce(sizes))
    expanded = np.stack([np.repeat(t, lcm // len(t)) for t in per_task], axis=1)
    assert point == pytest.approx(scipy.stats.trim_mean(expanded, 0.25, axis=None), rel=1e-12)
    assert point == pytest.approx(metrics.aggregate_iqm(expanded), rel=1e-12)
    (ref_lo, ref_hi), sd = stratified_bootstrap_reference(per_task, 20_000, np.random.default_rng(1))
    # Monte-Carlo error of a 2.5% / 97.5% percentile from 4,000 replications is about 0.06 bootstrap SDs
    # (sqrt(p(1-p)/B) / density); allow ~5 combined standard errors.
    assert abs(lo - ref_lo) < 0.35 * sd and abs(hi - ref_hi) < 0.35 * sd, (lo, hi, ref_lo, ref_hi, sd)
    (iid_lo, iid_hi), _ = stratified_bootstrap_reference(per_task, 5_000, np.random.default_rng(2), stratified=False)
    assert (iid_hi - iid_lo) > 1.5 * (hi - lo)  # the non-stratified interval is clearly different


def test_ci_is_reproducible_and_leaves_the_global_rng_alone():
    x = np.random.default_rng(3).normal(size=(6, 2))
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = stats.iqm_with_ci(x, reps=500)
    after = np.random.get_state()[1]
    np.testing.assert_array_equal(before, after)
    np.random.rand(10)  # whatever the caller does with the global RNG in between
    assert stats.iqm_with_ci(x, reps=500) == a
    assert a[1] < a[0] < a[2]


def test_curve_ci_uses_the_runs_present_at_each_step():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 6))
    x[0, 4] = np.nan  # step 4: four runs
    x[1:, 5] = np.nan  # step 5: one run
    x[:, 3] = np.nan  # step 3: none
    point, lo, hi = stats.iqm_curve_with_ci(x, reps=4000)
    # Step 4 uses its four runs only; steps 0-2 (bootstrapped together, whole runs resampled) all five.
    for j, col in ((4, x[1:, 4]), (0, x[:, 0]), (1, x[:, 1]), (2, x[:, 2])):
        (ref_lo, ref_hi), sd = stratified_bootstrap_reference([col], 20_000, np.random.default_rng(j))
        assert point[j] == pytest.approx(scipy.stats.trim_mean(col, 0.25))
        assert abs(lo[j] - ref_lo) < 0.35 * sd and abs(hi[j] - ref_hi) < 0.35 * sd, (j, lo[j], hi[j], ref_lo, ref_hi)
    assert point[5] == lo[5] == hi[5] == x[0, 5]
    assert np.isnan(point[3]) and np.isnan(lo[3]) and np.isnan(hi[3])


def test_normalise_to_reference():
    np.testing.assert_allclose(stats.normalise_to_reference([50, 100, 150], 100.0), [0.5, 1.0, 1.5])
    for bad in (0.0, -3.0, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            stats.normalise_to_reference([1.0], bad)


def _final(rows):
    return pd.DataFrame(rows, columns=["env", "variant", "seed", "value"]).assign(
        ratio_group=lambda d: d["variant"], synthetic_ratio=np.nan, run="r", step=100)


def test_sac_normalisation_by_hand():
    final = _final(
        [("gym:Hopper-v5", "SAC", k, v) for k, v in enumerate([100, 200, 300, 400])]  # IQM 250
        + [("gym:Hopper-v5", "MBPO", k, v) for k, v in enumerate([125, 250, 375, 500])]  # IQM 312.5
        + [("dmc:hopper-stand", "SAC", k, 10.0) for k in range(4)]  # IQM 10
        + [("dmc:hopper-stand", "MBPO", k, v) for k, v in enumerate([5, 5, 20, 20])]  # IQM 12.5
        + [("dmc:cheetah-run", "SAC", k, v) for k, v in enumerate([0, 0, 0, 1])]  # IQM 0: left out
        + [("dmc:cheetah-run", "MBPO", k, 5.0) for k in range(4)]
    )
    est = report._final_estimates(final, reps=2000)
    per_task, aggregate, notes = report.sac_normalised(final, est, "SAC", reps=2000)
    assert set(per_task) == {"gym:Hopper-v5", "dmc:hopper-stand"}
    assert len(notes) == 1 and "cheetah-run" in notes[0] and "not positive" in notes[0]
    assert per_task["gym:Hopper-v5"]["MBPO"].point == pytest.approx(1.25)  # 312.5 / 250
    assert per_task["dmc:hopper-stand"]["MBPO"].point == pytest.approx(1.25)  # 12.5 / 10
    assert per_task["gym:Hopper-v5"]["SAC"].point == pytest.approx(1.0)
    # The per-task CI is the variant's CI divided by SAC's IQM. With 4 seeds a resample's IQM (mean of its middle
    # two) is the smallest seed's value when 3 or 4 of the 4 draws are that seed: P = (4 * 3 + 1) / 4**4 = 5.1% >
    # 2.5%, so the percentile interval is [smallest, largest] = [125, 500] / 250.
    assert (per_task["gym:Hopper-v5"]["MBPO"].lo, per_task["gym:Hopper-v5"]["MBPO"].hi) == pytest.approx((0.5, 2.0))
    assert (per_task["dmc:hopper-stand"]["MBPO"].lo, per_task["dmc:hopper-stand"]["MBPO"].hi) == pytest.approx(
        (0.5, 2.0))  # [5, 20] / 10
    # Aggregate MBPO: normalised seeds 0.5 1 1.5 2 | 0.5 0.5 2 2; sorted 0.5 0.5 0.5 1 1.5 2 2 2;
    # drop two each side -> mean(0.5, 1, 1.5, 2).
    assert aggregate["MBPO"].point == pytest.approx(1.25)
    # Aggregate SAC: 0.4 0.8 1.2 1.6 | 1 1 1 1 -> middle four are all 1.
    assert aggregate["SAC"].point == pytest.approx(1.0)
    assert aggregate["MBPO"].lo <= 1.25 <= aggregate["MBPO"].hi


def test_no_sac_reference_gives_no_normalisation():
    final = _final([("gym:Hopper-v5", "MBPO", k, 1.0) for k in range(3)])
    assert report.sac_normalised(final, report._final_estimates(final, 100), None, 100) == ({}, {}, [])


# The example: two tasks where a variant scores 146% and 21% of SAC. SAC's final returns are 900, 1000,
# 1100 on task A and 90, 100, 110 on task B (IQM of 3 = their mean: 1000 and 100).
SAC_A, SAC_B = [900.0, 1000.0, 1100.0], [90.0, 100.0, 110.0]


def _two_tasks(variant_a, variant_b):
    final = _final([("gym:Hopper-v5", "SAC", k, v) for k, v in enumerate(SAC_A)]
                   + [("dmc:hopper-stand", "SAC", k, v) for k, v in enumerate(SAC_B)]
                   + [("gym:Hopper-v5", "MBPO", k, v) for k, v in enumerate(variant_a)]
                   + [("dmc:hopper-stand", "MBPO", k, v) for k, v in enumerate(variant_b)])
    per_task, aggregate, _ = report.sac_normalised(final, report._final_estimates(final, 200), "SAC", reps=200)
    return per_task, aggregate


def test_aggregate_does_not_move_when_one_task_gets_more_seeds_at_the_same_level():
    per_task, agg3 = _two_tasks([1460.0] * 3, [21.0] * 3)
    assert per_task["gym:Hopper-v5"]["MBPO"].point == pytest.approx(1.46)
    assert per_task["dmc:hopper-stand"]["MBPO"].point == pytest.approx(0.21)
    # 3 + 3 seeds: 0.21 0.21 0.21 1.46 1.46 1.46, drop int(6/4) = 1 each side: mean(0.21, 0.21, 1.46, 1.46).
    assert agg3["MBPO"].point == pytest.approx(0.835)
    # 7 more seeds of task A at 1460. Each task still weighs half: the middle half of the mass is a quarter at 0.21
    # and a quarter at 1.46, so 0.835 again. Pooling 13 seeds instead drops 3 each side and leaves seven 1.46s.
    _, agg10 = _two_tasks([1460.0] * 10, [21.0] * 3)
    assert agg10["MBPO"].point == pytest.approx(0.835)
    assert agg10["MBPO"].lo == pytest.approx(0.835) and agg10["MBPO"].hi == pytest.approx(0.835)  # no spread
    # SAC's own aggregate: normalised 0.9 1 1.1 | 0.9 1 1.1 -> mean(0.9, 1, 1, 1.1) = 1.
    assert agg10["SAC"].point == pytest.approx(1.0)


def test_aggregate_with_unequal_seed_counts_moves_only_by_what_the_new_seeds_imply():
    a3, b = [1360.0, 1460.0, 1560.0], [11.0, 21.0, 31.0]  # normalised 1.36 1.46 1.56 | 0.11 0.21 0.31
    _, agg3 = _two_tasks(a3, b)
    assert agg3["MBPO"].point == pytest.approx((0.21 + 0.31 + 1.36 + 1.46) / 4)  # 0.835, as above
    # 7 more seeds of task A around the same level: task A is now 3 x 1.36, 4 x 1.46, 3 x 1.56 (more weight on 1.46).
    a10 = a3 + [1360.0, 1460.0, 1560.0, 1360.0, 1460.0, 1560.0, 1460.0]
    _, agg10 = _two_tasks(a10, b)
    # By hand, every task weighing the same: a (30 runs x 2 tasks) matrix, task A's seeds 3 times each, task B's 10
    # times each. Sorted: 10 x 0.11, 10 x 0.21, 10 x 0.31, 9 x 1.36, 12 x 1.46, 9 x 1.56; drop 15 from each end
    # -> 5 x 0.21, 10 x 0.31, 9 x 1.36, 6 x 1.46: (1.05 + 3.1 + 12.24 + 8.76) / 30 = 25.15 / 30.
    assert agg10["MBPO"].point == pytest.approx(25.15 / 30)
    expanded = np.stack([np.repeat(np.array(a10) / 1000, 3), np.repeat(np.array(b) / 100, 10)], axis=1)
    assert agg10["MBPO"].point == pytest.approx(scipy.stats.trim_mean(expanded, 0.25, axis=None))
    assert agg10["MBPO"].point == pytest.approx(metrics.aggregate_iqm(expanded))
    # The CI is a stratified bootstrap: an independent one (runs resampled within each task) agrees.
    point, lo, hi = stats.iqm_with_ci([np.array(a10) / 1000, np.array(b) / 100], reps=4000)
    assert point == pytest.approx(25.15 / 30)
    (ref_lo, ref_hi), sd = stratified_bootstrap_reference([np.array(a10) / 1000, np.array(b) / 100], 20_000,
                                                          np.random.default_rng(5))
    assert abs(lo - ref_lo) < 0.35 * sd and abs(hi - ref_hi) < 0.35 * sd, (lo, hi, ref_lo, ref_hi, sd)


def test_task_weighted_iqm_equals_rliable_on_the_repeated_matrix():
    rng = np.random.default_rng(6)
    for _ in range(50):
        per_task = [rng.normal(t, 1 + t, rng.integers(1, 9)) for t in range(rng.integers(1, 5))]
        lcm = int(np.lcm.reduce([len(t) for t in per_task]))
        expanded = np.stack([np.repeat(t, lcm // len(t)) for t in per_task], axis=1)
        assert stats.task_weighted_iqm(per_task) == pytest.approx(metrics.aggregate_iqm(expanded), rel=1e-12,
                                                                  abs=1e-12)
