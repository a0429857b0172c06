"""Algorithms, each a `Learner` built from a config and a task spec."""

from __future__ import annotations

from typing import Callable

from dynalab.algos import sac
from dynalab.algos.base import Learner
from dynalab.config import TrainConfig
from dynalab.types import EnvSpec

ALGOS: dict[str, Callable[[TrainConfig, EnvSpec], Learner]] = {
    "sac": sac.make,
}


def make_learner(cfg: TrainConfig, spec: EnvSpec) -> Learner:
    return ALGOS[cfg.algo](cfg, spec)
