"""dynalab: a fast, trustworthy JAX lab for Dyna-style model-based RL."""

import ctypes.util as _ctypes_util
import os as _os
import sys as _sys

import jax as _jax

# JAX's CPU async dispatch can hang forever in BlockUntilReady (jax-ml/jax#25861; we hit it in a
# training run). The loop waits for every action anyway, so synchronous CPU dispatch costs
# nothing here. Accelerator backends are unaffected by this flag.
_jax.config.update("jax_cpu_enable_async_dispatch", False)

__version__ = "0.1.0"


def choose_mujoco_gl() -> str:
    """Set MUJOCO_GL, unless the user did, to a rendering backend this machine has; returns it.

    dm_control picks its OpenGL backend when it is first imported, and a backend whose library is
    missing fails there with a traceback, even for tasks that never render (GPU images without
    libEGL do this). So: EGL where libEGL exists, else OSMesa where it exists, else "disable"
    (rendering then fails with the registry's one-line error naming MUJOCO_GL). A user's choice is
    kept unless it names EGL or OSMesa and that library is missing: then the first that exists is
    used instead, with a warning.
    """
    libraries = {"egl": "EGL", "osmesa": "OSMesa"}
    found = [gl for gl, lib in libraries.items() if _ctypes_util.find_library(lib)]
    chosen = _os.environ.get("MUJOCO_GL", "").lower()
    if chosen in libraries and chosen not in found:
        # PyOpenGL would fail at `import mujoco` with an AttributeError traceback, in every command.
        fallback = found[0] if found else "disable"
        print(f"dynalab: warning: MUJOCO_GL={chosen} but lib{libraries[chosen]} is not installed, so dynalab uses "
              f"MUJOCO_GL={fallback}; install lib{libraries[chosen]} or unset MUJOCO_GL to silence this.",
              file=_sys.stderr)
        _os.environ["MUJOCO_GL"] = fallback
    elif not chosen:
        _os.environ["MUJOCO_GL"] = found[0] if found else "disable"
    return _os.environ["MUJOCO_GL"]


# Before any dynalab module imports dm_control: every entry point (CLI, sweep workers, the Python
# API, Ray tasks) imports this package first.
choose_mujoco_gl()


# The Python API (dynalab.api), importable as `from dynalab import run_training, load_metrics, ...`.
# Loaded on first use, so that `import dynalab` (every CLI command, every worker) stays light. No
# name may equal a submodule's (`train`, `config`): importing the submodule would replace it.
_API = ("make_config", "run_training", "resume_training", "load_config", "load_metrics", "make_report",
        "load_experiment", "run_experiment", "run_model_study")
__all__ = [*_API, "TrainConfig", "ConfigError", "choose_mujoco_gl", "__version__"]


def __getattr__(name: str):
    if name in _API:
        from dynalab import api

        return getattr(api, name)
    if name in ("TrainConfig", "ConfigError"):
        from dynalab import config

        return getattr(config, name)
    raise AttributeError(f"module 'dynalab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
