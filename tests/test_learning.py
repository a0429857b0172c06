"""Learning checks (slow, not in CI): `pytest -m slow tests/test_learning.py -s`.

SAC at replay ratio 1 with 1,000 warm-up steps must reach a mean (over 2 seeds) evaluation
return of at least the threshold at some evaluation within the step budget.
"""

import numpy as np
import pytest

from dynalab.config import TrainConfig
from dynalab.metrics import read
from dynalab.train import train


@pytest.mark.slow
@pytest.mark.parametrize(
    "env, steps, threshold",
    [("gym:InvertedPendulum-v5", 10_000, 900.0), ("dmc:cartpole-balance", 20_000, 800.0)],
)
def test_sac_learns(env, steps, threshold, tmp_path):
    cfg = TrainConfig(algo="sac", env=env, seeds=2, steps=steps, replay_ratio=1, warmup_steps=1_000,
                      eval_every=1_000, eval_episodes=10)
    train(cfg, tmp_path, progress=False)
    rows = [(s, k, v) for s, k, m, v in read(tmp_path / "metrics.csv") if m == "eval/return"]
    curve = {s: np.mean([v for s2, _, v in rows if s2 == s]) for s in sorted({s for s, _, _ in rows})}
    print(f"\n{env}: mean eval return over 2 seeds by env step: "
          + ", ".join(f"{s}: {v:.1f}" for s, v in curve.items()))
    assert max(curve.values()) >= threshold
