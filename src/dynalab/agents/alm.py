"""Aligned Latent Models (ALM, Ghugare et al. 2023) and ALM without Dyna, as pure functions.

This is the agent core only: networks, losses and one gradient step, exactly as
`shared/ALM.md` specifies (the STFL paper, section 3.3, Appendix D.1 and Table 3, and the ALM
authors' code, RajGhugare19/alm: `agents/alm.py`, `models.py`, `utils/torch_utils.py`,
`utils/env.py`, `cfgs/agent/alm.yaml`; the no-Dyna actor loss `_td_loss` of its `experimental`
branch). Replay, the learner interface and the step counter live elsewhere.

Latents. Z-dim diagonal Gaussians; `sample_latent` draws z = mean + std * eps with
eps = `jax.random.normal(key, mean.shape)`. Which encoder feeds what:

- acting (`explore_action`): a sample of the ONLINE encoder; evaluation (`greedy_action`): the
  online encoder's mean (the authors' code samples there, so their evaluation is stochastic);
- model/encoder loss: z0 from the online encoder (reparameterised), KL targets from the TARGET
  encoder;
- reward, classifier, critic and actor: independent samples of the TARGET encoder, one per
  consumer, no gradient. The encoder is trained only by the model/encoder loss.

Noisy actions. `noisy_action(mu, sigma, key, clip)` = clamp_st(mu + clip(sigma * eps, -clip,
clip)), eps = `jax.random.normal(key, mu.shape)`, where clamp_st clamps to [-1 + 1e-6, 1 - 1e-6]
in the forward pass and passes the gradient straight through (the authors' TruncatedNormal).
Learning-side noise is clipped to +-`noise_clip` (0.3); acting noise is not clipped.

One `update` = ALM.md's steps, in order (update-to-data 1):
  1. model + online encoder on `sequences` (B, K): sum_t KL(m(.|z_t, a_t) || sg e_target(.|s_t+1))
     - r(z_t, a_t) - Qmin(z_K, sg a~_K), the reward net and critic frozen, a~_K under no-grad;
  2a. reward + classifier on `transitions`: MSE(r(z, a), r) + cross-entropy of D(z, a, z'_in),
      exactly B // 2 rows (without replacement) with z'_in a model sample (label 0), the rest a
      target-encoder sample of s' (label 1);
  2b. critic: y = r + gamma d Qmin_target(z', a'~), a'~ the ONLINE actor's clipped noisy action;
  2c. actor: lambda-SVG through the frozen model (ALM) or -Qmin(z, a~(z)) (no Dyna);
  3. Polyak update of the target encoder and target critic (tau).
Each step uses the nets as updated earlier in the same call. Four optimiser groups, each Adam
after clipping the group's global gradient norm: {model, encoder}, {reward, classifier},
{critic}, {actor}.

Small differences from the authors' PyTorch code, all deliberate or immaterial:
- evaluation acts at the encoder's mean latent (theirs samples it);
- clipping is optax's `clip_by_global_norm` (scale max_norm / norm), theirs
  `clip_grad_norm_` (max_norm / (norm + 1e-6));
- dynalab's actions are already in [-1, 1], so their unscaled-mean quirk on tasks with other
  bounds does not arise;
- the Gaussian head is theirs, including its soft upper std bound of 0.1 + softplus(9.9) =
  10.00005, not exactly 10;
- the schedule step is the caller's: their code acts at step 0 with sigma(0) and calls its
  first update with step 1 (`workspaces/mujoco_workspace.py`).

Keys: `update`'s key derives every child with `dynalab.rng.stream` (names in `update`),
and so do the keys handed to `model_loss`, `alm_actor_loss` and `explore_action`; a key that is
drawn from is never also used to derive others. No key lives in the state. `cfg` is a frozen
(hashable) dataclass: jit with it static.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from dynalab.agents.networks import orthogonal, stacked
from dynalab.rng import stream
from dynalab.types import Transition

Params = Any  # a flax variables dict, {"params": ...}
sg = jax.lax.stop_gradient


@dataclass(frozen=True)
class ALMConfig:
    """STFL Table 3 and the authors' `cfgs/agent/alm.yaml`, plus the fixed constants of their code."""

    latent_dim: int = 50
    """Z: dimension of the latent state (encoder and latent model outputs)."""
    hidden: int = 512
    """Width of the two hidden layers of every net but the latent model."""
    model_hidden: int = 1024
    """Width of the latent model's two hidden layers."""
    horizon: int = 3
    """K: length of the model-loss sequences and of the actor's imagination."""
    td_lambda: float = 0.95
    """lambda of the actor's lambda-returns along the imagination."""
    discount: float = 0.99
    """gamma, of the critic's TD target and the lambda-returns."""
    tau: float = 0.005
    """Polyak rate of the target encoder and the target critic, every update."""
    lr: float = 1e-4
    """Adam learning rate of all four optimiser groups."""
    adam_eps: float = 1e-8
    """Adam epsilon of all four optimiser groups."""
    adam_b1: float = 0.9
    """Adam beta1."""
    adam_b2: float = 0.999
    """Adam beta2."""
    max_grad_norm: float = 100.0
    """Each optimiser group's global gradient norm is clipped to this before Adam."""
    classifier_reward_weight: float = 0.1
    """Weight of the classifier's log-odds in the actor's imagined reward."""
    noise_clip: float = 0.3
    """Learning-side exploration noise is clipped to +-noise_clip; acting noise is not."""
    std_start: float = 1.0
    """Exploration std at the first learning step."""
    std_end: float = 0.1
    """Exploration std after --alm.std-duration learning steps."""
    std_duration: int = 100_000
    """Exploration std goes linearly from std_start to std_end over this many post-warm-up steps."""
    # Fixed constants of the authors' code (models.py, utils/torch_utils.py).
    mean_bound: float = 30.0
    """Gaussian heads' means are 30 tanh(m / 30)."""
    std_min: float = 0.1
    """Soft lower bound of the Gaussian heads' std."""
    std_max: float = 10.0
    """Soft upper bound of the Gaussian heads' std."""
    action_eps: float = 1e-6
    """Noisy actions are clamped to [-1 + eps, 1 - eps]."""
    layernorm_eps: float = 1e-5
    """LayerNorm epsilon of the reward, classifier and critic nets."""


