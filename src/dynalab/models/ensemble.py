"""Probabilistic dynamics-reward ensemble (MBPO / PETS style), as pure functions over pytrees.

One seed's ensemble: `ensemble_size` MLPs, each mapping concat(normalised obs, action) to the
mean and log-variance of a diagonal Gaussian over y = concat(state_target, reward), where
state_target = s' - s ("residual", MBPO's default) or s' (`direct_next_state`, FTFL).

Parameters (`Params`), every member's weights stacked on a leading member axis E:
    {"layers": ({"kernel": (E, n_in, n_out), "bias": (E, n_out)}, ...),   # depth + 1 layers
     "max_logvar": (D,), "min_logvar": (D,)}                               # shared by members
The last layer has 2 * D outputs: [:D] the mean, [D:] the raw log-variance. The learnable
log-variance bounds are shared by all members, as in MBPO's BNN (one [1, D] variable each).
Init follows MBPO's FC layer: truncated normal (+-2 sd) kernels with sd 1 / (2 sqrt(n_in)),
zero biases, max_logvar 0.5, min_logvar -10.

Spaces: inputs are always standardised (`input_norm`); the model is trained on targets in
"training space" = standardised per dimension when `cfg.target_norm` (FTFL's target unit
normalisation) and original units otherwise (`target_norm` is then the identity). `predict`,
`sample_step` and `diagnostics` always return original units. Holdout MSEs (`holdout_mse`,
`model/holdout_loss`) are in training space, the space the elites are chosen in.

Holdout split: drawn afresh at every refit, as in MBPO and the STFL authors' code. The filled
slots are put in a random order; the first floor(holdout_ratio * size) of them are held out
for that refit and the rest train (so over many refits every transition trains the model). The
input normaliser (and, with target_norm, the target normaliser) is computed from the training
part only. The holdout MSE that picks the elites (and drives early stopping) is computed on at
most `max_holdout` of the held-out transitions, a uniform subset without replacement (the STFL
code validates on 50,000 draws, our default; MBPO's cap of 5,000 is `max_holdout=5000`). With
fewer than 1 / holdout_ratio filled slots nothing is held out and the training slots stand in.
Training minibatches draw uniformly (with replacement) from the training part; each member
draws its own indices. Everything is shape-static under jit with a dynamic `size`.

`cfg` is a frozen (hashable) dataclass: jit with `static_argnums=0` (or close over it).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import numpy as np
import jax.numpy as jnp
import optax
from flax import struct

from dynalab.models import normalizer as nz
from dynalab.models.normalizer import Normalizer
from dynalab.replay import ReplayBuffer, capacity
from dynalab.types import Transition

Params = dict[str, Any]  # see the module docstring

MAX_LOGVAR_INIT = 0.5
MIN_LOGVAR_INIT = -10.0
LOGVAR_BOUND_COEF = 0.01  # MBPO: + 0.01 * (sum(max_logvar) - sum(min_logvar))
IMPROVEMENT = 0.01  # MBPO early stopping: a member improves if (best - cur) / best > 1%
INITIAL_BEST = 1e10  # MBPO's initial "best" holdout loss (so the first evaluation improves)
PCT_EPS = 1e-6  # floor on ||true state|| in the percent errors (a state that did not move)


@dataclass(frozen=True)
class ModelConfig:
    ensemble_size: int = 7
    num_elites: int = 5
    width: int = 200
    depth: int = 4  # hidden layers
    lr: float = 3e-4
    adam_eps: float = 1.5e-4
    batch_size: int = 256  # per member
    weight_decay: tuple[float, ...] | None = None  # per layer, depth + 1; None -> MBPO's
    refit_steps: int = 5000  # gradient steps per refit (the cap, with early stopping)
    holdout_ratio: float = 0.2  # fraction of the real data held out at each refit (fresh split)
    max_holdout: int = 50_000  # held-out transitions scored per refit (STFL code 50,000; MBPO 5,000)
    early_stopping: bool = False
    early_stopping_eval_every: int = 250  # steps per "epoch" (holdout evaluation)
    early_stopping_patience: int = 5  # MBPO's max_epochs_since_update
    target_norm: bool = False  # FTFL target unit normalisation
    direct_next_state: bool = False  # FTFL: predict s' instead of s' - s


# Holdout MSE before any fit: the largest float32, not inf, so the run's non-finite guard stays quiet.
UNFITTED = float(jnp.finfo(jnp.float32).max)


class EnsembleState(struct.PyTreeNode):
    params: Params
    opt_state: optax.OptState
    input_norm: Normalizer  # over concat(obs, action)
    target_norm: Normalizer  # over y; the identity when cfg.target_norm is False
    elites: jax.Array  # int32 (num_elites,), members with the lowest holdout MSE, best first
    holdout_mse: jax.Array  # float32 (ensemble_size,), training space; UNFITTED before any fit


# --- configuration ------------------------------------------------------------------


def weight_decays(cfg: ModelConfig) -> tuple[float, ...]:
    """L2 coefficient per layer (hidden layers, then output).

    MBPO's construct_model uses 2.5e-5, 5e-5, 7.5e-5, 7.5e-5 (hidden) and 1e-4 (output); other
    depths keep the first two, 7.5e-5 for the remaining hidden layers, 1e-4 for the output.
    """
    if cfg.weight_decay is not None:
        if len(cfg.weight_decay) != cfg.depth + 1:
            raise ValueError(f"weight_decay needs depth + 1 = {cfg.depth + 1} entries, got {cfg.weight_decay}")
        return tuple(cfg.weight_decay)
    hidden = (2.5e-5, 5e-5) + (7.5e-5,) * max(cfg.depth - 2, 0)
    return hidden[: cfg.depth] + (1e-4,)


def _check(cfg: ModelConfig) -> None:
    if not 0 < cfg.num_elites <= cfg.ensemble_size:
        raise ValueError(f"need 0 < num_elites <= ensemble_size, got {cfg.num_elites}, {cfg.ensemble_size}")
    if cfg.early_stopping and cfg.refit_steps % cfg.early_stopping_eval_every:
        raise ValueError("with early_stopping, refit_steps must be a multiple of early_stopping_eval_every")
    weight_decays(cfg)
    if not 0.0 < cfg.holdout_ratio < 1.0:
        raise ValueError(f"holdout_ratio must be in (0, 1), got {cfg.holdout_ratio}")


def make_optimizer(cfg: ModelConfig) -> optax.GradientTransformation:
    """Adam (b1 0.9, b2 0.999); weight decay is an L2 term in the loss, as in MBPO (not AdamW)."""
    return optax.adam(cfg.lr, b1=0.9, b2=0.999, eps=cfg.adam_eps)


# --- network ------------------------------------------------------------------------


def init_params(key: jax.Array, in_dim: int, out_dim: int, cfg: ModelConfig) -> Params:
    """Fresh stacked parameters (see the module docstring for the structure and init)."""
    sizes = [in_dim] + [cfg.width] * cfg.depth + [2 * out_dim]
    shapes = [(cfg.ensemble_size, n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    # One draw for all kernels, then sliced: every RNG call costs a separate (slow) compile.
    counts = [math.prod(s) for s in shapes]
    z = jax.random.truncated_normal(key, -2.0, 2.0, (sum(counts),), jnp.float32)
    chunks = jnp.split(z, list(itertools.accumulate(counts))[:-1])
    layers = tuple(
        {
            "kernel": c.reshape(s) / (2.0 * math.sqrt(s[1])),
            "bias": jnp.zeros((cfg.ensemble_size, s[2]), jnp.float32),
        }
        for c, s in zip(chunks, shapes)
    )
    return {
        "layers": layers,
        "max_logvar": jnp.full((out_dim,), MAX_LOGVAR_INIT, jnp.float32),
        "min_logvar": jnp.full((out_dim,), MIN_LOGVAR_INIT, jnp.float32),
    }


def soft_bound_logvar(raw: jax.Array, max_logvar: jax.Array, min_logvar: jax.Array) -> jax.Array:
    """Smoothly squash raw log-variances into (min_logvar, max_logvar), keeping gradients."""
    logvar = max_logvar - jax.nn.softplus(max_logvar - raw)
    return min_logvar + jax.nn.softplus(logvar - min_logvar)


def forward(params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """All members at once: x (N, in) shared, or (E, N, in) one batch per member.

    Returns (mean, logvar), each (E, N, D), in training space. One batched matmul per layer
    (einsum over the member axis), no loop over members.
    """
    layers = params["layers"]
    h = x
    for i, layer in enumerate(layers):
        spec = "ni,eio->eno" if h.ndim == 2 else "eni,eio->eno"
        h = jnp.einsum(spec, h, layer["kernel"]) + layer["bias"][:, None, :]
        if i < len(layers) - 1:
            h = jax.nn.swish(h)
    mean, raw = jnp.split(h, 2, axis=-1)
    return mean, soft_bound_logvar(raw, params["max_logvar"], params["min_logvar"])


# --- loss ---------------------------------------------------------------------------


def weight_decay_loss(cfg: ModelConfig, params: Params) -> jax.Array:
    """sum_l decay_l * 0.5 * sum(W_l^2) over kernels (not biases) of all members (tf.nn.l2_loss)."""
    decays = weight_decays(cfg)
    return sum(d * 0.5 * jnp.sum(jnp.square(layer["kernel"])) for d, layer in zip(decays, params["layers"], strict=True))


def nll_loss(
    cfg: ModelConfig, params: Params, norm_inputs: jax.Array, norm_targets: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MBPO's ensemble objective, in training space.

    loss = sum_e mean_{n,d}[(mu - y)^2 exp(-logvar) + logvar]           (Gaussian NLL, no consts)
           + 0.01 * (sum(max_logvar) - sum(min_logvar)) + weight_decay_loss
    norm_inputs: (N, in) or (E, N, in); norm_targets: (N, D) or (E, N, D).
    aux: per-member 'nll' and 'mse' (E,), scalars 'logvar_bound' and 'weight_decay'.
    """
    mean, logvar = forward(params, norm_inputs)
    sq = jnp.square(mean - norm_targets)
    nll = (sq * jnp.exp(-logvar) + logvar).mean(axis=(-2, -1))
    bound = LOGVAR_BOUND_COEF * (params["max_logvar"].sum() - params["min_logvar"].sum())
    decay = weight_decay_loss(cfg, params)
    loss = nll.sum() + bound + decay
    return loss, {"nll": nll, "mse": sq.mean(axis=(-2, -1)), "logvar_bound": bound, "weight_decay": decay}


