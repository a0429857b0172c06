"""Task ids, construction by id, and specs."""

from __future__ import annotations

import difflib
import functools

from dynalab.envs.base import Env
from dynalab.types import EnvSpec

GYM6: tuple[str, ...] = (
    "gym:InvertedPendulum-v5",
    "gym:Hopper-v5",
    "gym:HalfCheetah-v5",
    "gym:Walker2d-v5",
    "gym:Ant-v5",
    "gym:Humanoid-v5",
)

DMC15: tuple[str, ...] = (
    "dmc:acrobot-swingup",
    "dmc:cheetah-run",
    "dmc:finger-turn_hard",
    "dmc:fish-swim",
    "dmc:hopper-hop",
    "dmc:hopper-stand",
    "dmc:humanoid-run",
    "dmc:humanoid-stand",
    "dmc:humanoid-walk",
    "dmc:pendulum-swingup",
    "dmc:quadruped-run",
    "dmc:quadruped-walk",
    "dmc:reacher-hard",
    "dmc:swimmer-swimmer6",
    "dmc:walker-run",
)


# Gymnasium refuses to build these with the MuJoCo we require (>=3).
_UNBUILDABLE_GYM = frozenset({"Pusher-v4"})


class UnknownEnvError(ValueError):
    """Raised for an env id that names no supported task."""


@functools.cache
def _gym_names() -> frozenset[str]:
    import gymnasium

    names = set()
    for name, spec in gymnasium.registry.items():
        entry = spec.entry_point
        module = entry if isinstance(entry, str) else getattr(entry, "__module__", "")
        if module.startswith("gymnasium.envs.mujoco") and name not in _UNBUILDABLE_GYM:
            names.add(name)
    return frozenset(names)


@functools.cache
def _dmc_tasks() -> frozenset[tuple[str, str]]:
    from dm_control import suite

    return frozenset(suite.ALL_TASKS)


@functools.cache
def _all_ids() -> tuple[str, ...]:
    known = set(GYM6) | set(DMC15)
    others = {f"gym:{name}" for name in _gym_names()}
    others |= {f"dmc:{domain}-{task}" for domain, task in _dmc_tasks()}
    return GYM6 + DMC15 + tuple(sorted(others - known))


def list_envs() -> list[str]:
    """Every supported id: GYM6, then DMC15, then the rest sorted."""
    return list(_all_ids())


def _unknown(env_id: str) -> UnknownEnvError:
    close = difflib.get_close_matches(env_id, _all_ids(), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return UnknownEnvError(
        f"unknown env {env_id!r}; valid ids look like 'gym:<Name>-v5' or "
        f"'dmc:<domain>-<task>', e.g. dmc:cheetah-run{hint}; "
        "run 'dynalab envs' for the full list."
    )


def make_env(env_id: str, seed: int) -> Env:
    """Build a deterministic env for `env_id`, seeded by `seed`."""
    backend, _, name = env_id.partition(":")
    if backend == "gym" and name in _gym_names():
        from dynalab.envs.gym import GymEnv

        return GymEnv(env_id, name, seed)
    if backend == "dmc":
        domain, _, task = name.partition("-")  # domains never contain '-'
        if (domain, task) in _dmc_tasks():
            from dynalab.envs.dmc import DMCEnv

            return DMCEnv(env_id, domain, task, seed)
    raise _unknown(env_id)


@functools.cache
def env_spec(env_id: str) -> EnvSpec:
    """The spec of `env_id` (builds the env once per process)."""
    env = make_env(env_id, seed=0)
    try:
        return env.spec
    finally:
        env.close()