# --- networks -----------------------------------------------------------------------


def _dense(features: int, name: str | None = None) -> nn.Dense:
    # PyTorch `nn.init.orthogonal_` (gain 1) and zero biases, as the authors' `weight_init`.
    return nn.Dense(features, kernel_init=orthogonal(1.0), bias_init=nn.initializers.zeros, name=name)


def bounded_gaussian(raw: jax.Array, cfg: ALMConfig) -> tuple[jax.Array, jax.Array]:
    """The Gaussian head: raw = [m, s] on the last axis -> (mean, std).

    mean = 30 tanh(m / 30); std = 0.1 + softplus(10 - softplus(10 - s) - 0.1), softly bounded:
    it tends to 0.1 from above as s -> -inf and to 0.1 + softplus(9.9) = 10.00005 as s -> inf.
    """
    m, s = jnp.split(raw, 2, axis=-1)
    mean = cfg.mean_bound * jnp.tanh(m / cfg.mean_bound)
    s = cfg.std_max - jax.nn.softplus(cfg.std_max - s)
    std = cfg.std_min + jax.nn.softplus(s - cfg.std_min)
    return mean, std


class GaussianMLP(nn.Module):
    """Dense-ELU-Dense-ELU-Dense(2 Z) and the Gaussian head: the encoder and the latent model."""

    cfg: ALMConfig
    width: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = nn.elu(_dense(self.width, "fc1")(x))
        x = nn.elu(_dense(self.width, "fc2")(x))
        return bounded_gaussian(_dense(2 * self.cfg.latent_dim, "out")(x), self.cfg)


class LNTanhMLP(nn.Module):
    """Dense, LayerNorm, tanh, Dense, ELU, Dense(out): the reward, classifier and critic bodies."""

    cfg: ALMConfig
    out: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _dense(self.cfg.hidden, "fc1")(x)
        x = nn.LayerNorm(epsilon=self.cfg.layernorm_eps, use_fast_variance=False, name="norm")(x)
        x = nn.elu(_dense(self.cfg.hidden, "fc2")(jnp.tanh(x)))
        return _dense(self.out, "out")(x)


