"""SAC at a high replay ratio: the SAC agent plus a device-resident replay buffer."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from dynalab import replay
from dynalab.agents import sac
from dynalab.algos.base import Hook, Learner, Metrics, repeated_updates, stream
from dynalab.config import TrainConfig
from dynalab.types import EnvSpec, Transition


@struct.dataclass
class SACLearnerState:
    agent: sac.SACState
    buffer: replay.ReplayBuffer


def empty_transition(spec: EnvSpec, with_sim_state: bool = False) -> Transition:
    z = lambda *shape: jnp.zeros(shape, jnp.float32)  # noqa: E731
    return Transition(
        obs=z(spec.obs_dim), action=z(spec.action_dim), reward=z(), next_obs=z(spec.obs_dim), discount=z(),
        sim_state=jnp.zeros(2 * spec.state_dim, jnp.uint32) if with_sim_state else None,
    )


def gradient_steps(
    cfg: TrainConfig,
    agent: sac.SACState,
    sample_batch: Callable[[jax.Array], Transition],
    key: jax.Array,
) -> tuple[sac.SACState, Metrics]:
    """`cfg.replay_ratio` SAC updates (`repeated_updates`), each on a fresh minibatch.

    `sample_batch` is how an algorithm feeds SAC: real replay for SAC, a real/synthetic mix for
    MBPO.
    """
    return repeated_updates(cfg.replay_ratio, agent, sample_batch,
                            lambda a, batch, k: sac.update(cfg.sac, a, batch, k), key)


def sample_real(buffer: replay.ReplayBuffer, key: jax.Array, batch_size: int) -> Transition:
    """A minibatch of real transitions, drawn with the "real" stream of a minibatch key."""
    return replay.sample(buffer, stream(key, "real"), batch_size).without_sim_state()


def agent_key(key: jax.Array) -> jax.Array:
    """The key of the actor-critic's initialisation, from a learner's init key."""
    return stream(key, "agent")


def updates_key(key: jax.Array) -> jax.Array:
    """The key of one env step's SAC updates, from a learner's update key."""
    return stream(key, "sac_updates")


def real_diagnostics(cfg: TrainConfig, state: SACLearnerState, key: jax.Array) -> Metrics:
    """Mean Q of both critics and mean reward on one fresh minibatch of real replay data.

    The one definition of `q/mean_real` and `reward/mean_real` for every algorithm (STFL Figs
    10, 14, 16, 17 compare them across variants): `cfg.batch_size` transitions drawn uniformly
    from the real buffer with `key`, Q of the critic (not the target), averaged over both critics
    and the batch. The per-update Q on the training batches is `q/mean_batch`.
    """
    real = sample_real(state.buffer, key, cfg.batch_size)
    return {"q/mean_real": sac.q_values(cfg.sac, state.agent.critic_params, real.obs, real.action).mean(),
            "reward/mean_real": real.reward.mean()}


def resets_due(cfg: TrainConfig, every: int):
    """A reset every `every` env steps, never on the last step (nothing would use it)."""
    return lambda k: k > 0 and k % every == 0 and k < cfg.steps


def diagnostics_due(cfg: TrainConfig):
    """Diagnostics run on every logging step: multiples of `log_every` and the last step."""
    return lambda k: k % cfg.log_every == 0 or k == cfg.steps


def make(cfg: TrainConfig, spec: EnvSpec, store_sim_state: bool = False) -> Learner:
    """SAC with replay; `store_sim_state` keeps simulator states in the buffer (perfect model)."""

    def init(key):
        return SACLearnerState(
            agent=sac.init(agent_key(key), spec.obs_dim, spec.action_dim, cfg.sac),
            buffer=replay.init_buffer(cfg.capacity, empty_transition(spec, store_sim_state)),
        )

    def explore(state, obs, key):
        return sac.sample_action(cfg.sac, state.agent.actor_params, obs, key)

    def exploit(state, obs):
        return sac.greedy_action(cfg.sac, state.agent.actor_params, obs)

    def observe(state, t, valid):
        return state.replace(buffer=replay.add(state.buffer, t, valid))

    def update(state, t, valid, key):
        buffer = replay.add(state.buffer, t, valid)
        agent, metrics = gradient_steps(
            cfg, state.agent, lambda k: sample_real(buffer, k, cfg.batch_size), updates_key(key)
        )
        return state.replace(agent=agent, buffer=buffer), metrics

    def reset_agent(state, key):
        """Fresh actor, critic, target critic and temperature (STFL, section 5); replay is kept."""
        return state.replace(agent=sac.reset(cfg.sac, state.agent, key)), {}

    def diagnostics(state, key):
        return state, real_diagnostics(cfg, state, key)

    hooks = [Hook("diagnostics", cfg.log_every, diagnostics, phase="measure", due=diagnostics_due(cfg))]
    if cfg.reset_agent_every:
        hooks.append(Hook("reset_agent", cfg.reset_agent_every, reset_agent, due=resets_due(cfg, cfg.reset_agent_every)))
    hooks = tuple(hooks)
    return Learner(init=init, explore=explore, exploit=exploit, observe=observe, update=update,
                   hooks=hooks, needs_sim_state=store_sim_state)
