"""Runs that survive: SIGKILL at a random moment (and during a checkpoint write), then resume.

The reference is the same run left alone; the resumed run's metrics.csv must hold exactly the
same rows (wall-clock `time/*` metrics aside), none duplicated or missing.
"""

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dynalab import checkpoint
from dynalab import config as config_lib
from dynalab.agents.sac import SACConfig
from dynalab.config import TrainConfig
from dynalab.metrics import read
from dynalab.models.ensemble import ModelConfig
from dynalab.train import train
from tiny_configs import ALM as ALM_TINY

SAC = TrainConfig(
    algo="sac", env="gym:InvertedPendulum-v5", seeds=2, steps=700, replay_ratio=2, warmup_steps=100,
    batch_size=32, eval_every=150, eval_episodes=2, log_every=50, checkpoint_every=70, keep_checkpoints=2,
    sac=SACConfig(hidden=(32, 32)),
)
MBPO = TrainConfig(
    algo="mbpo", env="gym:InvertedPendulum-v5", seeds=2, steps=500, replay_ratio=2, warmup_steps=100,
    batch_size=32, eval_every=150, eval_episodes=2, log_every=50, checkpoint_every=70, keep_checkpoints=2,
    rollouts_per_step=8, synthetic_retain_steps=20, model_refit_every=50, sac=SACConfig(hidden=(32, 32)),
    model=ModelConfig(ensemble_size=3, num_elites=2, width=32, depth=2, batch_size=32, refit_steps=20),
)

ALM = dataclasses.replace(ALM_TINY, seeds=2, steps=400, checkpoint_every=70, keep_checkpoints=2, eval_every=150,
                          eval_episodes=2, log_every=50)

# Subprocesses share the tests' persistent compile cache, so each compiles little.
ENV = {
    **os.environ,
    "JAX_COMPILATION_CACHE_DIR": os.environ.get("DYNALAB_JAX_CACHE", "/tmp/dynalab-jax-cache"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}

# Runs the CLI, but SIGKILLs itself halfway through writing the checkpoint at env step `STEP`
# (argv[1]): in its learner arrays (argv[2] "learner", after its buffer segment is in place) or in
# its buffer segment (argv[2] "segment"): a crash in the middle of a checkpoint write.
KILL_IN_WRITE = """
import os, signal, sys
from dynalab import checkpoint
from dynalab.cli import main
step, part, write = int(sys.argv[1]), sys.argv[2], checkpoint._write_npz
def dying_write(path, arrays):
    if (path.name == "learner.npz" and path.parent.name.startswith(f".tmp-{checkpoint.name(step)}")
            if part == "learner" else path.name.startswith(f".tmp-{checkpoint.name(step)}-")):
        def half():
            for i, item in enumerate(arrays):
                if i == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield item
        return write(path, half())
    return write(path, arrays)
checkpoint._write_npz = dying_write
main(sys.argv[3:])
"""


def cli_args(cfg: TrainConfig, out: Path) -> list[str]:
    """`dynalab train` flags that rebuild `cfg` exactly (checked by the resume's config match)."""
    args = ["train", "--out", str(out), "--no-progress"]
    for key, value in config_lib.flatten(config_lib.to_dict(cfg)).items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(flag if value else flag.replace("--", "--no-", 1).replace("--no-model.", "--model.no-")
                        .replace("--no-sac.", "--sac.no-"))
        elif isinstance(value, list):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args


def rows(out: Path) -> list[tuple[int, int, str, float]]:
    return [r for r in read(out / "metrics.csv") if not r[2].startswith("time/")]


def assert_same_rows(resumed: Path, reference: Path) -> None:
    got, want = rows(resumed), rows(reference)
    keys = [r[:3] for r in got]
    assert len(keys) == len(set(keys)), "duplicated metrics rows after resume"
    assert keys == [r[:3] for r in want], "missing, extra or reordered metrics rows after resume"
    np.testing.assert_allclose([r[3] for r in got], [r[3] for r in want], rtol=1e-6, atol=1e-7)


def kill_at_random_moment(cfg: TrainConfig, out: Path, rng: random.Random) -> int:
    """Start the run, SIGKILL it at a random moment after training began; returns the kill's step."""
    proc = subprocess.Popen([sys.executable, "-m", "dynalab", *cli_args(cfg, out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    # Wait until training is under way (a checkpoint past step 0), then a random extra delay.
    while not [c for c in checkpoint.complete(out / "checkpoints") if c.name != checkpoint.name(0)]:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 1.5))
    assert proc.poll() is None, "the run finished before the kill; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return checkpoint.read_meta(checkpoint.latest(out / "checkpoints"))["step"]


@pytest.mark.parametrize("cfg", [SAC, MBPO, ALM], ids=["sac", "mbpo", "alm"])
def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_rows(cfg, tmp_path):
    reference = tmp_path / "reference"
    train(cfg, reference, progress=False)

    out = tmp_path / "killed"
    rng = random.Random(f"{cfg.algo}-{time.time_ns()}")
    killed_after = kill_at_random_moment(cfg, out, rng)
    assert 0 < killed_after < cfg.steps

    # Resume, and die halfway through writing the next checkpoint.
    next_step = (killed_after // cfg.checkpoint_every + 1) * cfg.checkpoint_every
    part = "segment" if cfg.algo == "mbpo" else "learner"
    proc = subprocess.run([sys.executable, "-c", KILL_IN_WRITE, str(next_step), part, *cli_args(cfg, out)],
                          env=ENV, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    where = out / "checkpoints" / ("buffers" if part == "segment" else "")
    assert list(where.glob(f".tmp-{checkpoint.name(next_step)}-*")), "the kill was not mid-write"
    assert checkpoint.read_meta(checkpoint.latest(out / "checkpoints"))["step"] == next_step - cfg.checkpoint_every

    # The last resume runs to the end, in process, through `dynalab resume`'s code path.
    train(config_lib.load(out / "config.json"), out, progress=False)
    assert_same_rows(out, reference)
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert [c.name for c in checkpoint.complete(out / "checkpoints")] == [
        checkpoint.name(s) for s in ((cfg.steps - 1) // cfg.checkpoint_every * cfg.checkpoint_every, cfg.steps)]
    # The checkpoints were incremental: the last one's replay rows come from several checkpoints'
    # segments, written before and after the kills and across pruning.
    replay = checkpoint.read_meta(checkpoint.latest(out / "checkpoints"))["buffers"][0]["blocks"]
    assert len({ref for ref in replay if ref}) >= 3