class Reward(nn.Module):
    cfg: ALMConfig

    @nn.compact
    def __call__(self, z: jax.Array, action: jax.Array) -> jax.Array:
        return LNTanhMLP(self.cfg, 1, name="body")(jnp.concatenate([z, action], -1)).squeeze(-1)


class Classifier(nn.Module):
    """Two logits for (z, a, z'): index 1 = z' is a real (target-encoder) latent, 0 = a model latent."""

    cfg: ALMConfig

    @nn.compact
    def __call__(self, z: jax.Array, action: jax.Array, z_next: jax.Array) -> jax.Array:
        return LNTanhMLP(self.cfg, 2, name="body")(jnp.concatenate([z, action, z_next], -1))


class DoubleCritic(nn.Module):
    """Two independent Q heads on [z, a], params stacked on a leading axis; returns (2, *batch)."""

    cfg: ALMConfig

    @nn.compact
    def __call__(self, z: jax.Array, action: jax.Array) -> jax.Array:
        return stacked(LNTanhMLP, 2)(self.cfg, 1, name="qs")(jnp.concatenate([z, action], -1)).squeeze(-1)


class Actor(nn.Module):
    """Deterministic policy mean: Dense-ELU-Dense-ELU-Dense(A), tanh."""

    cfg: ALMConfig
    action_dim: int

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        x = nn.elu(_dense(self.cfg.hidden, "fc1")(z))
        x = nn.elu(_dense(self.cfg.hidden, "fc2")(x))
        return jnp.tanh(_dense(self.action_dim, "out")(x))


def _action_dim(actor_params: Params) -> int:
    return actor_params["params"]["out"]["kernel"].shape[-1]


def encode(cfg: ALMConfig, encoder_params: Params, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean, std) of e(.|obs); the same function for the online and the target encoder."""
    return GaussianMLP(cfg, cfg.hidden).apply(encoder_params, obs)


def latent_step(cfg: ALMConfig, model_params: Params, z: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean, std) of the latent model m(.|z, a)."""
    return GaussianMLP(cfg, cfg.model_hidden).apply(model_params, jnp.concatenate([z, action], -1))


def rsample(mean: jax.Array, std: jax.Array, key: jax.Array) -> jax.Array:
    """mean + std * eps, eps = jax.random.normal(key, mean.shape, mean.dtype)."""
    return mean + std * jax.random.normal(key, mean.shape, mean.dtype)


def sample_latent(cfg: ALMConfig, encoder_params: Params, obs: jax.Array, key: jax.Array) -> jax.Array:
    return rsample(*encode(cfg, encoder_params, obs), key)


def reward(cfg: ALMConfig, reward_params: Params, z: jax.Array, action: jax.Array) -> jax.Array:
    return Reward(cfg).apply(reward_params, z, action)


def classifier_logits(cfg: ALMConfig, classifier_params: Params, z, action, z_next) -> jax.Array:
    return Classifier(cfg).apply(classifier_params, z, action, z_next)


def classifier_reward(cfg: ALMConfig, classifier_params: Params, z, action, z_next) -> jax.Array:
    """c = logit_1 - logit_0 (the log-odds that z_next is a real latent)."""
    logits = classifier_logits(cfg, classifier_params, z, action, z_next)
    return logits[..., 1] - logits[..., 0]


def q_values(cfg: ALMConfig, critic_params: Params, z: jax.Array, action: jax.Array) -> jax.Array:
    """Both critics' Q(z, a), shape (2, *batch)."""
    return DoubleCritic(cfg).apply(critic_params, z, action)


def actor_mean(cfg: ALMConfig, actor_params: Params, z: jax.Array) -> jax.Array:
    return Actor(cfg, _action_dim(actor_params)).apply(actor_params, z)


# --- state --------------------------------------------------------------------------


