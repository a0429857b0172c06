"""The user's own tasks (examples/custom_task): --import, --termination, the perfect model, resume.

The example package registers gym:my_tasks/GentlePendulum-v0 (Gymnasium's InvertedPendulum-v5
with an effort cost) and dmc:slider-reach (a dm_control domain of its own). Every algorithm
trains on both for a few dozen steps with tiny networks; the rest checks what the user sees.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynalab import checkpoint
from dynalab import config as config_lib
from dynalab.agents.sac import SACConfig
from dynalab.algos import ALGOS, default_config
from dynalab.cli import main
from dynalab.envs import env_spec, make_env, registry, termination
from dynalab.metrics import read
from dynalab.models.perfect import check_task
from dynalab.train import Trainer, train
from dynalab.types import bits_state

import tiny_configs

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_task"
GYM = "gym:my_tasks/GentlePendulum-v0"
DMC = "dmc:slider-reach"

# Tiny runs whose compiled programs other test files share through the persistent compile cache:
# both example tasks have InvertedPendulum-v5's shapes (4 observations, 1 action), and a learner
# depends on its task only through them (and a model-based one through its termination rule).
# SAC: test_validation.py's BASE run; ALM: tiny_configs.ALM.
SAC_FLAGS = ["--seeds", "2", "--steps", "120", "--replay-ratio", "1", "--warmup-steps", "60", "--batch-size", "16",
             "--eval-every", "60", "--eval-episodes", "1", "--log-every", "30", "--checkpoint-every", "40",
             "--sac.hidden", "16", "16", "--no-progress"]


def _dyna(algo: str):
    defaults = default_config(algo)  # FTFL's model switches stay on
    return default_config(
        algo, steps=40, warmup_steps=20, replay_ratio=1, batch_size=16, eval_every=40, eval_episodes=1,
        log_every=20, checkpoint_every=0, rollouts_per_step=8, rollout_horizon=2, synthetic_retain_steps=20,
        model_refit_every=20, sac=SACConfig(hidden=(16, 16)),
        model=dataclasses.replace(defaults.model, ensemble_size=2, num_elites=1, width=16, depth=1, batch_size=16,
                                  refit_steps=5))


TINY = {"alm": tiny_configs.ALM, "alm-nodyna": dataclasses.replace(tiny_configs.ALM, algo="alm-nodyna"),
        "mbpo": _dyna("mbpo"), "ftfl": _dyna("ftfl")}

# A module of termination rules written for these tests (the example's own is my_tasks:pole_fallen).
RULES = '''
import jax.numpy as jnp

def everything(next_obs):
    return jnp.ones(next_obs.shape[:-1], bool)

def wrong_shape(next_obs):
    return jnp.ones(next_obs.shape, bool)

def not_bool(next_obs):
    return next_obs[..., 0]

NOT_A_FUNCTION = 3
'''


def forget_my_tasks() -> None:
    """Undo every trace of `import my_tasks`, as in a fresh process that has not imported it yet."""
    import gymnasium
    from dm_control import suite

    for name in [n for n in gymnasium.registry if n.startswith("my_tasks/")]:
        del gymnasium.registry[name]
    suite._DOMAINS.pop("slider", None)
    for name in [m for m in sys.modules if m == "my_tasks" or m.startswith("my_tasks.") or m == "custom_rules"]:
        del sys.modules[name]
    for env_id in (GYM, DMC):
        registry._checked_user_tasks.pop(env_id, None)
    env_spec.cache_clear()


@pytest.fixture(scope="module", autouse=True)
def example_on_path(tmp_path_factory):
    """The example package and the test rules importable, as with PYTHONPATH=examples/custom_task."""
    rules = tmp_path_factory.mktemp("rules")
    (rules / "custom_rules.py").write_text(RULES)
    sys.path[:0] = [str(EXAMPLE), str(rules)]
    yield
    sys.path.remove(str(EXAMPLE))
    sys.path.remove(str(rules))
    forget_my_tasks()


def cli_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dynalab: error: "), err
    return lines[0]


@pytest.mark.parametrize("env", [GYM, DMC])
@pytest.mark.parametrize("algo", ["sac", "mbpo", "ftfl", "alm", "alm-nodyna"])
def test_every_algorithm_trains_on_the_users_tasks(algo, env, tmp_path):
    if algo == "sac":  # through the command line, as the user types it
        main(["train", "--algo", "sac", "--env", env, "--import", "my_tasks", *SAC_FLAGS, "--out", str(tmp_path)])
        steps = 120
    else:
        # The Gym task can end early, so a learned model needs a rule: never, here, so that both
        # tasks run the same program (the rule's effect: test_mbpo_uses_the_termination_rule...).
        rule = "never" if env == GYM and algo in ("mbpo", "ftfl") else "auto"
        cfg = dataclasses.replace(TINY[algo], env=env, imports=("my_tasks",), termination=rule)
        train(cfg, tmp_path, progress=False)
        steps = cfg.steps
    rows = read(tmp_path / "metrics.csv")
    evals = np.array([v for _, _, m, v in rows if m == "eval/return"])
    assert max(s for s, _, m, _ in rows if m == "eval/return") == steps and np.isfinite(evals).all()
    # Independent bounds: GentlePendulum pays at most 1 a step for at most 1,000 steps; the
    # slider's reward is in [0, 1] on each of its 250 steps.
    assert ((0 <= evals) & (evals <= (1000 if env == GYM else 250))).all()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["imports"] == ["my_tasks"] and saved["env"] == env
    if algo in ("mbpo", "ftfl"):
        assert {"model/pct_error", "rollout/reward_mean"} <= {m for _, _, m, _ in rows}


def test_the_example_tasks_are_what_they_claim():
    import my_tasks

    gym = make_env(GYM, seed=0)
    pendulum = make_env("gym:InvertedPendulum-v5", seed=0)
    np.testing.assert_array_equal(gym.reset(), pendulum.reset())  # same task, same seed
    # The same action moves both alike; the reward charges 0.05 per unit of squared force, and the
    # motor's force range is InvertedPendulum's [-3, 3] (so action 0.5 is a force of 1.5).
    obs, reward, terminated, _ = gym.step(np.array([0.5], np.float32))
    ref_obs, ref_reward, ref_terminated, _ = pendulum.step(np.array([0.5], np.float32))
    np.testing.assert_array_equal(obs, ref_obs)
    assert (terminated, ref_reward) == (ref_terminated, 1.0)
    assert reward == pytest.approx(1.0 - 0.05 * 1.5**2)
    # my_tasks.pole_fallen says what the real env says, on a trajectory that falls over.
    rng, flags, observations = np.random.default_rng(0), [], []
    gym.reset()
    for _ in range(300):
        obs, _, terminated, truncated = gym.step(rng.uniform(-1, 1, 1).astype(np.float32))
        flags.append(terminated)
        observations.append(obs)
        if terminated or truncated:
            gym.reset()
    predicted = np.asarray(jax.jit(my_tasks.pole_fallen)(jnp.asarray(np.stack(observations))))
    np.testing.assert_array_equal(predicted, flags)
    assert any(flags)
    # The slider's target moves every episode and lives in the model, so it is part of the state.
    slider = make_env(DMC, seed=0)
    targets = set()
    for _ in range(3):
        obs = slider.reset()
        targets.add(float(obs[2]))  # observations: position, velocity, target, target - position
        np.testing.assert_allclose(obs[3], obs[2] - obs[0], atol=1e-6)
    assert len(targets) == 3 and slider.randomised_model_fields == ("site_pos",)
    # A restored state reproduces the next step of either task (the perfect model's condition).
    for env_id in (GYM, DMC):
        check_task(env_id)


def test_envs_lists_the_users_tasks_with_import(capsys):
    main(["envs", "--import", "my_tasks"])
    lines = capsys.readouterr().out.splitlines()
    assert f"user   {GYM}" in lines and f"user   {DMC}" in lines
    assert "gym6   gym:Hopper-v5" in lines and "dmc15  dmc:cheetah-run" in lines


def synthetic_rows(cfg) -> tuple[int, np.ndarray]:
    """Run `cfg` to its end step by step; the synthetic buffer's size and discounts after it."""
    trainer = Trainer(cfg)
    try:
        while trainer.env_step < cfg.steps:
            trainer.step()
            trainer.run_hooks("measure")
            trainer.run_hooks("maintain")
        size = int(trainer.state.synthetic.size[0])
        return size, np.asarray(trainer.state.synthetic.data.discount[0, :size])
    finally:
        trainer.close()


