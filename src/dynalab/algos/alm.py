"""ALM and ALM without Dyna as learners: the ALM agent plus a device-resident sequence replay.

Per env step, one compiled call: store the real transition (with its episode-seam flag, see
`dynalab.sequences`), then `cfg.replay_ratio` ALM updates (1 in STFL Table 3), each on B
length-K sequences and B single transitions drawn independently from the real replay. The
only difference between `alm` and `alm-nodyna` is the actor loss (`dynalab.agents.alm.update`,
`dyna`).

The exploration schedule counts learning steps: `updates` (in the state) is the number of ALM
updates done so far; acting uses sigma(updates) and the next update sigma(updates + 1), as the
authors' code, which acts at post-warm-up step 0 and calls its first update with step 1. It is
carried in the checkpointed state, so a resumed run continues the schedule exactly.

Until K consecutive rows of one episode are stored (only possible with a warm-up shorter than
K steps), no sequence can be drawn: the update then leaves the agent unchanged and its metrics
are marked unmeasured (never logged).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from dynalab import replay, sequences
from dynalab.agents import alm
from dynalab.algos import sac as sac_learner
from dynalab.algos.base import MEASURED, OFFENDING_BATCH, Hook, Learner, Metrics, repeated_updates, stream
from dynalab.config import TrainConfig
from dynalab.types import EnvSpec, Transition


@struct.dataclass
class ALMLearnerState:
    agent: alm.ALMState
    buffer: replay.ReplayBuffer  # a ring of `sequences.Row`: real transitions and episode seams
    updates: jax.Array  # int32: ALM updates done, the exploration schedule's post-warm-up step


def sample_batch(cfg: TrainConfig, buffer: replay.ReplayBuffer, key: jax.Array) -> tuple[Transition, Transition]:
    """(sequences (B, K, ...), transitions (B, ...)), drawn with the streams "sequences" and
    "transitions" of a minibatch key; B = `cfg.batch_size`, K = `cfg.alm.horizon`."""
    seqs = sequences.sample_sequences(buffer, stream(key, "sequences"), cfg.batch_size, cfg.alm.horizon)
    single = sequences.sample_transitions(buffer, stream(key, "transitions"), cfg.batch_size)
    return seqs, single


def real_diagnostics(cfg: TrainConfig, state: ALMLearnerState, key: jax.Array) -> Metrics:
    """`q/mean_real` and `reward/mean_real` as every algorithm defines them (see
    `dynalab.algos.sac.real_diagnostics`): both critics' mean Q and the mean reward on one fresh
    batch of `cfg.batch_size` real transitions. ALM's critic sees latents: each observation is
    encoded by a sample of the target encoder (key stream "latent"), the distribution the critic
    is trained on."""
    real = sequences.sample_transitions(state.buffer, stream(key, "real"), cfg.batch_size)
    z = alm.sample_latent(cfg.alm, state.agent.target_encoder_params, real.obs, stream(key, "latent"))
    q = alm.q_values(cfg.alm, state.agent.critic_params, z, real.action)
    return {"q/mean_real": q.mean(), "reward/mean_real": real.reward.mean()}


def make(cfg: TrainConfig, spec: EnvSpec, dyna: bool = True) -> Learner:
    """The ALM learner (`dyna=True`) or ALM without Dyna (`dyna=False`); see the module docstring."""
    horizon = cfg.alm.horizon

    def init(key):
        return ALMLearnerState(
            agent=alm.init(sac_learner.agent_key(key), spec.obs_dim, spec.action_dim, cfg.alm),
            buffer=sequences.init_buffer(cfg.capacity, sac_learner.empty_transition(spec)),
            updates=jnp.int32(0),
        )

    def explore(state, obs, key):
        return alm.explore_action(cfg.alm, state.agent, obs, state.updates, key)

    def exploit(state, obs):
        return alm.greedy_action(cfg.alm, state.agent, obs)

    def observe(state, t, valid):
        return state.replace(buffer=sequences.add(state.buffer, t, valid))

    def one_update(carry, batch, key):
        agent, updates = carry
        seqs, single = batch
        agent, metrics = alm.update(cfg.alm, agent, seqs, single, updates + 1, key, dyna=dyna)
        return (agent, updates + 1), metrics

    def update(state, t, valid, key):
        buffer = sequences.add(state.buffer, t, valid)
        (agent, updates), metrics = repeated_updates(
            cfg.replay_ratio, (state.agent, state.updates), lambda k: sample_batch(cfg, buffer, k), one_update,
            stream(key, "alm_updates"))
        ready = sequences.num_valid_starts(buffer, horizon) > 0
        agent, updates = jax.tree.map(lambda new, old: jnp.where(ready, new, old),
                                      (agent, updates), (state.agent, state.updates))
        metrics[MEASURED] = {name: ready for name in metrics if name != OFFENDING_BATCH}
        return state.replace(agent=agent, buffer=buffer, updates=updates), metrics

    def diagnostics(state, key):
        return state, real_diagnostics(cfg, state, key)

    hooks = (Hook("diagnostics", cfg.log_every, diagnostics, phase="measure",
                  due=sac_learner.diagnostics_due(cfg)),)
    return Learner(init=init, explore=explore, exploit=exploit, observe=observe, update=update, hooks=hooks)
