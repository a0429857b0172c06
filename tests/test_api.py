"""The Python API: the README's example runs as written, and its functions agree with the run
folder's own files (read here with the csv and json modules, not with dynalab's readers)."""

import contextlib
import dataclasses
import csv
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import dynalab

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    section = section[:section.index("\n## ", 1)]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Runs the README's example in an empty folder; returns (folder, what it printed, its namespace)."""
    folder = tmp_path_factory.mktemp("api")
    out, namespace = io.StringIO(), {}
    with contextlib.chdir(folder), contextlib.redirect_stdout(out):
        exec(compile(readme_example(), "README.md (Python API)", "exec"), namespace)
    return folder, out.getvalue(), namespace


def test_the_readme_example_trains_loads_and_reports(demo):
    folder, printed, ns = demo
    run = folder / "runs" / "api-demo"
    assert (run / "config.json").is_file() and (run / "metrics.csv").is_file()
    assert ns["returns"].shape == (2, 2)
    assert "final evaluation return per seed:" in printed
    # Evaluations at 500 and 1,000 steps for seeds 0 and 1, as configured.
    assert list(ns["evals"].index) == [500, 1000] and list(ns["evals"].columns) == [0, 1]
    assert (folder / "runs" / "api-demo-report" / "index.html").is_file()
    assert f"{len(ns['files'])} report files" in printed


def test_load_metrics_holds_exactly_the_rows_of_metrics_csv(demo):
    folder, _, ns = demo
    with (folder / "runs" / "api-demo" / "metrics.csv").open() as f:
        rows = {(int(r["step"]), int(r["seed"]), r["metric"]): float(r["value"]) for r in csv.DictReader(f)}
    df = ns["df"]
    got = {(int(s), int(k), m): float(v) for s, k, m, v in zip(df.step, df.seed, df.metric, df.value)}
    assert got == rows
    assert set(df.run) == {"api-demo"} and set(df.env) == {"gym:InvertedPendulum-v5"} and set(df.algo) == {"sac"}
    # The example's final returns are the last evaluation's rows.
    final = df[(df.metric == "eval/return") & (df.step == 1000)].sort_values("seed").value.to_numpy()
    np.testing.assert_allclose(final, ns["returns"].mean(axis=1))


def test_load_config_is_the_saved_config_and_resume_continues_it(demo, tmp_path):
    folder, _, ns = demo
    run = tmp_path / "run"
    shutil.copytree(folder / "runs" / "api-demo", run)
    cfg = dynalab.load_config(run)
    # What the run used: the config asked for, with the replay capacity resolved (min(1e6, steps)).
    assert cfg == dataclasses.replace(ns["cfg"], buffer_capacity=1_000)
    with pytest.raises(dynalab.ConfigError, match="holds a finished run of 1000 steps"):
        dynalab.resume_training(run, progress=False)
    # A run whose config asks for more steps than its newest checkpoint has resumes from it.
    saved = json.loads((run / "config.json").read_text())
    saved["steps"] = 1_500
    (run / "config.json").write_text(json.dumps(saved))
    returns = dynalab.resume_training(run, progress=False)
    assert returns.shape == (2, 2)
    with (run / "metrics.csv").open() as f:
        evals = sorted({int(r["step"]) for r in csv.DictReader(f) if r["metric"] == "eval/return"})
    assert evals == [500, 1000, 1500]


def test_make_config_is_what_the_command_line_builds():
    from dynalab.cli import Train, _parse
    from dynalab.algos import default_config

    args = ["--algo", "mbpo", "--env", "dmc:cheetah-run", "--seeds", "3", "--sac.hidden", "64", "64",
            "--model.no-target-norm", "--rollout-horizon", "2"]
    cli_cfg = _parse("train", Train, args, default_config).cfg
    api_cfg = dynalab.make_config("mbpo", env="dmc:cheetah-run", seeds=3, sac={"hidden": [64, 64]},
                                  model={"target_norm": False}, rollout_horizon=2)
    assert api_cfg == cli_cfg


@pytest.mark.parametrize("changes, message", [
    ({"stepz": 1}, "unknown field 'stepz'; valid fields are: alm, baseline"),
    ({"sac": {"hiden": [8]}}, "unknown sac field(s) 'hiden'; valid sac fields are: actor_lr"),
    ({"steps": 1_000}, "--warmup-steps (10000) must be smaller than --steps (1000)"),
])
def test_make_config_refuses_in_one_sentence(changes, message):
    with pytest.raises(dynalab.ConfigError) as e:
        dynalab.make_config("sac", **changes)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_api_names_are_not_shadowed_by_submodules():
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(dynalab.__path__, "dynalab."):
        if info.name == "dynalab.__main__":  # would run the command line
            continue
        importlib.import_module(info.name)  # importing a submodule sets it as an attribute of its package
    from dynalab import api
    for name in api.__all__:
        assert getattr(dynalab, name) is getattr(api, name), name