def test_mbpo_uses_the_termination_rule_it_is_given():
    # Horizon-2 rollouts: a rule that never ends them stores two transitions per rollout, each
    # bootstrapping; a rule that ends every one stores only the first, marked terminal.
    cfg = dataclasses.replace(TINY["mbpo"], env=GYM, imports=("my_tasks",))
    learning_steps = cfg.steps - cfg.warmup_steps
    size, discount = synthetic_rows(dataclasses.replace(cfg, termination="never"))
    assert size == 2 * 8 * learning_steps and (discount == 1).all()
    size, discount = synthetic_rows(dataclasses.replace(cfg, termination="custom_rules:everything"))
    assert size == 8 * learning_steps and (discount == 0).all()


def test_perfect_model_on_the_users_task_steps_like_the_real_env():
    # The slider moves its target every episode (a model entry): the hard case for restoring.
    env = DMC
    cfg = dataclasses.replace(TINY["mbpo"], env=env, imports=("my_tasks",), perfect_model=True, steps=24,
                              rollout_horizon=1)
    trainer = Trainer(cfg)
    try:
        while trainer.env_step < cfg.steps:
            trainer.step()
        real, syn = trainer.state.sac.buffer, trainer.state.synthetic
        n_real, n_syn = int(real.size[0]), int(syn.size[0])
        real_obs, real_state = np.asarray(real.data.obs[0, :n_real]), np.asarray(real.data.sim_state[0, :n_real])
        rows = jax.tree.map(lambda x: np.asarray(x[0, :n_syn]), syn.data.without_sim_state())
    finally:
        trainer.close()
    assert n_syn == 8 * (cfg.steps - cfg.warmup_steps)  # the simulator never diverges here
    # Replay every synthetic transition in a fresh env of another seed (so another episode's
    # slider target, or pendulum start), restored to the real state the rollout began from.
    env_ = make_env(env, seed=7)
    for i in range(n_syn):
        start = np.flatnonzero((real_obs == rows.obs[i]).all(axis=1))[0]
        env_.set_state(bits_state(real_state[start]))
        next_obs, reward, terminated, _ = env_.step(rows.action[i])
        np.testing.assert_array_equal(next_obs, rows.next_obs[i])
        assert (np.float32(reward), 1.0 - terminated) == (rows.reward[i], rows.discount[i])


