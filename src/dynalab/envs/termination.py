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

Tasks of the user's own (see custom.py) get their rule from the run's ``--termination``
(``TrainConfig.termination``, resolved by `resolve`): ``auto`` (the default) is the rule above
for the suites' tasks, ``never`` for a user's dm_control task whose Task does not override
``get_termination``, and none (so a model-based run is refused) for a user's Gymnasium task;
``never`` says the task never terminates; ``MODULE:FUNCTION`` names a jittable function of the
predicted next observation, ``next_obs`` float32 (..., obs_dim) -> bool (...).

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

import importlib
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

TerminationFn = Callable[[Any, Any, Any], jax.Array]


class NoTerminationFnError(ValueError):
    """Raised for an env id without a known termination function."""


class TerminationRuleError(ValueError):
    """A --termination value that cannot be used; its message is one sentence."""


AUTO, NEVER = "auto", "never"
_USER_RULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
RULE_CHOICES = "auto (the built-in rule of a known task), never, or MODULE:FUNCTION (e.g. my_tasks:pole_fallen)"



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
    """Whether `env_id` is a dm_control task whose rule is built in: every suite task, and a
    user's task whose Task never ends an episode early (does not override get_termination)."""
    if not env_id.startswith("dmc:"):
        return False
    # Not list_envs(): that would probe for a rendering backend just to answer this.
    from dynalab.envs.registry import dmc_task_can_terminate, is_known_id, is_user_id

    if not is_known_id(env_id):
        return False
    return not is_user_id(env_id) or not dmc_task_can_terminate(env_id)


def has_termination_fn(env_id: str) -> bool:
    """Whether `termination_fn(env_id)` returns a function (rather than raising): a built-in rule."""
    return env_id in _GYM or _is_dmc_task(env_id)


def has_builtin_fn(env_id: str) -> bool:
    """Whether a rule for `env_id` is built in (what --termination auto uses)."""
    return env_id in _GYM or _is_dmc_task(env_id)


def never_terminates(env_id: str) -> bool:
    """Whether the built-in rule of `env_id` never ends an episode early, so that its episodes
    all last the time limit (HalfCheetah, Swimmer, every dm_control task but lqr's); False for a
    task that may terminate or has no built-in rule."""
    if env_id in _GYM:
        return _GYM[env_id][0] is _never
    return _is_dmc_task(env_id) and env_id.partition(":")[2].partition("-")[0] != _LQR_DOMAIN


def supported_ids() -> list[str]:
    """The gym ids with a built-in termination function (every dm_control suite task has one too)."""
    return list(_GYM)


def check_rule(rule: str) -> None:
    """Raise TerminationRuleError unless `rule` is a well-formed --termination value."""
    if not isinstance(rule, str) or not (rule in (AUTO, NEVER) or _USER_RULE.fullmatch(rule)):
        raise TerminationRuleError(f"--termination must be {RULE_CHOICES}, got {rule!r}.")


def resolve(env_id: str, rule: str, obs_dim: int) -> TerminationFn | None:
    """The termination function a run of `env_id` with `--termination rule` uses.

    `auto`: the built-in rule, or None where there is none (a user's Gymnasium task, or a user's
    dm_control task that can end episodes early); `never`: always False; `MODULE:FUNCTION`: the
    user's function of next_obs, imported and checked here on a (2, 3, obs_dim) float32 batch.
    Raises TerminationRuleError (one sentence) for a malformed rule, a module that fails to
    import, a missing or non-callable function, or one that does not map (..., obs_dim) float32
    to a bool array of shape (...).
    """
    check_rule(rule)
    if rule == AUTO:
        return termination_fn(env_id) if has_builtin_fn(env_id) else None
    if rule == NEVER:
        return _wrap(env_id, "never", _never, obs_dim)
    return _wrap(env_id, rule, _load_user_rule(rule, obs_dim), obs_dim)


def _load_user_rule(rule: str, obs_dim: int) -> Callable[[jax.Array], jax.Array]:
    module_name, _, path = rule.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as e:  # the user's module may raise anything while it runs
        raise TerminationRuleError(f"--termination {rule}: cannot import {module_name} ({_one_line(e)}); "
                                   "check the module name and that it is installed or on PYTHONPATH.") from e
    for part in path.split("."):
        if not hasattr(target, part):
            raise TerminationRuleError(f"--termination {rule}: {module_name} has no attribute {path}; name a "
                                       f"function defined in {module_name}, as MODULE:FUNCTION.")
        target = getattr(target, part)
    if not callable(target):
        raise TerminationRuleError(f"--termination {rule}: {path} is a {type(target).__name__}, not a function "
                                   "of the predicted next observation.")
    probe = jax.ShapeDtypeStruct((2, 3, obs_dim), jnp.float32)
    expect = f"a jittable function of next_obs, float32 (..., {obs_dim}) -> bool (...)"
    try:
        out = jax.eval_shape(target, probe)
    except Exception as e:  # whatever tracing the user's function raises
        raise TerminationRuleError(f"--termination {rule} failed on a (2, 3, {obs_dim}) float32 batch of next "
                                   f"observations ({_one_line(e)}); it must be {expect}.") from e
    if not (isinstance(out, jax.ShapeDtypeStruct) and out.shape == (2, 3) and out.dtype == jnp.bool_):
        got = f"shape {out.shape} and dtype {out.dtype}" if isinstance(out, jax.ShapeDtypeStruct) else type(out).__name__
        raise TerminationRuleError(f"--termination {rule} returned {got} for a (2, 3, {obs_dim}) batch of next "
                                   f"observations; it must be {expect}, e.g. shape (2, 3) and dtype bool.")
    return target


def _wrap(env_id: str, rule: str, condition: Callable[[jax.Array], jax.Array], obs_dim: int) -> TerminationFn:
    def done(obs: Any, action: Any, next_obs: Any) -> jax.Array:
        del obs, action  # a rule is a function of the predicted next observation
        next_obs = jnp.asarray(next_obs)
        if next_obs.ndim < 1 or next_obs.shape[-1] != obs_dim:
            raise ValueError(f"{env_id}: next_obs has shape {next_obs.shape}; expected (..., {obs_dim}).")
        return condition(next_obs)

    done.__name__ = f"termination_{rule.replace(':', '_').replace('.', '_')}"
    done.__doc__ = f"True where a transition of {env_id} terminates, by --termination {rule}."
    return done


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()).rstrip(".")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def termination_fn(env_id: str) -> TerminationFn:
    """The built-in termination function of `env_id` (see the module docstring); a run's own rule,
    which --termination may set, is `resolve(env_id, rule, obs_dim)`.

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
            f"{', '.join(_GYM)} and every dmc:<domain>-<task> task that cannot end early. "
            "Use has_termination_fn() to check, or pass --termination never or MODULE:FUNCTION."
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
