"""Algorithms: each a `Learner` factory plus the defaults that define it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from dynalab.algos import alm, mbpo, sac
from dynalab.algos.base import Learner
from dynalab.config import TrainConfig
from dynalab.types import EnvSpec

# FTFL-tuned's larger model: twice the width of STFL's 200 units at the same depth. The FTFL paper
# reports only "increased model capacity" helping on the humanoid tasks; doubling the width is
# the smallest clearly larger model, and --model.width/--model.depth change it.
FTFL_TUNED_WIDTH = 400


@dataclass(frozen=True)
class Algo:
    make: Callable[[TrainConfig, EnvSpec], Learner]
    defaults: Callable[[TrainConfig], TrainConfig]
    summary: str


# What `--algo alm` and `--algo alm-nodyna` change in the shared run settings (STFL Table 3):
# one update per env step on 512 sequences and 512 transitions, after 5,000 random steps. The
# replay capacity (1e6 on humanoid tasks, else 1e5) follows from the task: `TrainConfig.capacity`.
ALM_RUN = dict(replay_ratio=1, batch_size=512, warmup_steps=5_000)


def _model(**changes) -> Callable[[TrainConfig], TrainConfig]:
    return lambda cfg: dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **changes))


ALGOS: dict[str, Algo] = {
    "sac": Algo(sac.make, lambda cfg: cfg, "SAC at a high replay ratio (STFL Table 1)"),
    "mbpo": Algo(mbpo.make, lambda cfg: cfg, "MBPO: SAC + model ensemble + 1-step rollouts (STFL Table 2)"),
    "ftfl": Algo(mbpo.make, _model(target_norm=True, direct_next_state=True),
                 "FTFL: MBPO with target unit normalisation and direct next-state prediction (FTFL)"),
    "ftfl-tuned": Algo(mbpo.make, _model(target_norm=True, direct_next_state=True, width=FTFL_TUNED_WIDTH),
                       f"Tuned FTFL: FTFL with a larger model ({FTFL_TUNED_WIDTH} units per layer)"),
    "alm": Algo(alm.make, lambda cfg: dataclasses.replace(cfg, **ALM_RUN),
                "ALM: Aligned Latent Models, latent model + lambda-SVG actor through it (STFL Table 3)"),
    "alm-nodyna": Algo(lambda cfg, spec: alm.make(cfg, spec, dyna=False),
                       lambda cfg: dataclasses.replace(cfg, **ALM_RUN),
                       "ALM without Dyna: ALM's actor maximises Q directly, no imagination (STFL Fig 5)"),
}


def default_config(algo: str = "sac", **changes) -> TrainConfig:
    """The config an algorithm runs with unless told otherwise (what `--algo` selects)."""
    return dataclasses.replace(ALGOS[algo].defaults(TrainConfig(algo=algo)), **changes)


def make_learner(cfg: TrainConfig, spec: EnvSpec) -> Learner:
    return ALGOS[cfg.algo].make(cfg, spec)
