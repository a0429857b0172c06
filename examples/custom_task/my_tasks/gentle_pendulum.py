"""A Gymnasium MuJoCo task of your own: InvertedPendulum, paying for the force it applies."""

import numpy as np
from gymnasium.envs.mujoco.inverted_pendulum_v5 import InvertedPendulumEnv

EFFORT_COST = 0.05  # per unit of squared force; the motor's range is [-3, 3]


class GentlePendulumEnv(InvertedPendulumEnv):
    """InvertedPendulum-v5 with reward 1 - EFFORT_COST * force^2 per step the pole stays up.

    Observation, action and termination are InvertedPendulum-v5's: the episode ends when the pole
    tilts more than 0.2 rad (see my_tasks.pole_fallen, the same rule for model rollouts).
    """

    def step(self, action):
        observation, reward, terminated, truncated, info = super().step(action)
        effort = float(np.sum(np.square(action)))
        reward = float(reward) - EFFORT_COST * effort * float(not terminated)
        return observation, reward, terminated, truncated, {**info, "effort": effort}
