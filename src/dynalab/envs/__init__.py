"""Gymnasium MuJoCo and dm_control tasks behind one small protocol."""

from dynalab.envs.base import Env
from dynalab.envs.batch import BatchEnv, StepResult
from dynalab.envs.custom import TaskImportError, import_modules, register_dmc_domain
from dynalab.envs.registry import (
    DMC15,
    GYM6,
    UnknownEnvError,
    UnsupportedEnvError,
    env_spec,
    list_envs,
    make_env,
)

__all__ = [
    "DMC15",
    "GYM6",
    "BatchEnv",
    "Env",
    "StepResult",
    "TaskImportError",
    "UnknownEnvError",
    "UnsupportedEnvError",
    "env_spec",
    "import_modules",
    "list_envs",
    "make_env",
    "register_dmc_domain",
]
