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


def _entry_module(spec) -> str:
    """The module a Gymnasium registration's entry point lives in ('' if unknown)."""
    entry = spec.entry_point
    module = entry.partition(":")[0] if isinstance(entry, str) else getattr(entry, "__module__", "")
    return module or ""


def _is_gymnasium_module(module: str) -> bool:
    return module == "gymnasium" or module.startswith("gymnasium.")


@functools.cache
def _gym_names() -> frozenset[str]:
    """Gymnasium's own MuJoCo tasks (registered by Gymnasium, without namespace or kwargs)."""
    import gymnasium

    names = set()
    for name, spec in gymnasium.registry.items():
        if (_entry_module(spec).startswith("gymnasium.envs.mujoco") and spec.namespace is None
                and not spec.kwargs and name not in _UNBUILDABLE_GYM):
            names.add(name)
    return frozenset(names)


def _user_gym_names() -> frozenset[str]:
    """Gymnasium ids registered by the user's modules (or other packages) that may be MuJoCo tasks.

    Read live, since imports add to Gymnasium's registry: every registration outside Gymnasium's
    own MuJoCo tasks whose entry point is a Gymnasium MuJoCo class (e.g. Hopper with other
    kwargs, under the user's namespace) or lives outside Gymnasium. Whether the env really is a
    MujocoEnv is checked when it is built (`_check_user_gym_task`).
    """
    import gymnasium

    builtin = _gym_names()
    names = set()
    for name, spec in gymnasium.registry.items():
        module = _entry_module(spec)
        if name in builtin or name in _UNBUILDABLE_GYM:
            continue
        if module.startswith("gymnasium.envs.mujoco") or not _is_gymnasium_module(module):
            names.add(name)
    return frozenset(names)


def _may_be_mujoco(name: str) -> bool:
    """Whether a registered Gymnasium id's entry point is a MujocoEnv class or a factory function
    (which only building can tell); for listing, where building every task would be slow."""
    import gymnasium
    from gymnasium.envs.mujoco import MujocoEnv
    from gymnasium.envs.registration import load_env_creator

    entry = gymnasium.registry[name].entry_point
    try:
        creator = load_env_creator(entry) if isinstance(entry, str) else entry
    except Exception:  # noqa: BLE001 - an entry point that cannot load is not listed; make_env reports it
        return False
    return issubclass(creator, MujocoEnv) if isinstance(creator, type) else callable(creator)


@functools.cache
def _dmc_tasks() -> frozenset[tuple[str, str]]:
    """dm_control's own suite tasks (ALL_TASKS is fixed when dm_control is imported)."""
    from dm_control import suite

    return frozenset(suite.ALL_TASKS)


def _user_dmc_tasks() -> frozenset[tuple[str, str]]:
    """(domain, task) of every task added to dm_control's suite after its import (live).

    Domains added with custom.register_dmc_domain or directly to `suite._DOMAINS`, and tasks
    added to a suite domain's SUITE.
    """
    from dm_control import suite

    builtin = _dmc_tasks()
    tasks = set()
    for domain, module in list(suite._DOMAINS.items()):
        if "-" in domain:  # ids split domain and task at the first '-'
            continue
        for task in list(getattr(module, "SUITE", {}).keys()):
            if (domain, task) not in builtin:
                tasks.add((domain, task))
    return frozenset(tasks)


@functools.cache
def _builtin_ids() -> tuple[str, ...]:
    known = set(GYM6) | set(DMC15)
    others = {f"gym:{name}" for name in _gym_names()}
    others |= {f"dmc:{domain}-{task}" for domain, task in _dmc_tasks()}
    return GYM6 + DMC15 + tuple(sorted(others - known))


def _user_ids() -> frozenset[str]:
    return frozenset({f"gym:{name}" for name in _user_gym_names()}
                     | {f"dmc:{domain}-{task}" for domain, task in _user_dmc_tasks()})


