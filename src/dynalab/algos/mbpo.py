"""MBPO and FTFL: the SAC learner plus a dynamics-reward model and short model rollouts (Dyna).

Per env step, one compiled call: store the real transition, branch `rollouts_per_step`
model rollouts from real states with the current policy, store them in a synthetic buffer,
then do the SAC updates on batches mixing a fraction `synthetic_ratio` of synthetic data.
Model refits, model/agent resets and diagnostics are periodic hooks. FTFL is this learner
with the model's `target_norm` and `direct_next_state` switches on.

No rollout ever uses an unfitted model: the model is fitted at the end of warm-up (before the
first learning step), at every multiple of `model_refit_every` after that, and right after
every model reset; and inside the compiled step, rollouts from a model that has not been
fitted since its (re-)initialisation are masked out (they can only happen with no warm-up at
all, on the very first step), and batches are then all real.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from dynalab import replay
from dynalab.agents import sac
from dynalab.algos import sac as sac_learner
from dynalab.algos.base import MEASURED, Hook, Learner, stream
from dynalab.config import TrainConfig
from dynalab.envs import termination
from dynalab.models import ensemble
from dynalab.models.perfect import Simulator
from dynalab.types import EnvSpec, Transition


@struct.dataclass
class DynaState:
    sac: sac_learner.SACLearnerState  # actor-critic and the real replay buffer
    model: Any  # EnsembleState, or None with a perfect model
    synthetic: replay.ReplayBuffer
    env_step: jax.Array  # int32: env steps seen, for the horizon schedule


def rollout_horizon(cfg: TrainConfig, env_step: jax.Array) -> jax.Array:
    """MBPO's linear schedule from MIN to MAX between env steps START and END, else fixed."""
    if cfg.horizon_schedule is None:
        return jnp.int32(cfg.rollout_horizon)
    start, end, lo, hi = cfg.horizon_schedule
    frac = jnp.clip((env_step - start) / (end - start), 0.0, 1.0)
    return jnp.floor(lo + frac * (hi - lo)).astype(jnp.int32)


def synthetic_window(cfg: TrainConfig, env_step: jax.Array) -> jax.Array:
    """Rows of the synthetic buffer in use: the rollouts of the last `synthetic_retain_steps` env
    steps at the current horizon, rollouts_per_step * retain * horizon (MBPO's model pool, which
    is resized whenever the horizon changes). Older rows are never sampled."""
    return cfg.rollouts_per_step * cfg.synthetic_retain_steps * rollout_horizon(cfg, env_step)


def mixed_sampler(real: replay.ReplayBuffer, synthetic: replay.ReplayBuffer, ratio, batch_size: int,
                  window: jax.Array | None = None):
    """Minibatches whose first round(ratio * batch) rows are synthetic, the rest real.

    Synthetic rows come from the newest `window` rows of the synthetic buffer (all, if None);
    while it is empty every row is real. The real rows are drawn exactly as SAC draws them,
    and a static ratio of 0 compiles to SAC's own sampler, so S = 0 reproduces SAC bit for bit;
    `ratio` may also be a traced scalar (a vmapped sweep).
    """
    if isinstance(ratio, (int, float)) and ratio == 0:
        return lambda key: sac_learner.sample_real(real, key, batch_size)
    n_synthetic = jnp.round(ratio * batch_size).astype(jnp.int32)
    take = (jnp.arange(batch_size) < n_synthetic) & (synthetic.size > 0)

    def sample(key):
        r = sac_learner.sample_real(real, key, batch_size)
        s = replay.sample_recent(synthetic, stream(key, "synthetic"), batch_size, window)
        pick = lambda a, b: jnp.where(take.reshape(-1, *([1] * (a.ndim - 1))), b, a)  # noqa: E731
        return jax.tree.map(pick, r, s)

    return sample