class ALMState(struct.PyTreeNode):
    encoder_params: Params
    target_encoder_params: Params
    model_params: Params
    reward_params: Params
    classifier_params: Params
    critic_params: Params
    target_critic_params: Params
    actor_params: Params
    model_opt_state: optax.OptState  # over {"model": model_params, "encoder": encoder_params}
    reward_opt_state: optax.OptState  # over {"reward": reward_params, "classifier": classifier_params}
    critic_opt_state: optax.OptState
    actor_opt_state: optax.OptState


def make_optimizer(cfg: ALMConfig) -> optax.GradientTransformation:
    """Clip the group's global gradient norm, then Adam; the same for all four groups.

    `optax.flatten` runs both on the group's gradients raveled into one vector: the same
    arithmetic (the global norm is the vector's norm; Adam is elementwise), in a few large ops
    instead of a dozen small ones per parameter array, which keeps the compiled update small.
    The state is therefore flat: `opt_state[0]` is the clip's, `opt_state[1][0]` Adam's (count,
    mu, nu), mu and nu vectors in the order of `jax.tree.leaves(group)`.
    """
    return optax.flatten(optax.chain(
        optax.clip_by_global_norm(cfg.max_grad_norm),
        optax.adam(cfg.lr, b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps),
    ))


def model_group(state: ALMState) -> dict[str, Params]:
    return {"model": state.model_params, "encoder": state.encoder_params}


def reward_group(state: ALMState) -> dict[str, Params]:
    return {"reward": state.reward_params, "classifier": state.classifier_params}


def init(key: jax.Array, obs_dim: int, action_dim: int, cfg: ALMConfig) -> ALMState:
    """Fresh nets (keys: `stream(key, <net name>)`) and optimiser states; targets equal the online nets."""
    obs = jnp.zeros((1, obs_dim))
    z = jnp.zeros((1, cfg.latent_dim))
    a = jnp.zeros((1, action_dim))
    k = partial(stream, key)
    encoder = GaussianMLP(cfg, cfg.hidden).init(k("encoder"), obs)
    model = GaussianMLP(cfg, cfg.model_hidden).init(k("model"), jnp.concatenate([z, a], -1))
    reward_params = Reward(cfg).init(k("reward"), z, a)
    classifier = Classifier(cfg).init(k("classifier"), z, a, z)
    critic = DoubleCritic(cfg).init(k("critic"), z, a)
    actor = Actor(cfg, action_dim).init(k("actor"), z)
    opt = make_optimizer(cfg)
    return ALMState(
        encoder_params=encoder,
        target_encoder_params=encoder,
        model_params=model,
        reward_params=reward_params,
        classifier_params=classifier,
        critic_params=critic,
        target_critic_params=critic,
        actor_params=actor,
        model_opt_state=opt.init({"model": model, "encoder": encoder}),
        reward_opt_state=opt.init({"reward": reward_params, "classifier": classifier}),
        critic_opt_state=opt.init(critic),
        actor_opt_state=opt.init(actor),
    )


# --- exploration and acting ---------------------------------------------------------


def exploration_std(cfg: ALMConfig, t: jax.Array | int) -> jax.Array:
    """sigma(t) = end + (1 - min(t / duration, 1)) (start - end), t counted after warm-up."""
    frac = jnp.minimum(jnp.asarray(t, jnp.float32) / cfg.std_duration, 1.0)
    return jnp.asarray(cfg.std_end + (1.0 - frac) * (cfg.std_start - cfg.std_end), jnp.float32)