def _all_ids() -> tuple[str, ...]:
    """Every known id: Gym6, DMC15, then the suites' other tasks and the user's tasks, sorted."""
    builtin = _builtin_ids()
    head = len(GYM6) + len(DMC15)
    return builtin[:head] + tuple(sorted(set(builtin[head:]) | (_user_ids() - set(builtin))))


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
    """Whether `env_id` names a task of the suites, or one the user's imported modules registered,
    buildable in this process or not."""
    return env_id in _builtin_ids() or env_id in _user_ids()


def is_user_id(env_id: str) -> bool:
    """Whether `env_id` names a task registered by the user's modules rather than the suites."""
    return env_id in _user_ids() and env_id not in _builtin_ids()


def list_envs() -> list[str]:
    """Every id that can be built in this process: GYM6, then DMC15, then the rest sorted.

    The rest includes the tasks registered by modules imported so far and by the installed
    packages' `dynalab.tasks` entry points (loaded here). Tasks that need an OpenGL rendering
    backend are left out where none works. Raises custom.TaskImportError if an entry point fails.
    """
    from dynalab.envs.custom import load_entry_points

    load_entry_points()
    not_mujoco = {f"gym:{name}" for name in _user_gym_names() if not _may_be_mujoco(name)}
    return [env_id for env_id in _all_ids() if env_id not in not_mujoco and _unavailable(env_id) is None]


