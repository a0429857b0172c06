"""What a run prints besides its progress and evaluations: no repeated library noise, and every
warning of dynalab's own says what to do."""

import subprocess
import sys

from dynalab.envs import base


def run_fresh(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh Python process (dm_control not yet imported); fails the test if it fails."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_dm_control_asset_deprecations_are_not_printed():
    # A fresh process, so dm_control is imported (and installs its own absl handler) inside it.
    # cheetah, hopper and walker carry `settotalmass` in dm_control's XML: before dynalab owned
    # the handler, every environment built printed "WARNING:absl:compiler attribute 'settotalmass'
    # is deprecated ..." once per seed and evaluation env.
    code = ("from dynalab.envs import make_env\n"
            "for i, task in enumerate(['dmc:cheetah-run', 'dmc:hopper-stand', 'dmc:walker-run']):\n"
            "    env = make_env(task, i); env.reset(); env.step(env.spec.action_dim * [0.0])\n"
            "print('built')\n")
    proc = run_fresh(code)
    assert proc.stdout.strip() == "built"
    assert "settotalmass" not in proc.stderr and "absl" not in proc.stderr, proc.stderr


def test_any_other_mujoco_warning_is_shown_once_with_what_to_do(capsys):
    message = "Pre-allocated constraint buffer is full. Increase memory to at least 2M. Time = 0.5000."
    base._shown.discard(message)
    for _ in range(3):
        base._mujoco_warning(message + "\n")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    line = err[0]
    assert line.startswith("dynalab: warning: MuJoCo says: Pre-allocated constraint buffer is full")
    assert "fix its model" in line and "env/diverged" in line


def test_bad_state_warnings_are_left_to_the_training_loop(capsys):
    base._mujoco_warning("Nan, Inf or huge value in QACC at DOF 0. The simulation is unstable. Time = 0.0400.")
    assert capsys.readouterr().err == ""


def test_dynalabs_handler_stays_whatever_imports_dm_control_later():
    # dm_control replaces MuJoCo's warning handler when first imported. The registry imports it for
    # every task (Gym ones too), and a user's task module may import it at any time: dynalab's
    # handler must still be the one installed afterwards.
    code = ("import mujoco\n"
            "from dynalab.envs import base\n"
            "from dynalab import config\n"
            "from dynalab.algos import ALGOS\n"
            "config.validate(config.TrainConfig(env='gym:Hopper-v5'), list(ALGOS))\n"
            "import dm_control.suite, dm_control.mujoco\n"
            "print(mujoco.get_mju_user_warning() is base._mujoco_warning)\n")
    assert run_fresh(code).stdout.strip() == "True"