def test_resume_imports_the_task_module_again(tmp_path):
    out = tmp_path / "run"
    main(["train", "--algo", "sac", "--env", GYM, "--import", "my_tasks", *SAC_FLAGS, "--out", str(out)])
    reference = [r for r in read(out / "metrics.csv") if not r[2].startswith("time/")]
    # A crash after the checkpoint of step 80: the newest one (step 120) is gone.
    shutil.rmtree(out / "checkpoints" / checkpoint.name(120))
    forget_my_tasks()  # as in a new process, which has not imported my_tasks
    assert not registry.is_known_id(GYM)
    main(["resume", str(out), "--no-progress"])  # config.json says --import my_tasks
    assert registry.is_known_id(GYM)
    assert [r for r in read(out / "metrics.csv") if not r[2].startswith("time/")] == reference


def test_entry_point_registers_a_task_when_it_is_first_asked_for(tmp_path, monkeypatch):
    # An installed package declaring [project.entry-points."dynalab.tasks"] ep_tasks = "ep_tasks".
    (tmp_path / "ep_tasks.py").write_text(
        "import gymnasium\n"
        "gymnasium.register(id='ep_tasks/Pendulum-v0', max_episode_steps=50,\n"
        "                   entry_point='gymnasium.envs.mujoco.inverted_pendulum_v5:InvertedPendulumEnv')\n")
    dist = tmp_path / "ep_tasks-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-tasks\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dynalab.tasks]\nep_tasks = ep_tasks\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import gymnasium

    try:
        assert "ep_tasks" not in sys.modules
        env = make_env("gym:ep_tasks/Pendulum-v0", seed=0)  # unknown until the entry point loads
        assert env.spec.max_episode_steps == 50 and "ep_tasks" in sys.modules
        env.close()
    finally:
        gymnasium.registry.pop("ep_tasks/Pendulum-v0", None)
        sys.modules.pop("ep_tasks", None)