def clamp_st(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Clamp to [-1 + eps, 1 - eps] in the forward pass, identity gradient (straight-through).

    Written as (x - sg(x)) + sg(clamped), as the authors' TruncatedNormal: the forward value is
    exactly the clamped one.
    """
    return (x - sg(x)) + sg(jnp.clip(x, -1.0 + eps, 1.0 - eps))


def noisy_action(
    mean: jax.Array, sigma: jax.Array, key: jax.Array, clip: float | None, eps: float = 1e-6
) -> jax.Array:
    """clamp_st(mean + noise), noise = sigma * jax.random.normal(key, mean.shape), clipped to +-clip
    unless clip is None."""
    noise = sigma * jax.random.normal(key, mean.shape, mean.dtype)
    if clip is not None:
        noise = jnp.clip(noise, -clip, clip)
    return clamp_st(mean + noise, eps)


def explore_action(
    cfg: ALMConfig, state: ALMState, obs: jax.Array, post_warmup_step: jax.Array | int, key: jax.Array
) -> jax.Array:
    """Acting: z = sample of the ONLINE encoder (key `stream(key, "latent")`), then the actor's
    mean plus UNCLIPPED noise sigma(t) * eps (key `stream(key, "noise")`), clamped to the bounds."""
    z = sample_latent(cfg, state.encoder_params, obs, stream(key, "latent"))
    mu = actor_mean(cfg, state.actor_params, z)
    return noisy_action(mu, exploration_std(cfg, post_warmup_step), stream(key, "noise"), None, cfg.action_eps)


def greedy_action(cfg: ALMConfig, state: ALMState, obs: jax.Array) -> jax.Array:
    """Evaluation: the actor's mean at the online encoder's mean latent."""
    z, _ = encode(cfg, state.encoder_params, obs)
    return actor_mean(cfg, state.actor_params, z)


# --- pieces of the losses -----------------------------------------------------------


def gaussian_kl(mean_p: jax.Array, std_p: jax.Array, mean_q: jax.Array, std_q: jax.Array) -> jax.Array:
    """KL(N(mean_p, std_p^2) || N(mean_q, std_q^2)) of diagonal Gaussians, summed over the last axis."""
    var_p, var_q = jnp.square(std_p), jnp.square(std_q)
    kl = jnp.log(std_q) - jnp.log(std_p) + (var_p + jnp.square(mean_p - mean_q)) / (2.0 * var_q) - 0.5
    return kl.sum(axis=-1)


def lambda_returns(rewards: jax.Array, values: jax.Array, discount: float, lam: float) -> jax.Array:
    """Time-major lambda-returns: rewards (K, ...), values (K + 1, ...) -> G (K, ...).

    G_K = values_K; G_t = rewards_t + discount ((1 - lam) values_{t+1} + lam G_{t+1}).
    """
    horizon = rewards.shape[0]
    assert values.shape[0] == horizon + 1, (rewards.shape, values.shape)
    g = values[horizon]
    out = []
    for t in reversed(range(horizon)):
        g = rewards[t] + discount * ((1.0 - lam) * values[t + 1] + lam * g)
        out.append(g)
    return jnp.stack(out[::-1])


def classifier_labels(key: jax.Array, batch_size: int) -> jax.Array:
    """int32 labels: 0 on exactly batch_size // 2 rows chosen without replacement
    (`jax.random.permutation(key, batch_size)[:batch_size // 2]`), 1 elsewhere."""
    fake = jax.random.permutation(key, batch_size)[: batch_size // 2]
    return jnp.ones(batch_size, jnp.int32).at[fake].set(0)


def classifier_inputs(labels: jax.Array, z_next_real: jax.Array, z_next_model: jax.Array) -> jax.Array:
    """The classifier's z': the real latent where the label is 1, the model latent where it is 0."""
    return jnp.where(labels[:, None] == 1, z_next_real, z_next_model)


# --- losses (each returns (loss, aux); the differentiated params come first after cfg) ---


def model_loss(
    cfg: ALMConfig,
    group: dict[str, Params],
    target_encoder_params: Params,
    reward_params: Params,
    critic_params: Params,
    actor_params: Params,
    sequences: Transition,
    sigma: jax.Array,
    key: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The ALM objective for the {model, encoder} group on sequences shaped (B, K, ...).

    z0 = rsample e(.|s0) (key `stream(key, "z0")`); for t < K: KL_t = KL(m(.|z_t, a_t) ||
    sg e_target(.|s_t+1)) with s_t+1 = next_obs[:, t], R_t = r(z_t, a_t) (reward net frozen,
    gradient into z_t), z_t+1 = rsample m(.|z_t, a_t) with the buffer's a_t (key
    `stream(key, f"z{t + 1}")`); V_K = Qmin(z_K, sg a~_K) (online critic frozen; a~_K the actor's
    clipped noisy action, key `stream(key, "value_action")`, under no-grad).
    loss = mean_B[sum_t (KL_t - R_t) - V_K] = kl - reward - value of the aux terms.
    """
    horizon = cfg.horizon
    assert sequences.action.shape[1] == horizon, (sequences.action.shape, horizon)
    target_mean, target_std = sg(encode(cfg, target_encoder_params, sequences.next_obs))  # (B, K, Z)
    z = rsample(*encode(cfg, group["encoder"], sequences.obs[:, 0]), stream(key, "z0"))
    zs, kl = [], 0.0
    for t in range(horizon):
        zs.append(z)
        mean, std = latent_step(cfg, group["model"], z, sequences.action[:, t])
        kl = kl + gaussian_kl(mean, std, target_mean[:, t], target_std[:, t])
        z = rsample(mean, std, stream(key, f"z{t + 1}"))
    rew = reward(cfg, reward_params, jnp.stack(zs, 1), sequences.action).sum(axis=1)  # sum over t of R_t
    last_action = sg(noisy_action(actor_mean(cfg, actor_params, z), sigma, stream(key, "value_action"),
                                  cfg.noise_clip, cfg.action_eps))
    value = q_values(cfg, critic_params, z, last_action).min(axis=0)
    loss = jnp.mean(kl - rew - value)
    return loss, {"loss/model_kl": kl.mean(), "loss/model_reward": rew.mean(), "loss/model_value": value.mean()}


def reward_classifier_loss(
    cfg: ALMConfig,
    group: dict[str, Params],
    z: jax.Array,
    action: jax.Array,
    true_reward: jax.Array,
    z_next_in: jax.Array,
    labels: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MSE(r(z, a), r) + 2-class cross-entropy of D(z, a, z'_in) against `labels`, both weight 1."""
    pred = reward(cfg, group["reward"], z, action)
    assert pred.shape == true_reward.shape, (pred.shape, true_reward.shape)
    mse = jnp.mean(jnp.square(pred - true_reward))
    logits = classifier_logits(cfg, group["classifier"], z, action, z_next_in)
    picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    ce = jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
    return mse + ce, {"loss/reward_mse": mse, "loss/classifier_ce": ce, "classifier/accuracy": accuracy}


def critic_loss(
    cfg: ALMConfig,
    critic_params: Params,
    target_critic_params: Params,
    actor_params: Params,
    z: jax.Array,
    action: jax.Array,
    true_reward: jax.Array,
    discount: jax.Array,
    z_next: jax.Array,
    sigma: jax.Array,
    key: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(MSE(Q1, y) + MSE(Q2, y)) / 2, y = r + gamma d Qmin_target(z', a'~).

    a'~ = `noisy_action(mu(z'), sigma, key, noise_clip)` with `actor_params` (the online actor):
    its noise is exactly `sigma * jax.random.normal(key, (B, A))`, clipped to +-noise_clip.
    """
    next_action = noisy_action(actor_mean(cfg, actor_params, z_next), sigma, key, cfg.noise_clip, cfg.action_eps)
    next_q = q_values(cfg, target_critic_params, z_next, next_action).min(axis=0)
    assert true_reward.shape == next_q.shape == discount.shape, (true_reward.shape, next_q.shape, discount.shape)
    target = sg(true_reward + cfg.discount * discount * next_q)
    q = q_values(cfg, critic_params, z, action)
    loss = jnp.square(q - target[None]).mean(axis=-1).sum() / 2.0
    return loss, {"q/mean_batch": q.mean()}


def alm_actor_loss(
    cfg: ALMConfig,
    actor_params: Params,
    model_params: Params,
    reward_params: Params,
    classifier_params: Params,
    critic_params: Params,
    z0: jax.Array,
    sigma: jax.Array,
    key: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """lambda-SVG: imagine K steps from z0 through the frozen model, the gradient running
    through the model.

    a_t = noisy_action(mu(sg z_t), sigma, `stream(key, f"a{t}")`, noise_clip) for t = 0..K;
    z_t+1 = rsample m(.|z_t, a_t) (key `stream(key, f"z{t + 1}")`);
    rho_t = r(z_t, a_t) + w c(z_t, a_t, sg z_t+1); q_t = Qmin(z_t, sg a_t) (no direct dQ/da);
    G = lambda_returns(rho, q); loss = -mean over t < K and batch of gamma^t G_t.
    Aux: q/mean_imagined = both critics' mean Q over the imagined latents z_1..z_K;
    reward/mean_imagined = mean rho (reward net plus the weighted classifier term).
    """
    horizon = cfg.horizon
    zs, actions = [z0], []
    z = z0
    for t in range(horizon + 1):
        a = noisy_action(actor_mean(cfg, actor_params, sg(z)), sigma, stream(key, f"a{t}"),
                         cfg.noise_clip, cfg.action_eps)
        actions.append(a)
        if t < horizon:
            z = rsample(*latent_step(cfg, model_params, z, a), stream(key, f"z{t + 1}"))
            zs.append(z)
    zs, actions = jnp.stack(zs), jnp.stack(actions)  # (K + 1, B, Z), (K + 1, B, A)
    rho = reward(cfg, reward_params, zs[:-1], actions[:-1]) + cfg.classifier_reward_weight * classifier_reward(
        cfg, classifier_params, zs[:-1], actions[:-1], sg(zs[1:]))
    q = q_values(cfg, critic_params, zs, sg(actions))  # (2, K + 1, B)
    returns = lambda_returns(rho, q.min(axis=0), cfg.discount, cfg.td_lambda)
    weights = cfg.discount ** jnp.arange(horizon, dtype=returns.dtype)
    loss = -jnp.mean(weights[:, None] * returns)
    return loss, {"q/mean_imagined": q[:, 1:].mean(), "reward/mean_imagined": rho.mean()}


def nodyna_actor_loss(
    cfg: ALMConfig, actor_params: Params, critic_params: Params, z: jax.Array, sigma: jax.Array, key: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """ALM without Dyna (the authors' `_td_loss`): -mean Qmin(z, a~(z)), a~ = noisy_action(mu(z),
    sigma, key, noise_clip) NOT detached, so the actor gets dQ/da."""
    a = noisy_action(actor_mean(cfg, actor_params, z), sigma, key, cfg.noise_clip, cfg.action_eps)
    return -jnp.mean(q_values(cfg, critic_params, z, a).min(axis=0)), {}


# --- one gradient step --------------------------------------------------------------


def _apply_grads(cfg: ALMConfig, params: Any, opt_state: optax.OptState, grads: Any) -> tuple[Any, optax.OptState]:
    updates, opt_state = make_optimizer(cfg).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def update(
    cfg: ALMConfig,
    state: ALMState,
    sequences: Transition,
    transitions: Transition,
    post_warmup_step: jax.Array | int,
    key: jax.Array,
    dyna: bool = True,
) -> tuple[ALMState, dict[str, jax.Array]]:
    """One ALM update (module docstring, steps 1-3); `dyna=False` is ALM without Dyna, which
    changes only step 2c (the actor loss) and drops the two imagination metrics.

    `sequences`: leaves shaped (B, K, ...), consecutive transitions of one episode (s_t+1 is
    next_obs[:, t]; reward and discount unused). `transitions`: leaves shaped (B, ...). `dyna`
    is a Python bool (static). Keys, all `stream(key, name)`:
      "model" (model_loss), "reward/z", "reward/z1", "reward/z_next_model", "reward/z_next",
      "reward/labels", "critic/z", "critic/z_next", "critic/next_action", "actor/z", "actor"
      (the key of alm_actor_loss / nodyna_actor_loss).
    The target encoder's (mean, std) of s and of s' are computed once; every consumer draws its
    own sample from them.

    Metrics (each from the nets as they were when its loss was evaluated):
      loss/model_kl, loss/model_reward, loss/model_value: batch means of sum_t KL_t, sum_t R_t
        and V_K, so loss/model = kl - reward - value;
      loss/reward_mse, loss/classifier_ce, classifier/accuracy (argmax of the logits vs labels);
      loss/critic; q/mean_batch: both critics' mean Q on the critic batch (target-encoder latents,
        buffer actions), before the critic step; reward/mean_batch: the batch's mean reward (the
        learner's diagnostics measure q/mean_real and reward/mean_real on a fresh batch);
      loss/actor; with dyna only, q/mean_imagined (both critics' mean Q over z_1..z_K of the
        imagination) and reward/mean_imagined (mean reward net + 0.1 classifier term along it);
      explore/std: sigma(post_warmup_step), the learning-side noise scale of this update.
    """
    sigma = exploration_std(cfg, post_warmup_step)
    k = partial(stream, key)

    # (1) model + online encoder, against the current reward net, critic and actor.
    (m_loss, m_aux), m_grads = jax.value_and_grad(partial(model_loss, cfg), has_aux=True)(
        model_group(state), state.target_encoder_params, state.reward_params, state.critic_params,
        state.actor_params, sequences, sigma, k("model"))
    group, model_opt_state = _apply_grads(cfg, model_group(state), state.model_opt_state, m_grads)
    model_params, encoder_params = group["model"], group["encoder"]

    action, true_reward = transitions.action, transitions.reward
    # The target encoder's distributions of s and s', each sampled independently by every
    # consumer below (as the authors' `update_rest`); no gradient reaches the encoders.
    latent = encode(cfg, state.target_encoder_params, transitions.obs)
    next_latent = encode(cfg, state.target_encoder_params, transitions.next_obs)

    # (2a) reward + classifier; the fake rows' z' come from the model just updated.
    z = rsample(*latent, k("reward/z"))
    z1 = rsample(*latent, k("reward/z1"))
    z_next_model = rsample(*latent_step(cfg, model_params, z1, action), k("reward/z_next_model"))
    z_next_real = rsample(*next_latent, k("reward/z_next"))
    labels = classifier_labels(k("reward/labels"), action.shape[0])
    (_, r_aux), r_grads = jax.value_and_grad(partial(reward_classifier_loss, cfg), has_aux=True)(
        reward_group(state), z, action, true_reward, classifier_inputs(labels, z_next_real, z_next_model), labels)
    group, reward_opt_state = _apply_grads(cfg, reward_group(state), state.reward_opt_state, r_grads)
    reward_params, classifier_params = group["reward"], group["classifier"]

    # (2b) critic, with the online actor (not yet updated) and the target critic.
    z = rsample(*latent, k("critic/z"))
    z_next = rsample(*next_latent, k("critic/z_next"))
    (c_loss, c_aux), c_grads = jax.value_and_grad(partial(critic_loss, cfg), has_aux=True)(
        state.critic_params, state.target_critic_params, state.actor_params, z, action, true_reward,
        transitions.discount, z_next, sigma, k("critic/next_action"))
    critic_params, critic_opt_state = _apply_grads(cfg, state.critic_params, state.critic_opt_state, c_grads)

    # (2c) actor, with the model, reward, classifier and critic updated above.
    z = rsample(*latent, k("actor/z"))
    if dyna:
        (a_loss, a_aux), a_grads = jax.value_and_grad(partial(alm_actor_loss, cfg), has_aux=True)(
            state.actor_params, model_params, reward_params, classifier_params, critic_params, z, sigma, k("actor"))
    else:
        (a_loss, a_aux), a_grads = jax.value_and_grad(partial(nodyna_actor_loss, cfg), has_aux=True)(
            state.actor_params, critic_params, z, sigma, k("actor"))
    actor_params, actor_opt_state = _apply_grads(cfg, state.actor_params, state.actor_opt_state, a_grads)

    # (3) targets toward the updated online nets.
    new_state = ALMState(
        encoder_params=encoder_params,
        target_encoder_params=optax.incremental_update(encoder_params, state.target_encoder_params, cfg.tau),
        model_params=model_params,
        reward_params=reward_params,
        classifier_params=classifier_params,
        critic_params=critic_params,
        target_critic_params=optax.incremental_update(critic_params, state.target_critic_params, cfg.tau),
        actor_params=actor_params,
        model_opt_state=model_opt_state,
        reward_opt_state=reward_opt_state,
        critic_opt_state=critic_opt_state,
        actor_opt_state=actor_opt_state,
    )
    metrics = {
        **m_aux,
        "loss/model": m_loss,
        **r_aux,
        "loss/critic": c_loss,
        **c_aux,
        "loss/actor": a_loss,
        **a_aux,
        "reward/mean_batch": true_reward.mean(),
        "explore/std": sigma,
    }
    return new_state, metrics
