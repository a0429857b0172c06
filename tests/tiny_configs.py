"""Tiny run configs shared by several test files.

Tests that train the same config compile the same programs; sharing one config lets the
persistent compile cache (tests/conftest.py) serve them all, which keeps a cold-cache CI run
short. The buffer capacity is explicit because the default grows with --steps, and a buffer
of another size is another program.
"""

from dynalab.agents.alm import ALMConfig
from dynalab.algos import default_config

ALM = default_config(
    "alm", env="gym:InvertedPendulum-v5", steps=160, warmup_steps=60, batch_size=16, buffer_capacity=1_000,
    eval_every=80, eval_episodes=1, log_every=40, checkpoint_every=0,
    alm=ALMConfig(latent_dim=4, hidden=16, model_hidden=16, std_duration=10),
)
