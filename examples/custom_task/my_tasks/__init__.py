"""Two tasks of your own for dynalab, and a termination rule for model rollouts.

Importing this package registers them, as a researcher's task package would:

* gym:my_tasks/GentlePendulum-v0: Gymnasium's InvertedPendulum-v5 whose reward also charges for
  effort (gentle_pendulum.py), registered with Gymnasium like any Gymnasium task;
* dmc:slider-reach: a dm_control domain written as the suite writes its own (slider.py: an MJCF
  model, a Task and a SUITE), added to dm_control's suite under the name "slider".

Use them with `--import my_tasks` (this folder on PYTHONPATH, or `pip install -e` it):

    PYTHONPATH=examples/custom_task dynalab train --import my_tasks --env dmc:slider-reach --algo mbpo
    PYTHONPATH=examples/custom_task dynalab train --import my_tasks --env gym:my_tasks/GentlePendulum-v0 \\
        --algo mbpo --termination my_tasks:pole_fallen
"""

import gymnasium
import jax.numpy as jnp

from dynalab.envs import register_dmc_domain
from my_tasks import slider

gymnasium.register(
    id="my_tasks/GentlePendulum-v0",
    entry_point="my_tasks.gentle_pendulum:GentlePendulumEnv",
    max_episode_steps=1000,  # dynalab needs a time limit
)

register_dmc_domain("slider", slider)


def pole_fallen(next_obs):
    """GentlePendulum's termination from a predicted next observation, for model rollouts.

    next_obs: float32 (..., 4) = cart position, pole angle (rad), their velocities.
    Returns bool (...): True where the episode ends, as GentlePendulumEnv.step decides it (the
    pole tilts more than 0.2 rad, or the state is not finite). Pure jax.numpy, so jittable.
    """
    finite = jnp.all(jnp.isfinite(next_obs), axis=-1)
    return ~finite | (jnp.abs(next_obs[..., 1]) > 0.2)
