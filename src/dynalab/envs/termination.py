"""Known termination functions for model rollouts, computed from observations.

`termination_fn(env_id)` returns a pure JAX function
``done(obs, action, next_obs) -> bool[...]`` that says whether a transition truly
terminates (time-limit truncation is not termination). Inputs carry any leading
batch axes, e.g. obs (B, obs_dim), action (B, act_dim) in [-1, 1], next_obs
(B, obs_dim) -> (B,). Every known condition depends on `next_obs` only; `obs` and
`action` are accepted so learned and known termination functions are
interchangeable. The functions are jittable and vmappable (no Python branching on
values; shapes are checked at trace time).

Each condition is Gymnasium v5's own ``is_healthy`` (default constructor
arguments) restated on the flattened observation our adapter returns. With
``exclude_current_positions_from_observation=True`` the observation starts at
``qpos[1]`` (Hopper, Walker2d) or ``qpos[2]`` (Ant, Humanoid), so:

============================  ==========================================================
task (obs_dim)                terminated iff (on next_obs)
============================  ==========================================================
Hopper-v5 (11)                obs = qpos[1:6] ++ clip(qvel, +-10). Not all of:
                              0.7 < obs[0] (= qpos[1], z) < inf,
                              -0.2 < obs[1] (= qpos[2], torso angle) < 0.2,
                              -100 < obs[1:] < 100 (state_vector()[2:] = qpos[2:] ++ qvel)
Walker2d-v5 (17)              obs = qpos[1:9] ++ clip(qvel, +-10). Not all of:
                              0.8 < obs[0] (z) < 2.0, -1 < obs[1] (angle) < 1
Ant-v5 (105)                  obs = qpos[2:15] ++ qvel(14) ++ clip(cfrc_ext[1:], +-1).
                              Not all of: obs[:27] finite (the state vector minus x, y),
                              0.2 <= obs[0] (= qpos[2], torso z) <= 1.0 (inclusive)
Humanoid-v5 (348)             obs = qpos[2:24] ++ qvel ++ cinert ++ cvel ++ ... Not:
                              1.0 < obs[0] (= qpos[2], torso z) < 2.0
InvertedPendulum-v5 (4)       obs = qpos(2) ++ qvel(2). Any obs non-finite, or
                              |obs[1]| (pole hinge angle) > 0.2
HalfCheetah-v5                never
Swimmer, Reacher, Pusher,     never: their step() returns terminated=False
HumanoidStandup (-v4, -v5),   unconditionally (Pusher-v4 cannot be built with
HalfCheetah-v4                MuJoCo >= 3, see registry.py)
dmc:<domain>-<task>           never, except dmc:lqr-* (below)
dmc:lqr-lqr_2_1, lqr_6_2      obs = qpos ++ qvel = physics.state(); terminates when
                              ||state|| < 1e-6 (LQRLevel.get_termination)
============================  ==========================================================

A NaN anywhere a strict range test looks fails that test, as in Gymnasium (all
comparisons with NaN are false), so NaN states terminate exactly as there.

Where the observation cannot reproduce the real flag exactly:

* Hopper checks *unclipped* ``qvel`` against (-100, 100), but the observation
  clips velocities to [-10, 10] (a NaN survives the clip, +-inf does not). A state
  whose only fault is ``|qvel| >= 100`` (or an infinite velocity) terminates in
  Gymnasium but not here.
* Ant also requires ``qpos[0:2]`` (x, y) to be finite; the observation omits them.
  They can only become non-finite after the rest of the state has, so in practice
  this never matters.
* The adapter returns float32 observations; Gymnasium tests float64 state. A value
  within half a float32 ulp of a threshold (e.g. z = 0.7 + 1e-9) can round onto or
  across it, and a finite value beyond float32's range (~3.4e38) becomes inf. On
  real trajectories neither has been observed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

TerminationFn = Callable[[Any, Any, Any], jax.Array]


class NoTerminationFnError(ValueError):
    """Raised for an env id without a known termination function."""


def _never(next_obs: jax.Array) -> jax.Array:
    return jnp.zeros(next_obs.shape[:-1], dtype=bool)


def _hopper(next_obs: jax.Array) -> jax.Array:
    z, angle = next_obs[..., 0], next_obs[..., 1]
    healthy_state = jnp.all((-100.0 < next_obs[..., 1:]) & (next_obs[..., 1:] < 100.0), axis=-1)
    healthy_z = (0.7 < z) & (z < jnp.inf)
    healthy_angle = (-0.2 < angle) & (angle < 0.2)
    return ~(healthy_state & healthy_z & healthy_angle)


def _walker2d(next_obs: jax.Array) -> jax.Array:
    z, angle = next_obs[..., 0], next_obs[..., 1]
    healthy = (0.8 < z) & (z < 2.0) & (-1.0 < angle) & (angle < 1.0)
    return ~healthy


_ANT_STATE_IN_OBS = 13 + 14  # qpos[2:] and qvel; the contact forces follow


def _ant(next_obs: jax.Array) -> jax.Array:
    z = next_obs[..., 0]
    finite = jnp.all(jnp.isfinite(next_obs[..., :_ANT_STATE_IN_OBS]), axis=-1)
    return ~(finite & (0.2 <= z) & (z <= 1.0))


def _humanoid(next_obs: jax.Array) -> jax.Array:
    z = next_obs[..., 0]
    return ~((1.0 < z) & (z < 2.0))


def _inverted_pendulum(next_obs: jax.Array) -> jax.Array:
    finite = jnp.all(jnp.isfinite(next_obs), axis=-1)
    return ~finite | (jnp.abs(next_obs[..., 1]) > 0.2)


_LQR_TERMINAL_TOL = 1e-6  # dm_control.suite.lqr.LQRLevel._TERMINAL_TOL


def _lqr(next_obs: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(next_obs), axis=-1)) < _LQR_TERMINAL_TOL


# id -> (condition on next_obs, obs_dim checked at trace time or None)
_GYM: dict[str, tuple[Callable[[jax.Array], jax.Array], int | None]] = {
    "gym:Hopper-v5": (_hopper, 11),
    "gym:Walker2d-v5": (_walker2d, 17),
    "gym:Ant-v5": (_ant, 105),
    "gym:Humanoid-v5": (_humanoid, 348),
    "gym:InvertedPendulum-v5": (_inverted_pendulum, 4),
    "gym:HalfCheetah-v5": (_never, 17),
    # Gym tasks outside Gym6 that never terminate.
    "gym:HalfCheetah-v4": (_never, 17),
    "gym:Swimmer-v4": (_never, 8),
    "gym:Swimmer-v5": (_never, 8),
    "gym:Reacher-v4": (_never, 11),
    "gym:Reacher-v5": (_never, 10),
    "gym:Pusher-v5": (_never, 23),
    "gym:HumanoidStandup-v4": (_never, 376),
    "gym:HumanoidStandup-v5": (_never, 348),
}
_LQR_DOMAIN = "lqr"


def _is_dmc_task(env_id: str) -> bool:
    if not env_id.startswith("dmc:"):
        return False
    # Not list_envs(): that would probe for a rendering backend just to answer this.
    from dynalab.envs.registry import is_known_id

    return is_known_id(env_id)


def has_termination_fn(env_id: str) -> bool:
    """Whether `termination_fn(env_id)` returns a function (rather than raising)."""
    return env_id in _GYM or _is_dmc_task(env_id)


def supported_ids() -> list[str]:
    """The gym ids with a known termination function (every dmc:* task has one too)."""
    return list(_GYM)


def termination_fn(env_id: str) -> TerminationFn:
    """The known termination function of `env_id` (see the module docstring).

    Raises NoTerminationFnError (a ValueError) for an id without one.
    """
    if env_id in _GYM:
        condition, obs_dim = _GYM[env_id]
    elif _is_dmc_task(env_id):
        domain = env_id[len("dmc:") :].partition("-")[0]
        condition, obs_dim = (_lqr if domain == _LQR_DOMAIN else _never), None
    else:
        raise NoTerminationFnError(
            f"no known termination function for env {env_id!r}; supported: "
            f"{', '.join(_GYM)} and every dmc:<domain>-<task> task. "
            "Use has_termination_fn() to check, or learn termination instead."
        )

    def done(obs: Any, action: Any, next_obs: Any) -> jax.Array:
        del obs, action  # every known condition depends on the next state only
        next_obs = jnp.asarray(next_obs)
        if next_obs.ndim < 1 or (obs_dim is not None and next_obs.shape[-1] != obs_dim):
            raise ValueError(
                f"{env_id}: next_obs has shape {next_obs.shape}; expected (..., {obs_dim})."
            )
        return condition(next_obs)

    done.__name__ = f"termination_{env_id.replace(':', '_').replace('-', '_')}"
    done.__doc__ = f"True where a transition of {env_id} terminates (from next_obs)."
    return done
