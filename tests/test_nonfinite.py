"""The non-finite guard: a NaN stops the run, names step, seed and quantity, and keeps evidence."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynalab import checkpoint
from dynalab.agents.sac import SACConfig
from dynalab.config import TrainConfig
from dynalab.envs import BatchEnv
from dynalab.metrics import read
from dynalab.train import NonFiniteError, Trainer, train

TINY = TrainConfig(
    algo="sac", env="gym:InvertedPendulum-v5", seeds=3, seed=5, steps=240, replay_ratio=2, warmup_steps=100,
    batch_size=32, eval_every=120, eval_episodes=2, log_every=60, checkpoint_every=50,
    sac=SACConfig(hidden=(32, 32)),
)
POISON_AT = 150  # env step after which seed index 1's stored rewards turn NaN


def poison_rewards(monkeypatch):
    """After step POISON_AT, every reward in seed 1's replay buffer is NaN (the buffer is not scanned)."""
    step = Trainer.step

    def poisoned(self):
        res = step(self)
        if self.env_step == POISON_AT:
            buf = self.state.buffer
            reward = buf.data.reward.at[1].set(jnp.nan)
            self.state = self.state.replace(buffer=buf.replace(data=buf.data.replace(reward=reward)))
        return res

    monkeypatch.setattr(Trainer, "step", poisoned)


def test_nan_loss_stops_the_run_and_saves_the_last_finite_state(tmp_path, monkeypatch):
    poison_rewards(monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError) as exc:
        train(TINY, out, progress=False)
    err = exc.value
    assert (err.step, err.member) == (POISON_AT + 1, f"seed {TINY.seed + 1}")
    assert err.quantity.startswith("loss/") or err.quantity.startswith("q/"), err.quantity
    message = str(err)
    assert f"seed {TINY.seed + 1}" in message and f"env step {POISON_AT + 1}" in message and str(out / "nonfinite") in message

    saved = out / "nonfinite"
    meta = checkpoint.read_meta(saved)
    assert meta["nonfinite"] == {"step": POISON_AT + 1, "member": f"seed {TINY.seed + 1}", "quantity": err.quantity,
                                 "others": err.others}
    # The learner state kept for the bad seed is the one before the NaN: every parameter finite.
    trainer = Trainer(TINY)
    try:
        state = checkpoint.read_learner(saved, trainer.state)
    finally:
        trainer.close()
    for leaf in jax.tree.leaves(state.agent):
        assert np.isfinite(np.asarray(leaf)).all()
    # The offending minibatch of seed 1 holds the poisoned rewards; the other seeds' were fine.
    host = checkpoint.read_host(saved)
    reward = host["offending/minibatch.reward"]
    assert reward.shape == (TINY.seeds, TINY.batch_size)
    assert np.isnan(reward[1]).all() and not np.isnan(reward[[0, 2]]).any()
    assert host["offending/transition.obs"].shape[0] == TINY.seeds
    # Metrics written before the NaN are all there; none after it.
    steps = {s for s, _, _, _ in read(out / "metrics.csv")}
    assert max(steps) == 120 and 60 in steps


def test_nan_observation_is_caught_before_it_reaches_the_learner(tmp_path, monkeypatch):
    step = BatchEnv.step
    calls = {"n": 0}

    def broken(self, actions):
        res = step(self, actions)
        if self.num_envs == TINY.seeds:  # the training envs, not the evaluation ones
            calls["n"] += 1
            if calls["n"] == 30:
                res.next_obs[2, 1] = np.inf
        return res

    monkeypatch.setattr(BatchEnv, "step", broken)
    with pytest.raises(NonFiniteError) as exc:
        train(dataclasses.replace(TINY, checkpoint_every=0), tmp_path / "run", progress=False)
    assert (exc.value.step, exc.value.member, exc.value.quantity) == (30, f"seed {TINY.seed + 2}", "observation")
    assert np.isinf(checkpoint.read_host(tmp_path / "run" / "nonfinite")["offending/transition.next_obs"][2, 1])
