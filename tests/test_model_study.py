"""`dynalab model-study`: its data is exactly a checkpoint's buffer, its fits are `ensemble.fit`'s, its numbers
are training's diagnostics on the same model and data, and a tiny study runs end to end from the command line.

References are independent of the study's code paths: the learner state read back with `checkpoint.read_learner`
(SAC's `.buffer` by name), `ensemble.fit` and `ensemble.diagnostics` called unvmapped, one model at a time.
"""

import base64
import dataclasses
import json
import re

import jax
import numpy as np
import pytest

from dynalab import checkpoint, experiments
from dynalab import model_study as ms
from dynalab.agents.sac import SACConfig
from dynalab.cli import main
from dynalab.config import ConfigError, TrainConfig
from dynalab.models import ensemble
from dynalab.rng import stream
from dynalab.train import Trainer, train
from dynalab.types import Transition

# Shapes as test_video's (and test_resume's) SAC run, so the compile cache serves all three.
RUN = TrainConfig(
    algo="sac", env="gym:InvertedPendulum-v5", seeds=2, steps=300, replay_ratio=2, warmup_steps=100,
    batch_size=32, buffer_capacity=700, eval_every=150, eval_episodes=2, log_every=50, checkpoint_every=150,
    keep_checkpoints=2, sac=SACConfig(hidden=(32, 32)),
)
# A tiny study: 3 variants (two share a vmapped group: they differ only in the learning rate) x 2 model seeds;
# 10 steps in curve chunks of 4, so the last chunk is shorter.
TINY = ["model.width=8", "model.depth=1", "model.ensemble_size=3", "model.num_elites=2", "model.batch_size=16",
        "model.early_stopping_eval_every=4"]
VARIANTS = ["mbpo", "ftfl", "mbpo+lr=3e-3"]
BUDGET = ms.Budget(refit_steps=10, model_seeds=2)
FIELDS = ("obs", "action", "reward", "next_obs", "discount")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("model_study") / "run"
    train(RUN, out, progress=False)
    return out


@pytest.fixture(scope="module")
def study(run_dir, tmp_path_factory):
    """The tiny study on seed 1's buffer, as `dynalab model-study --from RUN --run-seed 1` computes it, and its report."""
    data = ms.buffer_dataset(run_dir, heldout_fraction=0.2, seed=0, run_seed=1)
    variants = ms.build_variants(VARIANTS, TINY, BUDGET, data.run_model)
    result = ms.run_study(data, variants, [0, 1], eval_transitions=10_000)
    from dynalab.analysis.model_study_report import write_report

    out = tmp_path_factory.mktemp("model_study") / "report"
    files = write_report(result, out, reps=50)
    return result, json.loads((out / "study.json").read_text()), out, files


def test_a_dataset_from_a_checkpoint_is_exactly_the_buffers_rows(run_dir, study):
    ckpt = checkpoint.latest(run_dir / "checkpoints")
    trainer = Trainer(RUN)
    trainer.close()
    state = checkpoint.read_learner(ckpt, trainer.state)
    for member, seed in enumerate(RUN.seed_list()):
        size = int(np.asarray(state.buffer.size)[member])
        assert size == RUN.steps  # no diverged steps on this task; nothing wrapped (capacity 700)
        rows, info = ms.load_buffer(run_dir, run_seed=seed)
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(rows, f), np.asarray(getattr(state.buffer.data, f))[member, :size])
        assert (info["size"], info["run_seed"], info["step"]) == (size, seed, RUN.steps)
    # The study's split is a partition of seed 1's rows into whole episodes.
    data = study[0].data
    rows, _ = ms.load_buffer(run_dir, run_seed=1)
    both = ms._concat([data.train, data.heldout])
    key = lambda t: np.lexsort(np.column_stack([t.obs, t.action, t.next_obs]).T)  # noqa: E731
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(both, f)[key(both)], getattr(rows, f)[key(rows)])
    ids = ms.episode_ids(rows)
    held = {tuple(r) for r in data.heldout.obs}
    in_held = np.array([tuple(r) in held for r in rows.obs])
    for e in np.unique(ids):  # every episode is held out whole or not at all
        assert len(set(in_held[ids == e])) == 1
    assert 0 < in_held.sum() < len(in_held) and data.details["heldout_episodes"] >= 1


def test_ring_order_and_episode_seams():
    np.testing.assert_array_equal(ms.chronological(3, 3, 5), [0, 1, 2])
    np.testing.assert_array_equal(ms.chronological(5, 2, 5), [2, 3, 4, 0, 1])  # wrapped: the oldest row is at 2
    obs = np.arange(6, dtype=np.float32)[:, None]
    nxt = obs + 1
    nxt[2] = 99  # a reset follows row 2 (the next row's obs is not 99)
    discount = np.ones(6, np.float32)
    discount[3] = 0  # a termination at row 3
    t = Transition(obs, np.zeros((6, 1), np.float32), np.zeros(6, np.float32), nxt, discount)
    np.testing.assert_array_equal(ms.episode_ids(t), [0, 0, 0, 1, 2, 2])


