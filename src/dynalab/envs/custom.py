"""The user's own tasks: importing the modules that register them, and dm_control domains.

A user task is registered the way its suite registers its own tasks, by a module that the run
imports before it resolves its env id:

* Gymnasium: ``gymnasium.register(id="my_pkg/MyTask-v0", entry_point=..., max_episode_steps=N)``
  for a ``gymnasium.envs.mujoco.MujocoEnv`` subclass; the run's id is ``gym:my_pkg/MyTask-v0``.
* dm_control: a domain module written like the suite's own (an MJCF model, a Task, and
  ``SUITE = containers.TaggedTasks()`` whose entries take ``random=``), added to the suite with
  ``register_dmc_domain("my_domain", module)``; the run's id is ``dmc:my_domain-my_task``.

Runs name the modules in ``TrainConfig.imports`` (``--import``); config validation imports them
(see config.validate), so every path that builds a run's env (train, resume, bench, sweeps and
their Ray workers) imports them first, from the config saved with the run. An installed package
can instead declare an entry point in the ``dynalab.tasks`` group (e.g. ``[project.entry-points.
"dynalab.tasks"] my_tasks = "my_pkg.tasks"``); those are loaded only when an id is asked for
that no imported module registered, and by ``dynalab envs``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from dynalab.envs.registry import UnknownEnvError

ENTRY_POINT_GROUP = "dynalab.tasks"

# Entry points loaded so far, by (name, value): each is loaded once per process.
_loaded_entry_points: set[tuple[str, str]] = set()


class TaskImportError(UnknownEnvError):
    """A module named by --import (or a dynalab.tasks entry point) failed to import; one sentence.

    An UnknownEnvError, because the tasks it would have registered cannot be resolved: every
    entry point that reports an unusable id in one line reports this one too.
    """


def import_modules(modules: Sequence[str]) -> None:
    """Import every module in `modules` (dotted names, e.g. "my_pkg.tasks"), in order.

    A module already imported is not re-executed (Python's import cache), so calling this for
    every validation of a config is cheap. Raises TaskImportError naming the module and the
    error when one is not a module name, cannot be found, or fails while it runs.
    """
    for name in modules:
        if not isinstance(name, str) or not name or not all(p.isidentifier() for p in name.split(".")):
            raise TaskImportError(
                f"--import {name!r} is not a module name; pass a dotted Python module name such as "
                "my_tasks or my_pkg.tasks (a module importable from PYTHONPATH or an installed package)."
            )
        try:
            importlib.import_module(name)
        except Exception as e:  # the user's module may raise anything while it runs
            raise TaskImportError(
                f"--import {name} failed: {_one_line(e)}; check the module name and that it is installed "
                "or on PYTHONPATH."
            ) from e


def load_entry_points() -> bool:
    """Load the `dynalab.tasks` entry points of the installed packages not loaded yet.

    An entry point names a module (imported) or a callable (imported, then called with no
    arguments) that registers tasks. Returns whether any was loaded now. Raises TaskImportError
    naming the entry point, its package and the error when one fails.
    """
    loaded = False
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = (ep.name, ep.value)
        if key in _loaded_entry_points:
            continue
        _loaded_entry_points.add(key)  # a failing one is reported once, not on every lookup
        try:
            target = ep.load()
            if callable(target) and not isinstance(target, ModuleType):
                target()
        except Exception as e:
            package = f" of package {ep.dist.name}" if getattr(ep, "dist", None) is not None else ""
            raise TaskImportError(
                f"the {ENTRY_POINT_GROUP} entry point {ep.name} = {ep.value!r}{package} failed: {_one_line(e)}; "
                "fix or uninstall that package."
            ) from e
        loaded = True
    return loaded


def register_dmc_domain(name: str, module: Any) -> None:
    """Add a dm_control domain so that `dmc:<name>-<task>` names each task of its SUITE.

    `module` is a domain written as dm_control's suite writes its own (e.g.
    dm_control/suite/cartpole.py): it has `SUITE`, a mapping (usually `containers.TaggedTasks`)
    from task name to a function that takes `random=` (an int seed or RandomState) and returns a
    `control.Environment` on a `dm_control.mujoco.Physics`. Registering the same name again
    replaces the earlier module (e.g. after a reload). Equivalent to
    `dm_control.suite._DOMAINS[name] = module`, which dynalab also honours.

    Raises ValueError if `name` is not a usable domain name (letters, digits, '_'; no '-', which
    separates domain and task in ids), names one of dm_control's own domains, or `module` has
    no SUITE mapping.
    """
    from dm_control import suite

    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(
            f"dm_control domain name {name!r} must be an identifier (letters, digits and '_'; no '-', which "
            "separates domain and task in dmc:<domain>-<task>)."
        )
    if name in builtin_dmc_domains() and suite._DOMAINS.get(name) is not module:
        raise ValueError(f"{name!r} is one of dm_control's own domains; register your domain under another name.")
    tasks = getattr(module, "SUITE", None)
    if tasks is None or not hasattr(tasks, "keys") or not list(tasks.keys()):
        raise ValueError(
            f"dm_control domain {name!r} needs a SUITE mapping task names to environment functions "
            "(SUITE = dm_control.utils.containers.TaggedTasks(), then @SUITE.add() on each task function)."
        )
    suite._DOMAINS[name] = module


def builtin_dmc_domains() -> frozenset[str]:
    """dm_control's own suite domains (those it found when it was imported)."""
    from dm_control import suite

    return frozenset(domain for domain, _ in suite.ALL_TASKS)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()).rstrip(".")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
