"""Task ids, construction by id, and specs."""

from __future__ import annotations

import difflib
import functools
import gc
import os
import sys
import warnings

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

# Tasks that only build where dm_control can open an OpenGL rendering context, and why.
# Building every listed id once (with MUJOCO_GL unset and no display) found only this one.
_NEEDS_RENDERING = {
    "dmc:quadruped-escape": "dm_control uploads its random terrain (a heightfield) to an OpenGL "
    "rendering context at every reset",
}


class UnknownEnvError(ValueError):
    """Raised for an env id that names no supported task."""


class UnavailableEnvError(UnknownEnvError):
    """Raised for a task of the suites that cannot be built in this process (see its message).

    A subclass of UnknownEnvError so that every entry point that reports an unusable id
    in one line reports this one too.
    """


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


@functools.cache
def _rendering_error() -> str | None:
    """Why dm_control cannot open a rendering context in this process, or None if it can.

    Tries what dm_control does for a task that renders: an OpenGL context (backend from
    MUJOCO_GL) and a MuJoCo rendering context on it, for an empty model (~0.3 s with EGL).
    """
    from dm_control import mujoco as dm_mujoco

    physics = dm_mujoco.Physics.from_xml_string("<mujoco/>")
    # A failed attempt warns (GLFW) and leaves a half-built MjrContext whose __del__
    # complains on stderr; the answer is all we need.
    hook, sys.unraisablehook = sys.unraisablehook, lambda *_: None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            physics.contexts  # noqa: B018 (the property builds the contexts)
        return None
    except Exception as e:  # whatever the backend raises: RuntimeError, mujoco.FatalError, ...
        reason = str(e).splitlines()[0].rstrip(".") if str(e) else ""
        return f"{type(e).__name__}: {reason}"
    finally:
        physics.free()
        gc.collect()
        sys.unraisablehook = hook


def _unavailable(env_id: str) -> UnavailableEnvError | None:
    """The error for `env_id` if it cannot be built in this process, else None."""
    why = _NEEDS_RENDERING.get(env_id)
    if why is None:
        return None
    error = _rendering_error()
    if error is None:
        return None
    backend = os.environ.get("MUJOCO_GL", "unset")
    return UnavailableEnvError(
        f"{env_id} cannot be built here: {why}, and no OpenGL backend works in this process "
        f"(MUJOCO_GL={backend}; {error}); install EGL or OSMesa and set MUJOCO_GL=egl or "
        "MUJOCO_GL=osmesa (or glfw with a display), or choose another task from 'dynalab envs'."
    )


def is_known_id(env_id: str) -> bool:
    """Whether `env_id` names a task of the suites, buildable in this process or not."""
    return env_id in _all_ids()


def list_envs() -> list[str]:
    """Every id that can be built in this process: GYM6, then DMC15, then the rest sorted.

    Tasks that need an OpenGL rendering backend are left out where none works.
    """
    return [env_id for env_id in _all_ids() if _unavailable(env_id) is None]


def _unknown(env_id: str) -> UnknownEnvError:
    close = difflib.get_close_matches(env_id, _all_ids(), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return UnknownEnvError(
        f"unknown env {env_id!r}; valid ids look like 'gym:<Name>-v5' or "
        f"'dmc:<domain>-<task>', e.g. dmc:cheetah-run{hint}; "
        "run 'dynalab envs' for the full list."
    )


def make_env(env_id: str, seed: int) -> Env:
    """Build a deterministic env for `env_id`, seeded by `seed`.

    Raises UnknownEnvError for an id that names no task, and its subclass
    UnavailableEnvError for a task that cannot be built in this process.
    """
    unavailable = _unavailable(env_id)
    if unavailable is not None:
        raise unavailable
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
