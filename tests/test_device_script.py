"""scripts/device_bench.sh, the GPU measurement of the scaling curve, runs here at toy sizes, so a
change that breaks it fails CI rather than a scarce device run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]


def test_the_device_bench_script_runs_at_toy_sizes(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "device_bench.sh"), str(tmp_path), "--tiny"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "PYTHON": sys.executable, "DYNALAB_COMMIT": "0123abc",
                               # the tests' persistent compile cache (conftest.py), in the child too
                               "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
                               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                               "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected_counts = {"sac": [1, 2], "mbpo": [1], "mbpo-perfect": [1]}
    for name, counts in expected_counts.items():
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
        assert record["commit"] == "0123abc" and record["device"].startswith("cpu") and record["date"]
        assert [c["seeds"] for c in record["curve"]] == counts
        for c, run in zip(record["curve"], record["runs"]):
            assert run["seeds"] == c["seeds"] and run["config"]["seeds"] == c["seeds"]
            phases = c["seconds_per_env_step"]
            assert abs(sum(v for k, v in phases.items() if k != "total") - phases["total"]) < 1e-12
            assert c["seconds_per_seed_step"] == phases["total"] / c["seeds"]
            assert c["compile_seconds"] > 0 and phases["learner"] > 0 and phases["env"] > 0
        assert record["runs"][0]["config"]["perfect_model"] == (name == "mbpo-perfect")
    assert "at 2 seeds the time goes to:" in proc.stdout


def test_a_bad_mode_is_refused_in_one_line(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "device_bench.sh"), str(tmp_path), "--small"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--tiny" in proc.stderr
