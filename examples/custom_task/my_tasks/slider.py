"""A dm_control domain of your own: push a block along a rail onto a target.

Written as dm_control's suite writes its domains (compare dm_control/suite/point_mass.py): an MJCF
model, a Physics with the task's quantities, a Task, and SUITE, whose task functions take
`random=` and return a control.Environment. The target moves every episode; it lives in the
model (the target site's position), not in a Python attribute, so that a restored MuJoCo state
carries it and the perfect model (--perfect-model) reproduces every step.
"""

import collections

import numpy as np
from dm_control import mujoco
from dm_control.rl import control
from dm_control.suite import base
from dm_control.utils import containers, rewards

_TIME_LIMIT = 5  # seconds: 250 control steps of 0.02 s
_CONTROL_TIMESTEP = 0.02
_RANGE = 0.8  # start and target positions are drawn from [-_RANGE, _RANGE]

_MODEL = """
<mujoco model="slider">
  <option timestep="0.01"/>
  <worldbody>
    <light pos="0 0 2"/>
    <geom name="floor" type="plane" size="1.2 0.3 0.05" rgba=".3 .3 .3 1" contype="0" conaffinity="0"/>
    <site name="target" type="sphere" pos="0 0 0.06" size="0.04" rgba="1 .3 .3 .6"/>
    <body name="block" pos="0 0 0.06">
      <joint name="slide" type="slide" axis="1 0 0" range="-1 1" limited="true" damping="0.5"/>
      <geom name="block" type="box" size="0.05 0.05 0.05" mass="1" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
  <actuator>
    <motor name="push" joint="slide" gear="2" ctrlrange="-1 1" ctrllimited="true"/>
  </actuator>
</mujoco>
"""

SUITE = containers.TaggedTasks()


def get_model_and_assets():
    """The model's XML string and its assets (none)."""
    return _MODEL, {}


@SUITE.add("benchmarking")
def reach(time_limit=_TIME_LIMIT, random=None, environment_kwargs=None):
    """Push the block onto a target that moves every episode."""
    physics = Physics.from_xml_string(*get_model_and_assets())
    task = Reach(random=random)
    return control.Environment(physics, task, time_limit=time_limit, control_timestep=_CONTROL_TIMESTEP,
                               **(environment_kwargs or {}))


class Physics(mujoco.Physics):
    """The slider's physics, with the quantities the task reads."""

    def position(self):
        """The block's position along the rail (m), shape (1,)."""
        return self.named.data.qpos[["slide"]].copy()

    def velocity(self):
        """The block's velocity (m/s), shape (1,)."""
        return self.named.data.qvel[["slide"]].copy()

    def target(self):
        """The target's position along the rail (m), shape (1,)."""
        return self.named.model.site_pos[["target"], "x"].copy()

    def to_target(self):
        """Target position minus block position along the rail (m), shape (1,)."""
        return self.target() - self.position()


class Reach(base.Task):
    """Reward 1 within 5 cm of the target, falling smoothly to ~0.1 at 55 cm."""

    def initialize_episode(self, physics):
        physics.named.data.qpos["slide"] = self.random.uniform(-_RANGE, _RANGE)
        physics.named.model.site_pos["target", "x"] = self.random.uniform(-_RANGE, _RANGE)
        super().initialize_episode(physics)

    def get_observation(self, physics):
        obs = collections.OrderedDict()
        obs["position"] = physics.position()
        obs["velocity"] = physics.velocity()
        obs["target"] = physics.target()
        obs["to_target"] = physics.to_target()
        return obs

    def get_reward(self, physics):
        distance = float(np.abs(physics.to_target()[0]))
        return rewards.tolerance(distance, bounds=(0, 0.05), margin=0.5)
