"""dynalab: a fast, trustworthy JAX lab for Dyna-style model-based RL."""

import jax as _jax

# JAX's CPU async dispatch can hang forever in BlockUntilReady (jax-ml/jax#25861; we hit it in a
# training run). The loop waits for every action anyway, so synchronous CPU dispatch costs
# nothing here. Accelerator backends are unaffected by this flag.
_jax.config.update("jax_cpu_enable_async_dispatch", False)

__version__ = "0.1.0"