# --- construction -------------------------------------------------------------------


def init(key: jax.Array, obs_dim: int, action_dim: int, cfg: ModelConfig) -> EnsembleState:
    """Fresh ensemble with identity normalisers (fit sets them from data)."""
    _check(cfg)
    params = init_params(key, obs_dim + action_dim, obs_dim + 1, cfg)
    return EnsembleState(
        params=params,
        opt_state=make_optimizer(cfg).init(params),
        input_norm=nz.identity(obs_dim + action_dim),
        target_norm=nz.identity(obs_dim + 1),
        elites=jnp.arange(cfg.num_elites, dtype=jnp.int32),
        holdout_mse=jnp.full((cfg.ensemble_size,), UNFITTED, jnp.float32),
    )


def is_fitted(state: EnsembleState) -> jax.Array:
    """Whether the current parameters have been through `fit` (False after `init` and `reset`)."""
    return jnp.all(state.holdout_mse < UNFITTED)


def reset(cfg: ModelConfig, state: EnsembleState, key: jax.Array) -> EnsembleState:
    """Fresh params and optimiser from `key`; normalisers kept; elites and holdout MSEs
    forgotten (members 0..num_elites-1, inf), since they described the old params."""
    in_dim = state.input_norm.mean.shape[-1]
    out_dim = state.target_norm.mean.shape[-1]
    params = init_params(key, in_dim, out_dim, cfg)
    return state.replace(
        params=params,
        opt_state=make_optimizer(cfg).init(params),
        elites=jnp.arange(cfg.num_elites, dtype=jnp.int32),
        holdout_mse=jnp.full((cfg.ensemble_size,), UNFITTED, jnp.float32),
    )


