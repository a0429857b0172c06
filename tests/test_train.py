"""The training loop: determinism, seed independence, outputs."""

import dataclasses
import json

import numpy as np
import pytest

from dynalab import config as config_lib
from dynalab.agents.sac import SACConfig
from dynalab.config import TrainConfig
from dynalab.metrics import read
from dynalab.train import train

TINY = TrainConfig(
    algo="sac",
    env="gym:InvertedPendulum-v5",
    seeds=1,
    seed=0,
    steps=240,
    replay_ratio=2,
    warmup_steps=100,
    batch_size=32,
    eval_every=120,
    eval_episodes=2,
    log_every=60,
    sac=SACConfig(hidden=(32, 32)),
)


def learning_rows(path):
    """Metric rows that should be reproducible (wall-clock timings are not)."""
    return {(s, k, m): v for s, k, m, v in read(path) if not m.startswith("time/")}


@pytest.fixture(scope="module")
def four_seed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("four")
    train(dataclasses.replace(TINY, seeds=4), out, progress=False)
    return out


def test_run_folder_holds_config_and_long_metrics(four_seed_run):
    cfg = config_lib.load(four_seed_run / "config.json")
    assert cfg.seeds == 4 and cfg.buffer_capacity == TINY.steps  # resolved min(1e6, steps)
    assert json.loads((four_seed_run / "run.json").read_text())["jax"]
    header = (four_seed_run / "metrics.csv").read_text().splitlines()[0]
    assert header == "step,seed,metric,value"
    rows = read(four_seed_run / "metrics.csv")
    metrics = {m for _, _, m, _ in rows}
    for name in ("eval/return", "loss/critic", "loss/actor", "q/mean_real", "sac/temperature", "sac/entropy",
                 "time/env_steps_per_sec", "time/env", "time/learner"):
        assert name in metrics, name
    evals = sorted((s, k) for s, k, m, _ in rows if m == "eval/return")
    assert evals == [(s, k) for s in (120, 240) for k in range(4)]
    # No losses before learning starts: the first log at step 60 is inside the warm-up.
    assert not [r for r in rows if r[0] == 60 and r[2].startswith("loss/")]


def test_same_seed_twice_gives_identical_metrics(tmp_path):
    train(TINY, tmp_path / "a", progress=False)
    train(TINY, tmp_path / "b", progress=False)
    a, b = learning_rows(tmp_path / "a" / "metrics.csv"), learning_rows(tmp_path / "b" / "metrics.csv")
    assert a.keys() == b.keys() and len(a) > 20
    assert a == b


def test_seed_inside_a_batch_matches_it_alone(tmp_path, four_seed_run):
    train(dataclasses.replace(TINY, seed=2, seeds=1), tmp_path / "alone", progress=False)
    alone = learning_rows(tmp_path / "alone" / "metrics.csv")
    batch = {key: v for key, v in learning_rows(four_seed_run / "metrics.csv").items() if key[1] == 2}
    assert alone.keys() == batch.keys()
    keys = sorted(alone)
    np.testing.assert_allclose([batch[k] for k in keys], [alone[k] for k in keys], rtol=1e-4, atol=1e-5)


def test_different_seeds_differ(four_seed_run):
    rows = learning_rows(four_seed_run / "metrics.csv")
    q = [rows[(240, k, "q/mean_real")] for k in range(4)]
    assert len(set(q)) == 4
