"""The order of periodic work (issue: resets before the same step's evaluation, rollouts from
an unfitted model). References are independent runs: a run with a reset at step k must report,
at step k, exactly what a run that never resets reports; and every rollout's model must have
been fitted, whatever the warm-up, refit and reset intervals."""

import dataclasses

import jax
import numpy as np
import pytest

from dynalab.agents.sac import SACConfig
from dynalab.algos import default_config
from dynalab.metrics import read
from dynalab.models import ensemble
from dynalab.models.ensemble import ModelConfig
from dynalab.train import train

SAC = default_config(
    "sac", env="gym:InvertedPendulum-v5", steps=240, warmup_steps=60, replay_ratio=2, batch_size=32,
    eval_every=60, eval_episodes=2, log_every=60, sac=SACConfig(hidden=(32, 32)),
)
# Warm-up (100), refit (150) and model reset (70) intervals that never line up.
MBPO = default_config(
    "mbpo", env="gym:InvertedPendulum-v5", steps=240, warmup_steps=100, replay_ratio=2, batch_size=32,
    eval_every=120, eval_episodes=2, log_every=60, rollouts_per_step=8, synthetic_retain_steps=50,
    model_refit_every=150, sac=SACConfig(hidden=(32, 32)),
    model=ModelConfig(width=16, depth=2, refit_steps=20, batch_size=32, max_holdout=64),
)


def rows(path):
    return {(s, k, m): v for s, k, m, v in read(path) if not m.startswith("time/")}


def test_a_reset_takes_effect_after_the_same_steps_evaluation_and_logging(tmp_path):
    train(dataclasses.replace(SAC, reset_agent_every=120), tmp_path / "reset", progress=False)
    train(SAC, tmp_path / "plain", progress=False)
    reset, plain = rows(tmp_path / "reset" / "metrics.csv"), rows(tmp_path / "plain" / "metrics.csv")
    upto = {k for k in plain if k[0] <= 120}
    assert {"eval/return", "q/mean_real", "loss/critic"} <= {k[2] for k in upto if k[0] == 120}
    # Through step 120 (the reset step included) the learner is the one that trained so far.
    assert {k: reset[k] for k in upto} == {k: plain[k] for k in upto}
    # After it, the reset did happen: the runs part.
    later = [k for k in plain if k[0] == 180 and k[2] in ("q/mean_real", "loss/critic")]
    assert later and all(reset[k] != plain[k] for k in later)


def test_nothing_resets_on_the_last_step(tmp_path):
    train(dataclasses.replace(SAC, reset_agent_every=240), tmp_path / "reset", progress=False)
    train(SAC, tmp_path / "plain", progress=False)
    assert rows(tmp_path / "reset" / "metrics.csv") == rows(tmp_path / "plain" / "metrics.csv")


@pytest.mark.parametrize("changes", [
    {},  # warm-up 100 with refits every 150: the first multiple after warm-up would be 150
    {"reset_model_every": 70},  # a reset between refits
    {"warmup_steps": 0, "steps": 130},  # no warm-up at all
])
def test_no_rollout_uses_an_unfitted_model(tmp_path, monkeypatch, changes):
    fitted_at_rollout = []
    original = ensemble.sample_step

    def recording(cfg, state, obs, action, key):
        jax.debug.callback(lambda f: fitted_at_rollout.append(np.asarray(f)), ensemble.is_fitted(state))
        return original(cfg, state, obs, action, key)

    monkeypatch.setattr(ensemble, "sample_step", recording)
    cfg = dataclasses.replace(MBPO, **changes)
    train(cfg, tmp_path, progress=False)
    calls = np.concatenate([np.atleast_1d(f) for f in fitted_at_rollout])
    learning_steps = cfg.steps - cfg.warmup_steps
    assert len(fitted_at_rollout) == learning_steps
    if cfg.warmup_steps:
        assert calls.all()
    else:
        # Without warm-up the very first learning step comes before any fit: its rollouts are
        # computed but masked out (below); every later one uses a fitted model.
        assert not calls[0] and calls[1:].all()
    metrics = read(tmp_path / "metrics.csv")
    fits = sorted({s for s, _, m, _ in metrics if m == "model/fit_steps"})
    first = max(cfg.warmup_steps, 1)
    expected = {first} | {k for k in range(first, cfg.steps + 1) if k % cfg.model_refit_every == 0}
    if cfg.reset_model_every:
        expected |= {k for k in range(first, cfg.steps) if k % cfg.reset_model_every == 0}
    assert fits == sorted(expected)
    if not changes:
        # A metric is logged only where it was measured: step 60 is in warm-up (no fitted model,
        # no synthetic data), while the critic on real data is measurable from the start.
        logged = {(s, m) for s, _, m, _ in metrics}
        for metric in ("q/mean_synthetic", "reward/mean_synthetic", "model/pct_error",
                       "model/pct_error_next_state", "rollout/reward_mean"):
            assert (60, metric) not in logged
            assert (120, metric) in logged and (240, metric) in logged
        assert (60, "q/mean_real") in logged


def test_without_warmup_nothing_from_the_unfitted_model_is_stored(tmp_path):
    from dynalab.train import Trainer

    trainer = Trainer(dataclasses.replace(MBPO, warmup_steps=0, steps=10, buffer_capacity=64))
    try:
        trainer.step()  # learning step 1: the model was never fitted
        assert int(trainer.state.synthetic.size[0]) == 0
        assert not bool(ensemble.is_fitted(jax.tree.map(lambda x: x[0], trainer.state.model)))
        trainer.run_hooks("measure")
        trainer.run_hooks("maintain")  # the first fit, after step 1
        trainer.step()
        assert int(trainer.state.synthetic.size[0]) == MBPO.rollouts_per_step
    finally:
        trainer.close()