class LearnedDynamics:
    """The probabilistic ensemble (STFL Table 2), optionally with FTFL's switches."""

    needs_sim_state = False

    def __init__(self, cfg: TrainConfig, spec: EnvSpec):
        self.cfg, self.spec = cfg, spec
        # --termination: the task's built-in rule (auto), never, or the user's MODULE:FUNCTION. Config
        # validation has refused a run without one, so None here means a config that skipped it.
        self.terminated = termination.resolve(cfg.env, cfg.termination, spec.obs_dim)
        if self.terminated is None:
            raise ValueError(f"no termination rule for {cfg.env}: validate the config (dynalab.config.validate) "
                             "before building its learner; it names the valid --termination values.")

    def init(self, key):
        return ensemble.init(key, self.spec.obs_dim, self.spec.action_dim, self.cfg.model)

    def fitted(self, model) -> jax.Array:
        return ensemble.is_fitted(model)

    def step(self, model, obs, action, sim_state, key):
        next_obs, reward = ensemble.sample_step(self.cfg.model, model, obs, action, key)
        terminated = self.terminated(obs, action, next_obs) if self.terminated else jnp.zeros(obs.shape[:-1], bool)
        return next_obs, reward, terminated, sim_state, jnp.ones(obs.shape[:-1], bool)

    def hooks(self) -> list[Hook]:
        cfg = self.cfg
        hooks = []
        reset_due = sac_learner.resets_due(cfg, cfg.reset_model_every) if cfg.reset_model_every else (lambda k: False)
        if cfg.reset_model_every:
            # Before the refit that then runs on the same step, so a reset model is never used unfitted.
            hooks.append(Hook("reset_model", cfg.reset_model_every,
                              lambda s, k: (s.replace(model=ensemble.reset(cfg.model, s.model, k)), {}),
                              due=reset_due))

        def refit(s, k):
            model, metrics = ensemble.fit(cfg.model, s.model, s.sac.buffer, k)
            return s.replace(model=model), metrics

        hooks.append(Hook("model_fit", cfg.model_refit_every, refit, due=refit_due(cfg, reset_due)))
        return hooks

    def diagnostics(self, model, batch: Transition) -> dict:
        return ensemble.diagnostics(self.cfg.model, model, batch.without_sim_state())


def refit_due(cfg: TrainConfig, reset_due):
    """Model fits after env step k: at the end of warm-up (k = max(warmup, 1), before the first
    learning step), at every multiple of `model_refit_every` after it, and right after a model
    reset once warm-up is over, whatever the intervals."""
    first = max(cfg.warmup_steps, 1)
    return lambda k: k >= first and (k == first or k % cfg.model_refit_every == 0 or reset_due(k))


class PerfectDynamics:
    """The simulator restored to each sampled state: no model error at all (STFL section 4.2)."""

    needs_sim_state = True

    def __init__(self, cfg: TrainConfig, spec: EnvSpec):
        self.simulator = Simulator(spec, workers=cfg.env_workers, parallel=cfg.env_parallel, imports=cfg.imports)

    def init(self, key):
        return None

    def fitted(self, model) -> jax.Array:
        return jnp.bool_(True)

    def step(self, model, obs, action, sim_state, key):
        return self.simulator.step(sim_state, action)

    def hooks(self) -> list[Hook]:
        return []

    def diagnostics(self, model, batch: Transition) -> dict:
        return {}

    def close(self) -> None:
        self.simulator.close()


