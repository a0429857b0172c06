"""Soft Actor-Critic (jaxrl / D'Oro et al. high-replay-ratio variant), as pure functions.

One `update` is one gradient step, in jaxrl's order:
  1. critic step on y = r + gamma * discount * (min_i Q'_i(s', a') - alpha * log pi(a'|s')),
     a' ~ pi(.|s') from the current actor, Q' the target critic;
  2. Polyak update of the target critic toward the *new* critic;
  3. actor step on mean(alpha * log pi(a|s) - min_i Q_i(s, a)) with the *new* critic;
  4. temperature step on alpha * (entropy - target_entropy), entropy from step 3.

No RNG key lives in the state; callers pass keys in. `cfg` is a frozen (hashable)
dataclass, so jit with `static_argnums=0` (or close over it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from dynalab.agents.distributions import tanh_gaussian_sample
from dynalab.agents.networks import Actor, DoubleCritic, LogStdMode
from dynalab.types import Transition

Params = Any  # a flax variables dict, {"params": ...}


@dataclass(frozen=True)
class SACConfig:
    hidden: tuple[int, ...] = (256, 256)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    temperature_lr: float = 3e-4
    adam_eps: float = 1.5e-4
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    discount: float = 0.99
    tau: float = 0.005
    init_temperature: float = 1.0
    target_entropy_scale: float = 0.5  # target entropy = -scale * |A|
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    log_std_mode: LogStdMode = "tanh"
    """Actor log-std bound: tanh squashes it (STFL code; initial sigma ~0.018), clip clips it (jaxrl, SB3; ~1)."""
    log_std_init_scale: float = math.sqrt(2.0)
    """Gain of the orthogonal init of the actor's log-std head (jaxrl and D'Oro et al.'s fork use 1.0)."""
    critic_layernorm: bool = False


class SACState(struct.PyTreeNode):
    actor_params: Params
    critic_params: Params
    target_critic_params: Params
    log_alpha: jax.Array  # scalar; alpha = exp(log_alpha) keeps the temperature positive
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    temperature_opt_state: optax.OptState


# --- construction -------------------------------------------------------------------


def make_optimizer(lr: float, cfg: SACConfig) -> optax.GradientTransformation:
    """Adam with the config's betas and eps; rebuilt from cfg wherever needed (it is stateless)."""
    return optax.adam(lr, b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps)


def make_actor(cfg: SACConfig, action_dim: int) -> Actor:
    return Actor(cfg.hidden, action_dim, cfg.log_std_min, cfg.log_std_max, cfg.log_std_mode, cfg.log_std_init_scale)


def make_critic(cfg: SACConfig) -> DoubleCritic:
    return DoubleCritic(cfg.hidden, cfg.critic_layernorm)


def target_entropy(cfg: SACConfig, action_dim: int) -> float:
    return -cfg.target_entropy_scale * action_dim


def _action_dim(actor_params: Params) -> int:
    # Static under jit: read from the mean head's kernel shape so callers needn't pass it.
    return actor_params["params"]["mean"]["kernel"].shape[-1]


def _obs_dim(actor_params: Params) -> int:
    return actor_params["params"]["trunk"]["Dense_0"]["kernel"].shape[0]


def init(key: jax.Array, obs_dim: int, action_dim: int, cfg: SACConfig) -> SACState:
    """Fresh parameters and optimizer states; the target critic starts equal to the critic."""
    actor_key, critic_key = jax.random.split(key)
    obs = jnp.zeros((1, obs_dim))
    action = jnp.zeros((1, action_dim))
    actor_params = make_actor(cfg, action_dim).init(actor_key, obs)
    critic_params = make_critic(cfg).init(critic_key, obs, action)
    log_alpha = jnp.log(jnp.asarray(cfg.init_temperature, jnp.float32))
    return SACState(
        actor_params=actor_params,
        critic_params=critic_params,
        target_critic_params=critic_params,
        log_alpha=log_alpha,
        actor_opt_state=make_optimizer(cfg.actor_lr, cfg).init(actor_params),
        critic_opt_state=make_optimizer(cfg.critic_lr, cfg).init(critic_params),
        temperature_opt_state=make_optimizer(cfg.temperature_lr, cfg).init(log_alpha),
    )


