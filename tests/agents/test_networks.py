import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynalab.agents import sac
from dynalab.agents.networks import orthogonal


@pytest.mark.parametrize("shape", [(88, 256), (256, 256), (256, 1), (3, 7)])
def test_orthogonal_init_is_orthogonal_and_scaled(shape):
    w = np.asarray(orthogonal(2.0)(jax.random.PRNGKey(0), shape), np.float64)
    small = min(shape)
    gram = w.T @ w if shape[0] >= shape[1] else w @ w.T
    np.testing.assert_allclose(gram, 4.0 * np.eye(small), atol=2e-5)


def test_orthogonal_init_is_random_and_unbiased():
    ws = np.stack([np.asarray(orthogonal()(jax.random.PRNGKey(i), (16, 16))) for i in range(200)])
    assert not np.allclose(ws[0], ws[1])
    # Haar-distributed entries have mean 0 and variance 1/n.
    assert abs(ws.mean()) < 0.01 and abs(ws.var() - 1 / 16) < 0.005


def test_vmapped_critic_init_over_four_seeds_runs():
    # This program deadlocked jaxlib 0.10's CPU runtime when the init used LAPACK QR.
    cfg = sac.SACConfig()
    states = jax.jit(jax.vmap(lambda k: sac.init(k, 67, 21, cfg)))(jax.random.split(jax.random.PRNGKey(0), 4))
    q = states.critic_params["params"]["qs"]["trunk"]["Dense_0"]["kernel"]
    assert q.shape == (4, 2, 88, 256) and not jnp.allclose(q[0, 0], q[0, 1])