# --- targets ------------------------------------------------------------------------


def targets(cfg: ModelConfig, t: Transition) -> jax.Array:
    """y = concat(state_target, reward[..., None]) in original units."""
    state_target = t.next_obs if cfg.direct_next_state else t.next_obs - t.obs
    return jnp.concatenate([state_target, t.reward[..., None]], axis=-1)


def split_prediction(cfg: ModelConfig, obs: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A target-space vector y (original units) back to (next_obs, reward)."""
    state_part = y[..., :-1]
    next_obs = state_part if cfg.direct_next_state else obs + state_part
    return next_obs, y[..., -1]


# --- data split and sampling ----------------------------------------------------------


class Split(struct.PyTreeNode):
    """One refit's random split of a buffer's filled slots (see the module docstring).

    order: (capacity,) int32, the filled slots in random order first, then the empty ones;
    n_holdout, n_train: int32 scalars; the holdout part is order[:n_holdout], the training
    part order[n_holdout:n_holdout + n_train] (all filled slots when n_holdout is 0).
    """

    order: jax.Array
    n_holdout: jax.Array
    n_train: jax.Array


def random_split(key: jax.Array, size: jax.Array, capacity: int, holdout_ratio: float) -> Split:
    """A fresh uniformly random split of the filled slots [0, size) of a `capacity` buffer."""
    filled = jnp.arange(capacity) < size
    order = jnp.argsort(jnp.where(filled, jax.random.uniform(key, (capacity,)), 2.0)).astype(jnp.int32)
    n_hold = jnp.floor(size.astype(jnp.float32) * holdout_ratio).astype(jnp.int32)
    return Split(order=order, n_holdout=n_hold, n_train=size - n_hold)


def train_mask(split: Split) -> jax.Array:
    """(capacity,) bool: True at the slots of the training part."""
    rank = jnp.arange(split.order.shape[0])
    in_train = (rank >= split.n_holdout) & (rank < split.n_holdout + split.n_train)
    return jnp.zeros(split.order.shape, bool).at[split.order].set(in_train)


def sample_train_indices(key: jax.Array, split: Split, shape: tuple[int, ...]) -> jax.Array:
    """Buffer slots, uniform with replacement over the training part of `split`.

    Shape (ensemble_size, batch_size) gives every member its own, independent minibatch.
    """
    j = jax.random.randint(key, shape, 0, jnp.maximum(split.n_train, 1))
    return split.order[split.n_holdout + j]


def holdout_indices(split: Split, max_holdout: int) -> tuple[jax.Array, jax.Array]:
    """(slots, mask), both (min(max_holdout, capacity),): the transitions scored in this refit.

    The first min(n_holdout, max_holdout) held-out slots (a uniform random subset, since the
    order is random); with nothing held out, the first min(size, max_holdout) training slots.
    """
    n = min(max_holdout, split.order.shape[0])
    use_hold = split.n_holdout > 0
    count = jnp.where(use_hold, jnp.minimum(split.n_holdout, n), jnp.minimum(split.n_train, n))
    arange = jnp.arange(n)
    mask = arange < count
    return split.order[jnp.where(mask, arange, 0)], mask


def track_best(
    best_loss: jax.Array, best_layers: Any, epochs_since: jax.Array, current: jax.Array, layers: Any
) -> tuple[jax.Array, Any, jax.Array]:
    """MBPO's `_save_best`: snapshot each member whose holdout loss improved by > 1% relative to
    its last snapshot; reset the no-improvement counter if any member improved."""
    improved = (best_loss - current) / best_loss > IMPROVEMENT
    pick = lambda new, old: jnp.where(improved.reshape(-1, *(1,) * (new.ndim - 1)), new, old)  # noqa: E731
    best_layers = jax.tree_util.tree_map(pick, layers, best_layers)
    best_loss = jnp.where(improved, current, best_loss)
    epochs_since = jnp.where(improved.any(), 0, epochs_since + 1)
    return best_loss, best_layers, epochs_since


# --- fitting ------------------------------------------------------------------------


def fit(
    cfg: ModelConfig, state: EnsembleState, buffer: ReplayBuffer, key: jax.Array
) -> tuple[EnsembleState, dict[str, jax.Array]]:
    """One refit on the filled part of `buffer` (its `data` a Transition).

    0. a fresh random holdout split of the filled slots (module docstring);
    1. both normalisers from the training part (inputs always; targets if cfg.target_norm);
    2. `refit_steps` Adam steps on per-member minibatches of training slots, continuing from
       the current params and optimiser state (MBPO keeps training the same networks);
       with `early_stopping`, MBPO's rule: evaluate the holdout MSE every `eval_every` steps,
       snapshot each member when it improved by > 1%, stop once no member improved for more
       than `patience` evaluations in a row (MBPO: epochs_since_update > 5), then restore every
       member's snapshot (the shared log-variance bounds and Adam state stay as trained, as in
       MBPO, which snapshots only layer weights);
    3. holdout MSE per member (training space) and elites = the `num_elites` lowest.

    Metrics: 'model/holdout_loss' (mean holdout MSE of the elites, training space),
    'model/train_loss' (the objective of `nll_loss`, mean over the last `eval_every` steps),
    'model/train_mse' (member-mean minibatch MSE, training space, same steps),
    'model/fit_steps' (gradient steps taken).
    `refit_steps=0` only refreshes normalisers, holdout MSEs and elites.
    """
    new_state, metrics, _ = _fit(cfg, state, buffer, key, record=False)
    return new_state, metrics


CURVE = ("train_loss", "train_mse", "holdout_mse", "var_loss", "var_loss_state", "var_loss_reward")


def curve_steps(cfg: ModelConfig) -> np.ndarray:
    """Gradient steps at which `fit_recorded` records its curve: 0 (the initial weights), the end of
    every chunk of `early_stopping_eval_every` steps (MBPO's epochs) and the budget's end. (points,) int64."""
    every = cfg.early_stopping_eval_every
    return np.array(sorted({0, *range(every, cfg.refit_steps + 1, every), cfg.refit_steps}), np.int64)


def fit_recorded(
    cfg: ModelConfig, state: EnsembleState, buffer: ReplayBuffer, key: jax.Array
) -> tuple[EnsembleState, dict[str, jax.Array], dict[str, jax.Array]]:
    """`fit`, with the same result bit for bit, plus the curve of the fit at `curve_steps(cfg)`:
    each of CURVE a (points,) float32 array (NaN where early stopping ended the fit first, and for the
    training losses of the initial point):
      'train_loss', 'train_mse': `nll_loss`'s objective and the minibatch MSE, averaged over the steps
        since the previous point;
      'holdout_mse': member-mean MSE on the fit's holdout transitions;
      'var_loss', 'var_loss_state', 'var_loss_reward': MBPO's variance loss, the mean predicted
        log-variance over members and holdout transitions, of all / the state / the reward target
        dimensions (FTFL Fig 3a).
    All in training space (standardised targets with target_norm, original units without).
    """
    return _fit(cfg, state, buffer, key, record=True)


def _fit(cfg: ModelConfig, state: EnsembleState, buffer: ReplayBuffer, key: jax.Array, record: bool
         ) -> tuple[EnsembleState, dict[str, jax.Array], dict[str, jax.Array] | None]:
    _check(cfg)
    data: Transition = buffer.data
    split_key, train_key = jax.random.split(key)
    split = random_split(split_key, buffer.size, capacity(buffer), cfg.holdout_ratio)
    training = train_mask(split)
    input_norm = nz.concat(nz.from_data(data.obs, training), nz.from_data(data.action, training))
    out_dim = data.obs.shape[-1] + 1
    target_norm = nz.from_data(targets(cfg, data), training) if cfg.target_norm else nz.identity(out_dim)

    def batch_xy(idx: jax.Array) -> tuple[jax.Array, jax.Array]:
        t = Transition(obs=data.obs[idx], action=data.action[idx], reward=data.reward[idx],
                       next_obs=data.next_obs[idx], discount=data.discount[idx])  # fmt: skip
        x = nz.normalize(input_norm, jnp.concatenate([t.obs, t.action], axis=-1))
        return x, nz.normalize(target_norm, targets(cfg, t))

    hold_idx, hold_mask = holdout_indices(split, cfg.max_holdout)
    hold_x, hold_y = batch_xy(hold_idx)
    hold_w = hold_mask.astype(jnp.float32) / jnp.maximum(hold_mask.sum(), 1)

    def holdout_mse(params: Params) -> jax.Array:
        mean, _ = forward(params, hold_x)
        return jnp.square(mean - hold_y).mean(-1) @ hold_w

    def holdout_row(params: Params, losses: jax.Array, mses: jax.Array) -> jax.Array:
        """One point of the curve, in the order of CURVE."""
        mean, logvar = forward(params, hold_x)
        lv = jnp.einsum("end,n->ed", logvar, hold_w)  # (E, D): holdout mean per member and dimension
        mse = jnp.square(mean - hold_y).mean(-1) @ hold_w
        return jnp.stack([losses.mean(), mses.mean(), mse.mean(), lv.mean(), lv[:, :-1].mean(), lv[:, -1].mean()])

    optimizer = make_optimizer(cfg)
    loss_fn = jax.value_and_grad(partial(nll_loss, cfg), has_aux=True)

    def train_step(carry, step):
        params, opt_state = carry
        # Keyed by the global step, so the draws do not depend on how steps are chunked.
        idx = sample_train_indices(jax.random.fold_in(train_key, step), split, (cfg.ensemble_size, cfg.batch_size))
        (loss, aux), grads = loss_fn(params, *batch_xy(idx))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), (loss, aux["mse"].mean())

    def chunk(params, opt_state, start, length):
        return jax.lax.scan(train_step, (params, opt_state), start + jnp.arange(length))

    nan = jnp.float32(jnp.nan)
    every = cfg.early_stopping_eval_every
    tail = min(every, cfg.refit_steps)
    rows = None
    if record:
        rows = jnp.full((len(curve_steps(cfg)), len(CURVE)), nan)
        rows = rows.at[0].set(holdout_row(state.params, nan, nan))
    if not cfg.early_stopping:
        if not record:
            (params, opt_state), (losses, mses) = chunk(state.params, state.opt_state, 0, cfg.refit_steps)
        else:  # the same steps, in chunks that end at the curve's points
            full, rest = divmod(cfg.refit_steps, every)

            def epoch(carry, e):
                (params, opt_state), (losses, mses) = chunk(*carry, e * every, every)
                return (params, opt_state), (losses, mses, holdout_row(params, losses, mses))

            (params, opt_state), (losses, mses, points) = jax.lax.scan(
                epoch, (state.params, state.opt_state), jnp.arange(full))
            losses, mses = losses.reshape(-1), mses.reshape(-1)
            if rest:
                (params, opt_state), (l2, m2) = chunk(params, opt_state, full * every, rest)
                losses, mses = jnp.concatenate([losses, l2]), jnp.concatenate([mses, m2])
                points = jnp.concatenate([points, holdout_row(params, l2, m2)[None]])
            rows = rows.at[1:].set(points)
        train_loss = losses[-tail:].mean() if tail else nan
        train_mse = mses[-tail:].mean() if tail else nan
        steps = jnp.int32(cfg.refit_steps)
    else:
        max_epochs = cfg.refit_steps // every

        def cond(c):
            epoch, since = c[0], c[4]
            return (epoch < max_epochs) & (since <= cfg.early_stopping_patience)

        def body(c):
            epoch, params, opt_state, best_layers, since, best_loss, _, _, rows = c
            (params, opt_state), (losses, mses) = chunk(params, opt_state, epoch * every, every)
            best_loss, best_layers, since = track_best(
                best_loss, best_layers, since, holdout_mse(params), params["layers"]
            )
            if rows is not None:
                rows = rows.at[epoch + 1].set(holdout_row(params, losses, mses))
            return epoch + 1, params, opt_state, best_layers, since, best_loss, losses.mean(), mses.mean(), rows

        carry = (
            jnp.int32(0), state.params, state.opt_state, state.params["layers"], jnp.int32(0),
            jnp.full((cfg.ensemble_size,), INITIAL_BEST, jnp.float32), nan, nan, rows,
        )  # fmt: skip
        epochs, params, opt_state, best_layers, _, _, train_loss, train_mse, rows = jax.lax.while_loop(
            cond, body, carry)
        # With zero epochs best_layers is the initial params, so this is a no-op then.
        params = {**params, "layers": best_layers}
        steps = epochs * every

    mse = holdout_mse(params)
    elites = jnp.argsort(mse)[: cfg.num_elites].astype(jnp.int32)
    new_state = state.replace(
        params=params, opt_state=opt_state, input_norm=input_norm, target_norm=target_norm,
        elites=elites, holdout_mse=mse,
    )  # fmt: skip
    metrics = {
        "model/holdout_loss": mse[elites].mean(),
        "model/train_loss": train_loss,
        "model/train_mse": train_mse,
        "model/fit_steps": steps,
    }
    curve = None if rows is None else {name: rows[:, i] for i, name in enumerate(CURVE)}
    return new_state, metrics, curve


# --- prediction ---------------------------------------------------------------------


def predict(cfg: ModelConfig, state: EnsembleState, obs: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Every member's Gaussian over y in original units: (mean, var), each (E, *batch, D).

    De-normalisation: mean = mu * std + mean_y, var = exp(logvar) * std^2.
    """
    del cfg  # the state carries everything (identity target_norm when it is off)
    batch = obs.shape[:-1]
    x = nz.normalize(state.input_norm, jnp.concatenate([obs, action], axis=-1))
    mu, logvar = forward(state.params, x.reshape(-1, x.shape[-1]))
    mean = nz.denormalize(state.target_norm, mu)
    var = nz.denormalize_var(state.target_norm, jnp.exp(logvar))
    out = (mean.shape[0], *batch, mean.shape[-1])
    return mean.reshape(out), var.reshape(out)


def sample_step(
    cfg: ModelConfig, state: EnsembleState, obs: jax.Array, action: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Model rollout step: per sample a uniformly random elite, y ~ N(mean, var) of it.

    obs (*batch, obs_dim), action (*batch, action_dim) -> next_obs (*batch, obs_dim),
    reward (*batch,). Keys: `member_key, noise_key = jax.random.split(key)`.
    """
    member_key, noise_key = jax.random.split(key)
    mean, var = predict(cfg, state, obs, action)
    batch = obs.shape[:-1]
    member = state.elites[jax.random.randint(member_key, batch, 0, state.elites.shape[0])]
    take = lambda a: jnp.take_along_axis(a, member[None, ..., None], axis=0)[0]  # noqa: E731
    mean, var = take(mean), take(var)
    y = mean + jnp.sqrt(var) * jax.random.normal(noise_key, mean.shape, mean.dtype)
    return split_prediction(cfg, obs, y)


def diagnostics(cfg: ModelConfig, state: EnsembleState, batch: Transition) -> dict[str, jax.Array]:
    """Accuracy of the elites' mean prediction on real transitions (original units).

    'model/pct_error': mean_n 100 ||pred - true|| / max(||true||, 1e-6) on the state part of
    the target (s' - s when residual, s' when direct); 'model/pct_error_next_state': the same
    on s' (comparable across target choices); 'model/reward_mse'; 'model/var_state' and
    'model/var_reward': mean predicted aleatoric variance over elites, samples and dims.
    pred = mean over elites of the members' predicted means.
    """
    mean, var = predict(cfg, state, batch.obs, batch.action)
    mean, var = mean[state.elites], var[state.elites]
    pred = mean.mean(axis=0)
    true = targets(cfg, batch)

    def pct(p, t):
        err = jnp.linalg.norm(p - t, axis=-1)
        return (100.0 * err / jnp.maximum(jnp.linalg.norm(t, axis=-1), PCT_EPS)).mean()

    pred_next, pred_reward = split_prediction(cfg, batch.obs, pred)
    return {
        "model/pct_error": pct(pred[..., :-1], true[..., :-1]),
        "model/pct_error_next_state": pct(pred_next, batch.next_obs),
        "model/reward_mse": jnp.square(pred_reward - batch.reward).mean(),
        "model/var_state": var[..., :-1].mean(),
        "model/var_reward": var[..., -1].mean(),
    }