MBPO_CLI = ["train", "--algo", "mbpo", "--steps", "40", "--warmup-steps", "20", "--batch-size", "16", "--no-progress"]


def test_unimportable_module_is_one_line(tmp_path, capsys):
    (tmp_path / "broken_tasks.py").write_text("raise RuntimeError('no licence for the simulator')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        line = cli_error([*MBPO_CLI, "--env", GYM, "--import", "broken_tasks", "--out", str(tmp_path / "r")], capsys)
        assert line == ("dynalab: error: --import broken_tasks failed: RuntimeError: no licence for the simulator; "
                        "check the module name and that it is installed or on PYTHONPATH.")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("broken_tasks", None)
    line = cli_error([*MBPO_CLI, "--env", GYM, "--import", "no_such_tasks", "--out", str(tmp_path / "r")], capsys)
    assert "--import no_such_tasks failed: ModuleNotFoundError: No module named 'no_such_tasks'" in line
    line = cli_error(["envs", "--import", "no_such_tasks"], capsys)
    assert "--import no_such_tasks failed" in line
    assert not (tmp_path / "r").exists()


def test_unknown_id_is_one_line_and_mentions_import(tmp_path, capsys):
    line = cli_error([*MBPO_CLI, "--env", "gym:my_tasks/GentlePendulum-v1", "--import", "my_tasks",
                      "--out", str(tmp_path / "r")], capsys)
    assert line.startswith("dynalab: error: unknown env 'gym:my_tasks/GentlePendulum-v1'")
    assert f"did you mean {GYM}?" in line and "--import MODULE" in line


@pytest.mark.parametrize("value, message", [
    ("sometimes", "--termination must be auto (the built-in rule of a known task), never, or MODULE:FUNCTION"),
    ("no_such_rules:fn", "--termination no_such_rules:fn: cannot import no_such_rules (ModuleNotFoundError"),
    ("custom_rules:nothing", "--termination custom_rules:nothing: custom_rules has no attribute nothing"),
    ("custom_rules:NOT_A_FUNCTION", "NOT_A_FUNCTION is a int, not a function"),
    ("custom_rules:wrong_shape", "returned shape (2, 3, 4) and dtype bool for a (2, 3, 4) batch"),
    ("custom_rules:not_bool", "returned shape (2, 3) and dtype float32"),
])
def test_bad_termination_is_one_line(value, message, tmp_path, capsys):
    line = cli_error([*MBPO_CLI, "--env", GYM, "--import", "my_tasks", "--termination", value,
                      "--out", str(tmp_path / "r")], capsys)
    assert message in line


def test_users_gym_task_needs_a_termination_rule(tmp_path, capsys):
    line = cli_error([*MBPO_CLI, "--env", GYM, "--import", "my_tasks", "--out", str(tmp_path / "r")], capsys)
    assert line.startswith(f"dynalab: error: --algo mbpo needs the termination function of {GYM} ")
    for choice in ("--termination never", "--termination MODULE:FUNCTION", "--perfect-model", "--algo sac"):
        assert choice in line
    # The dm_control task never ends early: auto is its rule (never), and MBPO is accepted.
    config_lib.validate(default_config("mbpo", env=DMC, imports=("my_tasks",)), list(ALGOS))


def test_termination_is_read_by_the_model_based_algorithms_only(capsys):
    assert [a for a in ALGOS if config_lib.uses_field(a, "termination")] == ["mbpo", "ftfl", "ftfl-tuned"]
    cfg = default_config("sac", env=GYM, imports=("my_tasks",), termination="never")
    config_lib.validate(cfg, list(ALGOS))
    assert config_lib.ignored_settings(cfg) == ["--termination"]


def test_users_dmc_task_that_can_end_early_needs_a_rule():
    from dm_control.rl import control
    from dm_control.utils import containers

    import my_tasks.slider as slider
    from dynalab.envs import register_dmc_domain

    class Falls(slider.Reach):
        def get_termination(self, physics):
            return 0.0 if abs(float(physics.position()[0])) > 0.9 else None

    class Domain:  # a domain module needs only SUITE
        SUITE = containers.TaggedTasks()

    @Domain.SUITE.add()
    def reach(random=None):
        return control.Environment(slider.Physics.from_xml_string(*slider.get_model_and_assets()), Falls(random=random),
                                   time_limit=5, control_timestep=0.02)

    register_dmc_domain("falling_slider", Domain)
    try:
        with pytest.raises(config_lib.ConfigError, match="--termination never"):
            config_lib.validate(default_config("mbpo", env="dmc:falling_slider-reach"), list(ALGOS))
        cfg = default_config("mbpo", env="dmc:falling_slider-reach", termination="never")
        config_lib.validate(cfg, list(ALGOS))
    finally:
        from dm_control import suite

        suite._DOMAINS.pop("falling_slider")


def test_perfect_model_refuses_a_task_with_state_outside_mujoco():
    import gymnasium

    # The reward reads a bonus drawn at reset into a Python attribute: a restored MuJoCo state
    # cannot bring it back, so the perfect model would simulate other rewards than the real env.
    from gymnasium.envs.mujoco.inverted_pendulum_v5 import InvertedPendulumEnv

    class Hidden(InvertedPendulumEnv):
        def reset_model(self):
            self.bonus = float(self.np_random.uniform())
            return super().reset_model()

        def step(self, action):
            obs, reward, terminated, truncated, info = super().step(action)
            return obs, reward + self.bonus, terminated, truncated, info

    gymnasium.register(id="hidden_tests/Hidden-v0", entry_point=Hidden, max_episode_steps=100)
    try:
        cfg = default_config("mbpo", env="gym:hidden_tests/Hidden-v0", perfect_model=True)
        with pytest.raises(config_lib.ConfigError) as info:
            config_lib.validate(cfg, list(ALGOS))
        message = str(info.value)
        assert "a different reward" in message and "drop --perfect-model" in message
        assert "\n" not in message and message.replace("e.g. ", "").count(". ") == 0 and message.endswith(".")
    finally:
        del gymnasium.registry["hidden_tests/Hidden-v0"]


def test_non_mujoco_task_is_refused_in_one_sentence(tmp_path, capsys):
    import gymnasium

    gymnasium.register(id="hidden_tests/Pendulum-v0", max_episode_steps=200,
                       entry_point="gymnasium.envs.classic_control.pendulum:PendulumEnv")
    try:
        line = cli_error(["train", "--env", "gym:hidden_tests/Pendulum-v0", "--steps", "40", "--warmup-steps", "20",
                          "--out", str(tmp_path / "r"), "--no-progress"], capsys)
        assert "gym:hidden_tests/Pendulum-v0 is a Gymnasium task but not a MuJoCo one" in line
    finally:
        del gymnasium.registry["hidden_tests/Pendulum-v0"]