def _unknown(env_id: str) -> UnknownEnvError:
    close = difflib.get_close_matches(env_id, _all_ids(), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return UnknownEnvError(
        f"unknown env {env_id!r}; valid ids look like 'gym:<Name>-v5' or "
        f"'dmc:<domain>-<task>', e.g. dmc:cheetah-run{hint}, or a task of your own registered "
        "by a module that you name with --import MODULE; run 'dynalab envs' for the full list."
    )


class UnsupportedEnvError(UnknownEnvError):
    """Raised for a registered task that dynalab cannot run (not MuJoCo, no time limit, ...)."""


def _not_mujoco(env_id: str, what: str) -> UnsupportedEnvError:
    return UnsupportedEnvError(
        f"{env_id} is {what}, and dynalab runs MuJoCo tasks only (it checkpoints, resumes and, for "
        "--perfect-model, restores the simulator's exact state); valid ids look like 'gym:<Name>-v5' or "
        "'dmc:<domain>-<task>' (a Gymnasium MujocoEnv or a dm_control task), see 'dynalab envs'."
    )


# A user task that built and passed the checks -> whether it may end an episode early (dm_control:
# its Task overrides get_termination; Gymnasium: always True, nothing tells).
_checked_user_tasks: dict[str, bool] = {}


def _check_user_gym_task(env_id: str, name: str) -> None:
    """Build a user's Gymnasium task once and refuse it, in one sentence, unless dynalab can run it."""
    if env_id in _checked_user_tasks:
        return
    import gymnasium
    from gymnasium.envs.mujoco import MujocoEnv

    try:
        env = gymnasium.make(name)
    except Exception as e:  # the user's constructor may raise anything
        raise UnsupportedEnvError(f"{env_id} is registered but failed to build: {_one_line(e)}.") from e
    try:
        if not isinstance(env.unwrapped, MujocoEnv):
            raise _not_mujoco(env_id, f"a Gymnasium task but not a MuJoCo one ({type(env.unwrapped).__name__} is "
                                      "not a gymnasium.envs.mujoco.MujocoEnv)")
        spaces = (env.observation_space, env.action_space)
        if not all(isinstance(space, gymnasium.spaces.Box) for space in spaces):
            raise UnsupportedEnvError(
                f"{env_id} has a {type(env.observation_space).__name__} observation space and a "
                f"{type(env.action_space).__name__} action space, and dynalab needs Box spaces for both "
                "(flat float observations, continuous actions).")
        if env.spec is None or env.spec.max_episode_steps is None:
            raise UnsupportedEnvError(
                f"{env_id} is registered without a time limit; register it with max_episode_steps=N "
                "(gymnasium.register(..., max_episode_steps=1000)), since training and evaluation episodes need one.")
    finally:
        env.close()
    _checked_user_tasks[env_id] = True


def _check_user_dmc_task(env_id: str, domain: str, task: str) -> None:
    """Build a user's dm_control task once and refuse it, in one sentence, unless dynalab can run it."""
    if env_id in _checked_user_tasks:
        return
    import inspect

    from dm_control import suite
    from dm_control.mujoco import Physics
    from dm_control.rl import control

    factory = suite._DOMAINS[domain].SUITE[task]
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a callable without a signature: let the call decide
        params = ()
    if params and not any(p.name == "random" or p.kind is p.VAR_KEYWORD for p in params):
        raise UnsupportedEnvError(
            f"{env_id}: the task function {getattr(factory, '__name__', task)} must take random= (a seed or "
            "RandomState, passed on to the Task as in dm_control's suite), since dynalab seeds each env with it.")
    try:
        env = suite.load(domain, task, task_kwargs={"random": 0})
    except Exception as e:
        raise UnsupportedEnvError(f"{env_id} is registered but failed to build: {_one_line(e)}.") from e
    try:
        if not isinstance(getattr(env, "physics", None), Physics):
            raise _not_mujoco(env_id, "a dm_control task whose physics is not a dm_control.mujoco.Physics")
        if not hasattr(env.observation_spec(), "values"):
            raise UnsupportedEnvError(f"{env_id}'s observation must be a dict of arrays, as in dm_control's suite.")
        _checked_user_tasks[env_id] = type(env.task).get_termination is not control.Task.get_termination
    finally:
        env.close()


def dmc_task_can_terminate(env_id: str) -> bool:
    """Whether a user's dm_control task may end an episode early: its Task overrides get_termination.

    dm_control's own tasks never do, except lqr's (see termination.py). Builds the task once.
    Raises UnknownEnvError as make_env does for an id that is not a user's dm_control task.
    """
    domain, _, task = env_id.partition(":")[2].partition("-")
    if not env_id.startswith("dmc:") or not is_user_id(env_id):
        raise _unknown(env_id)
    _check_user_dmc_task(env_id, domain, task)
    return _checked_user_tasks[env_id]


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()).rstrip(".")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def make_env(env_id: str, seed: int) -> Env:
    """Build a deterministic env for `env_id`, seeded by `seed`.

    An id that neither the suites nor the modules imported so far register makes the installed
    packages' `dynalab.tasks` entry points load (once), then is looked up again. Raises
    UnknownEnvError for an id that names no task, its subclass UnavailableEnvError for a task
    that cannot be built in this process, UnsupportedEnvError for a registered task dynalab cannot
    run (not MuJoCo, no time limit, ...), and custom.TaskImportError if an entry point fails.
    """
    unavailable = _unavailable(env_id)
    if unavailable is not None:
        raise unavailable
    if not is_known_id(env_id):
        from dynalab.envs.custom import load_entry_points

        load_entry_points()
    backend, _, name = env_id.partition(":")
    if backend == "gym" and (name in _gym_names() or name in _user_gym_names()):
        from dynalab.envs.gym import GymEnv

        if name not in _gym_names():
            _check_user_gym_task(env_id, name)
        return GymEnv(env_id, name, seed)
    if backend == "dmc":
        domain, _, task = name.partition("-")  # domains never contain '-'
        if (domain, task) in _dmc_tasks() or (domain, task) in _user_dmc_tasks():
            from dynalab.envs.dmc import DMCEnv

            if (domain, task) not in _dmc_tasks():
                _check_user_dmc_task(env_id, domain, task)
            return DMCEnv(env_id, domain, task, seed)
    if backend == "gym":
        import gymnasium

        if name in gymnasium.registry:
            raise _not_mujoco(env_id, "a Gymnasium task but not a MuJoCo one")
    raise _unknown(env_id)


@functools.cache
def env_spec(env_id: str) -> EnvSpec:
    """The spec of `env_id` (builds the env once per process)."""
    env = make_env(env_id, seed=0)
    try:
        return env.spec
    finally:
        env.close()
