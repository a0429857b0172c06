"""`dynalab bench` against known timings: each phase of the program is slowed by a known sleep.

The real costs of a tiny MBPO program are a few milliseconds, so with the sleeps below each
reported phase must recover its own sleep, amortised over the right interval, and nobody
else's. The bounds hold the phases apart from each other (the slack is below the smallest
other sleep), not to a speed: they assert where time is booked, never how fast anything is.
"""

import json
import time

import pytest

from dynalab import bench as bench_module
from dynalab.cli import main
from dynalab.train import Trainer

SEEDS, STEPS, WARMUP, REFIT_EVERY = 2, 4, 64, 50
# Seconds added to each call, once learning has started: every env step of the training envs
# (once per step for all seeds together), every learner call, every hook run, every evaluation.
ENV, LEARNER, HOOK, EVAL = 0.1, 0.15, 0.2, 0.25
SLACK = 0.09  # the phases' own cost may add up to this much; below every sleep above

# Bytes of one real transition in a replay buffer, float32: obs (4) + action (1) + reward (1)
# + next obs (4) + discount (1) on InvertedPendulum.
TRANSITION_BYTES = 4 * (4 + 1 + 1 + 4 + 1)


class SlowTrainer(Trainer):
    """A Trainer whose env stepping, learner calls, hooks and evaluations take known extra time."""

    made: list["SlowTrainer"] = []

    def __init__(self, cfg):
        super().__init__(cfg)
        SlowTrainer.made.append(self)
        self.eval_seconds: list[float] = []  # each evaluation's wall time, sleep included
        self.envs.step = self._slowed(self.envs.step, ENV)
        self.batch.update = self._slowed(self.batch.update, LEARNER)
        self.batch.run_hook = self._slowed(self.batch.run_hook, HOOK)
        self.evaluate = self._timed(self._slowed(self.evaluate, EVAL))

    def _slowed(self, fn, seconds):
        def call(*args, **kwargs):
            if self.env_step >= self.cfg.warmup_steps:
                time.sleep(seconds)
            return fn(*args, **kwargs)
        return call

    def _timed(self, fn):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.eval_seconds.append(time.perf_counter() - t0)
            return out
        return call


def within(value, low, slack=SLACK):
    return low <= value <= low + slack


@pytest.fixture(scope="module")
def slow_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_module, "Trainer", SlowTrainer)
        SlowTrainer.made.clear()
        t0 = time.perf_counter()
        main(["bench", "--algo", "mbpo", "--env", "gym:InvertedPendulum-v5", "--seeds", str(SEEDS),
              "--steps", str(STEPS), "--warmup-steps", str(WARMUP), "--replay-ratio", "2", "--batch-size", "32",
              "--eval-episodes", "1", "--rollouts-per-step", "8", "--model-refit-every", str(REFIT_EVERY),
              "--model.refit-steps", "5", "--model.width", "16", "--model.depth", "2", "--model.batch-size", "16",
              "--sac.hidden", "16", "16", "--json", str(out)])
        elapsed = time.perf_counter() - t0
    (trainer,) = SlowTrainer.made
    return json.loads(out.read_text()), trainer, elapsed


def test_each_phase_recovers_its_own_sleep(slow_bench):
    record, trainer, _ = slow_bench
    phases = record["seconds_per_env_step"]
    # Per env step of the whole program: the sleeps are once per step for all seeds together.
    assert within(phases["env"], ENV), phases
    assert within(phases["learner"], LEARNER), phases
    # Hooks are timed alone and amortised over their interval (--model-refit-every for model_fit).
    hooks = {h.name: h.every for h in trainer.batch.learner.hooks}
    assert hooks["model_fit"] == REFIT_EVERY and "diagnostics" in hooks
    for name, every in hooks.items():
        assert within(phases[name] * every, HOOK), (name, phases[name], every)
    # The reported evaluation is the last one (its length varies with the episodes, so the
    # reference is its wall time measured around the call), amortised over --eval-every.
    last_eval = trainer.eval_seconds[-1]
    assert last_eval >= EVAL
    assert within(record["eval_seconds_per_evaluation"], last_eval, slack=0.05)
    assert within(phases["eval"] * record["config"]["eval_every"], last_eval, slack=0.05), phases


def test_learner_alone_holds_the_learner_sleep_and_the_overhead_does_not(slow_bench):
    record, _, _ = slow_bench
    assert within(record["learner_only_seconds_per_env_step"], LEARNER), record
    assert abs(record["loop_overhead_seconds_per_env_step"]) < SLACK
    # The model rollouts are a piece of the learner call, timed without it: none of its sleep.
    assert set(record["learner_parts_seconds_per_env_step"]) == {"rollouts"}
    assert record["learner_parts_seconds_per_env_step"]["rollouts"] < LEARNER


