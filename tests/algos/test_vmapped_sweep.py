"""A swept scalar on the member axis: one program, and each member equals its run alone."""

import dataclasses

import numpy as np
import pytest

from dynalab.agents.sac import SACConfig
from dynalab.config import ConfigError, TrainConfig
from dynalab.metrics import read
from dynalab.models.ensemble import ModelConfig
from dynalab.train import Trainer, train

MBPO = TrainConfig(
    algo="mbpo", env="gym:InvertedPendulum-v5", seeds=2, seed=3, steps=160, replay_ratio=2, warmup_steps=80,
    batch_size=32, eval_every=80, eval_episodes=1, log_every=40, checkpoint_every=0,
    rollouts_per_step=8, synthetic_retain_steps=20, model_refit_every=40, sac=SACConfig(hidden=(32, 32)),
    model=ModelConfig(ensemble_size=3, num_elites=2, width=32, depth=2, batch_size=32, refit_steps=20),
)
SWEEP = dataclasses.replace(MBPO, sweep_field="synthetic_ratio", sweep_values=(0.25, 0.75))


def learning(rows):
    return {r[:-1]: r[-1] for r in rows if not r[-2].startswith("time/")}


def test_each_member_of_a_swept_program_matches_its_run_alone(tmp_path):
    train(SWEEP, tmp_path / "sweep", progress=False)
    header = (tmp_path / "sweep" / "metrics.csv").read_text().splitlines()[0]
    assert header == "step,seed,synthetic_ratio,metric,value"
    swept = learning(read(tmp_path / "sweep" / "metrics.csv"))
    assert {k[2] for k in swept} == {0.25, 0.75} and {k[1] for k in swept} == {3, 4}

    # Every member equals its run alone, up to float rounding (XLA may order a batched reduction
    # differently). On this terminating task an evaluation episode's return is its length, so a
    # rounding-sized action difference can end it one step apart: eval/return gets atol 1.
    for seed, ratio in ((4, 0.75), (3, 0.25)):
        alone_cfg = dataclasses.replace(MBPO, seed=seed, seeds=1, synthetic_ratio=ratio)
        train(alone_cfg, tmp_path / f"alone-{ratio}", progress=False)
        alone = learning(read(tmp_path / f"alone-{ratio}" / "metrics.csv"))
        member = {(s, k, m): v for (s, k, x, m), v in swept.items() if (k, x) == (seed, ratio)}
        assert member.keys() == alone.keys() and len(alone) > 20
        keys = sorted(k for k in alone if k[2] != "eval/return")
        np.testing.assert_allclose([member[k] for k in keys], [alone[k] for k in keys], rtol=1e-3, atol=1e-4)
        evals = sorted(k for k in alone if k[2] == "eval/return")
        np.testing.assert_allclose([member[k] for k in evals], [alone[k] for k in evals], atol=1.0)


def test_sweep_needs_a_sweepable_field_and_valid_values():
    with pytest.raises(ConfigError, match="--sweep-field must be one of: synthetic_ratio"):
        Trainer(dataclasses.replace(MBPO, sweep_field="steps", sweep_values=(1.0,)))
    with pytest.raises(ConfigError, match=r"--synthetic-ratio must be in \[0, 1\), got 1.0"):
        Trainer(dataclasses.replace(SWEEP, sweep_values=(0.5, 1.0)))