def reset(
    cfg: SACConfig,
    state: SACState,
    key: jax.Array,
    *,
    actor: bool = True,
    critic: bool = True,
    temperature: bool = True,
) -> SACState:
    """Re-initialise the selected parts (with their optimizer states) from `key`.

    `critic=True` resets the critic, its target and its optimizer together. Flags are
    Python bools (static); sizes are read from the current params.
    """
    fresh = init(key, _obs_dim(state.actor_params), _action_dim(state.actor_params), cfg)
    if actor:
        state = state.replace(actor_params=fresh.actor_params, actor_opt_state=fresh.actor_opt_state)
    if critic:
        state = state.replace(
            critic_params=fresh.critic_params,
            target_critic_params=fresh.target_critic_params,
            critic_opt_state=fresh.critic_opt_state,
        )
    if temperature:
        state = state.replace(
            log_alpha=fresh.log_alpha, temperature_opt_state=fresh.temperature_opt_state
        )
    return state


# --- acting -------------------------------------------------------------------------


def sample_action_and_log_prob(
    cfg: SACConfig, actor_params: Params, obs: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """a ~ pi(.|obs) and log pi(a|obs); obs may be (obs_dim,) or (B, obs_dim).

    The noise is `jax.random.normal(key, (*obs.shape[:-1], action_dim))`.
    """
    mean, log_std = make_actor(cfg, _action_dim(actor_params)).apply(actor_params, obs)
    return tanh_gaussian_sample(key, mean, log_std)


def sample_action(cfg: SACConfig, actor_params: Params, obs: jax.Array, key: jax.Array) -> jax.Array:
    """Stochastic action for exploration."""
    return sample_action_and_log_prob(cfg, actor_params, obs, key)[0]


def greedy_action(cfg: SACConfig, actor_params: Params, obs: jax.Array) -> jax.Array:
    """Deterministic action tanh(mean), for evaluation."""
    mean, _ = make_actor(cfg, _action_dim(actor_params)).apply(actor_params, obs)
    return jnp.tanh(mean)


def q_values(cfg: SACConfig, critic_params: Params, obs: jax.Array, action: jax.Array) -> jax.Array:
    """Both critics' Q(s, a), shape (2, *batch)."""
    return make_critic(cfg).apply(critic_params, obs, action)


# --- losses (each returns (loss, aux metrics); the differentiated params come second) --


def critic_loss(
    cfg: SACConfig,
    critic_params: Params,
    target_critic_params: Params,
    actor_params: Params,
    alpha: jax.Array,
    batch: Transition,
    key: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped double-Q soft Bellman loss: mean((Q1 - y)^2) + mean((Q2 - y)^2).

    `key` draws a' ~ pi(.|s') with noise `jax.random.normal(key, batch.action.shape)`.
    """
    next_action, next_log_prob = sample_action_and_log_prob(cfg, actor_params, batch.next_obs, key)
    next_q = q_values(cfg, target_critic_params, batch.next_obs, next_action).min(axis=0)
    # Guard the classic (B,) vs (B, 1) broadcast bug, which would silently give a (B, B) target.
    assert batch.reward.shape == next_q.shape == batch.discount.shape, (
        batch.reward.shape,
        next_q.shape,
        batch.discount.shape,
    )
    soft_next_v = next_q - alpha * next_log_prob
    target = batch.reward + cfg.discount * batch.discount * soft_next_v
    target = jax.lax.stop_gradient(target)
    q = q_values(cfg, critic_params, batch.obs, batch.action)
    loss = jnp.square(q - target[None]).mean(axis=-1).sum()
    return loss, {"q/mean_batch": q.mean(), "q/target_mean": target.mean()}


def actor_loss(
    cfg: SACConfig,
    actor_params: Params,
    critic_params: Params,
    alpha: jax.Array,
    obs: jax.Array,
    key: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """mean(alpha * log pi(a|s) - min_i Q_i(s, a)), a ~ pi(.|s) reparameterised.

    `alpha` is a constant here; it is learned by `temperature_loss` alone.
    """
    action, log_prob = sample_action_and_log_prob(cfg, actor_params, obs, key)
    q = q_values(cfg, critic_params, obs, action).min(axis=0)
    loss = (jax.lax.stop_gradient(alpha) * log_prob - q).mean()
    return loss, {"sac/entropy": -log_prob.mean()}


def temperature_loss(
    log_alpha: jax.Array, entropy: jax.Array, target_entropy: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """alpha * (entropy - target): lowers alpha while entropy exceeds the target."""
    alpha = jnp.exp(log_alpha)
    loss = alpha * (jax.lax.stop_gradient(entropy) - target_entropy)
    return loss, {"sac/temperature": alpha}


# --- one gradient step --------------------------------------------------------------


def _apply_grads(
    lr: float, cfg: SACConfig, params: Any, opt_state: optax.OptState, grads: Any
) -> tuple[Any, optax.OptState]:
    updates, opt_state = make_optimizer(lr, cfg).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def update(
    cfg: SACConfig, state: SACState, batch: Transition, key: jax.Array
) -> tuple[SACState, dict[str, jax.Array]]:
    """One gradient step of critic, target, actor and temperature (see module docstring).

    Keys: `critic_key, actor_key = jax.random.split(key)`.
    """
    critic_key, actor_key = jax.random.split(key)
    alpha = jnp.exp(state.log_alpha)

    # (1) critic
    (c_loss, c_aux), c_grads = jax.value_and_grad(partial(critic_loss, cfg), has_aux=True)(
        state.critic_params, state.target_critic_params, state.actor_params, alpha, batch, critic_key
    )
    critic_params, critic_opt_state = _apply_grads(
        cfg.critic_lr, cfg, state.critic_params, state.critic_opt_state, c_grads
    )

    # (2) target <- (1 - tau) * target + tau * online
    target_critic_params = optax.incremental_update(
        critic_params, state.target_critic_params, cfg.tau
    )

    # (3) actor, against the critic just updated
    (a_loss, a_aux), a_grads = jax.value_and_grad(partial(actor_loss, cfg), has_aux=True)(
        state.actor_params, critic_params, alpha, batch.obs, actor_key
    )
    actor_params, actor_opt_state = _apply_grads(
        cfg.actor_lr, cfg, state.actor_params, state.actor_opt_state, a_grads
    )

    # (4) temperature, from the entropy measured in the actor step
    entropy = a_aux["sac/entropy"]
    (t_loss, _), t_grad = jax.value_and_grad(temperature_loss, has_aux=True)(
        state.log_alpha, entropy, target_entropy(cfg, batch.action.shape[-1])
    )
    log_alpha, temperature_opt_state = _apply_grads(
        cfg.temperature_lr, cfg, state.log_alpha, state.temperature_opt_state, t_grad
    )

    new_state = SACState(
        actor_params=actor_params,
        critic_params=critic_params,
        target_critic_params=target_critic_params,
        log_alpha=log_alpha,
        actor_opt_state=actor_opt_state,
        critic_opt_state=critic_opt_state,
        temperature_opt_state=temperature_opt_state,
    )
    metrics = {
        "loss/critic": c_loss,
        "loss/actor": a_loss,
        "loss/temperature": t_loss,
        "sac/temperature": alpha,  # the alpha used in this step's critic and actor losses
        "sac/entropy": entropy,
        "q/mean_batch": c_aux["q/mean_batch"],
    }
    return new_state, metrics