def test_the_fit_is_ensemble_fit_and_vmapping_changes_nothing(study):
    result = study[0]
    r = result.results[0]  # MBPO
    cfg, seed = r.variant.model, 1
    data = ms.as_buffer(result.data.train)
    obs_dim, action_dim = result.data.train.obs.shape[1], result.data.train.action.shape[1]
    key = jax.random.PRNGKey(seed)
    state = jax.jit(ensemble.init, static_argnums=(1, 2, 3))(stream(key, "init"), obs_dim, action_dim, cfg)
    fitted, metrics = jax.jit(ensemble.fit, static_argnums=0)(cfg, state, data, stream(key, "fit"))
    mine = ms.member_state(r, seed)
    for a, b in zip(jax.tree.leaves(fitted), jax.tree.leaves(mine)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    for k, v in metrics.items():
        np.testing.assert_allclose(r.fit[k][seed], np.asarray(v), rtol=1e-5)
    np.testing.assert_array_equal(r.curve_steps, [0, 4, 8, 10])
    assert np.isnan(r.curve["train_loss"][:, 0]).all() and np.isfinite(r.curve["var_loss"]).all()


def test_the_studys_numbers_are_trainings_diagnostics_on_the_same_model_and_data(study):
    result, summary, _, _ = study
    diagnostics = jax.jit(ensemble.diagnostics, static_argnums=0)
    heldout = jax.tree.map(np.asarray, result.heldout_eval)
    assert len(heldout.reward) == len(result.data.heldout.reward)  # all held-out rows were scored
    names = {"pct_error": "model/pct_error", "pct_error_next_state": "model/pct_error_next_state",
             "reward_mse": "model/reward_mse", "var_state": "model/var_state", "var_reward": "model/var_reward"}
    assert [e["name"] for e in summary["variants"]] == ["MBPO", "FTFL", "MBPO (lr=0.003)"]
    assert summary["program_groups"] == [["MBPO", "MBPO (lr=0.003)"], ["FTFL"]]
    for r, entry in zip(result.results, summary["variants"]):
        for i, seed in enumerate(result.seeds):
            d = diagnostics(r.variant.model, ms.member_state(r, i), heldout)
            for ours, theirs in names.items():
                np.testing.assert_allclose(entry["heldout"][ours]["per_seed"][i], float(d[theirs]), rtol=2e-5)
            if r.variant.target == "s'-s":  # STFL's quantity is the own-target error for residual models
                np.testing.assert_allclose(entry["heldout"]["pct_error_delta"]["per_seed"][i], float(d["model/pct_error"]),
                                           rtol=1e-3)
            pred = ms.evaluate(r.variant.model, ms.member_state(r, i), heldout)["reward_pred_n"]
            np.testing.assert_allclose(np.mean(np.asarray(pred) - heldout.reward),
                                       entry["heldout"]["reward_bias"]["per_seed"][i], rtol=1e-4, atol=1e-7)
        values = entry["heldout"]["pct_error_next_state"]
        assert values["iqm"] == pytest.approx(np.mean(values["per_seed"]))  # IQM of 2 seeds is their mean
    # The variants differ: the learning rate and the target switches change the fit.
    errs = [e["heldout"]["pct_error_delta"]["iqm"] for e in summary["variants"]]
    assert len(set(errs)) == 3
    scale = summary["target_scale"]
    delta = result.data.train.next_obs.astype(np.float64) - result.data.train.obs
    np.testing.assert_allclose(scale["ratio_delta"], delta.std(0) / result.data.train.reward.astype(np.float64).std())


def test_the_report_is_readable_without_the_code(study):
    _, summary, out, files = study
    names = {p.name for p in files}
    for fig in ("state_error", "reward_real_vs_predicted", "predicted_variance", "error_per_dimension", "target_scale"):
        assert {f"{fig}.png", f"{fig}.pdf"} <= names
    page = (out / "index.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 5 and all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    assert not re.search(r'src="(?!data:)', page)  # self-contained
    md = (out / "summary.md").read_text()
    for text in ("Held-out prediction error", "% error on s'-s", "reward bias", "Worst state dimensions",
                 "Percent error", "STFL", "FTFL Fig 2a"):
        assert text in md, text


def test_cli_study_end_to_end_and_across_runs(run_dir, tmp_path, capsys):
    out = tmp_path / "study"
    # The run folder's parent holds one run: --from a folder of runs works like a sweep folder.
    main(["model-study", "--from", str(run_dir.parent), "--run-seed", "1", "--heldout-fraction", "0.2",
          "--variants", *VARIANTS, "--set", *TINY, "--refit-steps", "10", "--model-seeds", "2", "--reps", "50",
          "--out", str(out)])
    assert f"open {out / 'index.html'}" in capsys.readouterr().out
    data = json.loads((out / "study.json").read_text())
    assert data["task"] == RUN.env and data["data"]["kind"] == "buffer" and len(data["variants"]) == 3


def test_several_datasets_give_one_report_per_task_and_the_error_per_task(study, tmp_path):
    from dynalab.analysis.model_study_report import write_many

    result = study[0]
    # The same fitted study under a DMC task's name stands in for a second task (the figure only reads names).
    other = dataclasses.replace(result, data=dataclasses.replace(result.data, env="dmc:hopper-stand"))
    files = write_many([other, result], tmp_path, reps=20)
    combined = json.loads((tmp_path / "study.json").read_text())
    assert [s["task"] for s in combined["studies"]] == ["dmc:hopper-stand", RUN.env]
    assert tmp_path / "figures" / "model_error_by_task.png" in files
    for folder in ("gym-InvertedPendulum-v5", "dmc-hopper-stand"):
        assert (tmp_path / folder / "index.html").is_file()
    page = (tmp_path / "index.html").read_text()
    assert 'href="gym-InvertedPendulum-v5/index.html"' in page and page.count("data:image/png;base64,") == 1


def test_policy_data_comes_from_the_checkpoints_policy(run_dir):
    a = ms.collected_dataset(None, 40, 20, seed=3, policy=run_dir, policy_mode="exploit")
    b = ms.collected_dataset(None, 40, 20, seed=3, policy=run_dir, policy_mode="exploit")
    rnd = ms.collected_dataset(RUN.env, 40, 20, seed=3)
    assert a.env == RUN.env and a.details["kind"] == "policy" and a.details["step"] == RUN.steps
    for f in FIELDS:  # deterministic: the same checkpoint, seed and mode give the same data
        np.testing.assert_array_equal(getattr(a.train, f), getattr(b.train, f))
    assert not np.array_equal(a.train.action, rnd.train.action)
    assert np.abs(a.train.action).max() <= 1 and len(a.train.reward) == 40 and len(a.heldout.reward) == 20
    ids = ms.episode_ids(rnd.train)  # consecutive rows chain within an episode
    same = ids[1:] == ids[:-1]
    np.testing.assert_array_equal(rnd.train.obs[1:][same], rnd.train.next_obs[:-1][same])


@pytest.mark.parametrize("args, message", [
    (["--env", "gym:InvertedPendulum-v5", "--variants", "mbpo", "sac"], "unknown model variant 'sac'"),
    (["--env", "gym:InvertedPendulum-v5", "--set", "replay_ratio=1"], "names no model field"),
    (["--env", "gym:InvertedPendulum-v5", "--variants", "run"], "needs data from a run's checkpoint"),
    (["--env", "gym:InvertedPendulum-v5", "--variants", "mbpo", "mbpo+lr=3e-4"], "are the same model"),
    (["--early-stopping", "--refit-steps", "10", "--env", "gym:InvertedPendulum-v5"], "must be a multiple of"),
    ([], "exactly one of --from"),
])
def test_bad_requests_stop_with_one_clear_line(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["model-study", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1, err


def test_variant_specs():
    v = ms.parse_variant("mbpo+width=400+lr=1e-3", {"depth": 3})
    assert (v.name, v.model.width, v.model.lr, v.model.depth, v.target) == ("MBPO (width=400, lr=0.001)", 400, 1e-3, 3,
                                                                           "s'-s")
    ftfl, tuned = ms.parse_variant("ftfl"), ms.parse_variant("ftfl-tuned")
    assert ftfl.model.target_norm and ftfl.model.direct_next_state and tuned.model.width > ftfl.model.width
    assert ms.parse_variant("target-norm").model.target_norm and not ms.parse_variant("target-norm").model.direct_next_state
    with pytest.raises(ConfigError, match="num_elites"):
        ms.parse_variant("mbpo+num_elites=9")


def test_the_reward_line_keeps_rare_rewards_apart_from_tied_values():
    from dynalab.analysis.model_study_report import _reward_groups

    sizes = lambda real: [int(g.sum()) for g in _reward_groups(np.asarray(real, float))]  # noqa: E731
    assert sizes([0, 0, 0, 1, 1, 0]) == [4, 2]  # binary: one point per value, in reward order
    # Sparse: 990 zeros are one point, the 10 rare rewards are cut into quantile bins of their own.
    assert sizes(np.concatenate([np.zeros(990), np.linspace(0.5, 1, 10)])) == [990] + [1] * 10
    assert sizes(np.arange(1000.0)) == [100] * 10  # dense: deciles


def test_a_short_buffer_holds_out_its_short_episode_not_most_of_the_data():
    # One full episode and a partial one (a DMC run just past its 1,000-step time limit, in small): drawing the
    # long one first would train on 10 rows and score on 40; whatever the draw, the short one is held out.
    def episodes(*lengths):  # consecutive rows, each episode ending in a termination
        obs = np.arange(sum(lengths), dtype=np.float32)[:, None]
        discount = np.ones(sum(lengths), np.float32)
        discount[np.cumsum(lengths) - 1] = 0.0
        return Transition(obs=obs, action=np.zeros_like(obs), reward=np.zeros(len(obs), np.float32),
                          next_obs=obs + 1, discount=discount)

    for seed in range(8):
        train_idx, held_idx, n_train, n_held = ms.split_episodes(episodes(40, 10), np.arange(50), 0.1, seed)
        np.testing.assert_array_equal(held_idx, np.arange(40, 50))
        assert (len(train_idx), n_train, n_held) == (40, 1, 1)
    # Many short episodes: drawn at random until the fraction is reached, as before.
    _, held_idx, n_train, n_held = ms.split_episodes(episodes(*[10] * 5), np.arange(50), 0.25, 0)
    assert (len(held_idx), n_train, n_held) == (20, 3, 2)


def test_an_experiment_too_short_for_two_episodes_stops_before_any_run(tmp_path, capsys):
    preset = tmp_path / "short.toml"
    # DMC episodes all last 1,000 steps: a 40-step run holds one, which a study cannot split into train and held out.
    preset.write_text('envs = ["gym:InvertedPendulum-v5", "dmc:cartpole-balance"]\n[defaults]\nsteps = 40\n'
                      'warmup_steps = 20\nbatch_size = 16\neval_every = 40\neval_episodes = 1\n'
                      'checkpoint_every = 40\n[[variant]]\nlabel = "MBPO"\nalgo = "mbpo"\n')
    with pytest.raises(SystemExit) as e:
        main(["model-study", "--experiment", str(preset), "--out", str(tmp_path / "study"), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert "mbpo__dmc-cartpole-balance has 40 env steps" in err and "give it more env steps" in err, err
    with pytest.raises(ConfigError, match=r"mbpo__gym-HalfCheetah-v5 .*pass --scale above 0\.04\b"):
        ms.check_episodes(experiments.load("stfl-fig6-7-model-error", scale=0.04).trials, 0.04)
    ms.check_episodes(experiments.load("stfl-fig6-7-model-error", scale=0.041).trials, 0.041)
    assert not (tmp_path / "study").exists()  # nothing ran


def test_an_experiment_can_be_cut_to_some_tasks_and_small_runs_from_the_command_line(tmp_path, capsys):
    """--only picks the preset's trials and --run-set changes their runs (as `dynalab sweep`); only the
    picked runs are made and studied."""
    out = tmp_path / "study"
    main(["model-study", "--experiment", "stfl-fig6-7-model-error", "--only", "*InvertedPendulum*", "--scale", "0.01",
          "--run-set", "replay_ratio=1", "rollouts_per_step=4", "batch_size=16", "eval_episodes=1",
          "model.width=8", "model.depth=1", "model.refit_steps=5", "model.batch_size=16", "model.max_holdout=32",
          "--refit-steps", "5", "--model-seeds", "1", "--variants", "mbpo", "--set", "model.width=8",
          "--reps", "20", "--out", str(out), "--no-progress"])
    assert [p.name for p in (out / "runs").iterdir() if p.is_dir()] == ["mbpo__gym-InvertedPendulum-v5"]
    cfg = json.loads((out / "runs" / "mbpo__gym-InvertedPendulum-v5" / "config.json").read_text())
    assert (cfg["steps"], cfg["replay_ratio"], cfg["model"]["width"]) == (250, 1, 8)  # 25,000 x 0.01
    doc = json.loads((out / "study.json").read_text())
    assert "gym:InvertedPendulum-v5" in json.dumps(doc) and "gym:Hopper-v5" not in json.dumps(doc)
    with pytest.raises(SystemExit):
        main(["model-study", "--experiment", "stfl-fig6-7-model-error", "--only", "*Nope*", "--out", str(out)])
    assert "no trial of stfl-fig6-7-model-error matches --only *Nope*" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["model-study", "--env", "gym:Hopper-v5", "--only", "*Hopper*", "--out", str(out)])
    assert "give --experiment or leave them out" in capsys.readouterr().err
