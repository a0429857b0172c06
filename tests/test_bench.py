"""`dynalab bench` runs and reports every phase (its numbers are measurements, not asserted)."""

import json

from dynalab.cli import main


def test_bench_reports_every_phase_for_mbpo(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["bench", "--algo", "mbpo", "--env", "gym:InvertedPendulum-v5", "--steps", "3", "--warmup-steps", "64",
          "--replay-ratio", "2", "--batch-size", "32", "--eval-episodes", "1", "--rollouts-per-step", "8",
          "--model-refit-every", "50", "--model.refit-steps", "5", "--model.width", "16", "--model.depth", "2",
          "--model.batch-size", "16", "--sac.hidden", "16", "16", "--json", str(out)])
    table = capsys.readouterr().out
    record = json.loads(out.read_text())
    phases = record["seconds_per_env_step"]
    assert {"env", "learner", "eval", "model_fit", "diagnostics", "total"} <= phases.keys()
    assert set(record["learner_parts_seconds_per_env_step"]) == {"rollouts"}
    assert all(v > 0 for v in phases.values())
    assert abs(phases["total"] - sum(v for k, v in phases.items() if k != "total")) < 1e-9
    for key in ("command", "commit", "date", "device", "learner_only_seconds_per_env_step"):
        assert key in record
    assert "of which rollouts" in table and "model_fit (amortised)" in table

    # One real checkpoint was written and timed; the full-size one is an estimate scaled from it.
    ckpt = record["checkpoint"]
    assert ckpt["write_seconds"] > 0 and ckpt["bytes_written"] > 0
    assert ckpt["full_capacity"] == 1_000_000 >= ckpt["bench_capacity"] >= ckpt["buffer_fill"] > 0
    assert ckpt["full_learner_bytes"] <= ckpt["full_bytes"]
    assert ckpt["full_bytes"] >= ckpt["bytes_written"]
    assert ckpt["bench_state_full_bytes"] < ckpt["full_learner_bytes"]
    assert ckpt["every"] == 10_000
    est = ckpt["full_write_seconds_estimate"]
    assert abs(est - ckpt["full_bytes"] / ckpt["write_bytes_per_second"]) <= 1e-9 * est
    assert abs(ckpt["amortised_seconds_per_env_step_estimate"] - est / ckpt["every"]) <= 1e-12 * est
    assert abs(ckpt["fraction_of_total_estimate"] * phases["total"] - est / ckpt["every"]) <= 1e-9 * est
    assert "checkpoint" not in phases  # an estimate, kept out of the measured total
    assert "checkpoint, measured" in table and "write time, estimate" in table and "checkpoint (amort., est.)" in table