def make(cfg: TrainConfig, spec: EnvSpec) -> Learner:
    dynamics = PerfectDynamics(cfg, spec) if cfg.perfect_model else LearnedDynamics(cfg, spec)
    base = sac_learner.make(cfg, spec, store_sim_state=dynamics.needs_sim_state)
    empty = sac_learner.empty_transition(spec)

    def init(key):
        # SAC's part is what plain SAC builds from the same key, so S = 0 reproduces SAC exactly.
        return DynaState(
            sac=base.init(key),
            model=dynamics.init(stream(key, "model")),
            synthetic=replay.init_buffer(cfg.synthetic_capacity, empty),
            env_step=jnp.int32(0),
        )

    def explore(state, obs, key):
        return base.explore(state.sac, obs, key)

    def exploit(state, obs):
        return base.exploit(state.sac, obs)

    def observe(state, t, valid):
        return state.replace(sac=base.observe(state.sac, t, valid), env_step=state.env_step + 1)

    def rollouts(state, real, agent, key):
        """Branch model rollouts from real states; returns the grown synthetic buffer.

        Nothing is stored while the model is unfitted (see the module docstring).
        """
        k_start, k_steps = jax.random.split(key)
        start = replay.sample(real, k_start, cfg.rollouts_per_step)
        obs, sim_state = start.obs, start.sim_state
        horizon = rollout_horizon(cfg, state.env_step)
        fitted = dynamics.fitted(state.model)
        alive = jnp.full(cfg.rollouts_per_step, fitted)
        synthetic = state.synthetic
        first_reward = None
        for i in range(cfg.max_horizon):  # static and short (1 by default)
            k_act, k_model = jax.random.split(jax.random.fold_in(k_steps, i))
            action = sac.sample_action(cfg.sac, agent.actor_params, obs, k_act)
            next_obs, reward, terminated, sim_state, valid = dynamics.step(state.model, obs, action, sim_state, k_model)
            t = Transition(obs=obs, action=action, reward=reward, next_obs=next_obs,
                           discount=1.0 - terminated.astype(jnp.float32))
            synthetic = replay.add_masked(synthetic, t, alive & valid & (i < horizon))
            first_reward = reward if first_reward is None else first_reward
            alive = alive & ~terminated & valid
            obs = next_obs
        return synthetic, {"rollout/horizon": horizon.astype(jnp.float32),
                           "rollout/reward_mean": first_reward.mean(),
                           MEASURED: {"rollout/reward_mean": fitted}}

    def update(state, t, valid, key):
        real = replay.add(state.sac.buffer, t, valid)
        synthetic, roll_metrics = rollouts(state, real, state.sac.agent, stream(key, "rollouts"))
        sample = mixed_sampler(real, synthetic, cfg.synthetic_ratio, cfg.batch_size,
                               synthetic_window(cfg, state.env_step))
        agent, metrics = sac_learner.gradient_steps(cfg, state.sac.agent, sample, sac_learner.updates_key(key))
        state = state.replace(sac=state.sac.replace(agent=agent, buffer=real), synthetic=synthetic,
                              env_step=state.env_step + 1)
        return state, {**metrics, **roll_metrics}

    def diagnostics(state, key):
        """`q/mean_real` and `reward/mean_real` as for SAC; the critic and the rewards on one
        fresh synthetic batch (from the rows in use; measured once the buffer holds data); and
        the model's accuracy on a fresh real batch (measured once it has been fitted)."""
        syn = replay.sample_recent(state.synthetic, stream(key, "synthetic"), cfg.batch_size,
                                   synthetic_window(cfg, state.env_step))
        has_syn = state.synthetic.size > 0
        metrics = {
            **sac_learner.real_diagnostics(cfg, state.sac, key),  # exactly as SAC measures it
            "q/mean_synthetic": sac.q_values(cfg.sac, state.sac.agent.critic_params, syn.obs, syn.action).mean(),
            "reward/mean_synthetic": syn.reward.mean(),
        }
        measured = {"q/mean_synthetic": has_syn, "reward/mean_synthetic": has_syn}
        batch = sac_learner.sample_real(state.sac.buffer, stream(key, "model_batch"), cfg.batch_size)
        model_metrics = dynamics.diagnostics(state.model, batch)
        measured.update({k: dynamics.fitted(state.model) for k in model_metrics})
        return state, {**metrics, **model_metrics, MEASURED: measured}

    sac_hooks = [Hook(h.name, h.every, lambda s, k, fn=h.fn: _on_sac(s, fn, k), phase=h.phase, due=h.due)
                 for h in base.hooks if h.name != "diagnostics"]
    hooks = [
        Hook("diagnostics", cfg.log_every, diagnostics, phase="measure", due=sac_learner.diagnostics_due(cfg)),
        *sac_hooks,  # agent reset
        *dynamics.hooks(),  # model reset, then refit
    ]

    def time_rollouts(s, k):
        # Into a buffer sized for one step's rollouts: handing back the whole (undonated)
        # synthetic buffer would time a copy of it; in `update` it is written in place.
        small = replay.init_buffer(cfg.rollouts_per_step * cfg.max_horizon, empty)
        return rollouts(s.replace(synthetic=small), s.sac.buffer, s.sac.agent, stream(k, "rollouts"))

    return Learner(init=init, explore=explore, exploit=exploit, observe=observe, update=update,
                   hooks=tuple(hooks), needs_sim_state=dynamics.needs_sim_state,
                   parts=(("rollouts", time_rollouts),), close=getattr(dynamics, "close", lambda: None))


def _on_sac(state: DynaState, fn, key):
    sac_state, metrics = fn(state.sac, key)
    return state.replace(sac=sac_state), metrics