def test_phases_agree_with_the_wall_clock(slow_bench):
    record, trainer, elapsed = slow_bench
    phases = record["seconds_per_env_step"]
    wall = record["measured_wall_seconds_per_env_step"]  # the measured steps, timed as one block
    assert within(wall, ENV + LEARNER), wall
    # env and learner split those steps between them: together they are the block, to within slack.
    assert wall - SLACK <= phases["env"] + phases["learner"] <= wall + 1e-9
    # Everything bench timed happened inside the command, one thing after another.
    hooks = {h.name: h.every for h in trainer.batch.learner.hooks}
    timed = (STEPS * wall + sum(phases[n] * e for n, e in hooks.items()) + record["eval_seconds_per_evaluation"]
             + 20 * record["learner_only_seconds_per_env_step"] + record["checkpoint"]["bench_write_seconds"]
             + record["checkpoint"]["full_first_write_seconds"] + record["checkpoint"]["interval_write_seconds"]
             + record["checkpoint"]["interval_background_first_wait_seconds"]
             + record["checkpoint"]["interval_background_seconds"])
    assert timed <= elapsed
    # total sums the per-step phases, and per seed-step divides it by the seeds.
    assert set(phases) == {"env", "learner", "eval", "total", *hooks}
    assert within(phases["total"], ENV + LEARNER + HOOK * sum(1 / e for e in hooks.values())
                  + trainer.eval_seconds[-1] / record["config"]["eval_every"], slack=4 * SLACK)
    assert record["seeds"] == record["members"] == SEEDS
    assert within(record["seconds_per_seed_step"] * SEEDS, phases["total"], slack=1e-9)


def test_checkpoints_are_measured_at_full_buffers_and_cost_one_interval(slow_bench):
    record, _, _ = slow_bench
    ckpt = record["checkpoint"]
    # A real checkpoint of the bench's buffers: each seed's replay rows (warm-up, 2 compile steps
    # and the measured ones) are in it.
    assert ckpt["bench_bytes"] >= SEEDS * (WARMUP + 2 + STEPS) * TRANSITION_BYTES
    assert ckpt["bench_write_seconds"] > 0
    # Full buffers: every seed's replay buffer at 1e6 rows is written once in full...
    assert ckpt["full_capacity"] == 1_000_000 and ckpt["every"] == 10_000
    assert ckpt["full_first_bytes"] >= SEEDS * 1_000_000 * TRANSITION_BYTES
    # ...then one interval: the replay buffer gains one row per env step per seed, and the rollouts
    # 8 per step (inverted pendulum never terminates early in a rollout of horizon 1).
    replay_rows, synthetic_rows = ckpt["rows_per_env_step"]
    assert replay_rows == 1.0 and synthetic_rows == 8.0
    assert ckpt["interval_rows"] == [10_000, 80_000]
    # The interval's write holds those rows (the synthetic buffer is smaller than 80,000 rows, so all
    # of it) but nowhere near the whole replay buffer: at most one extra 4,096-row block either side.
    synthetic_capacity = record["config"]["synthetic_retain_steps"] * 8
    low = SEEDS * (10_000 + synthetic_capacity) * TRANSITION_BYTES
    assert low <= ckpt["interval_bytes"] <= low + SEEDS * 2 * 4096 * TRANSITION_BYTES + 2_000_000
    assert ckpt["interval_bytes"] < ckpt["full_first_bytes"] / 10
    # The loop writes it in the background (two more intervals): it waits only for the host copies
    # of those rows, which are as many (the 4,096-row blocks they touch fall differently).
    assert low <= ckpt["interval_background_bytes"] <= low + SEEDS * 2 * 4096 * TRANSITION_BYTES + 2_000_000
    assert 0 < ckpt["interval_background_wait_seconds"] < ckpt["interval_background_seconds"]
    assert ckpt["amortised_seconds_per_env_step"] == ckpt["interval_background_wait_seconds"] / 10_000
    assert "checkpoint" not in record["seconds_per_env_step"]  # kept out of the measured total


def test_table_and_record_name_every_phase(slow_bench, capsys):
    record, _, _ = slow_bench
    table = bench_module.format_table(record)
    for line in ("env", "learner (act + update)", "of which rollouts", "model_fit (amortised)",
                 "diagnostics (amortised)", "evaluation (amortised)", "total", "learner alone, on device",
                 "checkpoint of this bench", "full buffers, first", "full buffers, interval", "the same, in background",
                 "checkpoint (amortised)"):
        assert line in table, line
    for key in ("command", "commit", "date", "device", "jax", "config"):
        assert key in record
    assert record["command"].startswith("dynalab bench --algo mbpo --env gym:InvertedPendulum-v5 --seeds 2 ")
