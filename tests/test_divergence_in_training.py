"""A diverging simulator during training: the transition never enters a buffer, the episode
ends, the run goes on (no traceback) and `env/diverged` counts it per seed."""

import dataclasses

import jax
import numpy as np
import pytest

from dynalab.agents.sac import SACConfig
from dynalab.algos import default_config
from dynalab.envs import make_env
from dynalab.metrics import read
from dynalab.train import Trainer, train


def cfg_for(env_id):
    return default_config("sac", env=env_id, seeds=2, steps=40, warmup_steps=20, replay_ratio=1, batch_size=8,
                          eval_every=40, eval_episodes=1, log_every=20, checkpoint_every=0,
                          sac=SACConfig(hidden=(8,)))


def blow_up(trainer, member):
    """Give one member's simulator a huge velocity: its next step diverges."""
    # Through a snapshot, so that it reaches the env wherever it lives (this or a worker process).
    model = make_env(trainer.cfg.env, 0).model
    snap = trainer.envs.snapshot()
    state = snap[f"env{member}/state"].copy()
    state[1 + model.nq: 1 + model.nq + model.nv] = 1e12  # [time, qpos, qvel, ...]
    snap[f"env{member}/state"] = state
    trainer.envs.restore(snap)


@pytest.mark.parametrize("env_id", ["gym:Hopper-v5", "dmc:hopper-stand"])
def test_a_diverged_step_is_dropped_and_counted(tmp_path, env_id, monkeypatch, capsys):
    original = Trainer.step

    def step(self):
        if self.env_step in (5, 30):  # once in warm-up, once while learning
            blow_up(self, 1)
        return original(self)

    monkeypatch.setattr(Trainer, "step", step)
    train(cfg_for(env_id), tmp_path, progress=False)
    rows = read(tmp_path / "metrics.csv")
    diverged = {(s, k): v for s, k, m, v in rows if m == "env/diverged"}
    assert diverged == {(20, 0): 0.0, (20, 1): 1.0, (40, 0): 0.0, (40, 1): 1.0}
    captured = capsys.readouterr()
    err = captured.err + captured.out
    assert "seed 1 diverged at env step 6" in err and "seed 1 diverged at env step 31" in err


@pytest.mark.parametrize("env_id", ["gym:Hopper-v5", "dmc:hopper-stand"])
def test_the_diverged_transition_never_enters_the_buffer(env_id):
    trainer = Trainer(cfg_for(env_id))
    try:
        for _ in range(3):
            trainer.step()
        blow_up(trainer, 1)
        before = jax.tree.map(lambda x: np.asarray(x), trainer.state.buffer)
        res = trainer.step()
        after = jax.tree.map(lambda x: np.asarray(x), trainer.state.buffer)
        np.testing.assert_array_equal(res.diverged, [False, True])
        assert after.size.tolist() == [4, 3] and after.position.tolist() == [4, 3]
        for a, b in zip(jax.tree.leaves(after.data), jax.tree.leaves(before.data)):
            np.testing.assert_array_equal(a[1], b[1])  # seed 1's buffer is untouched
        # The episode restarted: the next transition seed 1 stores starts from the reset observation.
        np.testing.assert_array_equal(trainer.obs[1], res.obs[1])
        trainer.step()
        np.testing.assert_array_equal(np.asarray(trainer.state.buffer.data.obs[1, 3]), res.obs[1])
    finally:
        trainer.close()
