"""The one learning test in CI: SAC must learn InvertedPendulum, in about a minute on 2 CPU cores.

The slow checks (tests/test_learning.py, `pytest -m slow`) use the papers' networks and two
seeds; this one is sized for CI: one seed, 2x64 networks instead of 2x256, learning rates
1e-3 instead of 3e-4, replay ratio 10 and 500 warm-up steps, 2,500 env steps. Everything else
(losses, temperature, target entropy, Adam eps, tau, replay, the loop) is the default path.

Measured on 2 shared CPU cores: a uniform-random policy scores 5.1 on average (200 episodes,
max 22), the untrained deterministic policy 15-51 (seeds 0-7, evaluations at the end of
warm-up), and a policy that balances the pole for the whole episode 1,000. With these
settings seeds 0-7 first reached 1,000 at env step 1,500, 1,750, 1,750, 1,750, 1,500, 2,250,
1,500 and 1,500. With learning broken by a config change the test fails: all three learning
rates at 1e-12, best 19.2; critic learning rate at 1e-12, best 18.2; no update at all
(warm-up until the last step), best 19.2; actor learning rate at 1e-12, the temperature runs
away and the non-finite guard stops the run at env step 1,971.
"""

import numpy as np

from dynalab.agents.sac import SACConfig
from dynalab.config import TrainConfig
from dynalab.metrics import read
from dynalab.train import train

# Far above what a policy that has not learned gets (see above), far below a learned one (1,000).
THRESHOLD = 500.0


def ci_config(**changes) -> TrainConfig:
    cfg = dict(algo="sac", env="gym:InvertedPendulum-v5", seeds=1, seed=0, steps=2_500, replay_ratio=10,
               warmup_steps=500, eval_every=250, eval_episodes=5, log_every=500,
               sac=SACConfig(hidden=(64, 64), actor_lr=1e-3, critic_lr=1e-3, temperature_lr=1e-3))
    return TrainConfig(**{**cfg, **changes})


def eval_curve(path) -> dict[int, float]:
    return {s: v for s, _, m, v in read(path) if m == "eval/return"}


def test_sac_learns_inverted_pendulum(tmp_path):
    train(ci_config(), tmp_path, progress=False)
    curve = eval_curve(tmp_path / "metrics.csv")
    print("eval return by env step: " + ", ".join(f"{s}: {v:.1f}" for s, v in curve.items()))
    assert curve[500] < 100.0, f"the policy scored {curve[500]:.1f} before learning started; the test's premise is off"
    best = max(curve.values())
    assert best >= THRESHOLD, (
        f"SAC did not learn InvertedPendulum: best evaluation return {best:.1f} < {THRESHOLD} "
        f"(curve {np.round(list(curve.values()), 1).tolist()}); a learned policy scores 1,000")
